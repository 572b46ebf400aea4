"""A rank of a 2-rank gloo job that checkpoints each epoch and resumes from its last checkpoint.

Module level and importable (a ``spawn`` start method imports it in each rank). The job trains
the DDP model of :mod:`torch_helpers` on a recorded DataLoader (2 forked workers, the ``jitter``
transform, registered there: replay trusts ``torch_helpers``). Each rank writes its progress,
one flushed line per point, to ``OUT/rank-R.progress`` — ``point N LABEL``, N counting from 1 in
this process — for the test that kills it: ``started`` in the block, ``registered`` (the
dataset), ``model`` (DDP built), ``batch E B`` after each step, ``metric E`` and
``checkpoint-logged E`` and ``saved E`` once the epoch's checkpoint file is written (rank 0),
``epoch-end E`` (rank 1), ``restored E`` when a resumed rank loaded its checkpoint. With
``pause_at`` N a rank writes ``paused`` after its point N and waits there to be killed.

Rank 0 creates the run (``exp`` None) or resumes it (``distributed_experiment(...,
resume=exp)``), writes its id to ``OUT/exp``, and at each epoch's end logs the loss metric and a
ledger checkpoint, then — every rank's events flushed (``flush_ranks``) — writes model,
optimiser and epoch atomically to ``CKPT/checkpoint.pt``,
which a resumed job loads on every rank (the file is the user's, the ledger knows nothing of
it). At the end rank 0 writes ``OUT/result``: the run id and the final weights' digest.

``loader_state_rank`` is a rank of another job, stopped mid-epoch with each rank's
``RecordedDataLoader.state_dict()`` saved, and resumed from those states
(``tests/test_distributed_loader_state.py``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch

import torch_helpers
from ledger.experiment import state_digest
from ledger.integrations.torch import (RecordedDataLoader, RecordedTransform,
                                       distributed_experiment, flush_ranks, manual_seed,
                                       register_dataset)

NAME = "ddp-resume"
CHECKPOINT = "checkpoint.pt"
SAMPLES = 256
BATCH = 32


class Progress:
    """Numbered progress lines in ``OUT/rank-R.progress``; waits after point ``pause_at``."""

    def __init__(self, out_dir: Path, rank: int, pause_at: int | None) -> None:
        self.file = (out_dir / f"rank-{rank}.progress").open("a", encoding="utf-8")
        self.count = 0
        self.pause_at = pause_at

    def point(self, label: str) -> None:
        self.count += 1
        self.file.write(f"point {self.count} {label}\n")
        self.file.flush()
        if self.count == self.pause_at:
            self.file.write("paused\n")
            self.file.flush()
            time.sleep(600)


def save_checkpoint(folder: Path, model: torch.nn.Module, optimiser: Any, epoch: int) -> None:
    """Write the job's state after ``epoch`` to ``folder/checkpoint.pt`` atomically (a kill
    leaves the previous file or this one)."""
    partial = folder / f"{CHECKPOINT}.partial"
    with partial.open("wb") as file:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "epoch": epoch}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, folder / CHECKPOINT)


def resumable_rank(rank: int, world: int, init_file: str, url: str, data_dir: str,
                   out_dir: str, checkpoint_dir: str, seed: int, epochs: int, exp: str | None,
                   pause_at: int | None, on_failure: str = "suspend") -> None:
    """One rank of the job (see the module docstring)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    out, folder = Path(out_dir), Path(checkpoint_dir)
    progress = Progress(out, rank, pause_at)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        with distributed_experiment(NAME, url=url, seed=seed, data_dir=data_dir,
                                    hyperparams={"epochs": epochs}, resume=exp,
                                    on_failure=on_failure) as run:
            if rank == 0:
                (out / "exp").write_text(run.id)
            progress.point("started")
            dataset = register_dataset(run, "fraud", *torch_helpers.fraud_arrays(SAMPLES))
            progress.point("registered")
            loader = RecordedDataLoader(run, dataset, BATCH, num_workers=2,
                                        transform=RecordedTransform("jitter", std=0.05),
                                        persistent_workers=True, multiprocessing_context="fork")
            if rank == 0:
                manual_seed(run, "model", "init")
            model = torch.nn.parallel.DistributedDataParallel(torch_helpers.small_model())
            optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            progress.point("model")
            start = 0
            if exp is not None and (folder / CHECKPOINT).exists():
                saved = torch.load(folder / CHECKPOINT, weights_only=True)
                model.module.load_state_dict(saved["model"])
                optimiser.load_state_dict(saved["optimiser"])
                start = saved["epoch"] + 1
                progress.point(f"restored {saved['epoch']}")
            for epoch in range(start, epochs):
                loader.set_epoch(epoch)
                loss = torch.zeros(())
                for batch, (x, y) in enumerate(loader):
                    optimiser.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimiser.step()
                    progress.point(f"batch {epoch} {batch}")
                if rank == 0:
                    run.log_metric("loss", loss.item(), epoch=epoch)
                    progress.point(f"metric {epoch}")
                    run.log_checkpoint("model", model.module.state_dict(), epoch=epoch)
                    progress.point(f"checkpoint-logged {epoch}")
                flush_ranks(run)  # the file written next is never ahead of the ledger
                if rank == 0:
                    save_checkpoint(folder, model.module, optimiser, epoch)
                progress.point(f"saved {epoch}" if rank == 0 else f"epoch-end {epoch}")
            if rank == 0:
                (out / "result").write_text(
                    f"{run.id} {state_digest(model.module.state_dict()).hex()}")
            progress.point("done")
    finally:
        dist.destroy_process_group()


