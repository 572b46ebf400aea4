"""PyTorch: DataLoaders whose every draw is derived and recorded, on one process or many ranks.

Install the ``torch`` extra (``torch==2.13.0``). The pieces, each usable alone:

- :class:`RecordedSampler` — a ``DistributedSampler``-compatible sampler: epoch e's order is the
  permutation of ``("epoch", e, "shuffle")`` (the same on every rank), recorded once as
  ``epoch_reset``; rank r takes its ``DistributedSampler``-style share. Each pass starts the next
  epoch by itself (``set_epoch`` still works), so forgetting ``set_epoch`` cannot repeat an order.
- :class:`SeedWorkers` — a ``worker_init_fn`` seeding ``random``, numpy's global RNG and torch in
  DataLoader worker k from ``("worker", k)`` (``("rank", r, "worker", k)`` on rank r), instead of
  PyTorch's ``base_seed + worker_id``.
- :func:`register_transform` / :class:`RecordedTransform` — a user's random transform, by declared
  name and version, given a ``torch.Generator`` seeded from its sample's path
  ``(*batch path, position)`` or, with ``per="batch"``, its batch's path
  ``("epoch", e, "batch", b, "augment")``.
- :class:`RecordedDataLoader` — the one-call helper: a real ``torch.utils.data.DataLoader`` over a
  registered dataset that uses all three. Workers make whole batches, digest them and send the
  digests back with the batch; the main process records ``worker_spawned`` and
  ``augmentation_batch`` in the order it consumes batches, so the events, like the batches, are
  the same for any ``num_workers``, start method and ``persistent_workers``.
- :func:`distributed_experiment` — one experiment for all ranks of a ``torch.distributed`` job:
  rank 0 creates it and records to ``main``, rank r attaches with stream ``rank-r``, and rank 0
  records ``run_completed`` after every rank has flushed.

``ledger replay`` re-executes all of it: the built-in replayers for ``epoch_reset`` and
``worker_spawned``, and :mod:`replay.torch_replayers` for the batches (the transform must be
registered by an installed plug-in or a module named with ``--trust``).

WARNING: a batch's content depends on the root seed, the epoch, the dataset, ``batch_size``,
``shuffle``, ``drop_last``, ``num_replicas`` and the rank, and the transform's name, version and
parameters — all recorded. Worker-global RNGs are re-seeded identically each time a worker
starts (each epoch, unless ``persistent_workers``): draw a transform's randomness from its
``generator``, which differs per epoch, batch and sample.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, Sampler
    from torch.utils.data import Dataset as TorchDataset
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("ledger.integrations.torch needs PyTorch: pip install "
                      "'reproducibility-ledger[torch]' (torch==2.13.0)") from error

from ledger.arguments import MAX_EPOCH, check_count, check_epoch, check_flag
from ledger.batches import batch_input_digest, fast_array_digest
from ledger.canonical import normalise
from ledger.datasets import Dataset
from ledger.errors import BadInputError, StoreError
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET, USER_DRAW, WORKER_SPAWNED
from ledger.experiment import RESERVED_LABELS, Experiment
from ledger.integrations.runs import AttachedRun
from ledger.integrations.sharding import (INTEGRATION, check_replicas, rank_augment_path,
                                          rank_share, rank_worker_path, sample_path, share_size)
from ledger.integrations.torch_distributed import (Run, barrier, distributed_experiment,
                                                   rank_stream, register_dataset)
from ledger.integrations.transforms import (PER, TransformInfo, lookup_transform,
                                            register_transform, registered_transforms,
                                            replay_transform)
from ledger.processes import background_threads_paused
from ledger.sampling import batch_count, epoch_order, shuffle_path
from ledger.seeds import check_path, check_root_seed, derive_bytes
from ledger.text import error_text
from ledger.worker_seeding import expected_state_digest_at, seed_process_at, seeded_libraries

__all__ = ["AttachedRun", "RecordedDataLoader", "RecordedSampler", "RecordedTransform",
           "SeedWorkers", "distributed_experiment", "manual_seed", "make_batch",
           "recorded_dataloader", "register_dataset", "register_torch_dataset",
           "register_transform", "registered_transforms", "state_arrays", "tensor_digest",
           "torch_generator", "torch_seed"]


def _check_run(run: Any) -> Run:
    """``run`` when it is an Experiment or AttachedRun; BadInputError naming what it is not."""
    if not isinstance(run, (Experiment, AttachedRun)):
        raise BadInputError(f"got run of type {type(run).__name__}, but must be the Experiment "
                            f"(manager.create_experiment) or an AttachedRun")
    return run


# -- seeds and digests -------------------------------------------------------------------------

def torch_seed(seed: bytes) -> int:
    """The torch seed of a derived 16-byte seed: its first 8 bytes, big-endian (as workers)."""
    return int.from_bytes(seed[:8], "big")


def path_generator(root: int, path: Sequence[Any]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``path`` under ``root``."""
    return torch.Generator().manual_seed(torch_seed(derive_bytes(root, path)))


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """``array_digest`` of a CPU copy of ``tensor`` (dtype, shape, C-ordered little-endian
    bytes)."""
    try:
        if tensor.is_cpu and not tensor.requires_grad:
            array = tensor.numpy()  # a view; fast_array_digest copies only if not C-contiguous
        else:
            array = tensor.detach().cpu().contiguous().numpy()
    except (TypeError, RuntimeError) as error:  # a dtype numpy lacks; no data (a meta tensor)
        raise BadInputError(f"cannot digest a tensor of dtype {tensor.dtype}: {error}") from None
    return fast_array_digest(array)


