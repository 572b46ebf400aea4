"""Pipeline throughput: TrainingDataIterator + DataAugmenter against hand-written baselines.

Workload (issue 3): 200,000 x 32 float32 samples, batch 256, Gaussian noise (std 0.1) then a
10 % feature mask, 2 epochs. Measured in one run:

(a) the pipeline recording into an SQLite ledger, with 0 and 2 workers;
(b) the same with recording off (no experiment, ``seed=`` given);
(c) a hand-vectorized numpy loop doing the same work (per-epoch permutation, per-batch gather +
    noise + mask) with one generator — the simplest fast code a user would write;
(d) ``torch.utils.data.DataLoader`` doing the same work the fast way (a batch sampler, batched
    gather + augmentation), with 0 and 2 workers — only when torch is installed.

Each configuration runs once untimed (imports, the first fork and the first database engine
would otherwise land in one round), then ``rounds`` times. Configurations compared by a ratio
run back to back (see ``UNITS``); the units rotate between rounds. Throughputs are medians over
rounds (samples per second); ratios are taken within each round and reported as the median over
rounds with the lowest and highest round. Worker start-up and the final flush are inside the
timed region.

And the demo's training job (``examples.fraud.train``: 100,000 transactions, 5 epochs, 2 workers)
with and without recording, end to end (``BENCH_DEMO_ROUNDS``, default 3; 0 skips it).

Two *floors* are measured beside, to show how much of each recording cost is work the ledger
must do whatever the code around it: ``floor_hashing_share_*`` is SHA-256 of every batch output
(the digests replay compares) against the unrecorded pipeline's time; ``floor_demo_fixed_share``
is the demo's recording work that does not grow with training — experiment creation
(environment, git), both datasets digested and stored, the final checkpoint and commit — taken
as the difference between a recorded and an unrecorded zero-epoch run, against the unrecorded
demo's time.

Run: ``.venv/bin/python -m bench.bench_pipeline`` (``BENCH_PIPELINE_ROUNDS`` sets the rounds).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.augment import DataAugmenter
from ledger.batches import fast_array_digest
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator

SAMPLES, FEATURES, BATCH, EPOCHS = 200_000, 32, 256, 2
NOISE_STD, MASK_PROB = 0.1, 0.1
SEED = 42


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's dataset: standard normal features, binary labels."""
    rng = np.random.Generator(np.random.PCG64(7))
    features = rng.standard_normal((SAMPLES, FEATURES), dtype=np.float32)
    labels = (rng.random(SAMPLES) < 0.02).astype(np.int8)
    return features, labels


def hand_loop(features: np.ndarray, labels: np.ndarray) -> float:
    """(c) The hand-vectorized numpy loop; returns seconds."""
    start = time.perf_counter()
    rng = np.random.Generator(np.random.PCG64(SEED))
    std, prob = np.float32(NOISE_STD), np.float32(MASK_PROB)
    for _epoch in range(EPOCHS):
        order = rng.permutation(SAMPLES)
        for offset in range(0, SAMPLES, BATCH):
            indices = order[offset:offset + BATCH]
            x = features[indices]
            _y = labels[indices]
            noise = rng.standard_normal(x.shape, dtype=np.float32)
            noise *= std
            x += noise
            np.copyto(x, np.float32(0), where=rng.random(x.shape, dtype=np.float32) < prob)
    return time.perf_counter() - start


def pipeline(features: np.ndarray, labels: np.ndarray, folder: Path, *, record: bool,
             workers: int, timings: dict[str, float] | None = None) -> float:
    """(a)/(b) TrainingDataIterator with DataAugmenter; returns seconds of the 2 epochs.

    When recording, ``timings["run_s"]`` (if given) receives the seconds of the whole recorded
    run: opening the ledger, creating the experiment, registering the dataset, the 2 epochs and
    closing the experiment.
    """
    augmenter = DataAugmenter(noise_std=NOISE_STD, mask_prob=MASK_PROB)
    if not record:
        start = time.perf_counter()
        with TrainingDataIterator((features, labels), BATCH, augmenter=augmenter, seed=SEED,
                                  num_workers=workers) as batches:
            for _epoch in range(EPOCHS):
                for _x, _y in batches:
                    pass
        return time.perf_counter() - start
    run_start = time.perf_counter()
    with ExperimentManager(f"sqlite:///{folder / 'bench.db'}", data_dir=folder) as manager:
        with manager.create_experiment("bench-pipeline", seed=SEED) as experiment:
            data = experiment.register_dataset("bench-200k", features, labels)
            start = time.perf_counter()
            batches = TrainingDataIterator(data, BATCH, augmenter=augmenter, num_workers=workers,
                                           experiment=experiment)
            for _epoch in range(EPOCHS):
                for _x, _y in batches:
                    pass
            batches.close()
            experiment.flush()
            loop_seconds = time.perf_counter() - start
    if timings is not None:
        timings["run_s"] = time.perf_counter() - run_start
    return loop_seconds


