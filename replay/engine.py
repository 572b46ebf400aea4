"""The replay engine: re-execute every recorded draw of a run and compare digests.

Replay verifies the run's chains (a tampered ledger is never replayed: see :mod:`replay.gate`),
re-loads every registered dataset and checks its digest (changed data is caught before any draw
is compared), and, for every event with a draw, re-derives the seed from the recorded root seed
and path and re-executes the draw from its params through the replayer of its kind. The run is
*certified* when every digest matches; otherwise the first divergent event is named with its
likely cause. Metrics and checkpoints are not draws: ``ledger replay --full`` re-runs training to
compare them.

The phases overlap (nothing is reported before verification passes): worker processes are forked
first and start re-executing (:mod:`replay.execution`), a thread digests the re-loaded datasets
(hashlib releases the GIL), and the main process verifies the chains, then takes its own share of
the draws. Draws are read in windows of WINDOW_DRAWS events, so memory does not grow with the run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.audit import record_audit
from ledger.digests import value_digest
from ledger.environment import current_user, environment_fingerprint
from ledger.errors import CannotReplayError
from ledger.events import (AUDIT_STREAM, DATASET_REGISTERED, EXPERIMENT_CREATED, NOT_DRAWS,
                           REPLAY_RECORDED, RUN_COMPLETED, RUN_RESUMED, USER_DRAW, decode_body,
                           is_draw)
from ledger.processes import usable_cores
from ledger.seeds import SEED_SCHEME, root_seed_from_bytes
from ledger.store.store import Store
from ledger.text import quoted
from replay.causes import library_differences
from replay.compare import Comparer, Divergence, hex_or_none
from replay.context import LoadedDataset, ReplayContext
from replay.datasets import check_description, dataset_redraw, load_registered_dataset
from replay.execution import DrawExecution, Mismatch
from replay.gate import VerificationGate
from replay.registry import Redraw, load_plugins

__all__ = ["Divergence", "POLICY", "ReplayReport", "default_data_dir_of", "recorded_start",
           "record_replay", "replay_run"]

WINDOW_DRAWS = 100_000
"""Draws held in memory (and shared out between processes) at a time."""
PROGRESS_EVERY = 1000


@dataclass(slots=True)
class ReplayReport:
    """The outcome of a replay: certified or diverged, with everything an auditor needs."""

    exp: str
    head: bytes | None
    status: str = "ok"
    """The run's completion status as ``ledger show`` gives it: ``ok``, ``failed``, or
    ``incomplete`` when it has no run_completed — then only the draws it recorded are certified,
    and every output says so (DESIGN §3)."""
    compared: Counter = field(default_factory=Counter)
    matched: int = 0
    mismatched: int = 0
    not_draws: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    """Draws, by kind, not re-executed because a dataset differs (every draw would differ too:
    replay stops there); empty when the replay re-executed every draw."""
    first_divergence: Divergence | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    environment_differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    replayed_by: str = ""
    started_t: int = 0
    finished_t: int = 0
    jobs: int = 1

    @property
    def certified(self) -> bool:
        """True when every re-executed draw matched its record."""
        return self.first_divergence is None and self.mismatched == 0

    @property
    def verdict(self) -> str:
        """``certified`` or ``diverged``."""
        return "certified" if self.certified else "diverged"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"exp": self.exp, "verdict": self.verdict, "status": self.status,
                "complete": self.head is not None, "head": hex_or_none(self.head),
                "compared": dict(sorted(self.compared.items())),
                "compared_total": sum(self.compared.values()), "matched": self.matched,
                "mismatched": self.mismatched, "not_draws": dict(sorted(self.not_draws.items())),
                "skipped": dict(sorted(self.skipped.items())),
                "first_divergence": None if self.first_divergence is None
                else self.first_divergence.to_json(),
                "environment": self.environment,
                "environment_differences": [{"key": key, "recorded": old, "current": new}
                                            for key, old, new in self.environment_differences],
                "plugins": self.plugins, "replayed_by": self.replayed_by,
                "started_t": self.started_t, "finished_t": self.finished_t, "jobs": self.jobs,
                "policy": POLICY}


POLICY = ("digest equality of every re-executed draw (seed, input and output digests); "
          "meta and t are observations and are not compared; metrics and checkpoints are "
          "compared only by a full re-run")


# -- the whole run -----------------------------------------------------------------------------

def recorded_start(store: Store, exp: str) -> tuple[int, dict[str, Any]]:
    """The run's root seed and ``experiment_created`` params; CannotReplayError when unusable."""
    created = store.first_event_body(exp, EXPERIMENT_CREATED)
    if created is None:
        raise CannotReplayError(f"{exp} has no experiment_created event: nothing to replay")
    params = created["params"] if isinstance(created["params"], dict) else {}
    scheme = params.get("seed_scheme", SEED_SCHEME)
    if scheme != SEED_SCHEME:
        raise CannotReplayError(f"{exp} derives seeds with {scheme!r}; this program knows "
                                f"{SEED_SCHEME!r} only")
    recorded = params.get("root_seed")
    if not isinstance(recorded, bytes) or len(recorded) != 16:
        raise CannotReplayError(f"{exp} has no recorded root seed")
    return root_seed_from_bytes(recorded), params


