"""Transforms, data, a small model and a distributed rank for the PyTorch tests.

Module level and importable, as a user's module must be: DataLoader workers started with
``spawn`` and ``torch.multiprocessing.spawn`` ranks import it, and replay trusts it by name
(``--trust torch_helpers``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ledger.experiment import state_digest
from ledger.integrations.torch import (RecordedDataLoader, RecordedTransform, distributed_experiment,
                                       flush_ranks, manual_seed, register_dataset,
                                       register_transform)

FEATURES = 12


@register_transform("jitter", version=1)
def jitter(x: torch.Tensor, generator: torch.Generator, *, std: float = 0.1) -> torch.Tensor:
    """Gaussian noise on one sample, from the sample's generator."""
    return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)


@register_transform("feature_dropout", version=1)
def feature_dropout(x: torch.Tensor, generator: torch.Generator, *, p: float = 0.2
                    ) -> torch.Tensor:
    """Zero each value of the whole batch with probability p (in place), from the batch's
    generator."""
    x[torch.rand(x.shape, generator=generator) < p] = 0
    return x


@register_transform("sign_flip", version=1, global_rng=True)
def sign_flip(x: torch.Tensor, generator: torch.Generator, *, p: float = 0.5) -> torch.Tensor:
    """A torchvision-style transform: draws from torch's global RNG, not from ``generator``."""
    return -x if torch.rand(()) < p else x


@register_transform("leaky_noise", version=1)
def leaky_noise(x: torch.Tensor, generator: torch.Generator, *, std: float = 0.1) -> torch.Tensor:
    """The original bug: ignores its generator and draws from the global RNG (unseeded here)."""
    return x + std * torch.randn(x.shape, dtype=x.dtype)


def fraud_arrays(samples: int = 1024, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A small, learnable tabular dataset: float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(samples, FEATURES)).astype(np.float32)
    weights = rng.normal(size=FEATURES)
    labels = (features @ weights + 0.3 * rng.normal(size=samples) > 0.5).astype(np.int64)
    return features, labels


def batches_digest(loader: Any, epochs: int) -> list[str]:
    """One digest per epoch of everything a loader yields."""
    digests = []
    for _ in range(epochs):
        hasher = hashlib.sha256()
        for item in loader:
            for tensor in item if isinstance(item, tuple) else (item,):
                hasher.update(str(tensor.dtype).encode())
                hasher.update(tensor.numpy().tobytes())
        digests.append(hasher.hexdigest())
    return digests


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 2))


def train(run: Any, loader: Any, epochs: int, model: torch.nn.Module | None = None
          ) -> tuple[list[float], torch.nn.Module]:
    """Plain SGD training; returns the loss of every step and the model."""
    if model is None:
        manual_seed(run, "model", "init")
        model = small_model()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for epoch in range(epochs):
        for x, y in loader:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if hasattr(run, "log_metric"):
            run.log_metric("loss", losses[-1], epoch=epoch)
    return losses, model


# -- a torch.distributed rank (torch.multiprocessing.spawn target) --------------------------------

