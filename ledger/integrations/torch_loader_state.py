"""The state of a RecordedDataLoader: where it stands in an epoch, and what its batches depend
on, as a small plain map that ``json``, ``torch.save`` (and ``torch.load(weights_only=True)``)
and ``ledger.canonical`` all take — so a trainer preempted mid-epoch saves it beside its model
weights and continues at the next batch, in a fresh loader and a fresh process. Part of
:mod:`ledger.integrations.torch`; the model is :meth:`TrainingDataIterator.state_dict`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NoReturn

from ledger.arguments import MAX_EPOCH
from ledger.canonical import canonical
from ledger.errors import BadInputError, ForeignStateError, StateAheadError
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET
from ledger.integrations.runs import AttachedRun
from ledger.integrations.sharding import rank_augment_path
from ledger.iterator import checked_logged, checked_saved_by
from ledger.sampling import shuffle_path
from ledger.text import quoted

STATE_FORMAT = "ledger/torch-loader-state/v1"

SETTING_KEYS = ("root_seed", "dataset_digest", "batch_size", "shuffle", "drop_last",
                "num_replicas", "rank", "transform")
"""The settings a loader's batches depend on: a state saved under others is refused."""

TRANSFORM_TAG = b"ledger/torch-transform-spec/v1\x00"


def transform_digest(spec: Mapping[str, Any] | None) -> str:
    """The hex digest of a transform's recorded spec (name, version, ``per``, parameters); the
    empty string without a transform. A digest, not the spec: parameters may be floats or
    bytes, and the state holds ints, bools and strs only."""
    if spec is None:
        return ""
    return hashlib.sha256(TRANSFORM_TAG + canonical(dict(spec))).hexdigest()


def check_position(state: Mapping[str, Any], batches: int) -> tuple[int, int]:
    """The state's ``(epoch, batch)``: ints (not bools) with ``0 <= epoch < 2**64`` and
    ``0 <= batch <= batches``, the epoch's batch count. BadInputError for anything else."""
    epoch, batch = state.get("epoch"), state.get("batch")
    if (type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH or type(batch) is not int
            or not 0 <= batch <= batches or (batch == batches and epoch == MAX_EPOCH)):
        raise BadInputError(f"got position epoch={epoch!r} batch={batch!r}, but must be a "
                            f"position within {batches} batches per epoch")
    return epoch, batch


def check_settings(state: Any, mine: Mapping[str, Any]) -> None:
    """Refuse a state that is not a loader state of this format, or that was saved under
    other settings than ``mine`` — compared with their types, so a ``batch_size`` of ``4.0``
    or a ``shuffle`` of ``1`` is not this loader's ``4`` or ``True``."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise BadInputError(f"got {type(state).__name__} state, but must be a state_dict of "
                            f"format {STATE_FORMAT}")
    for key in SETTING_KEYS:
        saved = state.get(key)
        if type(saved) is not type(mine[key]) or saved != mine[key]:
            raise BadInputError(f"got a state saved with {key}={_shown(saved)}, but this "
                                f"loader has {key}={_shown(mine[key])}")


def _shown(value: Any) -> str:
    """A setting as an error shows it: a digest by its start."""
    if isinstance(value, str) and len(value) == 64:
        return value[:16] + "…"
    return repr(value)


def run_part(run: Any) -> dict[str, Any]:
    """What a recording loader's state holds of its run: the run that saved it (``run``), and
    how many metrics and checkpoints of each name and epoch the run has logged (``logged``):
    those a resumed run will not log again. The run's events are flushed first (not after
    ``suspend()``, which flushed them), so a state saved to disk is never ahead of the ledger."""
    part: dict[str, Any] = {"run": run.id}
    if not run.closed:
        run.flush()
    logs_passed = getattr(run, "logs_passed", None)  # an AttachedRun logs nothing
    if callable(logs_passed):
        part["logged"] = logs_passed()
    return part


def check_run_state(run: Any, state: Mapping[str, Any], epoch: int, batch: int, *,
                    records_batches: bool) -> None:
    """Refuse a state this recording run cannot continue, as ``TrainingDataIterator`` does:
    one saved by another run (ForeignStateError; a run may continue its parent's state,
    ``parent=``), or — in a resumed run, and on rank r > 0 (an AttachedRun, whose stream's
    record is checked) — one ahead of what the run recorded (StateAheadError); then skip the
    metrics and checkpoints logged before it."""
    logged = checked_logged(state.get("logged"))
    saved_by = checked_saved_by(state)
    parent = getattr(run, "parent", None)
    # Rank r > 0 (an AttachedRun) is checked as a resumed run always: its stream may hold what
    # a process attached to it before recorded, and it has no other sign of a resumed run.
    attached = isinstance(run, AttachedRun)
    if not (attached or getattr(run, "resumed", False)):
        if saved_by is not None and saved_by not in (run.id, parent):
            raise ForeignStateError(f"got a state saved by run {quoted(saved_by)}, but new run "
                                    f"{run.id} does not continue it: create the run with "
                                    f"parent={quoted(saved_by)} to continue that run")
        return
    if saved_by is None:
        saved_by = run.id
    if saved_by != run.id:
        if parent is None or saved_by != parent:
            continues = "" if parent is None else f" or of {parent}, which it continues"
            raise ForeignStateError(f"got a state saved by run {quoted(saved_by)}, but resumed "
                                    f"run {run.id} continues only a state of its "
                                    f"own{continues}: load the state {run.id} saved")
        return
    if parent is None:  # a child's record starts where its parent's state stood: not checked
        _check_recorded_until(run, state, epoch, batch, records_batches)
    if logged is not None and not attached:  # an AttachedRun logs nothing
        run.skip_logs_to(logged)


def _check_recorded_until(run: Any, state: Mapping[str, Any], epoch: int, batch: int,
                          records_batches: bool) -> None:
    """In a resumed run, refuse a position past what the run recorded: the shuffle of the
    state's epoch (rank 0 records it) and each of its batches handed out (recorded with a
    transform) — a state saved before its events were written would resume after draws the
    ledger never got."""
    if not batch:
        return
    if state.get("rank") == 0 and not run.has_draw(EPOCH_RESET, shuffle_path(epoch)):
        _refuse_ahead(run, epoch, batch, f"epoch {epoch}'s shuffle")
    if not records_batches:
        return
    replicas, rank = int(state["num_replicas"]), int(state["rank"])
    for done in range(batch):
        if not run.has_draw(AUGMENTATION_BATCH, rank_augment_path(replicas, rank, epoch, done)):
            _refuse_ahead(run, epoch, batch, f"batch {done} of epoch {epoch}")


def _refuse_ahead(run: Any, epoch: int, batch: int, missing: str) -> NoReturn:
    raise StateAheadError(f"got a state at epoch {epoch} batch {batch}, but {run.id} has no "
                          f"record of {missing}: the state is ahead of the ledger (events not "
                          f"yet written when it was saved were lost); resume from an earlier "
                          f"state (the run is left incomplete, to be resumed again)")
