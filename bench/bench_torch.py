"""A recorded PyTorch DataLoader against the same DataLoader without recording.

Workload: 50,000 x 32 float32 samples with int64 labels, batch 64, a per-sample random
transform (Gaussian jitter from each sample's generator), 2 epochs, iterated to the end — no
model, so recording's cost is not hidden behind training. Both sides are the same
:class:`~ledger.integrations.torch.RecordedDataLoader` (same sampler, same worker seeding, same
transform, same batches); the unrecorded one is built with ``record=False`` (no digests, no
events). The recorded one writes into an SQLite ledger: ``epoch_reset``, ``worker_spawned`` and
one ``augmentation_batch`` per batch, flushed before the clock stops.

With 0 workers and with 2 (fork, persistent); rounds alternate the order, medians are reported.

Run: ``.venv/bin/python -m bench.bench_torch`` (``BENCH_TORCH_ROUNDS``, default 3).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import result, save, show

SAMPLES, FEATURES, BATCH, EPOCHS = 50_000, 32, 64, 2
SEED = 42


def _transform() -> Any:
    import torch

    from ledger.integrations.torch import RecordedTransform, register_transform

    @register_transform("bench_jitter", version=1)
    def bench_jitter(x: torch.Tensor, generator: torch.Generator, *, std: float = 0.1
                     ) -> torch.Tensor:
        return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    return RecordedTransform("bench_jitter", std=0.1)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(7))
    return (rng.standard_normal((SAMPLES, FEATURES), dtype=np.float32),
            (rng.random(SAMPLES) < 0.02).astype(np.int64))


def one_run(folder: Path, transform: Any, workers: int, record: bool) -> float:
    """Seconds to iterate ``EPOCHS`` epochs (worker start-up and the final flush included)."""
    from ledger.experiment import ExperimentManager
    from ledger.integrations.torch import RecordedDataLoader

    features, labels = _data()
    options: dict[str, Any] = {"num_workers": workers}
    if workers:
        options.update(multiprocessing_context="fork", persistent_workers=True)
    with ExperimentManager(f"sqlite:///{folder / 'ledger.db'}", data_dir=folder) as manager:
        with manager.create_experiment("bench-torch", seed=SEED) as exp:
            dataset = exp.register_dataset("bench", features, labels)
            loader = RecordedDataLoader(exp, dataset, BATCH, transform=transform, record=record,
                                        **options)
            start = time.perf_counter()
            for _epoch in range(EPOCHS):
                for _x, _y in loader:
                    pass
            exp.flush()
            elapsed = time.perf_counter() - start
            del loader  # stops persistent workers
    return elapsed


def run(rounds: int | None = None) -> dict[str, Any]:
    """Measure recorded and unrecorded, with 0 and 2 workers; return the result record."""
    command = "python -m bench.bench_torch"
    if importlib.util.find_spec("torch") is None:
        return result("torch_dataloader", {"skipped": "torch is not installed"}, {}, {}, {},
                      command)
    import torch

    rounds = rounds or int(os.environ.get("BENCH_TORCH_ROUNDS", "3"))
    transform = _transform()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-sample ops: threads only add noise
    times: dict[tuple[int, bool], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ledger-bench-torch-") as folder:
            runs = 0
            for round_index in range(rounds):
                for workers in (0, 2):
                    order = (True, False) if round_index % 2 == 0 else (False, True)
                    for record in order:
                        target = Path(folder) / f"run-{runs}"
                        target.mkdir()
                        runs += 1
                        times.setdefault((workers, record), []).append(
                            one_run(target, transform, workers, record))
    finally:
        torch.set_num_threads(threads)
    median = {key: statistics.median(values) for key, values in times.items()}
    samples = SAMPLES * EPOCHS
    figures: dict[str, Any] = {"samples": samples, "batch": BATCH, "rounds": rounds}
    baseline: dict[str, Any] = {}
    ratio: dict[str, float] = {}
    for workers in (0, 2):
        figures[f"recorded_{workers}_workers_samples_per_s"] = samples / median[(workers, True)]
        baseline[f"unrecorded_{workers}_workers_samples_per_s"] = samples / median[(workers,
                                                                                    False)]
        ratio[f"recorded_time_vs_unrecorded_{workers}_workers"] = (median[(workers, True)]
                                                                   / median[(workers, False)])
    figures["rounds_s"] = {f"{w}_workers_{'recorded' if r else 'unrecorded'}":
                           [round(t, 3) for t in values] for (w, r), values in times.items()}
    return result("torch_dataloader", figures, baseline, ratio,
                  {key: "<= 1.05" for key in ratio}, command)


if __name__ == "__main__":
    record = run()
    show(record)
    save([record])