def distributed_rank(rank: int, world: int, init_file: str, url: str, data_dir: str,
                     out_dir: str, seed: int, epochs: int) -> None:
    """One rank of a 2-rank gloo job: DDP training on a recorded DataLoader with 2 workers."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        with distributed_experiment("ddp-fraud", url=url, seed=seed, data_dir=data_dir,
                                    hyperparams={"epochs": epochs}) as run:
            features, labels = fraud_arrays(512)
            dataset = register_dataset(run, "fraud", features, labels)
            loader = RecordedDataLoader(run, dataset, 32, num_workers=2,
                                        transform=RecordedTransform("jitter", std=0.05),
                                        persistent_workers=True)
            if rank == 0:
                manual_seed(run, "model", "init")
            model = torch.nn.parallel.DistributedDataParallel(small_model())
            losses, _ = train(run, loader, epochs, model=model)
            if rank == 0:
                run.log_checkpoint("model", model.module.state_dict(), epoch=epochs - 1)
                Path(out_dir, "result").write_text(
                    f"{run.id} {state_digest(model.module.state_dict()).hex()} "
                    f"{' '.join(repr(loss) for loss in losses)}")
            Path(out_dir, f"rank-{rank}-pid").write_text(str(os.getpid()))
    finally:
        dist.destroy_process_group()


def failing_rank(rank: int, world: int, init_file: str, url: str, out_dir: str) -> None:
    """One rank of a 2-rank gloo job whose rank 0 cannot create the experiment (seed -1): each
    rank writes the error it got, rank 0 staying alive a while as a real job would (logging,
    cleaning up), so that a rank waiting for rank 0 would wait."""
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        with distributed_experiment("bad-seed", url=url, seed=-1):
            outcome = "no error"
    except Exception as error:  # noqa: BLE001 - written for the test to read
        outcome = f"{type(error).__name__}: {error}"
        if rank == 0:
            time.sleep(2)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank-{rank}").write_text(outcome)


def rank_1_dies(rank: int, world: int, init_file: str, url: str, out_dir: str) -> None:
    """Rank 1 dies inside the block (killed, out of memory) without leaving it; rank 0 ends
    its block normally and meets a process group that a dead rank broke."""
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    with distributed_experiment("ddp-broken", url=url, seed=3) as run:
        if rank == 1:
            os._exit(3)
        Path(out_dir, "exp").write_text(run.id)
        time.sleep(1)  # rank 1 is gone by now


def _outcome_in_group(rank: int, world: int, init_file: str, out_dir: str,
                      block: Callable[[], None]) -> None:
    """Run ``block`` as rank ``rank`` of a gloo group, leave the group, and write the error the
    block raised (or "no error") to ``out_dir/rank-{rank}`` for the test to read."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        block()
        outcome = "no error"
    except Exception as error:  # noqa: BLE001 - written for the test to read
        outcome = f"{type(error).__name__}: {error}"
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank-{rank}").write_text(outcome)


def rank_1_raises(rank: int, world: int, init_file: str, url: str, out_dir: str) -> None:
    """Rank 1's block raises after recording into its stream; rank 0's block ends normally.
    Each rank writes the error it got (or "no error")."""
    def block() -> None:
        with distributed_experiment("ddp-raises", url=url, seed=3,
                                    data_dir=Path(out_dir, "data")) as run:
            register_dataset(run, "d", *fraud_arrays(64))
            if rank == 1:
                run.record("user_note", path=("note", 1), params={"rank": 1})
                raise RuntimeError("rank 1 gave up")

    _outcome_in_group(rank, world, init_file, out_dir, block)


def rank_0_cannot_register(rank: int, world: int, init_file: str, url: str,
                           out_dir: str) -> None:
    """Rank 0 cannot register the dataset (its features are of a dtype the ledger refuses),
    rank 1's are fine. Each rank writes the error it got (or "no error")."""
    def block() -> None:
        with distributed_experiment("ddp-no-data", url=url, seed=3,
                                    data_dir=Path(out_dir, "data")) as run:
            features, labels = fraud_arrays(64)
            register_dataset(run, "d", features.astype(np.longdouble) if rank == 0 else features,
                             labels)

    _outcome_in_group(rank, world, init_file, out_dir, block)


def rank_1_holds_other_data(rank: int, world: int, init_file: str, url: str,
                            out_dir: str) -> None:
    """Rank 1's data differs from rank 0's; rank 0 goes on to a collective, as training would
    (flush_ranks). Each rank writes the error it got (or "no error")."""
    def block() -> None:
        with distributed_experiment("ddp-other-data", url=url, seed=3,
                                    data_dir=Path(out_dir, "data")) as run:
            register_dataset(run, "d", *fraud_arrays(64, seed=5 + rank))
            flush_ranks(run)

    _outcome_in_group(rank, world, init_file, out_dir, block)


def rank_1_cannot_attach(rank: int, world: int, init_file: str, urls: list[str],
                         out_dir: str) -> None:
    """Rank 1 is given another ledger (``urls[1]``), where the experiment is not: it cannot
    attach. Each rank writes the error it got (or "no error")."""
    def block() -> None:
        with distributed_experiment("ddp-lost", url=urls[rank], seed=3):
            pass

    _outcome_in_group(rank, world, init_file, out_dir, block)


def rank_1_dies_and_rank_0_raises(rank: int, world: int, init_file: str, url: str,
                                  out_dir: str) -> None:
    """Rank 1 dies inside the block; rank 0's block raises after it: rank 0 writes the error
    it got."""
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        with distributed_experiment("ddp-both", url=url, seed=3):
            if rank == 1:
                os._exit(3)
            time.sleep(1)  # rank 1 is gone by now
            raise RuntimeError("rank 0 gave up")
    except Exception as error:  # noqa: BLE001 - written for the test to read
        Path(out_dir, "rank-0").write_text(f"{type(error).__name__}: {error}")
