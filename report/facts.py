"""What a report reads from the ledger besides the full pass over events (see ``scan``).

One query fetches the bodies of the few kinds a report quotes — the experiment's creation, its
datasets, workers, metrics, checkpoints, resumes, its completion and its audit trail — so a run
of a million augmentation batches costs one table scan here, not a million decodes. A body that
does not decode (a damaged ledger) is counted, never fatal: the report is still produced and R9
says what verification found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.errors import LedgerError
from ledger.experiment_info import parent_in_ledger
from ledger.events import (AUDIT_STREAM, CHECKPOINT, DATASET_REGISTERED, EXPERIMENT_CREATED,
                           MAIN_STREAM, METRIC, REPLAY_RECORDED, REPORT_EXPORTED, RUN_COMPLETED,
                           RUN_RESUMED, WORKER_SPAWNED, decode_body)
from ledger.store.store import ExperimentRow, Store, StreamHead
from report.jsonview import recorded_int
from report.metrics import MetricCurves

QUOTED_KINDS = (EXPERIMENT_CREATED, DATASET_REGISTERED, WORKER_SPAWNED, METRIC, CHECKPOINT,
                RUN_COMPLETED, RUN_RESUMED, REPLAY_RECORDED, REPORT_EXPORTED)
MAX_WORKERS_LISTED = 256


@dataclass(slots=True)
class RunFacts:
    """The quoted events of one experiment, decoded."""

    row: ExperimentRow
    heads: dict[str, StreamHead]
    run_head: bytes | None
    created: dict[str, Any] | None = None
    completed: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    """The first MAX_WORKERS_LISTED ``worker_spawned`` events."""
    worker_count: int = 0
    """Every ``worker_spawned`` event."""
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last checkpoint of each name."""
    checkpoint_count: int = 0
    metrics: MetricCurves = field(default_factory=MetricCurves)
    audit: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """The ``run_resumed`` events of main, in seq order: one per session that resumed the run."""
    suspended_ns: list[int | None] = field(default_factory=list)
    """For each of ``resumes``: how long the run was suspended before it, from the latest event
    recorded before the resume to the resume (None when the times are not recorded)."""
    undecodable: list[tuple[str, int, str]] = field(default_factory=list)
    parent_in_ledger: bool | None = None
    """Whether the recorded parent run is an experiment of this ledger (None: no parent)."""

    @property
    def params(self) -> dict[str, Any]:
        """The params of ``experiment_created`` ({} when it is missing or unreadable)."""
        params = (self.created or {}).get("params")
        return params if isinstance(params, dict) else {}


def gather(store: Store, row: ExperimentRow, heads: dict[str, StreamHead] | None = None
           ) -> RunFacts:
    """Read the quoted events of the experiment of ``row`` (from ``store.experiment(exp)``);
    ``heads`` are its ``store.stream_heads`` when the caller has them already."""
    exp = row.exp
    facts = RunFacts(row, heads if heads is not None else store.stream_heads(exp), None)
    completed_at: tuple[str, int] | None = None
    for stream, seq, kind, raw in store.iter_kind_bodies(exp, QUOTED_KINDS):
        if kind == RUN_COMPLETED and completed_at is None:
            completed_at = (stream, seq)
        try:
            body = decode_body(raw)
        except LedgerError:
            facts.undecodable.append((stream, seq, kind))
            continue
        _take(facts, stream, kind, body)
    if completed_at is not None:
        main = facts.heads.get(MAIN_STREAM)
        if (completed_at[0] == MAIN_STREAM and main is not None
                and main.count == completed_at[1] + 1):
            facts.run_head = main.head  # run_completed closes main: its hash is main's head
        else:  # something follows it (verification says what): ask for its own hash
            facts.run_head = store.first_event_hash(exp, RUN_COMPLETED)
    facts.parent_in_ledger = parent_in_ledger(store, facts.params.get("parent"))
    facts.suspended_ns = [_suspended_before(store, exp, body) for body in facts.resumes]
    return facts


def _suspended_before(store: Store, exp: str, resume: dict[str, Any]) -> int | None:
    """Nanoseconds from the latest event recorded before the ``run_resumed`` event ``resume``
    to it: the time the run was suspended (0 when clocks of other machines run ahead)."""
    seq, resumed_at = recorded_int(resume.get("seq")), recorded_int(resume.get("t"))
    if seq is None or resumed_at is None:
        return None
    before = store.latest_time_before(exp, MAIN_STREAM, seq)
    return None if before is None else max(0, resumed_at - before)


def _take(facts: RunFacts, stream: str, kind: str, body: dict[str, Any]) -> None:
    params = body["params"] if isinstance(body.get("params"), dict) else {}
    if stream == AUDIT_STREAM:
        if kind in (REPLAY_RECORDED, REPORT_EXPORTED):
            facts.audit.append(body)
    elif kind == METRIC:
        facts.metrics.add(params)
    elif kind == EXPERIMENT_CREATED:
        if facts.created is None and stream == MAIN_STREAM:
            facts.created = body
    elif kind == RUN_COMPLETED:
        # The first one in any stream, as the run head, ``ledger show`` and ``ledger list``
        # take it: one moved out of main (an edited row) is a verification finding, and the
        # report must not call the same run both incomplete and complete.
        if facts.completed is None:
            facts.completed = body
    elif kind == RUN_RESUMED:
        if stream == MAIN_STREAM:
            facts.resumes.append(body)
    elif kind == DATASET_REGISTERED:
        facts.datasets.append(body)
    elif kind == WORKER_SPAWNED:
        facts.worker_count += 1
        if len(facts.workers) < MAX_WORKERS_LISTED:
            facts.workers.append(body)
    elif kind == CHECKPOINT:
        facts.checkpoint_count += 1
        facts.checkpoints[str(params.get("name"))] = body
