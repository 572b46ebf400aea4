"""Comparing two recorded runs: the first divergence, its likely cause, and what else differs.

Runs are aligned draw for draw by each event's identity — (kind, path) for draws, (kind, name,
epoch) for metrics and checkpoints, (kind, name) for datasets — whatever stream recorded it, so a
run with two workers and a run with none compare event for event (DESIGN §3). The first event of
run A, in recording order, whose counterpart in run B differs or is missing is the first
divergence. Configuration, datasets, code version and environment are compared as well.

An identity may recur within a run — a metric logged at every step under one name, with no
epoch — so events are aligned by (identity, occurrence): the n-th ``loss`` of run A with the n-th
``loss`` of run B.

``worker_spawned`` events present in only one run are not differences: a run's outputs do not
depend on its number of workers (DESIGN §1), so 0 and 2 workers compare as identical.

This module decides each divergence's cause; :mod:`replay.diff_causes` words it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ledger.digests import value_digest
from ledger.errors import CheckFailedError, LedgerError
from ledger.events import (AUDIT_STREAM, CHECKPOINT, DATASET_REGISTERED, EPOCH_RESET,
                           EXPERIMENT_CREATED, METRIC, RUN_COMPLETED, RUN_RESUMED, WORKER_SPAWNED,
                           decode_body, is_draw)
from ledger.experiment_info import MetricSummary, MetricTally
from ledger.json_view import json_view
from ledger.store.store import Store
from ledger.verify import verify
from ledger.recorded_differences import ABSENT, json_difference
from replay.causes import Cause, differences, same
from replay.diff_causes import (Explanation, Session, ending, epochs_detail, out_of_step,
                                params_detail, renamed_note, unseeded_cause)

_CONFIG_KEYS = ("name", "model", "hyperparams", "root_seed", "purpose")


@dataclass(frozen=True, slots=True)
class EventSide:
    """Where an event stands in its run and the digests it recorded."""

    stream: str
    seq: int
    seed: bytes | None
    input: bytes | None
    output: bytes | None
    settings: bytes | None = None
    """For a draw made from its params (every draw but worker_spawned), the digest of its
    params: what the draw was made with."""
    drawn_epoch: Any = None
    """For a metric or checkpoint, the epoch of the last ``epoch_reset`` its stream recorded
    before it (None: none): which epoch's data the run had drawn when it logged it."""
    resumed_seq: int | None = None
    """For a metric or checkpoint, the seq of the last ``run_resumed`` its stream recorded
    before it (None: none)."""
    session: int = 0
    """Which session of its run recorded it: 0 the one that created the run, n the n-th that
    resumed it (its environment may differ from the first's)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"stream": self.stream, "seq": self.seq,
                "seed": None if self.seed is None else self.seed.hex(),
                "input": None if self.input is None else self.input.hex(),
                "output": None if self.output is None else self.output.hex(),
                "params": None if self.settings is None else self.settings.hex()}

    def digest(self, field_name: str) -> bytes | None:
        """The digest this side recorded for ``field_name`` (``params``: its params' digest)."""
        return self.settings if field_name == "params" else getattr(self, field_name)


@dataclass(frozen=True, slots=True)
class DiffDivergence:
    """The first event of run A whose counterpart in run B differs (or is missing)."""

    kind: str
    identity: tuple[Any, ...]
    a: EventSide | None
    b: EventSide | None
    cause: Cause
    detail: str
    occurrence: int = 1
    """Which recording of this identity in its run (1 unless the identity recurs)."""
    exp_a: str = "A"
    exp_b: str = "B"
    """The runs compared (their ids; set by :func:`diff_runs`)."""

    @property
    def field(self) -> str:
        """Which digest differs: ``seed``, ``input``, ``output`` or ``params`` (a draw made with
        other params whose output is the same: an epoch batched otherwise)."""
        a, b = self.a, self.b
        if self.cause is Cause.STATUS:
            return "status"
        if a is None or b is None:  # one run lacks the event: the digest the other recorded
            present = a if b is None else b
            assert present is not None  # a divergence has at least one side
            return next((name for name in ("output", "seed", "input")
                         if present.digest(name) is not None), "output")
        for name in ("seed", "input", "output"):
            if a.digest(name) != b.digest(name):
                return name
        return "params" if a.settings != b.settings else "output"

    def _sides(self) -> tuple[str, str]:
        return side_names(self.exp_a, self.exp_b)

    def describe(self) -> str:
        """One line for humans: each run's position of the event (exp, stream#seq, or none for
        the run that lacks it), its kind and path, the cause, and the digest each run recorded
        where they differ (the one run's that has it, for an event the other lacks)."""
        where = "/".join(str(label) for label in self.identity[1:]) or "-"
        if self.occurrence > 1:
            where += f", occurrence {self.occurrence}"
        name_a, name_b = self._sides()
        positions = [f"{name} {'none' if side is None else f'{side.stream}#{side.seq}'}"
                     for name, side in ((name_a, self.a), (name_b, self.b))]
        field, shown = self.field, ""
        if field != "status":  # a status differs with no digest: the detail gives each one
            # an event one run lacks: only the other's digest, not "none" for the missing side
            digests = ", ".join(f"{_hex(side.digest(field))} in {name}"
                                for name, side in ((name_a, self.a), (name_b, self.b))
                                if side is not None)
            shown = f" ({field} {digests})"
        return (f"{' / '.join(positions)} {self.kind} [{where}]: {self.cause.value}{shown} — "
                f"{self.detail}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"kind": self.kind, "identity": json_view(list(self.identity[1:])),
                "occurrence": self.occurrence, "field": self.field,
                "a": None if self.a is None else self.a.to_json(),
                "b": None if self.b is None else self.b.to_json(),
                "cause": self.cause.value, "detail": self.detail}


def side_names(exp_a: str, exp_b: str) -> tuple[str, str]:
    """How two compared runs are named: their ids, told apart (``EXP (A)``, ``EXP (B)``) when
    one id is compared across two ledgers."""
    if exp_a != exp_b:
        return exp_a, exp_b
    return f"{exp_a} (A)", f"{exp_b} (B)"


@dataclass(slots=True)
class DiffReport:
    """Whether two runs are identical, and if not, where and how they differ."""

    exp_a: str
    exp_b: str
    status_a: str = "ok"
    """Each run's status: ``ok``, ``failed``… or ``incomplete`` (no run_completed)."""
    status_b: str = "ok"
    compared: int = 0
    compared_by_kind: Counter = field(default_factory=Counter)
    identical_events: int = 0
    differing: int = 0
    missing_in_b: int = 0
    extra_in_b: int = 0
    first_divergence: DiffDivergence | None = None
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    datasets: list[tuple[str, Any, Any]] = field(default_factory=list)
    code: list[tuple[str, Any, Any]] = field(default_factory=list)
    environment: list[tuple[str, Any, Any]] = field(default_factory=list)
    metrics: list[tuple[str, Any, Any]] = field(default_factory=list)
    """Each metric whose last recorded value differs (or that one run lacks): (name, a, b)."""

    @property
    def identical(self) -> bool:
        """True when every event of one run has an equal counterpart in the other."""
        return self.first_divergence is None and not (self.differing or self.missing_in_b
                                                      or self.extra_in_b)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        def listed(rows: list[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
            return [json_difference(key, a, b, ("a", "b")) for key, a, b in rows]

        return {"a": self.exp_a, "b": self.exp_b, "identical": self.identical,
                "status": {"a": self.status_a, "b": self.status_b},
                "compared": self.compared, "identical_events": self.identical_events,
                "compared_by_kind": dict(sorted(self.compared_by_kind.items())),
                "differing": self.differing, "missing_in_b": self.missing_in_b,
                "extra_in_b": self.extra_in_b,
                "first_divergence": None if self.first_divergence is None
                else self.first_divergence.to_json(),
                "differences": {"config": listed(self.config), "datasets": listed(self.datasets),
                                "code": listed(self.code),
                                "environment": listed(self.environment),
                                "metrics": listed(self.metrics)}}


def _hex(digest: bytes | None) -> str:
    """A digest as lowercase hex; ``none`` where the run recorded none (or lacks the event)."""
    return "none" if digest is None else digest.hex()


def _label(value: Any) -> Any:
    """A params value as an identity label: kept when hashable, else its shown form (a forged
    epoch that is a list must not stop the comparison)."""
    try:
        hash(value)
    except TypeError:
        return repr(json_view(value))
    return value


def identity(body: dict[str, Any]) -> tuple[Any, ...] | None:
    """What aligns an event with its counterpart in another run (None: not compared as events)."""
    kind = body["kind"]
    params = body["params"] if isinstance(body["params"], dict) else {}
    if kind in (EXPERIMENT_CREATED, RUN_COMPLETED, RUN_RESUMED):
        return None
    if kind in (METRIC, CHECKPOINT):
        return (kind, str(params.get("name")), _label(params.get("epoch")))
    if kind == DATASET_REGISTERED:
        return (kind, str(params.get("name")))
    return (kind, *(_label(label) for label in body["path"]))


Key = tuple[tuple[Any, ...], int]
"""How events are aligned: (identity, occurrence of that identity in its run, from 1)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """How a run ended: its ``run_completed`` (None: incomplete) and the error it recorded."""

    side: EventSide | None = None
    error: Any = None


def _index(store: Store, exp: str) -> tuple[dict[Key, EventSide], dict[str, Any],
                                           list[tuple[Key, EventSide]], list[MetricSummary],
                                           Completion, list[Session]]:
    """Every compared event of a run by (identity, occurrence), its creation params, the
    recording order, its metrics' last values, how it ended and the sessions that recorded it
    (read in the same pass)."""
    completion = Completion()
    sessions = [Session(None)]
    index: dict[Key, EventSide] = {}
    order: list[tuple[Key, EventSide]] = []
    seen: Counter = Counter()
    created: dict[str, Any] = {}
    metrics = MetricTally()
    drawn_epoch: dict[str, Any] = {}  # by stream: the epoch its last epoch_reset drew
    resumed_seq: dict[str, int] = {}  # by stream: the seq of its last run_resumed
    for stream, _seq, kind, body_bytes in store.iter_run_bodies(exp):
        if stream == AUDIT_STREAM:
            continue
        body = decode_body(body_bytes)
        if kind == EXPERIMENT_CREATED and isinstance(body["params"], dict):
            created = body["params"]
            sessions[0] = Session(created.get("environment"), code=created.get("code"))
        elif kind == METRIC:
            metrics.add(body["params"])
        elif kind == EPOCH_RESET and len(body["path"]) > 1:
            drawn_epoch[body["stream"]] = _label(body["path"][1])
        elif kind == RUN_RESUMED:
            resumed_seq[body["stream"]] = body["seq"]
            params = body["params"] if isinstance(body["params"], dict) else {}
            # a session that recorded no environment or code (older ledgers): the first one's
            sessions.append(Session(params.get("environment", sessions[0].environment),
                                    f"{body['stream']}#{body['seq']}",
                                    params.get("code", sessions[0].code)))
        elif kind == RUN_COMPLETED:
            params = body["params"] if isinstance(body["params"], dict) else {}
            completion = Completion(EventSide(body["stream"], body["seq"], None, None, None),
                                    params.get("error"))
        aligned = identity(body)
        if aligned is None:
            continue
        seen[aligned] += 1
        key = (aligned, seen[aligned])
        logged = kind in (METRIC, CHECKPOINT)
        side = EventSide(body["stream"], body["seq"], body["seed"], body["input"],
                         _compared_output(kind, body["params"], body["output"]),
                         _compared_settings(kind, body["params"]),
                         drawn_epoch.get(body["stream"]) if logged else None,
                         resumed_seq.get(body["stream"]) if logged else None,
                         len(sessions) - 1)
        index[key] = side
        order.append((key, side))
    return index, created, order, metrics.summaries, completion, sessions


def _compared_output(kind: str, params: Any, output: bytes | None) -> bytes | None:
    """The output an event is compared by: its recorded digest — but for a metric the digest of
    the value it records (``V(value)``, what show and reports display), so that a value edited
    under its old digest, the chain recomputed, does not compare identical to the honest one."""
    if kind == METRIC and isinstance(params, dict) and "value" in params:
        try:
            return value_digest(params["value"])
        except LedgerError:  # a value no recorder writes: the recorded digest stands
            return output
    return output


def _made_from_params(kind: str) -> bool:
    """Whether a draw of ``kind`` is made from its params as well as its seed and input: every
    draw — epoch_reset, augmentation_batch, user_draw and custom kinds, which replay re-executes
    from their params — but worker_spawned, whose params (the start method) change nothing it
    draws. When those params differ the cause is *parameters differ* (an augmenter's noise,
    shuffling, a user draw's or custom kind's scale), not *same seed, different output*, which
    sent the engineer hunting for nondeterministic code."""
    return is_draw(kind) and kind != WORKER_SPAWNED


def _compared_settings(kind: str, params: Any) -> bytes | None:
    """What a draw's params are compared by: the cause of a differing output when they differ —
    and for an epoch_reset a difference even when its output is the same: its output is the
    order's digest, the same for every batch_size and drop_last, so two runs batching one order
    differently used to compare identical."""
    if not _made_from_params(kind) or not isinstance(params, dict):
        return None
    try:
        return value_digest(params)
    except LedgerError:  # params no recorder writes: the output alone is compared
        return None


def _dataset_digests(order: list[tuple[Key, EventSide]]) -> dict[str, Any]:
    return {key[0][1]: side.output for key, side in order if key[0][0] == DATASET_REGISTERED}


def diff_runs(store: Store, exp_a: str, exp_b: str, *, store_b: Store | None = None
              ) -> DiffReport:
    """Compare run ``exp_a`` with ``exp_b`` (of ``store_b`` when given). Both must verify."""
    other = store_b or store
    statuses: list[str] = []
    for source, exp in ((store, exp_a), (other, exp_b)):
        statuses.append(source.experiment(exp).status)
        checked = verify(source, exp)
        if not checked.ok:
            raise CheckFailedError(f"{exp} fails verification, not compared: "
                                   f"{checked.findings[0].describe()}")
    index_a, created_a, order_a, metrics_a, completion_a, sessions_a = _index(store, exp_a)
    index_b, created_b, order_b, metrics_b, completion_b, sessions_b = _index(other, exp_b)
    report = DiffReport(exp_a, exp_b, statuses[0], statuses[1])
    report.config = differences({k: created_a[k] for k in _CONFIG_KEYS if k in created_a},
                                {k: created_b[k] for k in _CONFIG_KEYS if k in created_b},
                                keep_absent=True)
    report.datasets = differences(_dataset_digests(order_a), _dataset_digests(order_b),
                                  keep_absent=True)
    names = (exp_a, exp_b) if exp_a != exp_b else (f"{exp_a} (A)", f"{exp_b} (B)")
    report.code = session_differences("code", sessions_a, sessions_b, names)
    report.environment = session_differences("environment", sessions_a, sessions_b, names)
    report.metrics = _last_metric_differences(metrics_a, metrics_b)
    explanation = Explanation(exp_a, sessions_a, exp_b, sessions_b)
    unseeded = unseeded_cause(report.config)
    for key, side_a in order_a:
        side_b = index_b.get(key)
        if side_b is None and key[0][0] == WORKER_SPAWNED:
            continue  # worker counts may differ: outputs do not depend on them (DESIGN §1)
        report.compared += 1
        report.compared_by_kind[key[0][0]] += 1
        divergence = _compare(key, side_a, side_b, explanation, unseeded, (exp_a, exp_b))
        if divergence is None:
            report.identical_events += 1
            continue
        if side_b is None:
            report.missing_in_b += 1
        else:
            report.differing += 1
        if report.first_divergence is None:
            report.first_divergence = _with_params_named(divergence, store, exp_a, other, exp_b)
    extra = [(key, side) for key, side in order_b
             if key not in index_a and key[0][0] != WORKER_SPAWNED]
    report.extra_in_b = len(extra)
    first_extra = (extra[0] if extra and report.first_divergence is None
                   else _split_by_extra(report.first_divergence, order_b, index_a))
    if first_extra is not None:
        (aligned, occurrence), side = first_extra
        report.first_divergence = DiffDivergence(aligned[0], aligned, None, side, Cause.EXTRA,
                                                 f"{exp_b} has this event, {exp_a} does not",
                                                 occurrence)
    if report.first_divergence is None and report.status_a != report.status_b:
        report.first_divergence = DiffDivergence(
            RUN_COMPLETED, (RUN_COMPLETED,), completion_a.side, completion_b.side, Cause.STATUS,
            f"{exp_a} {ending(report.status_a, completion_a.error)}, {exp_b} "
            f"{ending(report.status_b, completion_b.error)}: every event both recorded agrees")
    if report.first_divergence is not None:
        report.first_divergence = _renamed(
            replace(report.first_divergence, exp_a=exp_a, exp_b=exp_b),
            _dataset_digests(order_a), _dataset_digests(order_b))
    return report


def session_differences(what: str, sessions_a: list[Session], sessions_b: list[Session],
                        names: tuple[str, str]) -> list[tuple[str, Any, Any]]:
    """How the ``what`` (``code`` or ``environment``) of two runs differs: that of the sessions
    that created them, then that of each session that resumed one against the other's creating
    session, keyed ``EXP's session resumed at main#9: packages.numpy`` — each difference it adds
    to the creating sessions' (a run resumed under another numpy or commit drew its later events
    with it, which comparing the creating sessions alone did not list). A resumed session alike
    one of the other run's sessions adds none."""
    found = differences(getattr(sessions_a[0], what), getattr(sessions_b[0], what), what)
    rows = list(found)
    for name, sessions, others, is_b in ((names[0], sessions_a, sessions_b, False),
                                         (names[1], sessions_b, sessions_a, True)):
        for session in sessions[1:]:
            if any(same(getattr(session, what), getattr(other, what)) for other in others):
                continue  # the other run has a session alike (a run and its copy)
            pair = (getattr(others[0], what), getattr(session, what)) if is_b \
                else (getattr(session, what), getattr(others[0], what))
            rows += [(f"{name}'s session resumed at {session.resumed_at}: {key}", a, b)
                     for key, a, b in differences(*pair, what)
                     if not any(key == known and same(a, known_a) and same(b, known_b)
                                for known, known_a, known_b in found)]
    return rows


def _renamed(divergence: DiffDivergence, datasets_a: dict[str, Any],
             datasets_b: dict[str, Any]) -> DiffDivergence:
    """``divergence``, saying so when it is a dataset one run lacks that the other registered
    under another name with the same content (see :func:`renamed_note`)."""
    if divergence.kind != DATASET_REGISTERED or divergence.cause not in (Cause.MISSING,
                                                                         Cause.EXTRA):
        return divergence
    side = divergence.a or divergence.b
    other, datasets = ((divergence.exp_b, datasets_b) if divergence.a is not None
                       else (divergence.exp_a, datasets_a))
    note = renamed_note(None if side is None else side.output, other, datasets)
    return divergence if note is None else replace(divergence, detail=divergence.detail + note)


def _split_by_extra(divergence: DiffDivergence | None, order_b: list[tuple[Key, EventSide]],
                    index_a: dict[Key, EventSide]) -> tuple[Key, EventSide] | None:
    """The draw only run B recorded that comes, in B's order, before B's side of run A's first
    divergence, if any: there the runs split. A run that trained an epoch more differs from its
    shorter twin first where that epoch starts; the weights both saved afterwards differ only
    because of it (they were named *same seed, different output — nondeterministic code*).
    Only draws (events with a seed) count: a metric only B logs does not change its training,
    and an event B recorded after A's first divergence does not hide it."""
    if divergence is None or divergence.b is None:
        return None  # nothing differs, or missing in B: no place in B's order to compare with
    first = (divergence.identity, divergence.occurrence)
    for key, side in order_b:
        if key == first:
            return None
        if side.seed is not None and key not in index_a and key[0][0] != WORKER_SPAWNED:
            return key, side
    return None


def _last_metric_differences(metrics_a: list[MetricSummary], metrics_b: list[MetricSummary]
                             ) -> list[tuple[str, Any, Any]]:
    """The metrics whose last recorded value differs between the runs, in run A's order then
    run B's: the outcome an engineer compares first (AUC 0.923 against 0.891)."""
    last_a = {summary.name: summary.last for summary in metrics_a}
    last_b = {summary.name: summary.last for summary in metrics_b}
    names = list(last_a) + [name for name in last_b if name not in last_a]
    return [(name, last_a.get(name, ABSENT), last_b.get(name, ABSENT)) for name in names
            if name not in last_a or name not in last_b or not same(last_a[name], last_b[name])]


def _compare(key: Key, a: EventSide, b: EventSide | None,
             explanation: Callable[[EventSide, EventSide], str],
             unseeded: tuple[Cause, str] | None, names: tuple[str, str] = ("A", "B")
             ) -> DiffDivergence | None:
    """The divergence of one aligned event, or None. ``explanation`` words a *same seed,
    different output* of two events; ``unseeded`` is the cause of a differing event with no
    seed of its own when the runs' configurations explain it (see :func:`unseeded_cause`). A
    draw made with other params is *parameters differ*, its detail naming them later
    (:func:`_with_params_named`), as only the params' digests are kept. A metric or checkpoint
    one run logged after drawing another epoch than the other is *epochs out of step*
    (:func:`epochs_detail`); ``names`` are the runs' ids, for its detail."""
    aligned, occurrence = key
    kind = aligned[0]
    if b is None:
        cause, detail = Cause.MISSING, "the other run has no such event"
    elif a.seed != b.seed:
        cause, detail = Cause.SEED, ("the runs derived different seeds for this draw (other "
                                     "root seed or derivation)")
    elif a.input != b.input:
        cause, detail = Cause.INPUT, "the draw read different data"
    elif a.output != b.output and kind == DATASET_REGISTERED:
        cause, detail = Cause.INPUT, "the datasets' contents differ"
    elif a.settings != b.settings and (a.output != b.output or kind == EPOCH_RESET):
        cause, detail = Cause.PARAMS, params_detail(kind, a.output == b.output, [])
    elif a.output != b.output and a.seed is None and out_of_step(a, b):
        cause, detail = Cause.EPOCHS, epochs_detail(aligned, a, b, names)
    elif a.output != b.output and a.seed is None and unseeded is not None:
        cause, detail = unseeded
    elif a.output != b.output:
        cause, detail = Cause.OUTPUT, explanation(a, b)
    else:
        return None
    return DiffDivergence(kind, aligned, a, b, cause, detail, occurrence)


def _with_params_named(divergence: DiffDivergence, store: Store, exp_a: str, store_b: Store,
                       exp_b: str) -> DiffDivergence:
    """``divergence``, its detail naming the params that differ when it is a draw made with
    other params: read again for this one event, since only digests are kept for the others."""
    if divergence.cause is not Cause.PARAMS or divergence.a is None or divergence.b is None \
            or divergence.a.settings is None:
        return divergence
    params_a = _params_at(store, exp_a, divergence.a)
    params_b = _params_at(store_b, exp_b, divergence.b)
    keys = [key for key, _a, _b in differences(params_a, params_b, keep_absent=True)]
    same_output = divergence.a.output == divergence.b.output
    return replace(divergence, detail=params_detail(divergence.kind, same_output, keys))


def _params_at(store: Store, exp: str, side: EventSide) -> Any:
    """The params of the event at ``side`` (its stream and seq) in run ``exp``."""
    for (body,) in store.iter_segment_rows(exp, side.stream, side.seq, side.seq + 1, ["body"]):
        return decode_body(body)["params"]
    return None
