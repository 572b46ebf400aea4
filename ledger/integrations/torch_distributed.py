"""PyTorch ``torch.distributed``: one experiment for every rank of a job.

Rank 0 creates the experiment and records to ``main``; rank r attaches with stream ``rank-r``;
rank 0 records ``run_completed`` after every rank has flushed and closed its stream. A job
restarted after a failure (torchrun ``--max-restarts``) continues the same run with ``resume=``:
rank 0 resumes it, every other rank attaches to its stream again, and the draws the streams
already hold are checked, not recorded twice. Re-exported by :mod:`ledger.integrations.torch`,
where the rest of the PyTorch integration lives.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from ledger.canonical import normalise
from ledger.datasets import Dataset
from ledger.errors import BadInputError, StoreError
from ledger.events import AUGMENTATION_BATCH, EXPERIMENT_CREATED, WORKER_SPAWNED, decode_body
from ledger.experiment import Experiment, ExperimentManager
from ledger.integrations.runs import AttachedRun
from ledger.seeds import check_root_seed, root_seed_from_bytes
from ledger.store import Store
from ledger.text import run_error

Run = Experiment | AttachedRun
"""What the PyTorch integration records into: an experiment, or a rank's attached stream."""

__all__ = ["barrier", "distributed_experiment", "flush_ranks", "rank_stream", "register_dataset"]

SETTLE_WAIT = 5.0
"""Longest wait for gloo's worker threads to let go of a finished collective's tensors."""

ON_FAILURE = ("fail", "suspend")
"""What rank 0 does with the run when a rank's block failed: complete it ``failed``, or leave it
incomplete (suspended) for a restarted job to resume."""


