"""The recorded DataLoader: a real ``torch.utils.data.DataLoader`` over a registered dataset
whose workers make whole batches and digest them, while the main process records
``worker_spawned`` and ``augmentation_batch`` in the order it hands batches out; and the helpers
that register torch datasets for it. Part of :mod:`ledger.integrations.torch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ledger.arguments import check_count, check_flag
from ledger.batches import batch_input_digest, fast_array_digest
from ledger.canonical import normalise
from ledger.datasets import Dataset
from ledger.errors import BadInputError, StoreError
from ledger.events import AUGMENTATION_BATCH, WORKER_SPAWNED
from ledger.integrations import torch_workers  # its worker_report, read when a batch is made
from ledger.integrations.runs import AttachedRun
from ledger.integrations.sharding import INTEGRATION, rank_augment_path
from ledger.integrations.torch_distributed import Run
from ledger.integrations.torch_loader_state import (STATE_FORMAT, check_position,
                                                    check_run_state, check_settings, run_part,
                                                    transform_digest)
from ledger.integrations.torch_sampler import BatchRequest, BatchRequests, RecordedSampler
from ledger.integrations.torch_seeds import check_run, tensor_digest
from ledger.integrations.torch_transform import RecordedTransform, make_batch
from ledger.integrations.torch_worker_deaths import death_error, worker_deaths_held
from ledger.integrations.torch_workers import SeedWorkers, WorkerSeedingError
from ledger.iterator import MAX_TIMEOUT, MAX_WORKERS
from ledger.processes import background_threads_paused
from ledger.seeds import derive_bytes
from ledger.text import error_text
from ledger.worker_seeding import expected_state_digest_at, seeded_libraries


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

    def __getitem__(self, request: BatchRequest
                    ) -> tuple[Any, Any, tuple[int, int], tuple | None]:
        """The batch, its ``(epoch, batch)`` position, and (when recording) its report."""
        epoch, batch, indices = request
        path = rank_augment_path(self.num_replicas, self.rank, epoch, batch)
        x, y = make_batch(self.features, self.labels, indices, self.transform, self.root, path)
        if not self.record:
            return x, y, (epoch, batch), None
        output = None if self.transform is None else self._output_digest(x)
        in_worker = torch.utils.data.get_worker_info() is not None
        return x, y, (epoch, batch), (epoch, batch, len(indices), fast_array_digest(indices),
                                      output, torch_workers.worker_report if in_worker else None)

    def _output_digest(self, x: torch.Tensor) -> bytes:
        """The digest of the transform's output ``x``; a dtype numpy cannot hold (bfloat16)
        is refused naming the transform, which alone chose it."""
        try:
            return tensor_digest(x)
        except BadInputError as error:
            assert self.transform is not None  # only a transform's output is digested
            raise BadInputError(f"transform {self.transform.spec['transform']!r} returned a "
                                f"tensor of dtype {x.dtype}, which cannot be recorded: {error}. "
                                f"Return float32 (exact for bfloat16) and cast in the training "
                                f"loop, or record=False") from None


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
        check_run(run)
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
        _check_worker_options(options)
        for flag in ("persistent_workers", "pin_memory"):  # "no" would turn either on
            if flag in options:
                options[flag] = check_flag(flag, options[flag])
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
        requests = BatchRequests(sampler, int(batch_size), check_flag("drop_last", drop_last))
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
        self._worker_batches: Any = None  # torch's worker iterator, once a pass has started
        self._held_deaths: list[RuntimeError] = []
        self._handed = (0, 0)
        """(pass, how many batches of its epoch were handed out to the caller) at the latest
        batch handed out: what :meth:`state_dict` saves — not what the workers made ahead."""
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

    @property
    def next_epoch(self) -> int:
        """The epoch the next pass iterates: after :meth:`load_state_dict`, the saved epoch
        (at its next batch) or, for a state saved at an epoch's end, the one after it."""
        return self.recorded_sampler.next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``. After :meth:`load_state_dict`, ``set_epoch`` of
        the epoch the state continues (:attr:`next_epoch`) keeps the restored position — the
        pass goes on at the saved batch, so a loop calling ``set_epoch(epoch)`` each epoch
        resumes correctly; another epoch starts that epoch at its first batch instead, the
        rest of the restored epoch dropped (as ``TrainingDataIterator.reset()`` drops it)."""
        self.recorded_sampler.set_epoch(epoch)

    # -- resumption --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands and everything its batches depend on, as a small plain map
        (ints, bools and strs; lists in ``logged``) that ``torch.save``, ``json`` and
        ``ledger.canonical`` take: save it beside the model weights at a checkpoint.

        ``epoch`` is the epoch in progress and ``batch`` how many of its batches were handed
        out to the caller — not how many the workers made ahead. :meth:`load_state_dict` in a
        fresh loader (a fresh process, any ``num_workers``) continues that epoch at the next
        batch with the batches the uninterrupted run hands out. When recording, the run's
        events are flushed first, so a saved state is never ahead of the ledger; the state
        names the run (``run``) and how many metrics and checkpoints it has logged
        (``logged``), which a resumed run does not log again.
        """
        state = self._settings()
        state["epoch"], state["batch"] = self._position()
        if self.record:
            self._drain_recorder()
            state.update(run_part(self.run))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass continue from a saved :meth:`state_dict`: the saved epoch at its
        next batch, or the next epoch for a state saved at an epoch's end; later passes go on
        with the following epochs. A state saved under other settings (``batch_size``,
        ``shuffle``, ``drop_last``, the dataset, the transform, the seed, ``num_replicas``,
        rank), a malformed one, or — in a recording run — one of another run or ahead of a
        resumed run's record is refused (BadInputError), the loader left as it was."""
        check_settings(state, self._settings())
        batches = len(self.requests)
        epoch, batch = check_position(state, batches)
        if self.record:
            check_run_state(self.run, state, epoch, batch,
                            records_batches=self.transform is not None)
        finished = batch == batches
        # chosen, as set_epoch chooses: a restored loader continues the epoch, not repeats it
        self.recorded_sampler.set_epoch(epoch + 1 if finished else epoch)
        self.requests.resume = None if finished else (epoch, batch)

    def _settings(self) -> dict[str, Any]:
        """The state's format and the settings batch contents depend on (and, for people
        reading a saved state, the dataset's name and the batches per epoch)."""
        sampler, dataset = self.recorded_sampler, self.ledger_dataset
        return {"format": STATE_FORMAT, "root_seed": str(sampler.root),
                "dataset": dataset.name, "dataset_digest": dataset.digest.hex(),
                "batch_size": self.requests.batch_size, "shuffle": sampler.shuffle,
                "drop_last": self.requests.drop_last, "num_replicas": sampler.num_replicas,
                "rank": sampler.rank, "batches": len(self.requests),
                "transform": transform_digest(None if self.transform is None
                                              else self.transform.spec)}

    def _position(self) -> tuple[int, int]:
        """``(epoch, batches of it handed out)``: a restored position not yet continued, the
        epoch set_epoch chose (at 0), or the latest pass's epoch and how many of its batches
        were handed out — counting from where the pass started (a restored pass, mid-epoch)."""
        sampler, requests = self.recorded_sampler, self.requests
        resume = requests.resume
        if resume is not None and sampler.epoch_chosen and sampler.next_epoch == resume[0]:
            return resume
        passes, epoch, first = requests.current
        if sampler.epoch_chosen or not passes:
            return sampler.next_epoch, 0
        handed_in, handed = self._handed
        return epoch, handed if handed_in == passes else first

    # Deliberately not torch's _BaseDataLoaderIter: a generator over it that records each
    # batch as it is handed out. (Unused ignore without torch installed: DataLoader is Any.)
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override, unused-ignore]
        # torch starts the workers here: fork ones are forked with the library's background
        # threads stopped, as WorkerPool's are (see background_threads_paused)
        forking = self.num_workers > 0 and self._start_method() == "fork"
        with background_threads_paused() if forking else contextlib.nullcontext():
            batches = super().__iter__()
        if not self.num_workers:
            return self._consume(batches)
        self._worker_batches = batches  # torch's worker iterator (kept across persistent passes)
        return self._consume(self._from_workers(batches))

    def _from_workers(self, batches: Iterator[Any]) -> Iterator[Any]:
        """The items of torch's worker iterator ``batches``; a worker that died raises
        WorkerError naming it, its pid, and the batch and epoch it was making — torch's own
        RuntimeError (kept as the cause) names only the pid. Once the pass ends — however it
        ends — the loader shuts torch's iterator's workers down and lets go of it (unless its
        workers persist)."""
        try:
            while True:
                try:
                    if self._held_deaths:  # seen while recording (worker_deaths_held)
                        raise self._held_deaths.pop()
                    item = next(batches)
                except StopIteration:
                    return
                except RuntimeError as error:
                    named = death_error(error, batches, self.epoch)
                    if named is None:  # a live worker's error, a timeout: torch's says it
                        raise
                    raise named from error
                yield item
        finally:
            if self._worker_batches is batches and not self.persistent_workers:
                self._worker_batches = None
                # torch's iterator shuts its workers down when collected: one kept alive by an
                # error's traceback (a reference cycle) could be collected in a worker that a
                # later loader forked, whose __del__ then printed "can only test a child
                # process". Shut down here, in the process that started them (a no-op once
                # torch did it at the pass's end).
                shutdown = getattr(batches, "_shutdown_workers", None)
                if callable(shutdown):
                    shutdown()

    def _consume(self, batches: Iterator[Any]) -> Iterator[Any]:
        with_labels = self.ledger_dataset.labels is not None
        if not getattr(self.run, "drains_tracked_loaders", False):
            for x, y, (_epoch, batch), report in batches:  # record each as it is handed out
                if report is not None:
                    with worker_deaths_held(self._worker_batches) as deaths:
                        self._record(*report)
                    self._held_deaths += deaths
                self._handed = (self.requests.current[0], batch + 1)
                yield (x, y) if with_labels else x
            return
        first = True
        try:
            for x, y, (_epoch, batch), report in batches:
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
                self._handed = (self.requests.current[0], batch + 1)
                yield (x, y) if with_labels else x
        finally:
            self._drain_recorder()

    def _drain_recorder(self) -> None:
        """Record the events of the batches handed out so far (see RECORD_EVERY)."""
        if self._draining:
            return  # recording drains the run's loaders, this one included
        self._draining = True
        try:
            with worker_deaths_held(self._worker_batches) as deaths:
                pending, self._pending = self._pending, []
                for report in pending:
                    self._record(*report)
            self._held_deaths += deaths
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
    if isinstance(check_run(run), AttachedRun):
        raise BadInputError("register a dataset through the experiment's main process; on other "
                            "ranks use register_dataset(run, name, features, labels)")
    try:
        samples = [dataset[index] for index in range(_sample_count(dataset, name))]
    except TypeError as error:  # no indexing
        raise _not_map_style(dataset, name, error) from None
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