def rank_1_dies(rank: int, world: int, init_file: str, url: str, out_dir: str, exp: str | None,
                on_failure: str) -> None:
    """Rank 1 records a draw and dies inside the block (``exp`` None: the first attempt);
    rank 0 ends its block normally and meets a process group the dead rank broke. Resumed
    (``exp`` given), both ranks redo the draw and end normally. Rank 0 writes the run id to
    ``OUT/exp``; each rank the error it got leaving the block (or "no error") to ``OUT/rank-R``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    outcome = "no error"
    try:
        with distributed_experiment("ddp-dies", url=url, seed=3, resume=exp,
                                    on_failure=on_failure) as run:
            if rank == 0:
                Path(out_dir, "exp").write_text(run.id)
            run.record_draw("coin_flip", ("rank", rank, "coin"), seed=b"\x01" * 16,
                            params={"rank": rank}, output=b"\x02" * 32)
            if rank == 1 and exp is None:
                run.flush()
                os._exit(3)
            time.sleep(1 if exp is None else 0)  # rank 1 is gone by now
    except Exception as error:  # noqa: BLE001 - written for the test to read
        outcome = f"{type(error).__name__}: {error}"
    finally:
        Path(out_dir, f"rank-{rank}").write_text(outcome)
        dist.destroy_process_group()


def quick_job(rank: int, world: int, init_file: str, url: str, out_dir: str) -> None:
    """A job that builds its DDP model and leaves the block at once (a resumed job with no
    epoch left to train), then frees the model — and with it the process group its reducer
    holds — straight away. The interpreter's switch interval is raised, so that the main thread
    gives the GIL up only when it blocks: the rank deadlocked at the model's release whenever
    gloo's worker thread had not yet let go of the ranks' last meeting (it needs the GIL for
    that). Each rank writes ``done`` to ``OUT/rank-R`` once past it."""
    import sys

    import torch.distributed as dist

    sys.setswitchinterval(30.0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    model = torch.nn.parallel.DistributedDataParallel(torch_helpers.small_model())
    with distributed_experiment("quick", url=url, seed=3):
        pass
    dist.destroy_process_group()
    del model
    Path(out_dir, f"rank-{rank}").write_text("done")


class Preempted(Exception):
    """What a rank of :func:`loader_state_rank` raises in its block once its loader state is
    saved: the job stops mid-epoch (``on_failure="suspend"`` leaves the run incomplete)."""


LOADER_STATE_EPOCHS = 3
LOADER_STATE_BATCH = 24
"""128 samples per rank: 6 batches an epoch, the last one of 8 rows."""


def batch_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """A batch bit for bit: the bytes, dtypes and shapes of its features and labels."""
    digest = hashlib.sha256()
    for tensor in (x, y):
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def loader_state_rank(rank: int, world: int, init_file: str, url: str, data_dir: str,
                      out_dir: str, state_dir: str, exp: str | None, workers: int,
                      stop_after: tuple[int, int] | None, go_on: int = 0) -> None:
    """One rank of a job that only iterates a recorded DataLoader (the ``jitter`` transform,
    ``workers`` workers) for LOADER_STATE_EPOCHS epochs, writing ``E B DIGEST`` for each batch
    it is handed to ``OUT/rank-R.batches``. With ``stop_after`` ``(E, N)`` it saves
    ``loader.state_dict()`` to ``STATE_DIR/loader-rank-R.pt`` (atomically) once it was handed
    N batches of epoch E, and raises :class:`Preempted` in the block ``go_on`` batches later
    (the lost attempt recorded them after its state was saved). ``exp`` given, the job
    resumes it (``resume=exp``) and every rank restores its loader from its state file. Rank 0
    writes the run id to ``OUT/exp``; each rank writes how its block ended to ``OUT/rank-R``
    (``done``, ``preempted``, or the error)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    out, states = Path(out_dir), Path(state_dir)
    saved = states / f"loader-rank-{rank}.pt"
    outcome = "done"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        with distributed_experiment("ddp-loader-state", url=url, seed=91, data_dir=data_dir,
                                    hyperparams={"epochs": LOADER_STATE_EPOCHS}, resume=exp,
                                    on_failure="suspend") as run, \
                (out / f"rank-{rank}.batches").open("w", encoding="utf-8") as lines:
            if rank == 0:
                (out / "exp").write_text(run.id)
            dataset = register_dataset(run, "fraud", *torch_helpers.fraud_arrays(SAMPLES))
            options: dict[str, Any] = ({"num_workers": workers, "persistent_workers": True,
                                        "multiprocessing_context": "fork"} if workers else {})
            loader = RecordedDataLoader(run, dataset, LOADER_STATE_BATCH,
                                        transform=RecordedTransform("jitter", std=0.05),
                                        **options)
            restored = (0, 0)
            if exp is not None:
                state = torch.load(saved, weights_only=True)["loader"]
                loader.load_state_dict(state)
                restored = (state["epoch"], state["batch"])
            for epoch in range(loader.next_epoch, LOADER_STATE_EPOCHS):
                loader.set_epoch(epoch)
                first = restored[1] if epoch == restored[0] else 0
                for batch, (x, y) in enumerate(loader, start=first):
                    lines.write(f"{epoch} {batch} {batch_digest(x, y)}\n")
                    if stop_after == (epoch, batch + 1):
                        partial = saved.with_suffix(".partial")
                        torch.save({"loader": loader.state_dict()}, partial)
                        os.replace(partial, saved)
                    if stop_after == (epoch, batch + 1 - go_on):
                        raise Preempted(f"stopped after batch {batch} of epoch {epoch}")
    except Preempted:
        outcome = "preempted"
    except BaseException as error:
        outcome = f"{type(error).__name__}: {error}"
        raise
    finally:
        Path(out_dir, f"rank-{rank}").write_text(outcome)
        dist.destroy_process_group()