def torch_loader(features: np.ndarray, labels: np.ndarray, workers: int) -> float:
    """(d) torch's DataLoader, batched the fast way; returns seconds."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    class Batched(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return SAMPLES

        def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.from_numpy(features[indices])
            x += torch.randn(x.shape) * NOISE_STD
            x.masked_fill_(torch.rand(x.shape) < MASK_PROB, 0.0)
            return x, torch.from_numpy(labels[indices])

    sampler = BatchSampler(RandomSampler(range(SAMPLES)), BATCH, drop_last=False)
    start = time.perf_counter()
    loader = DataLoader(Batched(), sampler=sampler, batch_size=None, num_workers=workers)
    for _epoch in range(EPOCHS):
        for _x, _y in loader:
            pass
    return time.perf_counter() - start


def demo_training(data: Any, folder: Path, *, record: bool, workers: int = 2) -> float:
    """The demo's training job (100,000 transactions, 5 epochs, 2 workers); returns seconds.

    Recorded: experiment creation, both dataset registrations (hashing and storing the
    arrays), every draw, metric and checkpoint, and completion are inside the timed region.
    """
    from examples.fraud.train import train

    if not record:
        return train(data, None, seed=SEED, workers=workers).seconds
    with ExperimentManager(f"sqlite:///{folder / 'demo.db'}", data_dir=folder) as manager:
        return train(data, manager, seed=SEED, workers=workers).seconds


def hashing_floor() -> float:
    """Seconds to SHA-256 the output of every batch of the workload once, as recording does."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    full = rng.standard_normal((BATCH, FEATURES), dtype=np.float32)
    last = full[:SAMPLES % BATCH or BATCH].copy()
    batches = [full] * (SAMPLES // BATCH) + ([last] if SAMPLES % BATCH else [])
    start = time.perf_counter()
    for _epoch in range(EPOCHS):
        for batch in batches:
            fast_array_digest(batch)
    return time.perf_counter() - start


def demo_fixed_recording(data: Any, folder: Path) -> float:
    """Seconds of the demo's recording work that does not grow with training (see the module
    docstring): a recorded zero-epoch run less an unrecorded one."""
    from examples.fraud.train import train

    with ExperimentManager(f"sqlite:///{folder / 'fixed.db'}", data_dir=folder) as manager:
        recorded = train(data, manager, seed=SEED, epochs=0).seconds
    return recorded - train(data, None, seed=SEED, epochs=0).seconds


UNITS = (("hand_numpy", "off_w0", "on_w0", "hashing_floor"), ("off_w2", "on_w2", "torch_w2"),
         ("torch_w0",), ("demo_off", "demo_on", "demo_fixed"))
"""Configurations run back to back within a round: every ratio compares runs of one unit."""

RATIOS: dict[str, tuple[str, str, float]] = {
    "hand_over_off_w0": ("off_w0", "hand_numpy", 0.0),
    "recording_cost_w0": ("on_w0", "off_w0", -1.0),
    "recording_cost_w2": ("on_w2", "off_w2", -1.0),
    "floor_hashing_share_w0": ("hashing_floor", "off_w0", 0.0),
    "floor_hashing_share_w2": ("hashing_floor", "off_w2", 0.0),
    "w2_over_torch_w2": ("torch_w2", "on_w2", 0.0),
    "recording_cost_demo": ("demo_on", "demo_off", -1.0),
    "floor_demo_fixed_share": ("demo_fixed", "demo_off", 0.0),
}
"""Each ratio as (numerator, denominator, offset): seconds over seconds of the same round, plus
the offset (-1 turns a time ratio into a cost). Throughput ratios are time ratios inverted."""

TARGETS = {"hand_over_off_w0": "<= 1.5", "recording_cost_w0": "<= 0.20",
           "recording_cost_w2": "<= 0.20", "recording_cost_demo": "<= 0.03",
           "w2_over_torch_w2": "> 1.0"}


def _median_rate(times: list[float]) -> float:
    return EPOCHS * SAMPLES / statistics.median(times)


def _round_order(round_index: int, available: set[str]) -> list[str]:
    """This round's configurations: units rotated, each unit's members reversed every other
    round (so no configuration always runs first, on a cold cache, or last)."""
    units = [[name for name in unit if name in available] for unit in UNITS]
    units = [unit[::-1] if round_index % 2 else unit for unit in units if unit]
    shift = round_index % len(units)
    return [name for unit in units[shift:] + units[:shift] for name in unit]


def run(rounds: int | None = None) -> dict[str, Any]:
    """Measure every configuration; return the result record.

    Ratios are taken round by round — between runs made seconds apart, in one unit — and the
    median over rounds is reported with its lowest and highest round: this machine's speed
    drifts by tens of percent between rounds, which a ratio of separate medians would mix in.
    """
    rounds = rounds or setting("BENCH_PIPELINE_ROUNDS")
    features, labels = make_data()
    has_torch = importlib.util.find_spec("torch") is not None
    configs: dict[str, Callable[[Path], float]] = {
        "hand_numpy": lambda _f: hand_loop(features, labels),
        "hashing_floor": lambda _f: hashing_floor(),
        "off_w0": lambda f: pipeline(features, labels, f, record=False, workers=0),
        "on_w0": lambda f: pipeline(features, labels, f, record=True, workers=0),
        "off_w2": lambda f: pipeline(features, labels, f, record=False, workers=2),
        "on_w2": lambda f: pipeline(features, labels, f, record=True, workers=2),
    }
    if has_torch:
        configs["torch_w0"] = lambda _f: torch_loader(features, labels, 0)
        configs["torch_w2"] = lambda _f: torch_loader(features, labels, 2)
    demo_rounds = setting("BENCH_DEMO_ROUNDS")
    if demo_rounds:
        from examples.fraud.dataset import load_fraud_data

        demo_data = load_fraud_data()
        configs["demo_off"] = lambda _f: demo_training(demo_data, _f, record=False)
        configs["demo_on"] = lambda f: demo_training(demo_data, f, record=True)
        configs["demo_fixed"] = lambda f: demo_fixed_recording(demo_data, f)
    times: dict[str, list[float]] = {name: [] for name in configs}
    per_round: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-pipeline-") as folder:
        for name in _round_order(0, set(configs)):  # warm-up: imports, first fork, first engine
            if not name.startswith("demo"):
                target = Path(folder) / f"{name}-warm-up"
                target.mkdir()
                configs[name](target)
        for round_index in range(rounds):
            measured: dict[str, float] = {}
            for name in _round_order(round_index, set(configs)):
                if name.startswith("demo") and round_index >= demo_rounds:
                    continue
                target = Path(folder) / f"{name}-{round_index}"
                target.mkdir()
                measured[name] = configs[name](target)
                times[name].append(measured[name])
            per_round.append(measured)
    ratios: dict[str, list[float]] = {}
    for key, (numerator, denominator, offset) in RATIOS.items():
        values = [m[numerator] / m[denominator] + offset for m in per_round
                  if numerator in m and denominator in m]
        if values:
            ratios[key] = values
    ratio = {key: statistics.median(values) for key, values in ratios.items()}
    spread = {key: [min(values), max(values)] for key, values in ratios.items()}
    rate = {name: _median_rate(values) for name, values in times.items()
            if not name.startswith("demo") and name != "hashing_floor"}
    figures: dict[str, Any] = {
        "samples_x_epochs": EPOCHS * SAMPLES,
        "rounds": rounds,
        "recording_on_w0_samples_per_s": rate["on_w0"],
        "recording_off_w0_samples_per_s": rate["off_w0"],
        "recording_on_w2_samples_per_s": rate["on_w2"],
        "recording_off_w2_samples_per_s": rate["off_w2"],
    }
    baseline: dict[str, Any] = {"hand_numpy_samples_per_s": rate["hand_numpy"]}
    if demo_rounds:
        figures["demo_training_recorded_s"] = statistics.median(times["demo_on"])
        baseline["demo_training_unrecorded_s"] = statistics.median(times["demo_off"])
    if has_torch:
        baseline["torch_dataloader_w0_samples_per_s"] = rate["torch_w0"]
        baseline["torch_dataloader_w2_samples_per_s"] = rate["torch_w2"]
    else:
        baseline["torch_dataloader"] = "not measured: torch is not installed"
    targets = {key: value for key, value in TARGETS.items() if key in ratio}
    return result("pipeline", figures, baseline, ratio, targets, "python -m bench.bench_pipeline",
                  spread)


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
