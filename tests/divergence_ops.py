"""A registered augmenter op that misbehaves, on demand, at chosen draws — for divergence tests.

``divergence_marked`` adds seeded noise like any honest op. While :data:`MISBEHAVING` holds the
seed of a draw (the derived seed of its ``("epoch", e, "batch", b, "augment")`` path, which the
op reads from its generator), the op also adds 1 to that batch: the same seed then gives another
output; while :data:`FAILING` holds it, the op raises. Tests fill the sets in this process
(worker processes forked afterwards inherit them); a ``ledger`` subprocess that imports this
module with ``--trust divergence_ops`` reads MISBEHAVING from the environment variable
:data:`ENVIRONMENT` (seeds as comma-separated hex).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import cast

import numpy as np

from ledger.augment import augment_path, register_op
from ledger.seeds import derive

OP = "divergence_marked"
ENVIRONMENT = "LEDGER_TEST_MISBEHAVING_SEEDS"
MISBEHAVING: set[int] = {int(seed, 16) for seed in os.environ.get(ENVIRONMENT, "").split(",")
                         if seed}
"""Derived seeds of the draws at which the op changes its output (empty: it behaves)."""
FAILING: set[int] = set()
"""Derived seeds of the draws at which the op raises (in this process and its forks only)."""


@register_op(OP, version=1)
def divergence_marked(batch: np.ndarray, rng: np.random.Generator) -> None:
    """Seeded noise; one more for the batches whose generator's seed is in MISBEHAVING, and
    a ValueError for those whose seed is in FAILING."""
    batch += rng.standard_normal(batch.shape).astype(batch.dtype)
    seed = cast(np.random.SeedSequence, rng.bit_generator.seed_seq).entropy  # PCG64(seed)
    if FAILING and seed in FAILING:
        raise ValueError("a failing batch cannot be replayed")
    if MISBEHAVING and seed in MISBEHAVING:
        batch += 1


def seeds_of(root: int, positions: Iterable[tuple[int, int]]) -> set[int]:
    """The derived seeds of the augmentation draws of ``positions`` ((epoch, batch) pairs)."""
    return {derive(root, augment_path(epoch, batch)) for epoch, batch in positions}


def environment_value(seeds: Iterable[int]) -> str:
    """``seeds`` as :data:`ENVIRONMENT` holds them."""
    return ",".join(f"{seed:x}" for seed in sorted(seeds))