def state_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``state_dict`` as numpy arrays for ``exp.log_checkpoint``: detached CPU copies, bfloat16
    widened to float32 (exactly). A plain float CPU ``state_dict`` can be logged as it is."""
    if not isinstance(state, Mapping):
        raise BadInputError(f"got {type(state).__name__}, but state_arrays takes a state_dict "
                            f"(a map of names to tensors): pass model.state_dict()")
    arrays = {}
    for key, value in state.items():
        try:
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                if value.dtype == torch.bfloat16:
                    value = value.float()
                value = value.numpy()
            arrays[key] = np.asarray(value)
        except (TypeError, RuntimeError, ValueError) as error:
            raise BadInputError(f"cannot read {key!r} of the state_dict as an array: "
                                f"{error_text(error, 200)}") from None
    return arrays


def _user_path(path: Sequence[Any]) -> tuple:
    labels = check_path(path)
    if not labels or labels[0] in RESERVED_LABELS:
        raise BadInputError(f"got path {list(labels)}, but a user draw path must be non-empty "
                            f"and not start with {sorted(RESERVED_LABELS)}")
    return labels


def manual_seed(run: Run, *path: Any) -> int:
    """Seed torch's global RNG from the user path ``path`` (e.g. ``("model", "init")``) and
    record it as a ``user_draw``; return the torch seed. For model initialisation."""
    labels = _user_path(path)
    seed = derive_bytes(_check_run(run).root_seed, labels)
    run.record_draw(USER_DRAW, labels, seed=seed, params={"generator": "torch.manual_seed"})
    torch.manual_seed(torch_seed(seed))
    return torch_seed(seed)


def torch_generator(run: Run, *path: Any) -> torch.Generator:
    """A ``torch.Generator`` for the user path ``path``, recorded as a ``user_draw``."""
    labels = _user_path(path)
    seed = derive_bytes(_check_run(run).root_seed, labels)
    run.record_draw(USER_DRAW, labels, seed=seed, params={"generator": "torch.Generator"})
    return torch.Generator().manual_seed(torch_seed(seed))


# -- transforms --------------------------------------------------------------------------------

class RecordedTransform:
    """A registered transform with its parameters, seeded from the path of what it transforms.

    ``RecordedTransform("random_flip", p=0.3)`` uses the highest registered version;
    ``per="sample"`` (default) calls it on each sample with the generator of
    ``(*batch path, position)``, ``per="batch"`` on the whole batch of features with the
    generator of the batch's path.
    """

    def __init__(self, name: str, version: int | None = None, *, per: str = "sample",
                 **params: Any) -> None:
        info = lookup_transform(name, version)
        self._bind(info, info.spec(per, params))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "RecordedTransform":
        """Rebuild from a recorded spec (CannotReplayError when it is not registered here)."""
        info, per, params = replay_transform(dict(spec))
        transform = cls.__new__(cls)
        transform._bind(info, info.spec(per, params))
        return transform

    def _bind(self, info: TransformInfo, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.per = spec["per"]
        self._function = info.function
        self._params = spec["params"]
        self._global_rng = info.global_rng

    def apply(self, x: torch.Tensor, root: int, path: Sequence[Any]) -> torch.Tensor:
        """Transform the batch ``x`` (a private copy) of seed path ``path`` under ``root``."""
        if self.per == "batch":
            return self._call(x, root, tuple(path))
        outputs = [self._call(sample, root, sample_path(tuple(path), position))
                   for position, sample in enumerate(x.unbind(0))]
        if not outputs:
            return x
        try:
            return torch.stack(outputs)
        except RuntimeError:
            shapes = sorted({str(tuple(output.shape)) for output in outputs})
            raise BadInputError(f"transform {self.spec['transform']!r} returned samples of "
                                f"different shapes {shapes[:3]}, but the samples of a batch must "
                                f"stack") from None

    def _call(self, x: torch.Tensor, root: int, path: tuple) -> torch.Tensor:
        seed = torch_seed(derive_bytes(root, path))
        generator = torch.Generator().manual_seed(seed)
        if self._global_rng:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = self._function(x, generator, **self._params)
        else:
            result = self._function(x, generator, **self._params)
        if not isinstance(result, torch.Tensor):
            raise BadInputError(f"transform {self.spec['transform']!r} returned "
                                f"{type(result).__name__}, but must return a tensor")
        return result

    def __repr__(self) -> str:
        return (f"RecordedTransform({self.spec['transform']!r}@{self.spec['version']}, "
                f"per={self.per!r}, {self._params})")


def make_batch(features: np.ndarray, labels: np.ndarray | None, indices: np.ndarray,
               transform: RecordedTransform | None, root: int, path: Sequence[Any]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch ``indices`` of a dataset, transformed from seed path ``path``: what a DataLoader
    worker computes and what replay recomputes (one function, so the two cannot drift)."""
    x = torch.from_numpy(np.take(features, indices, axis=0))
    if transform is not None:
        x = transform.apply(x, root, path).contiguous()
    y = None if labels is None else torch.from_numpy(np.take(labels, indices, axis=0))
    return x, y


