"""Training ``fraud-detection-v3`` through the trainer hooks, recorded or not.

:func:`train` is the job the bug report is about, written against the public API: an experiment
with ``seed``, the registered dataset, a ``TrainingDataIterator`` with a ``DataAugmenter`` and
worker processes, validation AUC per epoch as ``metric`` events, the final weights as a
``checkpoint``. Without a manager it runs the same computation recording nothing (the
benchmark's "recording off").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.fraud.blas import limit_blas_threads
from examples.fraud.dataset import DATASET_NAME, VALIDATION_NAME, FraudData
from examples.fraud.job import entrypoint, job_config
from examples.fraud.legacy import LEGACY_OP
from examples.fraud.model import MODEL_NAME, FraudMLP, roc_auc
from ledger.augment import DataAugmenter
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.seeds import generator

HYPERPARAMS: dict[str, Any] = {"lr": 0.05, "epochs": 5, "batch_size": 256, "hidden": [64, 32],
                               "noise_std": 0.1, "mask_prob": 0.1, "pos_weight": 5.0}
Progress = Callable[[int, float, float], None]
"""Called after each epoch with (epoch, mean training loss, validation AUC)."""


@dataclass
class RunResult:
    """One training run: its experiment (None when not recorded), AUCs, head and timing."""

    exp: str | None
    aucs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    head: bytes | None = None
    seconds: float = 0.0


def augmenter(hyperparams: dict[str, Any], inject_nondeterminism: bool) -> DataAugmenter:
    """Noise then a feature mask; with the injected bug, noise that ignores its seed."""
    if inject_nondeterminism:
        return DataAugmenter(mask_prob=hyperparams["mask_prob"],
                             ops=[{"op": LEGACY_OP, "std": hyperparams["noise_std"]}])
    return DataAugmenter(noise_std=hyperparams["noise_std"], mask_prob=hyperparams["mask_prob"])


def train(data: FraudData, manager: ExperimentManager | None, *, seed: int = 42,
          workers: int = 2, epochs: int | None = None, inject_nondeterminism: bool = False,
          start_method: str | None = None, on_epoch: Progress | None = None) -> RunResult:
    """Train the model once; record it in ``manager``'s ledger unless ``manager`` is None."""
    hyperparams = dict(HYPERPARAMS)
    if epochs is not None:
        hyperparams["epochs"] = epochs
    # Always one BLAS thread: the workers need the other cores, and the thread count can change
    # the low bits of a matrix product, so a re-run must use the same (see examples.fraud.blas).
    limit_blas_threads(1)
    started = time.perf_counter()
    if manager is None:
        result = _loop(data, None, seed, workers, hyperparams, inject_nondeterminism,
                       start_method, on_epoch)
    else:
        with manager.create_experiment(MODEL_NAME, seed=seed, hyperparams=hyperparams,
                                       purpose="ledger demo: fraud detection",
                                       entrypoint=entrypoint(job_config(
                                           workers=workers, epochs=hyperparams["epochs"],
                                           inject_nondeterminism=inject_nondeterminism,
                                           transactions=len(data.train_x) + len(data.val_x))
                                       ), code_dir=Path(__file__).parent) as exp:
            result = _loop(data, exp, seed, workers, hyperparams, inject_nondeterminism,
                           start_method, on_epoch)
        result.head = exp.head
    result.seconds = time.perf_counter() - started
    return result


def _loop(data: FraudData, exp: Any, seed: int, workers: int, hyperparams: dict[str, Any],
          inject: bool, start_method: str | None, on_epoch: Progress | None) -> RunResult:
    if exp is not None:
        train_set = exp.register_dataset(DATASET_NAME, data.train_x, data.train_y, role="train")
        exp.register_dataset(VALIDATION_NAME, data.val_x, data.val_y, role="validation")
        init_rng = exp.generator("model", "init")
    else:
        train_set = (data.train_x, data.train_y)
        init_rng = generator(seed, ("model", "init"))
    model = FraudMLP(data.train_x.shape[1], init_rng, tuple(hyperparams["hidden"]))
    result = RunResult(None if exp is None else exp.id)
    batches = TrainingDataIterator(train_set, hyperparams["batch_size"],
                                   augmenter=augmenter(hyperparams, inject), num_workers=workers,
                                   experiment=exp, seed=None if exp is not None else seed,
                                   start_method=start_method)
    with batches:
        for epoch in range(hyperparams["epochs"]):
            total, count = 0.0, 0
            for x, y in batches:
                total += model.train_step(x, y, hyperparams["lr"], hyperparams["pos_weight"])
                count += 1
            auc = roc_auc(model.predict_logits(data.val_x), data.val_y)
            result.losses.append(total / max(count, 1))
            result.aucs.append(auc)
            if exp is not None:
                exp.log_metric("train_loss", result.losses[-1], epoch=epoch)
                exp.log_metric("val_auc", auc, epoch=epoch)
            if on_epoch is not None:
                on_epoch(epoch, result.losses[-1], auc)
    if exp is not None:
        last_epoch = hyperparams["epochs"] - 1
        exp.log_checkpoint("final", model.weights, epoch=last_epoch if last_epoch >= 0 else None)
    return result
