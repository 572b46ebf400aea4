"""The replay engine: re-execute every recorded draw of a run and compare digests.

Replay first verifies the run's chains (a tampered ledger is never replayed), then re-loads every
registered dataset and checks its digest (changed data is caught before any draw is compared),
then, for every event with a draw, re-derives the seed from the recorded root seed and path and
re-executes the draw from its params through the replayer of its kind. The run is *certified*
when every digest matches; otherwise the first divergent event is named with its likely cause.
Metrics and checkpoints are not draws: ``ledger replay --full`` re-runs training to compare them.
"""

from __future__ import annotations

import getpass
import multiprocessing
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.audit import record_audit
from ledger.digests import value_digest
from ledger.environment import environment_fingerprint
from ledger.errors import CannotReplayError, CheckFailedError
from ledger.events import (AUDIT_STREAM, CHECKPOINT, DATASET_REGISTERED, EXPERIMENT_CREATED,
                           METRIC, REPLAY_RECORDED, RUN_COMPLETED, RUN_RESUMED, decode_body)
from ledger.processes import pool_start_method
from ledger.seeds import SEED_SCHEME, derive_bytes, root_seed_from_bytes
from ledger.store.store import Store
from ledger.verify import verify
from replay.causes import Cause, explain_output, library_differences
from replay.context import ReplayContext
from replay.datasets import load_registered_dataset
from replay.registry import Redraw, hint, load_plugins, replayer_for

NOT_DRAWS = frozenset({EXPERIMENT_CREATED, METRIC, CHECKPOINT, RUN_COMPLETED, RUN_RESUMED})
"""Kinds with nothing to re-execute from the ledger alone (compared by ``--full``)."""
CHUNK_EVENTS = 64


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first event whose re-execution did not match, and why."""

    exp: str
    stream: str
    seq: int
    kind: str
    path: list[Any]
    field: str
    expected: bytes | None
    actual: bytes | None
    cause: Cause
    detail: str

    def describe(self) -> str:
        """One line for humans."""
        path = "/".join(str(label) for label in self.path) or "-"
        return (f"{self.exp} {self.stream}#{self.seq} {self.kind} [{path}]: {self.cause.value} "
                f"({self.field} expected {_hex(self.expected)}, got {_hex(self.actual)}) — "
                f"{self.detail}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (digests as hex)."""
        return {"exp": self.exp, "stream": self.stream, "seq": self.seq, "kind": self.kind,
                "path": self.path, "field": self.field, "expected": _hex(self.expected),
                "actual": _hex(self.actual), "cause": self.cause.value, "detail": self.detail}


