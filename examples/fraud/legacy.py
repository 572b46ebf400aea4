"""The original bug, kept on purpose for ``ledger demo --inject-nondeterminism``.

The old augmenter accepted a seed and ignored it: its noise came from a generator seeded by the
OS. Registered as its own op (``legacy_gaussian_noise``, version 1) so the ledger names it — and
so ``ledger diff`` and ``ledger replay`` show what such a divergence looks like.
"""

from __future__ import annotations

import numpy as np

from ledger.augment_ops import register_op

LEGACY_OP = "legacy_gaussian_noise"


@register_op(LEGACY_OP, 1)
def legacy_gaussian_noise(batch: np.ndarray, rng: np.random.Generator, *,
                          std: float = 0.1) -> None:
    """Gaussian noise that ignores ``rng`` — DO NOT USE: this is the bug being demonstrated."""
    del rng  # the bug: the batch's derived generator is ignored
    noise = np.random.default_rng().standard_normal(batch.shape, dtype=batch.dtype)
    batch += noise * batch.dtype.type(std)