def _world(group: Any = None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _device(group: Any = None) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else (
        torch.device("cpu"))


def _broadcast_id(exp: str | None, group: Any = None) -> str:
    buffer = torch.zeros(65, dtype=torch.uint8, device=_device(group))
    if exp is not None:
        encoded = exp.encode("ascii")
        buffer[0] = len(encoded)
        buffer[1:1 + len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
    source = 0 if group is None else dist.get_global_rank(group, 0)
    dist.broadcast(buffer, src=source, group=group)
    values = buffer.cpu().tolist()
    return bytes(values[1:1 + values[0]]).decode("ascii")


def _gather_failures(failed: bool, group: Any = None) -> list[int]:
    """Every rank's outcome (which ranks failed), from an all-gather that each rank joins."""
    device = _device(group)
    flag = torch.tensor([1 if failed else 0], dtype=torch.int64, device=device)
    flags = [torch.zeros(1, dtype=torch.int64, device=device)
             for _ in range(dist.get_world_size(group))]
    dist.all_gather(flags, flag, group=group)
    _settle([flag, *flags])
    return [rank for rank, value in enumerate(flags) if int(value.item())]


def _settle(tensors: list[torch.Tensor]) -> None:
    """Wait until the process group's worker threads have let go of ``tensors`` (a bounded
    wait, the GIL released).

    Gloo's worker thread frees a finished work — and the tensors Python gave it, which takes the
    GIL — a moment after the caller's wait returned. When the process group is destroyed in that
    moment (the job leaves right after the ranks met to finish, and the DDP model that still
    holds the group is freed), its destructor joins that thread while holding the GIL: a
    deadlock, the process hanging at exit (1 job in 10 in a loop of 2-rank jobs that leave at
    once). Once no C++ object holds the tensors, there is nothing left for that thread to free.
    """
    deadline = time.monotonic() + SETTLE_WAIT
    # torch's private _use_count, untyped in its stubs (without torch, mypy sees Any: unused)
    while (any(tensor._use_count() > 1  # type: ignore[attr-defined, unused-ignore]
               for tensor in tensors) and time.monotonic() < deadline):
        time.sleep(0.001)


def rank_stream(rank: int) -> str:
    """The stream of rank ``rank`` > 0 (rank 0 records to ``main``)."""
    return f"rank-{rank}"


@contextlib.contextmanager
def distributed_experiment(name: str, *, url: str | None = None, seed: int | None = None,
                           data_dir: str | os.PathLike[str] | None = None,
                           exp_id: str | None = None, group: Any = None,
                           resume: str | None = None, take_over: bool = False,
                           on_failure: str = "fail", **create: Any) -> Iterator[Run]:
    """One experiment for every rank of a ``torch.distributed`` job; call it on every rank.

    Rank 0 creates the experiment (``ExperimentManager(url).create_experiment(name, seed=…,
    exp_id=…, **create)``) and yields it; its id reaches the other ranks by a broadcast, and
    rank r yields an :class:`AttachedRun` recording to stream ``rank-r``. Leaving the block,
    every rank flushes and closes its stream, then all meet (a collective), then rank 0 records
    ``run_completed`` with every stream's count and head — status ``failed`` if any rank's block
    raised. ``url`` defaults to ``$LEDGER_URL`` (a PostgreSQL ledger every machine reaches).
    Without an initialised process group it is a plain single-process experiment.

    ``resume=EXP`` continues the incomplete run ``EXP`` instead (a job restarted after a
    failure): rank 0 resumes it (``resume_experiment(EXP, take_over=…)``), rank r attaches to
    ``rank-r`` again (``take_over`` too), and every draw, metric and checkpoint the run holds
    is checked when the job reaches it again, not recorded twice. Refused before anything is
    recorded, on every rank: an unknown or completed run, another ``name``, ``seed`` or
    ``hyperparams`` than the run recorded, ``exp_id`` (the run has one), and a world size
    other than the one the run's ranks recorded their draws with (see
    :func:`check_resumable`). ``on_failure="suspend"`` leaves the run incomplete instead of
    completing it ``failed`` when a rank's block raised or a rank died: what a job that torchrun
    may restart wants, since a completed run cannot be resumed.
    """
    rank, world = _world(group)
    _check_options(resume, exp_id, take_over, on_failure)
    manager: ExperimentManager | None = None
    run: Run
    if rank == 0:
        try:
            manager = ExperimentManager(url, data_dir=data_dir)
            try:
                run = _start(manager, name, seed, exp_id, resume, take_over, world, create)
            except BaseException:
                manager.close()
                raise
        except BaseException:
            if world > 1:  # an empty id tells the other ranks, which would wait for it
                _broadcast_id(None, group)
            raise
    if world > 1:
        shared = _broadcast_id(run.id if rank == 0 else None, group)
        if rank != 0:
            if not shared:
                raise StoreError(f"rank 0 could not {'resume' if resume else 'create'} the "
                                 f"experiment (its error says why)")
            try:
                run = AttachedRun.open(url, shared, rank_stream(rank), take_over=take_over)
            except BaseException:
                _gather_failures(True, group)  # rank 0 meets every rank there when it finishes
                raise
    failure: BaseException | None = None
    try:
        yield run
    except BaseException as problem:
        failure = problem
        raise
    finally:
        _finish(run, manager, rank, world, group, failure, on_failure)


def _check_options(resume: str | None, exp_id: str | None, take_over: bool,
                   on_failure: str) -> None:
    """Refuse keyword combinations that cannot mean anything, on every rank alike (before any
    collective, so that no rank waits for another that refused)."""
    if on_failure not in ON_FAILURE:
        raise BadInputError(f"got on_failure={on_failure!r}, but must be one of {ON_FAILURE}")
    if not isinstance(take_over, bool):
        raise BadInputError(f"got take_over={take_over!r}, but must be a bool")
    if resume is not None and exp_id is not None:
        raise BadInputError(f"got exp_id={exp_id!r} with resume={resume!r}, but a resumed run "
                            f"keeps its own id: give resume alone")
    if resume is None and take_over:
        raise BadInputError("got take_over=True without resume: only a resumed run has streams "
                            "to take over")


def _start(manager: ExperimentManager, name: str, seed: int | None, exp_id: str | None,
           resume: str | None, take_over: bool, world: int, create: dict[str, Any]
           ) -> Experiment:
    """Rank 0's experiment: created, or — with ``resume`` — checked, then resumed."""
    if resume is None:
        return manager.create_experiment(name, seed=seed, exp_id=exp_id, **create)
    check_resumable(manager.store, resume, name=name, seed=seed,
                    hyperparams=create.get("hyperparams"), world=world)
    return manager.resume_experiment(resume, take_over=take_over,
                                     code_dir=create.get("code_dir"))


def check_resumable(store: Store, exp: str, *, name: str, seed: int | None,
                    hyperparams: Any, world: int) -> None:
    """Refuse (``BadInputError``; ``UnknownExperimentError`` for an unknown id) to resume
    ``exp`` as a distributed job of ``world`` ranks started with ``name``, ``seed`` and
    ``hyperparams`` (None: not given) when that job is not the one that recorded the run.

    The world size counts when the run's ranks recorded draws with it: a rank's batches are
    its share of the data, so another world would redo the recorded epochs with other shares
    (the run holding an epoch twice, shared two ways, or a redone batch refused mid-training)
    and could leave a stream ``rank-r`` that no rank continues.
    The world is read from the streams ``rank-r`` the run has and the ``num_replicas`` their
    ``worker_spawned`` and ``augmentation_batch`` draws name; a run whose ranks recorded no
    draw yet may be resumed with any world. Completion and verification are
    ``resume_experiment``'s to check."""
    store.require_experiment(exp)
    created = store.first_event_body(exp, EXPERIMENT_CREATED)
    params = created["params"] if created and isinstance(created.get("params"), dict) else {}
    if params.get("name") != name:
        raise BadInputError(f"got name {name!r}, but {exp} is the run {params.get('name')!r}: "
                            f"resume a run with the name it was created with")
    recorded_seed = params.get("root_seed")
    if (seed is not None and isinstance(recorded_seed, bytes)
            and check_root_seed(seed) != root_seed_from_bytes(recorded_seed)):
        raise BadInputError(f"got seed {seed}, but {exp} was created with another root seed: "
                            f"resume it with its own seed (or none)")
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise BadInputError(f"got hyperparams of type {type(hyperparams).__name__}, but must "
                            f"be a map (dict) of names to values")
    if hyperparams is not None and normalise(dict(hyperparams)) != params.get("hyperparams"):
        raise BadInputError(f"got hyperparams {dict(hyperparams)!r}, but {exp} was created with "
                            f"{params.get('hyperparams')!r}: resume it with the same ones")
    recorded = recorded_world(store, exp)
    if recorded is not None and recorded != world:
        raise BadInputError(f"got a world of {world} rank(s), but the ranks of {exp} recorded "
                            f"their draws as a world of {recorded}: resume it with "
                            f"{recorded} ranks")


def recorded_world(store: Store, exp: str) -> int | None:
    """The world size the ranks r > 0 of ``exp`` recorded their draws with — the
    ``num_replicas`` of their first ``worker_spawned`` or ``augmentation_batch`` (a rank r > 0
    shares the data among the world), at least one more than the highest rank with a stream —
    or None when no rank r > 0 recorded anything."""
    ranks = [int(stream.removeprefix("rank-")) for stream in store.stream_heads(exp)
             if _is_rank_stream(stream)]
    if not ranks:
        return None
    for stream, _seq, kind, body in store.iter_kind_bodies(exp, [WORKER_SPAWNED,
                                                                 AUGMENTATION_BATCH]):
        if _is_rank_stream(stream):
            params = decode_body(body)["params"]
            sampler = params.get("sampler") if kind == AUGMENTATION_BATCH else params
            shared = sampler.get("num_replicas") if isinstance(sampler, dict) else None
            if isinstance(shared, int):
                return max(max(ranks) + 1, shared)
    return max(ranks) + 1


def _is_rank_stream(stream: str) -> bool:
    """Whether ``stream`` is a rank's (``rank-r``, r ≥ 1, as :func:`rank_stream` names it)."""
    number = stream.removeprefix("rank-")
    return (stream.startswith("rank-") and number.isdigit() and int(number) > 0
            and rank_stream(int(number)) == stream)


def _finish(run: Run, manager: ExperimentManager | None, rank: int, world: int, group: Any,
            failure: BaseException | None, on_failure: str = "fail") -> None:
    closing_error: BaseException | None = None
    if rank != 0:
        try:
            run.close()
        except BaseException as problem:
            closing_error = problem
    failed_ranks: list[int] = []
    try:
        if world > 1:
            failed_ranks = _gather_failures(failure is not None or closing_error is not None,
                                            group)
    except Exception as broken:  # noqa: BLE001 - a rank that died took the process group down
        closing_error = closing_error or broken
    try:
        if rank == 0:
            assert isinstance(run, Experiment)  # rank 0 created the experiment
            if not run.closed:
                if on_failure == "suspend" and (failure is not None or closing_error is not None
                                                or failed_ranks):
                    run.suspend()  # left incomplete: the restarted job resumes it
                elif failure is not None:
                    run.close("failed", run_error(failure))
                elif closing_error is not None:
                    prefix = "the ranks could not meet to finish (a rank failed): "
                    run.close("failed", prefix + run_error(closing_error, 500 - len(prefix)))
                elif failed_ranks:
                    run.close("failed", f"rank(s) {failed_ranks} failed")
                else:
                    run.close("ok")
    finally:
        if manager is not None:
            manager.close()
    if closing_error is not None and failure is None:
        raise closing_error


def barrier(group: Any = None) -> None:
    """A ``torch.distributed`` barrier when a process group is initialised; else nothing."""
    if _world(group)[1] > 1:
        dist.barrier(group=group)


def flush_ranks(run: Run, group: Any = None) -> None:
    """Flush this rank's stream, then wait until every rank has flushed its own (a barrier);
    call it on every rank before writing a checkpoint file.

    A rank's events reach the ledger in batches, so a process killed just after writing its
    checkpoint can lose the events that led up to it: the job resumed from that checkpoint never
    redoes them, and the run is left with a hole (a lost metric, a rank's lost batches).
    Once this returns, every rank's events up to here are durable: a checkpoint written after it
    is never ahead of the ledger."""
    run.flush()
    barrier(group)


def register_dataset(run: Run, name: str, features: Any = None, labels: Any = None, *,
                     group: Any = None, **options: Any) -> Dataset:
    """Register a dataset on every rank (call on all): rank 0 records ``dataset_registered``
    and flushes, then — once the ranks meet — the other ranks find it by name and digest.

    A rank that fails (rank 0 cannot store the data, another rank holds other data) still
    meets the others, twice, so every rank raises here — the failing rank its own error, the
    others a StoreError naming it — instead of one rank leaving for its block's end while the
    others wait for it in a collective until the process group's timeout."""
    dataset = None
    problem: Exception | None = None
    if isinstance(run, Experiment):
        try:
            dataset = run.register_dataset(name, features, labels, **options)
            run.flush()
        except Exception as error:  # noqa: BLE001 - raised below, once every rank has met
            problem = error
    if _meet(problem, group):
        raise StoreError(f"rank 0 could not register dataset {name!r} (its error says why)")
    if dataset is None:
        try:
            dataset = run.register_dataset(name, features, labels, **options)
        except Exception as error:  # noqa: BLE001 - raised below, once every rank has met
            problem = error
    failed = _meet(problem, group)
    if failed:
        raise StoreError(f"rank(s) {failed} could not register dataset {name!r} (their errors "
                         f"say why)")
    assert dataset is not None
    return dataset


def _meet(problem: Exception | None, group: Any = None) -> list[int]:
    """Every rank tells the others whether it failed (``problem``): raise it on a rank that
    did; return the ranks that did on the others."""
    failed = _gather_failures(problem is not None, group) if _world(group)[1] > 1 else []
    if problem is not None:
        raise problem
    return failed