# -- samplers ------------------------------------------------------------------------------------

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
            _check_run(run)
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
                and run.drew_here(EPOCH_RESET, path, output)):
            # a sampler (or loader) made afresh each epoch, starting at 0 again
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


class _BatchRequests(Sampler[BatchRequest]):
    """One request per batch of this rank's share of each epoch, in order."""

    def __init__(self, sampler: RecordedSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, share = self.sampler._start({"batch_size": self.batch_size,
                                            "drop_last": self.drop_last, "batches": len(self)})
        size = self.batch_size
        for batch in range(len(self)):
            yield BatchRequest(epoch, batch, share[batch * size:(batch + 1) * size])


# -- workers -------------------------------------------------------------------------------------

_worker_report: tuple[int, bytes, int] | None = None
"""In a DataLoader worker seeded by SeedWorkers: (worker id, digest of the seeded RNG states,
pid), sent back with every batch the worker makes."""


class SeedWorkers:
    """``worker_init_fn`` seeding worker k's ``random``, numpy and torch global RNGs from
    ``("worker", k)``, or ``("rank", r, "worker", k)`` on rank r of ``num_replicas`` > 1.

    ``then`` is called afterwards with the worker id (a user's own ``worker_init_fn``). Picklable,
    so it works with the ``spawn`` and ``forkserver`` start methods.
    """

    def __init__(self, root: int, *, num_replicas: int = 1, rank: int = 0,
                 then: Callable[[int], None] | None = None) -> None:
        self.root = check_root_seed(root)
        self.num_replicas, self.rank = check_replicas(num_replicas, rank)
        if then is not None and not callable(then):
            raise BadInputError(f"got worker_init_fn of type {type(then).__name__}, but it must "
                                f"be a function of the worker id")
        self.then = then

    def path(self, worker: int) -> tuple:
        """The seed path of worker ``worker``."""
        return rank_worker_path(self.num_replicas, self.rank, worker)

    def __call__(self, worker: int) -> None:
        global _worker_report
        states = seed_process_at(self.root, self.path(worker))
        _worker_report = (worker, states, os.getpid())
        if self.then is not None:
            self.then(worker)


class WorkerSeedingError(BadInputError):
    """A DataLoader worker's RNG states are not those its derived seed gives."""


# -- the recorded DataLoader ---------------------------------------------------------------------

class _Batches(TorchDataset):
    """The dataset a RecordedDataLoader's workers index: one BatchRequest makes a whole batch."""

    def __init__(self, dataset: Dataset, transform: RecordedTransform | None, root: int,
                 num_replicas: int, rank: int, record: bool) -> None:
        self.features = dataset.features
        self.labels = dataset.labels
        self.transform = transform
        self.root = root
        self.num_replicas = num_replicas
        self.rank = rank
        self.record = record

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, request: BatchRequest) -> tuple[Any, Any, tuple | None]:
        epoch, batch, indices = request
        path = rank_augment_path(self.num_replicas, self.rank, epoch, batch)
        x, y = make_batch(self.features, self.labels, indices, self.transform, self.root, path)
        if not self.record:
            return x, y, None
        output = None if self.transform is None else tensor_digest(x)
        in_worker = torch.utils.data.get_worker_info() is not None
        return x, y, (epoch, batch, len(indices), fast_array_digest(indices), output,
                      _worker_report if in_worker else None)


