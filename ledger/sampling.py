"""Which samples make up batch b of epoch e: the epoch permutation and the batch slices.

These are pure functions of (root seed, epoch, dataset length, shuffle, batch size, drop_last),
shared by the main process, worker processes and replay, so every one of them computes the same
indices without being sent any:

- the order of epoch e is ``generator(root, ("epoch", e, "shuffle")).permutation(length)``
  (int64), or ``arange(length)`` with shuffle off;
- batch b holds ``order[b * batch_size : (b + 1) * batch_size]``; the last, shorter batch is
  dropped when ``drop_last``.
"""

from __future__ import annotations

import numpy as np

from ledger.seeds import generator

INDEX_DTYPE = np.dtype("<i8")
"""Sample indices are int64 little-endian everywhere, so their digests agree across machines."""


def shuffle_path(epoch: int) -> tuple[str, int, str]:
    """The seed path of epoch ``epoch``'s shuffle: ``("epoch", e, "shuffle")``."""
    return ("epoch", epoch, "shuffle")


def epoch_order(root: int, epoch: int, length: int, shuffle: bool) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of ``range(length)`` as int64."""
    if not shuffle:
        return np.arange(length, dtype=INDEX_DTYPE)
    return generator(root, shuffle_path(epoch)).permutation(length).astype(INDEX_DTYPE, copy=False)


def batch_count(length: int, batch_size: int, drop_last: bool) -> int:
    """How many batches an epoch of ``length`` samples has."""
    return length // batch_size if drop_last else -(-length // batch_size)


def batch_indices(order: np.ndarray, batch: int, batch_size: int) -> np.ndarray:
    """The sample indices of batch ``batch`` (a view of ``order``)."""
    return order[batch * batch_size:(batch + 1) * batch_size]
