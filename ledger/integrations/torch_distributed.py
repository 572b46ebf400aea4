"""PyTorch ``torch.distributed``: one experiment for every rank of a job.

Rank 0 creates the experiment and records to ``main``; rank r attaches with stream ``rank-r``;
rank 0 records ``run_completed`` after every rank has flushed and closed its stream. Re-exported
by :mod:`ledger.integrations.torch`, where the rest of the PyTorch integration lives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ledger.datasets import Dataset
from ledger.errors import StoreError
from ledger.experiment import Experiment, ExperimentManager
from ledger.integrations.runs import AttachedRun

Run = Experiment | AttachedRun
"""What the PyTorch integration records into: an experiment, or a rank's attached stream."""

__all__ = ["barrier", "distributed_experiment", "rank_stream", "register_dataset"]


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
    device = _device(group)
    flag = torch.tensor([1 if failed else 0], dtype=torch.int64, device=device)
    flags = [torch.zeros(1, dtype=torch.int64, device=device)
             for _ in range(dist.get_world_size(group))]
    dist.all_gather(flags, flag, group=group)
    return [rank for rank, value in enumerate(flags) if int(value.item())]


def rank_stream(rank: int) -> str:
    """The stream of rank ``rank`` > 0 (rank 0 records to ``main``)."""
    return f"rank-{rank}"


@contextlib.contextmanager
def distributed_experiment(name: str, *, url: str | None = None, seed: int | None = None,
                           data_dir: str | os.PathLike[str] | None = None,
                           exp_id: str | None = None, group: Any = None,
                           **create: Any) -> Iterator[Run]:
    """One experiment for every rank of a ``torch.distributed`` job; call it on every rank.

    Rank 0 creates the experiment (``ExperimentManager(url).create_experiment(name, seed=…,
    exp_id=…, **create)``) and yields it; its id reaches the other ranks by a broadcast, and
    rank r yields an :class:`AttachedRun` recording to stream ``rank-r``. Leaving the block,
    every rank flushes and closes its stream, then all meet (a collective), then rank 0 records
    ``run_completed`` with every stream's count and head — status ``failed`` if any rank's block
    raised. ``url`` defaults to ``$LEDGER_URL`` (a PostgreSQL ledger every machine reaches).
    Without an initialised process group it is a plain single-process experiment.
    """
    rank, world = _world(group)
    manager: ExperimentManager | None = None
    run: Run
    if rank == 0:
        try:
            manager = ExperimentManager(url, data_dir=data_dir)
            try:
                run = manager.create_experiment(name, seed=seed, exp_id=exp_id, **create)
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
                raise StoreError("rank 0 could not create the experiment (its error says why)")
            try:
                run = AttachedRun.open(url, shared, rank_stream(rank))
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
        _finish(run, manager, rank, world, group, failure)


def _finish(run: Run, manager: ExperimentManager | None, rank: int, world: int, group: Any,
            failure: BaseException | None) -> None:
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
                if failure is not None:
                    run.close("failed", " ".join(f"{type(failure).__name__}: {failure}".split())
                              [:500])
                elif closing_error is not None:
                    run.close("failed", " ".join(
                        f"the ranks could not meet to finish (a rank failed): "
                        f"{type(closing_error).__name__}: {closing_error}".split())[:500])
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


def register_dataset(run: Run, name: str, features: Any = None, labels: Any = None, *,
                     group: Any = None, **options: Any) -> Dataset:
    """Register a dataset on every rank (call on all): rank 0 records ``dataset_registered``
    and flushes, then — after a barrier — the other ranks find it by name and digest."""
    dataset = None
    if isinstance(run, Experiment):
        dataset = run.register_dataset(name, features, labels, **options)
        run.flush()
    barrier(group)
    if dataset is None:
        dataset = run.register_dataset(name, features, labels, **options)
    return dataset