def _as_made(item: Any) -> Any:
    """collate_fn of a RecordedDataLoader: batches arrive made (picklable for spawn)."""
    return item


RECORD_EVERY = 32
"""For a run that drains its tracked loaders before it records anything else (a run with
``drains_tracked_loaders = True``, as AttachedRun), batch events are recorded in runs of this
many handed-out batches — a tight loop is several times cheaper than one event between two
batches — and the order of the run's events is still the order its batches were handed out.
Other runs get each batch's events as the batch is handed out."""

_OWN_OPTIONS = frozenset({"sampler", "batch_sampler", "collate_fn", "generator", "shuffle",
                          "batch_size", "drop_last", "worker_init_fn"})


class RecordedDataLoader(DataLoader):
    """A ``torch.utils.data.DataLoader`` over a registered dataset whose every draw is derived
    and recorded: ``for x, y in loader`` is one epoch (``x`` alone for a dataset without labels).

    ``run`` is the Experiment (or, on rank r > 0, the AttachedRun) and ``dataset`` a Dataset it
    registered (``run.register_dataset``). ``transform`` is a :class:`RecordedTransform` (or the
    name of a registered transform). ``num_replicas``/``rank`` default to the torch.distributed
    world. Other keyword arguments go to DataLoader (``num_workers``, ``persistent_workers``,
    ``multiprocessing_context``, ``prefetch_factor``, ``pin_memory``, ``timeout``, …);
    ``worker_init_fn`` runs after the ledger's seeding. ``record=False`` records nothing and
    skips the digests (same batches).
    """

    def __init__(self, run: Run, dataset: Dataset, batch_size: int, *,
                 transform: RecordedTransform | str | None = None, shuffle: bool = True,
                 drop_last: bool = False, num_replicas: int | None = None,
                 rank: int | None = None, record: bool = True,
                 worker_init_fn: Callable[[int], None] | None = None, **options: Any) -> None:
        _check_run(run)
        if not isinstance(dataset, Dataset):
            raise BadInputError(f"got dataset of type {type(dataset).__name__}, but must be a "
                                f"Dataset from run.register_dataset (or use recorded_dataloader "
                                f"with a torch Dataset)")
        check_count("batch_size", batch_size, 1)
        clashing = sorted(_OWN_OPTIONS & set(options))
        if clashing:
            raise BadInputError(f"got DataLoader option(s) {clashing}, but a RecordedDataLoader "
                                f"sets them itself")
        if "in_order" in options and options["in_order"] is not True:
            raise BadInputError(f"got in_order={options['in_order']!r}, but recorded batches must "
                                f"arrive in order")
        prefetch = options.get("prefetch_factor")
        if prefetch is not None:
            check_count("prefetch_factor", prefetch, 1)
        record = check_flag("record", record)
        _check_tensor_dtypes(dataset)
        if record and not run.dataset_registered(dataset):
            raise BadInputError(f"got dataset {dataset.name!r} that is not registered in "
                                f"{run.id}: data = run.register_dataset(name, features, labels)")
        if isinstance(transform, str):
            transform = RecordedTransform(transform)
        if transform is not None and not isinstance(transform, RecordedTransform):
            raise BadInputError(f"got transform of type {type(transform).__name__}, but must be "
                                f"a RecordedTransform of a registered transform")
        sampler = RecordedSampler(dataset, run, num_replicas=num_replicas, rank=rank,
                                  shuffle=shuffle, record=record)
        requests = _BatchRequests(sampler, int(batch_size), check_flag("drop_last", drop_last))
        if len(requests) == 0:
            raise BadInputError(f"got batch_size {batch_size} with drop_last and "
                                f"{len(sampler)} samples per rank, but every epoch would be empty")
        self.run = run
        self.ledger_dataset = dataset
        self.recorded_sampler = sampler
        self.requests = requests
        self.transform = transform
        self.record = record
        self.seed_workers = SeedWorkers(run.root_seed, num_replicas=sampler.num_replicas,
                                        rank=sampler.rank, then=worker_init_fn)
        self._workers: dict[int, bytes] = {}
        self._batch_params = self._batch_event_params()
        self._pending: list[tuple] = []
        self._draining = False
        try:
            super().__init__(_Batches(dataset, transform, run.root_seed, sampler.num_replicas,
                                      sampler.rank, self.record),
                             batch_size=None, sampler=requests, collate_fn=_as_made,
                             worker_init_fn=self.seed_workers,
                             # base_seed is drawn from this private generator, not torch's
                             # global RNG; every worker RNG it would seed is re-seeded by
                             # SeedWorkers.
                             generator=torch.Generator().manual_seed(0), **options)
        except (TypeError, ValueError) as error:  # DataLoader's own checks of its options
            raise BadInputError(f"DataLoader refused its options: "
                                f"{error_text(error, 300)}") from None
        track = getattr(run, "_track", None)
        if record and callable(track):
            track(self)  # the run drains this loader before it records anything else

    @property
    def epoch(self) -> int:
        """The epoch of the latest pass (-1 before the first)."""
        return self.recorded_sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.recorded_sampler.set_epoch(epoch)

    # Deliberately not torch's _BaseDataLoaderIter: a generator over it that records each
    # batch as it is handed out. (Unused ignore without torch installed: DataLoader is Any.)
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override, unused-ignore]
        # torch starts the workers here: fork ones are forked with the library's background
        # threads stopped, as WorkerPool's are (see background_threads_paused)
        forking = self.num_workers > 0 and self._start_method() == "fork"
        with background_threads_paused() if forking else contextlib.nullcontext():
            batches = super().__iter__()
        return self._consume(batches)

    def _consume(self, batches: Iterator[Any]) -> Iterator[Any]:
        with_labels = self.ledger_dataset.labels is not None
        if not getattr(self.run, "drains_tracked_loaders", False):
            for x, y, report in batches:  # record each batch as it is handed out
                if report is not None:
                    self._record(*report)
                yield (x, y) if with_labels else x
            return
        first = True
        try:
            for x, y, report in batches:
                if self.record and self.run.closed:
                    raise StoreError(f"{self.run!r} is closed: its loader hands out no more "
                                     f"batches")
                if report is not None:
                    self._pending.append(report)
                    # The first batch of a pass is recorded before it is handed out, so a
                    # refused draw (a clash with another loader's) stops the pass before it.
                    if first or len(self._pending) >= RECORD_EVERY:
                        self._drain_recorder()
                first = False
                yield (x, y) if with_labels else x
        finally:
            self._drain_recorder()

    def _drain_recorder(self) -> None:
        """Record the events of the batches handed out so far (see RECORD_EVERY)."""
        if self._draining:
            return  # recording drains the run's loaders, this one included
        self._draining = True
        try:
            pending, self._pending = self._pending, []
            for report in pending:
                self._record(*report)
        finally:
            self._draining = False

    def close(self) -> None:
        """Record what is pending (the run calls this when it completes); the loader stays
        usable."""
        self._drain_recorder()

    def _record(self, epoch: int, batch: int, rows: int, indices_digest: bytes,
                output: bytes | None, worker: tuple[int, bytes, int] | None) -> None:
        if worker is not None:
            self._record_worker(*worker)
        if self.transform is None:
            return
        sampler = self.recorded_sampler
        path = rank_augment_path(sampler.num_replicas, sampler.rank, epoch, batch)
        params = self._batch_params.copy()  # assigning existing keys keeps their sorted order
        params["batch"], params["epoch"] = batch, epoch
        params["indices_digest"], params["rows"] = indices_digest, rows
        self.run.record_normalised_draw(
            AUGMENTATION_BATCH, path, seed=derive_bytes(sampler.root, path), params=params,
            input=batch_input_digest(self.ledger_dataset.digest, indices_digest), output=output)

    def _batch_event_params(self) -> dict[str, Any]:
        """The params of this loader's ``augmentation_batch`` events, normalised once (sorted
        keys, plain types) with placeholders for the per-batch values, which :meth:`_record`
        sets in place: the input ``record_normalised_draw`` needs, at the cost of a dict copy.
        """
        sampler, dataset = self.recorded_sampler, self.ledger_dataset
        return normalise({
            "epoch": 0, "batch": 0, "rows": 0, "indices_digest": b"",
            "batch_size": self.requests.batch_size, "drop_last": self.requests.drop_last,
            "shuffle": sampler.shuffle, "dataset": dataset.name, "dataset_digest": dataset.digest,
            "transform": self.transform.spec if self.transform is not None else None,
            "sampler": {"num_replicas": sampler.num_replicas, "rank": sampler.rank,
                        "even_shares": "drop" if sampler.drop_last else "pad"},
            "loader": INTEGRATION}, depth=1)  # the params of a body: one level down

    def _record_worker(self, worker: int, states: bytes, pid: int) -> None:
        if self._workers.get(worker) == states:
            return
        sampler = self.recorded_sampler
        path = self.seed_workers.path(worker)
        expected = expected_state_digest_at(sampler.root, path)
        if states != expected:
            raise WorkerSeedingError(f"DataLoader worker {worker} reports RNG states "
                                     f"{states.hex()[:16]}…, but its derived seed gives "
                                     f"{expected.hex()[:16]}…")
        params: dict[str, Any] = {"worker": worker, "num_workers": self.num_workers,
                                  "start_method": self._start_method(),
                                  "persistent": bool(self.persistent_workers),
                                  "seeded": seeded_libraries(), "loader": INTEGRATION}
        if sampler.num_replicas > 1:
            params.update(rank=sampler.rank, num_replicas=sampler.num_replicas)
        self.run.record_draw(WORKER_SPAWNED, path, seed=derive_bytes(sampler.root, path),
                             params=params, output=expected, meta={"pid": pid})
        self._workers[worker] = states

    def _start_method(self) -> str:
        context = self.multiprocessing_context
        if context is not None:
            return context.get_start_method()
        # allow_none: asking must not fix the process-wide method as a side effect
        chosen = torch.multiprocessing.get_start_method(allow_none=True)
        return chosen or torch.multiprocessing.get_all_start_methods()[0]


