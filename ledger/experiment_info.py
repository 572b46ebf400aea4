"""What ``ledger show`` tells about one experiment, gathered from the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.errors import BadInputError
from ledger.events import (EXPERIMENT_CREATED, MAIN_STREAM, METRIC, RUN_COMPLETED, RUN_RESUMED,
                           decode_body)
from ledger.recorded_differences import differences, session_differences
from ledger.seeds import root_seed_from_bytes
from ledger.store.store import Store, StreamHead

_SHOWN_PARAMS = ("model", "purpose", "hyperparams", "entrypoint", "code", "parent")


@dataclass(slots=True)
class MetricSummary:
    """One metric name of a run: how many values it recorded and the last one, with its epoch."""

    name: Any
    count: int
    last: Any
    epoch: Any

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"name": self.name, "count": self.count, "last": self.last, "epoch": self.epoch}


@dataclass(slots=True)
class ResumeSummary:
    """One session that resumed the run: its ``run_resumed`` event's seq and time, the user
    (None in ledgers written before a resume recorded one), host and process it ran in, and how
    its environment and code version differed from those ``experiment_created`` recorded (None:
    not recorded — ledgers written before run_resumed recorded them)."""

    seq: int
    t: Any
    user: Any
    host: Any
    pid: Any
    environment_differences: list[tuple[str, Any, Any]] | None
    code_differences: list[tuple[str, Any, Any]] | None = None
    code: Any = None
    """The code version the session recorded, as recorded (None: not recorded); not in
    :meth:`to_json`, whose ``code_differences`` say how it differs."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"seq": self.seq, "t": self.t, "user": self.user, "host": self.host,
                "pid": self.pid,
                "environment_differences": _json_differences(self.environment_differences),
                "code_differences": _json_differences(self.code_differences)}


def _json_differences(found: list[tuple[str, Any, Any]] | None) -> list[dict[str, Any]] | None:
    """``(key, recorded, resumed)`` differences as JSON maps (None stays None: not recorded)."""
    return None if found is None else [{"key": key, "recorded": old, "resumed": new}
                                       for key, old, new in found]


