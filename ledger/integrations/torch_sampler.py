"""The recorded sampler: epoch e's order from ``("epoch", e, "shuffle")``, recorded once as
``epoch_reset``, each rank taking its ``DistributedSampler``-style share; and the per-batch
requests a RecordedDataLoader sends its workers. Part of :mod:`ledger.integrations.torch`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ledger.arguments import MAX_EPOCH, check_epoch, check_flag
from ledger.batches import fast_array_digest
from ledger.datasets import Dataset
from ledger.errors import BadInputError
from ledger.events import EPOCH_RESET
from ledger.integrations.sharding import INTEGRATION, check_replicas, rank_share, share_size
from ledger.integrations.torch_distributed import Run
from ledger.integrations.torch_seeds import check_run
from ledger.sampling import batch_count, epoch_order, shuffle_path
from ledger.seeds import check_root_seed, derive_bytes


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
    return check_replicas(num_replicas, rank)


class RecordedSampler(Sampler[int]):
    """Sample indices of a dataset, epoch by epoch, from derived seeds; ``DistributedSampler``
    compatible (``num_replicas``, ``rank``, ``drop_last``, ``set_epoch``, same shares).

    ``run`` (an Experiment or AttachedRun) gives the root seed and records ``epoch_reset`` — on
    rank 0 only, the permutation being the same on every rank. Without a run give ``seed`` and
    nothing is recorded. ``num_replicas`` and ``rank`` default to the ``torch.distributed``
    world, else 1 and 0. Each pass starts the next epoch (0 first) unless :meth:`set_epoch` chose.
    """

    def __init__(self, data_source: Any, run: Run | None = None, *,
                 num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int | None = None, drop_last: bool = False, record: bool = True) -> None:
        self.length = _source_length(data_source)
        self.dataset = data_source if isinstance(data_source, Dataset) else None
        self.run = run
        if run is not None:
            check_run(run)
            if seed is not None and check_root_seed(seed) != run.root_seed:
                raise BadInputError(f"got seed {seed}, but within experiment {run.id} every draw "
                                    f"derives from its root seed {run.root_seed}: drop it")
            self.root = run.root_seed
        elif seed is None:
            raise BadInputError("got neither a run nor a seed, but a sampler needs a root seed")
        else:
            self.root = check_root_seed(seed)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.shuffle = check_flag("shuffle", shuffle)
        self.drop_last = check_flag("drop_last", drop_last)
        self.recording = run is not None and check_flag("record", record)
        self.epoch = -1
        """The epoch of the latest pass (-1 before the first)."""
        self._next_epoch = 0
        self._chosen = False
        self._recorded: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self._next_epoch = check_epoch(epoch)
        self._chosen = True

    @property
    def next_epoch(self) -> int:
        """The epoch the next pass starts: the one after the latest, or the one chosen."""
        return self._next_epoch

    @property
    def epoch_chosen(self) -> bool:
        """True when :meth:`set_epoch` chose the next pass's epoch and no pass has started
        since."""
        return self._chosen

    def __len__(self) -> int:
        return share_size(self.length, self.num_replicas, self.drop_last)

    def order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (every rank's)."""
        return epoch_order(self.root, epoch, self.length, self.shuffle)

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices of ``epoch``."""
        return rank_share(self.order(epoch), self.num_replicas, self.rank, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        # A generator: nothing happens until the first index is asked for, so a DataLoader that
        # creates an iterator it never uses does not start (or record) an epoch.
        _epoch, share = self._start()
        yield from share.tolist()

    def _start(self, extra: Mapping[str, Any] | None = None) -> tuple[int, np.ndarray]:
        """Start the next epoch, recording its ``epoch_reset`` (``extra`` params added) on
        rank 0; return the epoch and this rank's indices (the order is computed once)."""
        epoch = self._next_epoch
        if epoch > MAX_EPOCH:
            raise BadInputError(f"epoch {MAX_EPOCH} was the last one (epochs are 64-bit path "
                                f"labels): set_epoch to go on")
        order = self.order(epoch)
        path = shuffle_path(epoch)
        records = self.recording and self.rank == 0 and epoch not in self._recorded
        output = fast_array_digest(order) if records else b""
        chosen, self._chosen = self._chosen, False
        run = self.run
        if (records and run is not None and not chosen
                and run.repeats_draw(EPOCH_RESET, path, output, fresh=not self._recorded)):
            # a sampler (or loader) made afresh each epoch, starting at 0 again (in a resumed
            # run too, once another one of this process has started over)
            raise BadInputError(f"got a new sampler starting epoch {epoch} by itself, but "
                                f"another sampler of {run.id} already drew epoch {epoch}: it "
                                f"would repeat that epoch's order. Keep one loader for the run, "
                                f"or choose the epoch with set_epoch(epoch)")
        self._next_epoch, self.epoch = epoch + 1, epoch
        if records:
            params: dict[str, Any] = {"epoch": epoch, "length": self.length,
                                      "shuffle": self.shuffle, "num_replicas": self.num_replicas,
                                      "even_shares": "drop" if self.drop_last else "pad",
                                      "sampler": INTEGRATION, **(extra or {})}
            if self.dataset is not None:
                params.update(dataset=self.dataset.name, dataset_digest=self.dataset.digest)
            assert self.run is not None  # recording: there is a run
            self.run.record_draw(EPOCH_RESET, path, seed=derive_bytes(self.root, path),
                                 params=params, output=output)
            self._recorded.add(epoch)
        return epoch, rank_share(order, self.num_replicas, self.rank, self.drop_last)


def _source_length(data_source: Any) -> int:
    """The sample count of a sampler's data source: an int, or something with a length."""
    sized = hasattr(data_source, "__len__") and not isinstance(data_source, (str, bytes))
    count = isinstance(data_source, (int, np.integer)) and not isinstance(data_source, bool)
    if not (sized or count):
        raise BadInputError(f"got a data source of type {type(data_source).__name__}, but it "
                            f"must be a sample count (int) or a dataset with a length")
    try:
        length = int(data_source) if count else len(data_source)
    except (TypeError, OverflowError) as error:
        raise BadInputError(f"cannot take the length of the data source: {error}") from None
    if not 1 <= length <= sys.maxsize:
        raise BadInputError(f"got a data source of length {length!r}, but it must hold from 1 "
                            f"to {sys.maxsize} samples")
    return int(length)


class BatchRequest(NamedTuple):
    """What the main process sends a DataLoader worker: which batch, and its sample indices."""

    epoch: int
    batch: int
    indices: np.ndarray


class BatchRequests(Sampler[BatchRequest]):
    """One request per batch of this rank's share of each epoch, in order.

    :attr:`resume` — ``(epoch, batch)``, set by a restored loader — makes the next pass, if it
    is that epoch, start at that batch: the batches before it were handed out before the state
    was saved. Any next pass clears it. :attr:`current` is ``(passes started, epoch of the
    latest, its first batch)``.
    """

    def __init__(self, sampler: RecordedSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.resume: tuple[int, int] | None = None
        self.current = (0, -1, 0)

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, share = self.sampler._start({"batch_size": self.batch_size,
                                            "drop_last": self.drop_last, "batches": len(self)})
        resume, self.resume = self.resume, None
        first = resume[1] if resume is not None and resume[0] == epoch else 0
        self.current = (self.current[0] + 1, epoch, first)
        size = self.batch_size
        for batch in range(first, len(self)):
            yield BatchRequest(epoch, batch, share[batch * size:(batch + 1) * size])