def register_torch_dataset(run: Run, name: str, dataset: Any, *, role: str | None = None
                           ) -> Dataset:
    """Register a map-style torch Dataset of ``(features, label)`` samples (or features alone,
    bare or as 1-tuples, as a ``TensorDataset`` of one tensor gives them) by reading every
    sample into arrays — for datasets that fit in memory. ``role`` as for
    :meth:`Experiment.register_dataset`."""
    if isinstance(_check_run(run), AttachedRun):
        raise BadInputError("register a dataset through the experiment's main process; on other "
                            "ranks use register_dataset(run, name, features, labels)")
    try:
        samples = [dataset[index] for index in range(len(dataset))]
    except TypeError as error:  # no len() (an IterableDataset) or no indexing
        raise BadInputError(f"got {type(dataset).__name__} for dataset {name!r}, but it must be "
                            f"a map-style torch Dataset (len() and [index]): {error}") from None
    if not samples:
        raise BadInputError(f"got an empty dataset {name!r}")
    if all(isinstance(sample, (tuple, list)) and len(sample) == 1 for sample in samples):
        samples = [sample[0] for sample in samples]
    pairs = isinstance(samples[0], (tuple, list)) and len(samples[0]) == 2
    try:
        features = np.stack([_array(sample[0] if pairs else sample) for sample in samples])
        labels = np.stack([_array(sample[1]) for sample in samples]) if pairs else None
    except (TypeError, ValueError, RuntimeError, IndexError) as error:
        raise BadInputError(f"cannot read dataset {name!r} into arrays (samples must be "
                            f"tensors or arrays of one shape, or (features, label) pairs): "
                            f"{error_text(error, 200)}") from None
    return run.register_dataset(name, features, labels, role=role)


