"""The synthetic ``dataset-fraud-2024Q1``: card transactions, about 1.5 % of them fraudulent.

Generated from a fixed seed, so every machine builds the same bytes (the ledger records its
digest and ``ledger replay`` re-checks it). 30 features per transaction: 28 anonymised
components (as in public card-fraud data), the log amount and the hour of day. Fraud shifts a
few components, widens two others, is larger and happens more at night — learnable, not trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASET_NAME = "dataset-fraud-2024Q1"
VALIDATION_NAME = "dataset-fraud-2024Q1-validation"
DATASET_SEED = 2024_01
TRANSACTIONS = 100_000
FEATURES = 30
FRAUD_RATE = 0.015
VALIDATION_SHARE = 0.2


@dataclass(frozen=True)
class FraudData:
    """Standardised training and validation splits (float32 features, int8 labels)."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def make_transactions(count: int = TRANSACTIONS, seed: int = DATASET_SEED
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Raw transactions: ``(features float32 [count, 30], labels int8 [count])``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = (rng.random(count) < FRAUD_RATE).astype(np.int8)
    fraud = labels.astype(bool)
    components = rng.standard_normal((count, FEATURES - 2))
    shift = np.zeros(FEATURES - 2)
    shift[:8] = [-1.1, 0.9, -0.8, 0.7, -0.6, 0.5, 0.4, -0.35]
    components[fraud] += shift
    components[fraud, 8:10] *= 2.0
    amount = np.where(fraud, rng.lognormal(4.6, 1.1, count), rng.lognormal(3.8, 1.0, count))
    night = rng.random(count) < np.where(fraud, 0.55, 0.15)
    hour = np.where(night, rng.uniform(0, 6, count), rng.uniform(6, 24, count))
    features = np.column_stack([components, np.log1p(amount), hour]).astype(np.float32)
    return features, labels


def standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both by the training split's mean and standard deviation."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return scale(train), scale(other)


def load_fraud_data(count: int = TRANSACTIONS) -> FraudData:
    """The demo's splits: the first 80 % for training, the rest for validation."""
    features, labels = make_transactions(count)
    cut = int(count * (1 - VALIDATION_SHARE))
    train_x, val_x = standardise(features[:cut], features[cut:])
    return FraudData(train_x, labels[:cut].copy(), val_x, labels[cut:].copy())
