"""A recorded PyTorch DataLoader against the same DataLoader without recording.

Workload: 50,000 x 32 float32 samples with int64 labels, batch 256 (as ``bench_pipeline``), a
per-sample random transform (Gaussian jitter from each sample's generator), 2 epochs, iterated
to the end — no model, so recording's cost is not hidden behind training. Recording costs, per
batch, ~13 us in the main process (its ``augmentation_batch``, through the normalised fast path)
and ~20 us where the batch is made (the SHA-256 of its 32 KB output, which grows with the
batch, and of its indices): ~1.5 % of a 2.6 ms batch. The fixed part weighs more on a cheaper
batch, so the same figures are also taken at batch 64, for information. Both sides are the same
:class:`~ledger.integrations.torch.RecordedDataLoader` (same sampler, same worker seeding, same
transform, same batches); the unrecorded one is built with ``record=False`` (no digests, no
events). The recorded one writes into an SQLite ledger: ``epoch_reset``, ``worker_spawned`` and
one ``augmentation_batch`` per batch, flushed before the clock stops.

With 0 workers and with 2 (fork, persistent); rounds alternate the order. Reported: the median
and the best wall time of the rounds, and the median CPU seconds of the main process and its
workers together — on a shared machine the CPU ratio is the steadiest measure of what recording
costs.

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
from bench.settings import setting, standalone

SAMPLES, FEATURES, EPOCHS = 50_000, 32, 2
BATCH, SMALL_BATCH = 256, 64
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


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of live processes (Linux /proc; 0 elsewhere)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def one_run(folder: Path, transform: Any, workers: int, record: bool, batch: int = BATCH
            ) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its workers) to iterate ``EPOCHS`` epochs, worker
    start-up and the final flush included."""
    from ledger.experiment import ExperimentManager
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from ledger.integrations.torch import RecordedDataLoader

    features, labels = _data()
    options: dict[str, Any] = {"num_workers": workers}
    if workers:
        options.update(multiprocessing_context="fork", persistent_workers=True)
    with ExperimentManager(f"sqlite:///{folder / 'ledger.db'}", data_dir=folder) as manager:
        with manager.create_experiment("bench-torch", seed=SEED) as exp:
            dataset = exp.register_dataset("bench", features, labels)
            loader = RecordedDataLoader(exp, dataset, batch, transform=transform, record=record,
                                        **options)
            cpu = time.process_time()
            start = time.perf_counter()
            for _epoch in range(EPOCHS):
                for _x, _y in loader:
                    pass
            exp.flush()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            if workers:  # persistent workers are still alive: read what they used
                iterator = loader._iterator
                assert isinstance(iterator, _MultiProcessingDataLoaderIter)
                cpu += _cpu_seconds([w.pid for w in iterator._workers if w.pid is not None])
            del loader  # stops persistent workers
    return elapsed, cpu


def run(rounds: int | None = None) -> dict[str, Any]:
    """Measure recorded and unrecorded, with 0 and 2 workers; return the result record."""
    command = "python -m bench.bench_torch"
    if importlib.util.find_spec("torch") is None:
        return result("torch_dataloader", {"skipped": "torch is not installed"}, {}, {}, {},
                      command)
    import torch

    rounds = rounds or setting("BENCH_TORCH_ROUNDS")
    transform = _transform()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-sample ops: threads only add noise
    configs = [(workers, batch) for batch in (BATCH, SMALL_BATCH) for workers in (0, 2)]
    wall: dict[tuple[int, int, bool], list[float]] = {}
    cpu: dict[tuple[int, int, bool], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ledger-bench-torch-") as folder:
            runs = 0
            for round_index in range(rounds):
                for workers, batch in configs:
                    order = (True, False) if round_index % 2 == 0 else (False, True)
                    for record in order:
                        run_dir = Path(folder) / f"run-{runs}"
                        run_dir.mkdir()
                        runs += 1
                        seconds, cpu_seconds = one_run(run_dir, transform, workers, record, batch)
                        wall.setdefault((workers, batch, record), []).append(seconds)
                        cpu.setdefault((workers, batch, record), []).append(cpu_seconds)
    finally:
        torch.set_num_threads(threads)
    samples = SAMPLES * EPOCHS
    figures: dict[str, Any] = {"samples": samples, "rounds": rounds}
    baseline: dict[str, Any] = {}
    ratio: dict[str, float] = {}
    targets: dict[str, str] = {}
    for workers, batch in configs:
        name = f"{workers}_workers_batch_{batch}"
        recorded, unrecorded = (workers, batch, True), (workers, batch, False)
        figures[f"recorded_{name}_samples_per_s"] = samples / statistics.median(wall[recorded])
        baseline[f"unrecorded_{name}_samples_per_s"] = samples / statistics.median(
            wall[unrecorded])
        target = "<= 1.05" if batch == BATCH else "(information)"
        for kind, values, pick in (("wall_median", wall, statistics.median),
                                   ("wall_best", wall, min), ("cpu_median", cpu,
                                                              statistics.median)):
            key = f"{kind}_recorded_vs_unrecorded_{name}"
            ratio[key] = pick(values[recorded]) / pick(values[unrecorded])
            targets[key] = target
    figures["rounds_wall_s"] = {f"{w}_workers_batch_{b}_{'recorded' if r else 'unrecorded'}":
                                [round(t, 3) for t in values] for (w, b, r), values in wall.items()}
    figures["rounds_cpu_s"] = {f"{w}_workers_batch_{b}_{'recorded' if r else 'unrecorded'}":
                               [round(t, 3) for t in values] for (w, b, r), values in cpu.items()}
    return result("torch_dataloader", figures, baseline, ratio, targets, command)


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