def _sample_count(dataset: Any, name: str) -> int:
    """``len(dataset)``; BadInputError when it has none or its ``__len__`` returns what len()
    refuses (a negative or huge number: a bare ValueError or OverflowError)."""
    try:
        return len(dataset)
    except TypeError as error:  # an IterableDataset
        raise _not_map_style(dataset, name, error) from None
    except (ValueError, OverflowError) as error:
        raise BadInputError(f"got {type(dataset).__name__} for dataset {name!r} whose len() "
                            f"fails: {error}") from None


def _not_map_style(dataset: Any, name: str, error: TypeError) -> BadInputError:
    return BadInputError(f"got {type(dataset).__name__} for dataset {name!r}, but it must be a "
                         f"map-style torch Dataset (len() and [index]): {error}")


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


def _check_worker_options(options: dict[str, Any]) -> None:
    """Refuse the ``num_workers`` and ``timeout`` that torch takes at construction but fails on
    only at the first pass — a float ``num_workers`` (a bare TypeError), a ``timeout`` without
    workers (a bare AssertionError), an infinite or huge one (OverflowError) — or never (a NaN
    ``timeout``, which silently means no limit; more workers than TrainingDataIterator starts,
    which torch forks one by one): refused here, before anything is recorded."""
    workers = check_count("num_workers", options.get("num_workers", 0), 0)
    if workers > MAX_WORKERS:  # torch would start them all, one by one, never refusing
        raise BadInputError(f"got num_workers={workers}, but at most {MAX_WORKERS} worker "
                            f"processes are started")
    timeout = options.get("timeout", 0)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer,
                                                                np.floating))
            or not 0 <= timeout <= MAX_TIMEOUT):
        raise BadInputError(f"got timeout={timeout!r}, but must be from 0 (no limit) to "
                            f"{MAX_TIMEOUT:,} seconds")
    if timeout and not workers:
        raise BadInputError(f"got timeout={timeout!r} with num_workers=0, but a timeout needs "
                            f"workers: it bounds the wait for a worker's batch")


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if value is None or isinstance(value, (Mapping, str, bytes)):
        # numpy would hold it as an object, refused later as "dtype object" without a word on why
        raise TypeError(f"a sample holds {type(value).__name__}, not a tensor or array (for "
                        f"samples that are dicts, register their arrays: (features, labels))")
    return np.asarray(value)


def recorded_dataloader(run: Run, data: Any, batch_size: int, *, name: str | None = None,
                        **options: Any) -> RecordedDataLoader:
    """The one-call helper: a fully recorded DataLoader from a registered Dataset, a torch
    Dataset (registered here as ``name``), or ``(features, labels)`` arrays (likewise).
    ``options`` as :class:`RecordedDataLoader`."""
    check_run(run)
    if not isinstance(data, Dataset):
        if name is None:
            raise BadInputError("got unregistered data, but registering it needs name=")
        if isinstance(data, tuple) and len(data) == 2:
            data = run.register_dataset(name, *data)
        else:
            data = register_torch_dataset(run, name, data)
    return RecordedDataLoader(run, data, batch_size, **options)
