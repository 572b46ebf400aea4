"""How one epoch's order is split between distributed ranks, and the seed paths of a rank.

Every rank computes the same global order of epoch e — ``epoch_order(root, e, length, shuffle)``
from ``("epoch", e, "shuffle")`` — and takes its share exactly as ``torch.utils.data.
DistributedSampler`` does: the order is padded with its own first indices to a multiple of
``num_replicas`` (or, with ``drop_last``, cut to one), and rank r takes every
``num_replicas``-th index starting at r. Pure functions of their arguments, shared by the sampler,
the DataLoader workers and replay, and free of torch.

Paths: with one replica the library's paths are the plain ones of DESIGN §1; with several, the
draws of rank r live under ``("rank", r, …)`` so that a draw's (kind, path) stays unique in the
run: worker k is ``("rank", r, "worker", k)`` and batch b of the rank's share of epoch e is
augmented from ``("rank", r, "epoch", e, "batch", b, "augment")``. The epoch's shuffle is one draw
for the whole run, ``("epoch", e, "shuffle")``, recorded once (by rank 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ledger.augment import augment_path
from ledger.errors import BadInputError
from ledger.sampling import INDEX_DTYPE
from ledger.worker_seeding import worker_path

INTEGRATION = "torch.DataLoader/v1"
"""The ``loader`` / ``sampler`` param of events recorded by :mod:`ledger.integrations.torch`:
replay recognises its batches by it."""


def check_replicas(num_replicas: Any, rank: Any) -> tuple[int, int]:
    """Return ``(num_replicas, rank)`` if ``0 <= rank < num_replicas``; else say what is wrong."""
    for name, value, low in (("num_replicas", num_replicas, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise BadInputError(f"got {name}={value!r}, but must be an int >= {low}")
    if rank >= num_replicas:
        raise BadInputError(f"got rank {rank}, but must be below num_replicas={num_replicas}")
    return int(num_replicas), int(rank)


def share_size(length: int, num_replicas: int, drop_last: bool) -> int:
    """How many indices each rank gets per epoch (DistributedSampler's ``num_samples``)."""
    if drop_last and length % num_replicas:
        return math.ceil((length - num_replicas) / num_replicas)
    return math.ceil(length / num_replicas)


def rank_share(order: np.ndarray, num_replicas: int, rank: int, drop_last: bool) -> np.ndarray:
    """Rank ``rank``'s indices of an epoch whose global order is ``order`` (int64)."""
    length = len(order)
    if num_replicas == 1:
        return order
    total = share_size(length, num_replicas, drop_last) * num_replicas
    # Positions rank, rank + n, … of the order padded to ``total`` by repeating it from its
    # start — computed without building the padded order, whose size the replicas decide.
    positions = np.arange(rank, total, num_replicas, dtype=np.int64)
    if total > length:
        positions %= length
    return np.ascontiguousarray(order[positions], dtype=INDEX_DTYPE)


def rank_prefix(num_replicas: int, rank: int) -> tuple:
    """``()`` for a single process, ``("rank", r)`` for rank r of several."""
    return () if num_replicas == 1 else ("rank", rank)


def rank_worker_path(num_replicas: int, rank: int, worker: int) -> tuple:
    """The seed path of DataLoader worker ``worker`` of rank ``rank``."""
    return (*rank_prefix(num_replicas, rank), *worker_path(worker))


def rank_augment_path(num_replicas: int, rank: int, epoch: int, batch: int) -> tuple:
    """The seed path of batch ``batch`` of rank ``rank``'s share of epoch ``epoch``."""
    return (*rank_prefix(num_replicas, rank), *augment_path(epoch, batch))


def sample_path(batch_path: tuple, position: int) -> tuple:
    """The seed path of the sample at ``position`` in a batch: the batch's path and position."""
    return (*batch_path, position)
