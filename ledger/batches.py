"""Making one batch: gather its samples, augment them, and digest what the ledger records.

The same :class:`BatchMaker` runs in the main process (``num_workers=0``) and in every worker
process, writing into whatever buffer it is given — a fresh array or a shared-memory slot — so
the bytes of a batch cannot depend on where it was made.

Digests of a batch (recorded by ``augmentation_batch``):

- ``indices_digest`` = ``array_digest`` of its sample indices (int64);
- ``input`` = ``value_digest([dataset digest, indices digest])`` — the raw batch is fixed by the
  dataset and the indices, so its bytes are never hashed;
- ``output`` = ``array_digest`` of the augmented features.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ledger.augment import DataAugmenter, augment_path
from ledger.canonical import canonical, pack_normalised
from ledger.digests import ARRAY_TAG, VALUE_TAG, array_digest, unstable_bytes
from ledger.sampling import batch_count, batch_indices, epoch_order
from ledger.seeds import derive_bytes

_PREFIXES: dict[tuple[str, tuple[int, ...]], "hashlib._Hash"] = {}


def fast_array_digest(array: np.ndarray) -> bytes:
    """``array_digest`` of a C-contiguous little-endian plain array, hashed through its buffer.

    Same result as :func:`ledger.digests.array_digest` (tested); other arrays, and bool ones
    (whose bytes it normalises), take that path.
    The hash state after the tag and the (dtype, shape) header is cached per (dtype, shape),
    only for dtypes whose bytes their values determine: a cached one needs no check again.
    """
    dtype = array.dtype
    if not array.flags.c_contiguous or dtype.byteorder == ">" or dtype.kind == "b":
        return array_digest(array)
    key = (dtype.str, array.shape)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if unstable_bytes(dtype) is not None:
            return array_digest(array)  # which refuses it, saying why
        if len(_PREFIXES) > 256:
            _PREFIXES.clear()
        prefix = _PREFIXES[key] = hashlib.sha256(
            ARRAY_TAG + canonical([dtype.str, list(array.shape)]))
    hasher = prefix.copy()
    if array.size:
        # ndarray has the buffer protocol. numpy < 2.5's stubs give it __buffer__ only for
        # Python >= 3.12 (mypy checks as 3.11: arg-type); numpy >= 2.5's, on Python >= 3.12
        # only, always do (the ignore is then unused)
        hasher.update(array)  # type: ignore[arg-type, unused-ignore]
    return hasher.digest()


_INPUT_PREFIX = hashlib.sha256(VALUE_TAG)


def batch_input_digest(dataset_digest: bytes, indices_digest: bytes) -> bytes:
    """The ``input`` of an augmentation_batch event: the raw batch, by dataset and indices.

    Equal to ``value_digest([dataset_digest, indices_digest])`` (tested).
    """
    hasher = _INPUT_PREFIX.copy()
    hasher.update(pack_normalised([dataset_digest, indices_digest]))
    return hasher.digest()


@dataclass(slots=True)
class BatchDigests:
    """What a made batch reports: its sample count and, when recording an augmented batch, its
    indices and output digests and the derived seed of its augmentation."""

    rows: int
    indices: bytes | None
    output: bytes | None
    seed: bytes | None = None


class BatchMaker:
    """Makes batch b of epoch e of one dataset (see the module docstring).

    The order derives from ``root``, the augmentation from ``augment_root`` (the same root,
    except for an augmenter with its own seed used outside an experiment). An augmenter with no
    ops is treated as none.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray | None, *, root: int,
                 augment_root: int | None = None, batch_size: int, shuffle: bool,
                 drop_last: bool, augmenter: DataAugmenter | None, record: bool) -> None:
        self.features = features
        self.labels = labels
        self.root = root
        self.augment_root = root if augment_root is None else augment_root
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augmenter = augmenter if augmenter is not None and len(augmenter) else None
        self.record = record
        self.length = int(features.shape[0])
        self.batches = batch_count(self.length, batch_size, drop_last)
        self.augmenter_spec = None if self.augmenter is None else self.augmenter.spec
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._order_digest: bytes | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (cached for the latest epoch asked)."""
        if epoch != self._order_epoch:
            self._order = epoch_order(self.root, epoch, self.length, self.shuffle)
            self._order_epoch, self._order_digest = epoch, None
        return self._order

    def order_digest(self, epoch: int) -> bytes:
        """``array_digest`` of :meth:`order` — the output of the epoch's ``epoch_reset`` —
        hashed once per epoch however often it is asked."""
        order = self.order(epoch)
        if self._order_digest is None:
            self._order_digest = fast_array_digest(order)
        return self._order_digest

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        """The sample indices of batch ``batch`` of ``epoch``."""
        return batch_indices(self.order(epoch), batch, self.batch_size)

    def rows(self, batch: int) -> int:
        """How many samples batch ``batch`` holds."""
        return min(self.batch_size, self.length - batch * self.batch_size)

    def fill(self, epoch: int, batch: int, x_out: np.ndarray, y_out: np.ndarray | None
             ) -> BatchDigests:
        """Gather, augment and digest batch ``batch`` of ``epoch`` into ``x_out`` / ``y_out``.

        The buffers hold at least the batch's rows; only the first ``rows`` are written.
        """
        indices = self.indices(epoch, batch)
        rows = len(indices)
        x = x_out[:rows]
        np.take(self.features, indices, axis=0, out=x, mode="clip")  # unbuffered
        if self.labels is not None and y_out is not None:
            np.take(self.labels, indices, axis=0, out=y_out[:rows], mode="clip")
        if self.augmenter is None:
            return BatchDigests(rows, None, None)
        seed = derive_bytes(self.augment_root, augment_path(epoch, batch))
        self.augmenter.apply(x, np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big"))))
        if not self.record:
            return BatchDigests(rows, None, None)
        return BatchDigests(rows, fast_array_digest(indices), fast_array_digest(x), seed)

    def make(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray | None, BatchDigests]:
        """Batch ``batch`` of ``epoch`` in fresh arrays, with its digests."""
        rows = self.rows(batch)
        x = np.empty((rows,) + self.features.shape[1:], dtype=self.features.dtype)
        y = None if self.labels is None else np.empty((rows,) + self.labels.shape[1:],
                                                      dtype=self.labels.dtype)
        return x, y, self.fill(epoch, batch, x, y)