@dataclass(slots=True)
class ReplayReport:
    """The outcome of a replay: certified or diverged, with everything an auditor needs."""

    exp: str
    head: bytes | None
    compared: Counter = field(default_factory=Counter)
    matched: int = 0
    mismatched: int = 0
    not_draws: Counter = field(default_factory=Counter)
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
        return {"exp": self.exp, "verdict": self.verdict, "head": _hex(self.head),
                "compared": dict(sorted(self.compared.items())),
                "compared_total": sum(self.compared.values()), "matched": self.matched,
                "mismatched": self.mismatched, "not_draws": dict(sorted(self.not_draws.items())),
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


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


class _Comparer:
    """Compares re-executed digests with the recorded ones and keeps the counts."""

    def __init__(self, report: ReplayReport, recorded_env: Any, current_env: Any) -> None:
        self.report = report
        self.recorded_env = recorded_env
        self.current_env = current_env

    def compare(self, body: dict[str, Any], redraw: Redraw | None, seed_ok: bool) -> None:
        report = self.report
        report.compared[body["kind"]] += 1
        divergence = None
        if not seed_ok:
            divergence = self.divergence(body, "seed", body["seed"], None, Cause.SEED,
                                         "the recorded seed is not derive(root seed, path)")
        elif redraw is not None and body["input"] is not None and redraw.input != body["input"]:
            divergence = self.divergence(body, "input", body["input"], redraw.input, Cause.INPUT,
                                         "the data this draw read changed")
        elif redraw is not None and redraw.output != body["output"] and body["kind"] == (
                DATASET_REGISTERED):
            divergence = self.divergence(body, "output", body["output"], redraw.output,
                                         Cause.INPUT, "the dataset's content changed since the "
                                                      "run registered it")
        elif redraw is not None and redraw.output != body["output"]:
            divergence = self.divergence(body, "output", body["output"], redraw.output,
                                         Cause.OUTPUT, explain_output(self.recorded_env,
                                                                      self.current_env))
        if divergence is None:
            report.matched += 1
            return
        report.mismatched += 1
        if report.first_divergence is None:
            report.first_divergence = divergence

    def divergence(self, body: dict[str, Any], field_name: str, expected: bytes | None,
                   actual: bytes | None, cause: Cause, detail: str) -> Divergence:
        if cause is Cause.SEED:
            actual = None
        return Divergence(body["exp"], body["stream"], body["seq"], body["kind"],
                          list(body["path"]), field_name, expected, actual, cause, detail)


def _redraw(context: ReplayContext, body: dict[str, Any]) -> tuple[Redraw | None, bool]:
    """Re-execute one event: (what it produced, whether its recorded seed re-derives)."""
    seed_ok = True
    if body["seed"] is not None:
        seed_ok = derive_bytes(context.root, body["path"]) == body["seed"]
    replayer = replayer_for(body["kind"])
    if replayer is None:
        raise CannotReplayError(f"no replayer for events of kind {body['kind']!r} "
                                f"({body['stream']}#{body['seq']}): {hint()}")
    return replayer(context, body), seed_ok


# -- parallel re-execution ---------------------------------------------------------------------

_worker_context: ReplayContext | None = None


def _init_worker(context: ReplayContext | None, trusted: Sequence[str]) -> None:
    global _worker_context
    load_plugins(trusted)
    if context is not None:
        _worker_context = context


def _redraw_chunk(bodies: list[bytes]) -> list[tuple[Redraw | None, bool]]:
    assert _worker_context is not None
    return [_redraw(_worker_context, decode_body(body)) for body in bodies]


def _chunks(bodies: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for body in bodies:
        chunk.append(body)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _redraws(context: ReplayContext, bodies: Iterator[bytes], jobs: int, trusted: Sequence[str]
             ) -> Iterator[tuple[dict[str, Any], Redraw | None, bool]]:
    """Re-execute every body, in order; with ``jobs`` > 1 in worker processes."""
    if jobs <= 1:
        for body_bytes in bodies:
            body = decode_body(body_bytes)
            yield (body, *_redraw(context, body))
        return
    method = pool_start_method()
    forking = method == "fork"
    global _worker_context
    _worker_context = context  # inherited by forked workers; spawned ones rebuild below
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker,
                               initargs=(None if forking else context, tuple(trusted)))
    pending: deque[tuple[list[bytes], Future]] = deque()
    try:
        for chunk in _chunks(bodies, CHUNK_EVENTS):
            pending.append((chunk, pool.submit(_redraw_chunk, chunk)))
            while len(pending) > 4 * jobs:
                yield from _collect(*pending.popleft())
        while pending:
            yield from _collect(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(chunk: list[bytes], future: Future
             ) -> Iterator[tuple[dict[str, Any], Redraw | None, bool]]:
    for body_bytes, (redraw, seed_ok) in zip(chunk, future.result()):
        yield decode_body(body_bytes), redraw, seed_ok


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

    database = store.engine.url.database if store.backend == "sqlite" else None
    return default_data_dir(database if database not in (None, "", ":memory:") else None)


def replay_run(store: Store, exp: str, *, jobs: int = 1, trusted: Sequence[str] = (),
               data_dir: str | os.PathLike[str] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Replay ``exp`` from ``store``: certify it, or name its first divergence and cause.

    Raises UnknownExperimentError (exit 2) for an unknown id, CheckFailedError (exit 1) when the
    ledger fails verification — it is then not replayed — and CannotReplayError (exit 3) when
    data or code is missing or not allowed.
    """
    store.experiment(exp)
    checked = verify(store, exp)
    if not checked.ok:
        raise CheckFailedError(f"ledger fails verification, not replayed: "
                               f"{checked.findings[0].describe()}")
    report = ReplayReport(exp, store.first_event_hash(exp, RUN_COMPLETED), jobs=jobs,
                          replayed_by=f"{getpass.getuser()}@{socket.gethostname()}",
                          started_t=time.time_ns())
    report.plugins = load_plugins(trusted)
    root, created = recorded_start(store, exp)
    report.environment = environment_fingerprint()
    recorded_env = created.get("environment")
    report.environment_differences = library_differences(recorded_env, report.environment)
    context = ReplayContext(root, Path(data_dir) if data_dir else default_data_dir_of(store))
    comparer = _Comparer(report, recorded_env, report.environment)
    total = sum(store.counts_by_kind(exp).values())
    done = 0
    for stream, _seq, kind, body_bytes in store.iter_run_bodies(exp):
        if kind == DATASET_REGISTERED and stream != AUDIT_STREAM:
            body = decode_body(body_bytes)
            comparer.compare(body, load_registered_dataset(context, body), True)
            done += 1
    if report.first_divergence is not None:  # changed data: every later draw would differ
        report.finished_t = time.time_ns()
        return report
    draws = (body for stream, _seq, kind, body in store.iter_run_bodies(exp)
             if kind not in NOT_DRAWS and kind != DATASET_REGISTERED and stream != AUDIT_STREAM)
    for body, redraw, seed_ok in _redraws(context, draws, jobs, trusted):
        comparer.compare(body, redraw, seed_ok)
        done += 1
        if on_progress is not None and done % 1000 == 0:
            on_progress(done, total)
    for kind, count in store.counts_by_kind(exp).items():
        if kind in NOT_DRAWS:
            report.not_draws[kind] = count
    report.finished_t = time.time_ns()
    return report


def record_replay(store: Store, report: ReplayReport) -> None:
    """Record the replay's certificate in the experiment's audit stream (for its history)."""
    certificate = report.to_json()
    record_audit(store, report.exp, REPLAY_RECORDED, certificate,
                 output=value_digest(certificate),
                 meta={"pid": os.getpid(), "host": socket.gethostname()})
