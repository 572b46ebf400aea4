"""Recording small real runs for the replay and diff tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ledger.augment import DataAugmenter
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator


def sample_data(rows: int = 600, features: int = 6, seed: int = 7
                ) -> tuple[np.ndarray, np.ndarray]:
    """A small deterministic tabular dataset."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 0.1).astype(np.int8)
    return x, y


def record_run(url: str, data_dir: Path, *, seed: int = 42, num_workers: int = 0,
               augmenter: DataAugmenter | None = None, epochs: int = 2, batch_size: int = 64,
               data: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """Record a run (dataset, shuffled epochs, augmented batches, metrics); return its id."""
    features, labels = data if data is not None else sample_data()
    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("replay-test", seed=seed, hyperparams={"lr": 0.1}) as exp:
            registered = exp.register_dataset("dataset-small", features, labels)
            batches = TrainingDataIterator(
                registered, batch_size=batch_size, num_workers=num_workers, experiment=exp,
                augmenter=augmenter or DataAugmenter(noise_std=0.1, mask_prob=0.1))
            for epoch in range(epochs):
                total = 0.0
                for x, _y in batches:
                    total += float(x.sum())
                exp.log_metric("batch_sum", total, epoch=epoch)
    return exp.id