@dataclass(slots=True)
class ExperimentInfo:
    """One experiment's metadata, counts by kind, streams, head and completion status."""

    exp: str
    name: str
    created_t: int
    status: str
    root_seed: int | None
    root_seed_source: str | None
    head: bytes | None
    counts: dict[str, int]
    streams: list[StreamHead]
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: list[MetricSummary] = field(default_factory=list)
    error: str | None = None
    """What a failed run recorded as its error (``run_completed``'s ``error``), else None."""
    resumes: list[ResumeSummary] = field(default_factory=list)
    """Every session that resumed the run, in recorded order."""
    parent_in_ledger: bool | None = None
    """Whether the run ``parent=`` names is in this ledger (None: the run names no parent)."""

    @property
    def complete(self) -> bool:
        """True when the run recorded ``run_completed``."""
        return self.head is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (bytes left as bytes; the CLI shows them as hex)."""
        return {"exp": self.exp, "name": self.name, "created_t": self.created_t,
                "status": self.status, "complete": self.complete,
                "root_seed": None if self.root_seed is None else str(self.root_seed),
                "root_seed_source": self.root_seed_source, "head": self.head,
                "counts": self.counts, "events": sum(self.counts.values()),
                "streams": [{"stream": h.stream, "count": h.count, "head": h.head}
                            for h in self.streams],
                "metadata": self.metadata, "error": self.error,
                "metrics": [metric.to_json() for metric in self.metrics],
                "resumes": [resume.to_json() for resume in self.resumes],
                "parent_in_ledger": self.parent_in_ledger}


def parent_in_ledger(store: Store, parent: Any) -> bool | None:
    """Whether ``parent`` (``experiment_created``'s recorded ``parent``) is an experiment of
    this ledger; None when it is no text (no parent recorded). A run may derive from a run
    recorded in another ledger, so a parent not found here is shown as such, never refused."""
    if not isinstance(parent, str):
        return None
    try:
        store.require_experiment(parent)
    except BadInputError:  # no such experiment here, or an id no ledger can hold (forged)
        return False
    return True


def describe_experiment(store: Store, exp: str) -> ExperimentInfo:
    """Gather what the ledger holds about ``exp``; raises UnknownExperimentError if nothing."""
    row = store.experiment(exp)
    try:
        created = store.first_event_body(exp, EXPERIMENT_CREATED) or {"params": {}}
    except BadInputError:  # a damaged body is shown as missing metadata; verify names it
        created = {"params": {}}
    params = created["params"] if isinstance(created.get("params"), dict) else {}
    recorded_seed = params.get("root_seed")
    root_seed = root_seed_from_bytes(recorded_seed) if isinstance(recorded_seed, bytes) and len(
        recorded_seed) == 16 else None
    counts = store.counts_by_kind(exp)
    head = store.first_event_hash(exp, RUN_COMPLETED) if counts.get(RUN_COMPLETED) else None
    streams = sorted(store.stream_heads(exp).values(), key=lambda h: h.stream)
    return ExperimentInfo(exp=row.exp, name=row.name, created_t=row.created_t, status=row.status,
                          root_seed=root_seed, root_seed_source=params.get("root_seed_source"),
                          head=head, counts=counts, streams=streams,
                          metadata={key: params[key] for key in _SHOWN_PARAMS if key in params},
                          metrics=metric_summaries(store, exp) if counts.get(METRIC) else [],
                          error=_recorded_error(store, exp) if row.status == "failed" else None,
                          resumes=resume_summaries(store, exp, params)
                          if counts.get(RUN_RESUMED) else [],
                          parent_in_ledger=parent_in_ledger(store, params.get("parent")))


def resume_summaries(store: Store, exp: str, created: dict[str, Any]) -> list[ResumeSummary]:
    """Each ``run_resumed`` of ``exp``'s main stream, with how its session's environment and
    code version differ from those ``created`` (experiment_created's params) records. A body
    that does not decode is left out: ``ledger verify`` names a damaged event, and this is a
    summary."""
    summaries = []
    for stream, seq, _kind, body_bytes in store.iter_kind_bodies(exp, [RUN_RESUMED]):
        try:
            body = decode_body(body_bytes)
        except BadInputError:
            continue
        if stream != MAIN_STREAM:
            continue
        params = body["params"] if isinstance(body["params"], dict) else {}
        meta = body["meta"] if isinstance(body["meta"], dict) else {}
        environment, code = params.get("environment"), params.get("code")
        summaries.append(ResumeSummary(
            seq, body["t"], meta.get("user"), meta.get("host"), meta.get("pid"),
            session_differences(created.get("environment"), environment)
            if isinstance(environment, dict) else None,
            differences(created.get("code"), code) if isinstance(code, dict) else None,
            code))
    return summaries


def _recorded_error(store: Store, exp: str) -> str | None:
    """The ``error`` a failed run's ``run_completed`` records, when it is text (a damaged body
    shows none; ``ledger verify`` names it)."""
    try:
        completed = store.first_event_body(exp, RUN_COMPLETED)
    except BadInputError:
        return None
    params = completed.get("params") if completed is not None else None
    error = params.get("error") if isinstance(params, dict) else None
    return error if isinstance(error, str) else None


class MetricTally:
    """Summarises a run's metrics from their params, fed in recording order: each name (in the
    order first recorded) with its count and last value. A name that is not text is left out."""

    def __init__(self) -> None:
        self._by_name: dict[str, MetricSummary] = {}

    def add(self, params: Any) -> None:
        """Count one ``metric`` event's params."""
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return
        summary = self._by_name.get(name)
        if summary is None:
            summary = self._by_name[name] = MetricSummary(name, 0, None, None)
        summary.count += 1
        summary.last, summary.epoch = params.get("value"), params.get("epoch")

    @property
    def summaries(self) -> list[MetricSummary]:
        """Every metric name's summary so far."""
        return list(self._by_name.values())


def metric_summaries(store: Store, exp: str) -> list[MetricSummary]:
    """Each metric name of ``exp`` (in the order first recorded) with its count and last value.

    Reads only the run's metric events. A body that does not decode, or a name that is not
    text, is left out: ``ledger verify`` names a damaged event, and this is a summary.
    """
    tally = MetricTally()
    for _stream, _seq, _kind, body_bytes in store.iter_kind_bodies(exp, [METRIC]):
        try:
            tally.add(decode_body(body_bytes)["params"])
        except BadInputError:
            continue
    return tally.summaries