def _check_tensor_dtypes(dataset: Dataset) -> None:
    """Refuse a dataset whose arrays torch cannot hold (e.g. longdouble) before anything runs."""
    for role, array in (("features", dataset.features), ("labels", dataset.labels)):
        if array is None:
            continue
        try:
            torch.from_numpy(array[:1])
        except TypeError:
            raise BadInputError(f"dataset {dataset.name!r} has {role} of dtype {array.dtype}, "
                                f"which torch cannot hold: convert them first") from None


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def recorded_dataloader(run: Run, data: Any, batch_size: int, *, name: str | None = None,
                        **options: Any) -> RecordedDataLoader:
    """The one-call helper: a fully recorded DataLoader from a registered Dataset, a torch
    Dataset (registered here as ``name``), or ``(features, labels)`` arrays (likewise).
    ``options`` as :class:`RecordedDataLoader`."""
    _check_run(run)
    if not isinstance(data, Dataset):
        if name is None:
            raise BadInputError("got unregistered data, but registering it needs name=")
        if isinstance(data, tuple) and len(data) == 2:
            data = run.register_dataset(name, *data)
        else:
            data = register_torch_dataset(run, name, data)
    return RecordedDataLoader(run, data, batch_size, **options)


__all__ += ["BatchRequest", "INTEGRATION", "PER", "WorkerSeedingError", "barrier",
            "lookup_transform", "path_generator", "rank_stream"]