def default_data_dir_of(store: Store) -> Path | None:
    """The data folder of a ledger: ``$LEDGER_DATA_DIR`` or ``ledger-data/`` beside SQLite."""
    from ledger.datasets import default_data_dir

    database = store.sqlite_file
    return default_data_dir(database)


def replay_run(store: Store, exp: str, *, jobs: int = 1, trusted: Sequence[str] = (),
               data_dir: str | os.PathLike[str] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Replay ``exp`` from ``store``: certify it, or name its first divergence and cause.

    ``jobs`` processes re-execute draws (this one and ``jobs - 1`` workers; never more than the
    usable cores, and no more workers than there are chunks of draws to share). Raises
    UnknownExperimentError (exit 2) for an unknown id, CheckFailedError (exit 1) when the ledger
    fails verification — then nothing else is reported — and CannotReplayError (exit 3) when
    data or code is missing or not allowed.
    """
    store.require_experiment(exp)
    gate = VerificationGate(store, exp)
    with gate.guarding():
        return _Replay(store, exp, gate, jobs, trusted, data_dir, on_progress).run()


class _DatasetCheck:
    """Digests the re-loaded datasets on a thread; stops the draws as soon as one differs."""

    def __init__(self, loaded: list[tuple[dict[str, Any], LoadedDataset]],
                 execution: DrawExecution) -> None:
        self._loaded = loaded
        self._execution = execution
        self._redraws: list[Redraw] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._digest, name="replay-dataset-digests",
                                        daemon=True)
        self._thread.start()

    def _digest(self) -> None:
        try:
            digests: dict[tuple[int, int], Redraw] = {}  # arrays several events share: once
            for body, loaded in self._loaded:
                same = (id(loaded.features), id(loaded.labels))
                redraw = digests.get(same)
                if redraw is None:
                    redraw = digests[same] = dataset_redraw(loaded)
                self._redraws.append(redraw)
                if redraw.output != body["output"]:
                    self._execution.stop()  # every later draw would differ: no need to run them
                else:
                    check_description(body, loaded)
        except BaseException as error:  # raised in the main thread by results()
            self._error = error
            self._execution.stop()

    def results(self) -> list[tuple[dict[str, Any], Redraw]]:
        """Each dataset event with its digest now (waits for the thread)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return [(body, redraw) for (body, _), redraw in zip(self._loaded, self._redraws)]


class _Replay:
    """One replay of one run (see the module docstring for the order of its phases)."""

    def __init__(self, store: Store, exp: str, gate: VerificationGate, jobs: int,
                 trusted: Sequence[str], data_dir: str | os.PathLike[str] | None,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self.store, self.exp, self.gate = store, exp, gate
        self.jobs = min(max(1, jobs), usable_cores())
        self.trusted = tuple(trusted)
        self.data_dir = Path(data_dir) if data_dir else default_data_dir_of(store)
        self.on_progress = on_progress
        self.total = 0
        self.done = 0
        self._reported = 0
        self.kinds: Counter = Counter()
        self.draws: Counter = Counter()

    def run(self) -> ReplayReport:
        """Load plugins and datasets, re-execute every draw, and report the outcome."""
        plugins = load_plugins(self.trusted)
        root, created = recorded_start(self.store, self.exp)
        self._check_draws_recorded_once()
        context = ReplayContext(root, self.data_dir)
        loaded = [(body, load_registered_dataset(context, body)) for body in self._datasets()]
        if self.on_progress is not None:
            # What progress counts as done: datasets and draws (metrics and the like are only
            # read, audit events not at all).
            counts = self.store.counts_by_kind(self.exp)
            self.total = sum(count for kind, count in counts.items()
                             if is_draw(kind) or kind == DATASET_REGISTERED)
        report: ReplayReport  # made in the first window: _windows yields at least one
        comparer: Comparer
        # Closed however the replay ends: a reader left suspended by an error would keep its
        # connection checked out for as long as the error's traceback lives.
        with contextlib.closing(self._windows()) as windows:
            for first, bodies, kinds in windows:
                with DrawExecution(context, bodies, self.jobs, self.trusted) as execution:
                    if first:
                        datasets = _DatasetCheck(loaded, execution)
                        self.gate.check()
                        report, comparer = self._report(created, plugins, root)
                    try:
                        mismatches = execution.run(
                            lambda: self._progress(self.done + execution.claims.claimed()))
                    except Exception:
                        if first and self._datasets_differ(comparer, datasets.results()):
                            return self._stopped(report, windows)
                        raise
                if first and self._datasets_differ(comparer, datasets.results()):
                    return self._stopped(report, windows)  # changed data: every draw would differ
                self._compare(comparer, bodies, kinds, mismatches)
                self._progress(self.done)
        return self._finished(self._count_not_draws(report))

    def _count_not_draws(self, report: ReplayReport) -> ReplayReport:
        for kind, count in self.kinds.items():
            if kind in NOT_DRAWS:
                report.not_draws[kind] = count
        return report

    def _stopped(self, report: ReplayReport,
                 windows: Iterator[tuple[bool, list[bytes], list[str]]]) -> ReplayReport:
        """Finish a replay stopped at a changed dataset: read the rest of the run (without
        re-executing it) so that the report counts its events as a full replay does — the
        events that are not draws, and the draws left unchecked (``skipped``)."""
        for _first, _bodies, _kinds in windows:
            pass
        for kind, count in self.draws.items():
            report.skipped[kind] = count
        return self._finished(self._count_not_draws(report))

    def _check_draws_recorded_once(self) -> None:
        """Refuse a run that records a draw (kind, path) twice — in two streams, say: each
        recording would re-execute to its record and the run be certified, though no writer
        records a draw twice (DESIGN §3). A user draw that several ranks record alike, one copy
        each (``manual_seed(run, "model", "init")`` on every rank), is one draw."""
        repeated = self.store.repeated_draw(self.exp, [*NOT_DRAWS, DATASET_REGISTERED],
                                            per_stream=[USER_DRAW])
        if repeated:
            body = decode_body(repeated[0][2])
            where = " and ".join(f"{stream}#{seq}" for stream, seq, _body in repeated)
            raise CannotReplayError(f"{body['kind']} at path {quoted(body['path'])} is recorded "
                                    f"more than once ({where}), but a draw (kind, path) is "
                                    f"recorded once per run: the run cannot be certified")

    def _datasets(self) -> list[dict[str, Any]]:
        return [decode_body(body) for stream, _seq, _kind, body
                in self.store.iter_kind_bodies(self.exp, [DATASET_REGISTERED])
                if stream != AUDIT_STREAM]

    def _windows(self) -> Generator[tuple[bool, list[bytes], list[str]], None, None]:
        """The run's draws in windows of WINDOW_DRAWS (at least one window, maybe empty)."""
        bodies: list[bytes] = []
        kinds: list[str] = []
        first = True
        for stream, _seq, kind, body in self.store.iter_run_bodies(self.exp):
            self.kinds[kind] += 1
            if kind in NOT_DRAWS or kind == DATASET_REGISTERED or stream == AUDIT_STREAM:
                continue
            bodies.append(body)
            kinds.append(kind)
            self.draws[kind] += 1
            if len(bodies) == WINDOW_DRAWS:
                yield first, bodies, kinds
                first, bodies, kinds = False, [], []
        if bodies or first:
            yield first, bodies, kinds

    def _report(self, created: dict[str, Any], plugins: list[str], root: int
                ) -> tuple[ReplayReport, Comparer]:
        report = ReplayReport(self.exp, self.store.first_event_hash(self.exp, RUN_COMPLETED),
                              status=self.store.experiment(self.exp).status, jobs=self.jobs,
                              replayed_by=f"{current_user() or 'unknown'}@{socket.gethostname()}",
                              started_t=time.time_ns(), plugins=plugins)
        report.environment = environment_fingerprint()
        recorded_env = created.get("environment")
        report.environment_differences = library_differences(recorded_env, report.environment)
        return report, Comparer(report, recorded_env, report.environment, root,
                                self._resumed_session)

    def _resumed_session(self, body: dict[str, Any]) -> tuple[Any, str] | None:
        """The environment and ``stream#seq`` of the ``run_resumed`` that began the session
        which recorded ``body`` (the last one recorded before it), or None when the creating
        session recorded it. Read for the first divergence alone: a few small queries."""
        position = self._row_id(body["stream"], body["seq"])
        session = None
        for stream, seq, _kind, resumed in self.store.iter_kind_bodies(self.exp, [RUN_RESUMED]):
            at = self._row_id(stream, seq)
            if position is None or at is None or at > position:
                break
            params = decode_body(resumed)["params"]
            environment = params.get("environment") if isinstance(params, dict) else None
            if environment is not None:  # older ledgers recorded none: the last known stands
                session = (environment, f"{stream}#{seq}")
        return session

    def _row_id(self, stream: str, seq: int) -> int | None:
        """The ledger row id of event (stream, seq) of this run: its place in recording order."""
        for (row_id,) in self.store.iter_segment_rows(self.exp, stream, seq, seq + 1, ["id"]):
            return int(row_id)
        return None

    def _datasets_differ(self, comparer: Comparer,
                         checked: list[tuple[dict[str, Any], Redraw]]) -> bool:
        for body, redraw in checked:
            comparer.compare(body, redraw, True)
        self.done += len(checked)
        return comparer.report.first_divergence is not None

    def _compare(self, comparer: Comparer, bodies: list[bytes], kinds: list[str],
                 mismatches: list[Mismatch]) -> None:
        """Count the window's matches by kind; classify its mismatches in recorded order."""
        matched = Counter(kinds)
        for index, seed_ok, redrawn, input_, output in mismatches:
            matched[kinds[index]] -= 1
            comparer.compare(decode_body(bodies[index]),
                             Redraw(output=output, input=input_) if redrawn else None, seed_ok)
        for kind, count in matched.items():
            if count:
                comparer.count_matches(kind, count)
        self.done += len(bodies)

    def _progress(self, done: int) -> None:
        """Tell ``on_progress`` each time another PROGRESS_EVERY events are done."""
        if self.on_progress is None:
            return
        if done // PROGRESS_EVERY > self._reported // PROGRESS_EVERY:
            self.on_progress(done, self.total)
            self._reported = done

    @staticmethod
    def _finished(report: ReplayReport) -> ReplayReport:
        report.finished_t = time.time_ns()
        return report


def record_replay(store: Store, report: ReplayReport, *, take_over: bool = False) -> None:
    """Record the replay's certificate in the experiment's audit stream (for its history);
    ``take_over`` as for :func:`ledger.audit.record_audit`."""
    certificate = report.to_json()
    record_audit(store, report.exp, REPLAY_RECORDED, certificate,
                 output=value_digest(certificate),
                 meta={"pid": os.getpid(), "host": socket.gethostname()}, take_over=take_over)
