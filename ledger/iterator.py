"""TrainingDataIterator: mini-batches whose every draw is derived, recorded and resumable.

One ``for`` loop over the iterator is one pass over the current epoch. Epoch e's order is
derived from ``("epoch", e, "shuffle")`` and recorded as ``epoch_reset``; each batch is gathered,
augmented from ``("epoch", e, "batch", b, "augment")`` and recorded as ``augmentation_batch``,
in the main process, in the order the batches are handed out — so the events, like the batches,
are the same for any ``num_workers`` and start method.

Position: ``(epoch, batch, started)``. A pass continues the current epoch where it stopped (after
a ``break`` or a restored state) and starts the next epoch once the current one is exhausted;
:meth:`reset` abandons the rest of the current epoch and starts the next one.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator, Mapping
from typing import Any, NoReturn, cast

import numpy as np

from ledger.arguments import MAX_EPOCH, check_count, check_flag
from ledger.augment import DataAugmenter, augment_path
from ledger.batches import BatchDigests, BatchMaker, batch_input_digest
from ledger.canonical import normalise
from ledger.datasets import Dataset, in_memory_dataset
from ledger.errors import BadInputError, ForeignStateError, StateAheadError
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET, WORKER_SPAWNED
from ledger.experiment import Experiment
from ledger.sampling import shuffle_path
from ledger.seeds import check_root_seed, derive_bytes, draw_root_seed, root_seed_to_bytes
from ledger.text import quoted
from ledger.worker_seeding import expected_state_digest, worker_path
from ledger.workers import WorkerError, WorkerPool, check_start_method

STATE_FORMAT = "ledger/iterator-state/v1"
MAX_TIMEOUT = 1_000_000
"""Longest ``timeout`` accepted, in seconds (11.6 days): longer waits overflow the clocks."""
MAX_WORKERS = 256
"""Most worker processes an iterator starts: a typo (or a forged config replayed with --full)
must not fork thousands of processes."""
Batch = tuple[np.ndarray, np.ndarray] | np.ndarray


def _as_dataset(data: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return in_memory_dataset("unregistered", data[0], data[1])
    if isinstance(data, np.ndarray):
        return in_memory_dataset("unregistered", data)
    raise BadInputError(f"got data of type {type(data).__name__}, but must be a Dataset "
                        f"(exp.register_dataset), a (features, labels) tuple or an array")


class TrainingDataIterator:
    """Deterministic, recorded mini-batches of a dataset: ``for x, y in batches`` is one epoch.

    ``data`` is a Dataset from :meth:`Experiment.register_dataset` (required when recording),
    or — without an experiment — a ``(features, labels)`` tuple or a features array (then batches
    are arrays, not pairs). Batches are fresh arrays the caller owns.

    The root seed is the experiment's; without an experiment, ``seed`` (else the augmenter's
    seed, else 128 bits from the OS, see :attr:`root_seed`) and nothing is recorded. With an
    experiment, ``record=False`` records nothing — for evaluation loaders that draw nothing.

    ``num_workers`` processes (start method ``start_method``: fork, spawn or forkserver; default
    the platform's) make batches ahead, ``prefetch`` each, moving them through shared memory;
    the batches are bit-identical to ``num_workers=0``. ``timeout`` (seconds) bounds the wait for
    one batch from a live worker; a dead worker raises WorkerError at once.

    WARNING: batch contents depend on the root seed, the epoch, the dataset, ``batch_size``,
    ``shuffle``, ``drop_last`` and the augmenter spec. ``state_dict()`` records all of them and
    ``load_state_dict()`` refuses a state saved under different ones.
    """

    def __init__(self, data: Any, batch_size: int, *, augmenter: DataAugmenter | None = None,
                 num_workers: int = 0, experiment: Experiment | None = None,
                 seed: int | None = None, shuffle: bool = True, drop_last: bool = False,
                 start_method: str | None = None, prefetch: int = 2,
                 timeout: float | None = None, record: bool = True) -> None:
        self.dataset = _as_dataset(data)
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.num_workers = check_count("num_workers", num_workers, 0)
        if self.num_workers > MAX_WORKERS:
            raise BadInputError(f"got num_workers={self.num_workers}, but at most {MAX_WORKERS} "
                                f"worker processes are started")
        self.prefetch = check_count("prefetch", prefetch, 1)
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= MAX_TIMEOUT):
            raise BadInputError(f"got timeout={timeout!r}, but must be > 0 and at most "
                                f"{MAX_TIMEOUT:,} seconds, or None (no limit)")
        if augmenter is not None and not isinstance(augmenter, DataAugmenter):
            raise BadInputError(f"got augmenter of type {type(augmenter).__name__}, but must be "
                                f"a DataAugmenter")
        if experiment is not None and not isinstance(experiment, Experiment):
            raise BadInputError(f"got experiment of type {type(experiment).__name__}, but must "
                                f"be an Experiment (manager.create_experiment)")
        self.shuffle = check_flag("shuffle", shuffle)
        self.drop_last = check_flag("drop_last", drop_last)
        self.augmenter = augmenter
        self.experiment = experiment
        if start_method is not None:  # here, not at the first pass, and with 0 workers too
            check_start_method(start_method)
        self.start_method = start_method
        self.timeout = timeout
        self.root_seed, self.augment_seed = self._roots(seed)
        # checked without an experiment too, as shuffle and drop_last are (and the loader's)
        record = check_flag("record", record)
        self.recording = experiment is not None and record
        if (experiment is not None and self.recording
                and not experiment.dataset_registered(self.dataset)):
            raise BadInputError(f"got dataset {self.dataset.name!r} that is not registered in "
                                f"{experiment.id}, but a recorded run needs it registered: "
                                f"data = exp.register_dataset(name, features, labels)")
        if augmenter is not None and self.dataset.features.dtype not in (np.float32, np.float64):
            if len(augmenter):
                raise BadInputError(f"got {self.dataset.features.dtype} features, but augmentation "
                                    f"needs float32 or float64 features")
        self._maker = BatchMaker(self.dataset.features, self.dataset.labels,
                                 root=self.root_seed, augment_root=self.augment_seed,
                                 batch_size=self.batch_size, shuffle=self.shuffle,
                                 drop_last=self.drop_last, augmenter=augmenter,
                                 record=self.recording)
        if self._maker.batches == 0:
            raise BadInputError(f"got batch_size {self.batch_size} with drop_last and "
                                f"{len(self.dataset)} samples, but every epoch would be empty")
        self._epoch = 0
        self._batch = 0
        self._started = False
        self._reset_recorded: int | None = None
        self._restored = False
        self._pool: WorkerPool | None = None
        self._active: Generator[Batch, None, None] | None = None
        self._closed = False
        self._records_batches = self.recording and self._maker.augmenter is not None
        # params["augmenter"] of each batch event: two levels down in its body
        self._augmenter_spec = normalise(self._maker.augmenter_spec, depth=2)
        if experiment is not None:
            experiment._track(self)

    def _roots(self, seed: int | None) -> tuple[int, int]:
        augmenter_seed = None if self.augmenter is None else self.augmenter.seed
        if self.experiment is not None:
            root = self.experiment.root_seed
            for what, given in (("seed", seed), ("augmenter seed", augmenter_seed)):
                if given is not None and check_root_seed(given) != root:
                    raise BadInputError(f"got {what} {given}, but within experiment "
                                        f"{self.experiment.id} every draw derives from its root "
                                        f"seed {root}: drop it or pass the same")
            return root, root
        if seed is not None:
            root = check_root_seed(seed)
        elif augmenter_seed is not None:
            root = augmenter_seed
        else:
            root = draw_root_seed()
        return root, augmenter_seed if augmenter_seed is not None else root

    # -- position --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._maker.batches

    @property
    def epoch(self) -> int:
        """The epoch in progress (or last finished; 0 before the first pass)."""
        return self._epoch

    @property
    def batch(self) -> int:
        """How many batches of :attr:`epoch` have been handed out."""
        return self._batch

    @property
    def epoch_finished(self) -> bool:
        """True when every batch of :attr:`epoch` has been handed out."""
        return self._started and self._batch >= self._maker.batches

    @property
    def next_epoch(self) -> int:
        """The epoch the next ``for`` loop iterates."""
        return self._epoch + 1 if self.epoch_finished else self._epoch

    # -- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """Start (or continue) a pass over the current epoch; see the module docstring."""
        self._check_open()
        self._refuse_repeated_epoch(self.next_epoch)
        self._stop_active()
        self._ensure_pool()
        if not self._started:
            self._start_epoch(self._epoch)
        elif self.epoch_finished:
            self._start_epoch(self._epoch + 1)
        self._record_reset()
        self._active = self._pass(self._epoch, self._batch)
        return self._active

    def reset(self) -> None:
        """Start the next epoch now (the first, if none has started), dropping what is left."""
        self._check_open()
        epoch = self._epoch + 1 if self._started else self._epoch
        self._refuse_repeated_epoch(epoch)
        self._stop_active()
        self._start_epoch(epoch)
        self._record_reset()

    def _refuse_repeated_epoch(self, epoch: int) -> None:
        """Refuse to start ``epoch`` when another iterator of this process drew it and this one
        was not restored to it: an iterator made afresh for each epoch starts at epoch 0 again
        and repeats its order — the bug this library exists to fix — while the ledger, which
        records a draw once, would stay silent. In a resumed run, the first iterator to start
        an epoch may redo epochs the lost attempt drew (that is starting over, not repeating);
        once an iterator of the resumed process has started one, another iterator may not."""
        if not self.recording or self._restored or self._reset_recorded == epoch:
            return
        experiment = cast(Experiment, self.experiment)
        path = shuffle_path(epoch)
        # another output at this draw (other data) is refused by repeats_draw itself
        if not experiment.repeats_draw(EPOCH_RESET, path, self._maker.order_digest(epoch),
                                       fresh=self._reset_recorded is None):
            return
        raise BadInputError(f"got a new iterator starting epoch {epoch}, but another iterator "
                            f"of {experiment.id} already drew epoch {epoch}: it would repeat "
                            f"that epoch's order. Keep one TrainingDataIterator for the run and "
                            f"loop over it once per epoch, or continue a saved position with "
                            f"load_state_dict(state)")

    def _start_epoch(self, epoch: int) -> None:
        self._epoch, self._batch, self._started = epoch, 0, True

    def _record_reset(self) -> None:
        if not self.recording or self._reset_recorded == self._epoch:
            return
        epoch = self._epoch
        path = shuffle_path(epoch)
        cast(Experiment, self.experiment).record_draw(  # recording: there is an experiment
            EPOCH_RESET, path, seed=derive_bytes(self.root_seed, path),
            params={"epoch": epoch, "length": len(self.dataset), "shuffle": self.shuffle,
                    "batch_size": self.batch_size, "drop_last": self.drop_last,
                    "batches": self._maker.batches, "dataset": self.dataset.name,
                    "dataset_digest": self.dataset.digest},
            output=self._maker.order_digest(epoch),
            meta={"resumed_at_batch": self._batch} if self._batch else None)
        self._reset_recorded = epoch

    def _pass(self, epoch: int, start: int) -> Generator[Batch, None, None]:
        stop = self._maker.batches
        source = (self._pool.run(epoch, start, stop) if self._pool is not None
                  else self._local(epoch, start, stop))
        with_labels = self.dataset.labels is not None
        record = self._record_batch if self._records_batches else None
        try:
            for x, y, digests in source:
                batch = self._batch
                if record is not None:
                    record(epoch, batch, digests)
                self._batch = batch + 1
                yield (x, cast(np.ndarray, y)) if with_labels else x  # labels: y is an array
        finally:
            source.close()

    def _local(self, epoch: int, start: int, stop: int
               ) -> Generator[tuple[np.ndarray, np.ndarray | None, BatchDigests], None, None]:
        make = self._maker.make
        for batch in range(start, stop):
            yield make(epoch, batch)

    def _record_batch(self, epoch: int, batch: int, digests: BatchDigests) -> None:
        """Record ``augmentation_batch`` in the consuming process, as the batch is handed out."""
        dataset = self.dataset
        # Built normalised, keys in sorted order, for Experiment.record_normalised_draw.
        params = {"augmenter": self._augmenter_spec, "batch": batch,
                  "batch_size": self.batch_size, "dataset": dataset.name,
                  "dataset_digest": dataset.digest, "drop_last": self.drop_last,
                  "epoch": epoch, "indices_digest": digests.indices, "rows": digests.rows,
                  "shuffle": self.shuffle}
        # Called only when recording augmented batches: there is an experiment, and the maker
        # reported the batch's indices digest.
        cast(Experiment, self.experiment).record_normalised_draw(
            AUGMENTATION_BATCH, augment_path(epoch, batch), seed=digests.seed, params=params,
            input=batch_input_digest(dataset.digest, cast(bytes, digests.indices)),
            output=digests.output)

    def _ensure_pool(self) -> None:
        if self._pool is not None and self._pool.inherited:
            self._pool = None  # the parent's workers, in a forked child: start the child's own
        if self.num_workers == 0 or (self._pool is not None and not self._pool.broken):
            return
        self._pool = None
        # Computed before the workers start: importing torch here (when installed) lets forked
        # workers inherit it instead of each importing it again.
        expected = [expected_state_digest(self.root_seed, k) for k in range(self.num_workers)]
        pool = WorkerPool(self.dataset.features, self.dataset.labels, root=self.root_seed,
                          augment_root=self.augment_seed, batch_size=self.batch_size,
                          shuffle=self.shuffle, drop_last=self.drop_last,
                          augmenter=self._maker.augmenter, record=self.recording,
                          num_workers=self.num_workers, start_method=self.start_method,
                          prefetch=self.prefetch, timeout=self.timeout)
        try:
            for info in pool.infos:
                if info.states != expected[info.worker]:
                    raise WorkerError(f"worker {info.worker} reports RNG states "
                                      f"{info.states.hex()[:16]}…, but its derived seed gives "
                                      f"{expected[info.worker].hex()[:16]}…")
                if self.recording:
                    path = worker_path(info.worker)
                    cast(Experiment, self.experiment).record_draw(  # recording: it exists
                        WORKER_SPAWNED, path, seed=derive_bytes(self.root_seed, path),
                        params={"worker": info.worker, "num_workers": self.num_workers,
                                "start_method": pool.start_method,
                                "seeded": list(info.seeded)},
                        output=expected[info.worker], meta={"pid": info.pid})
        except BaseException:
            pool.close()
            raise
        self._pool = pool

    def _stop_active(self) -> None:
        active, self._active = self._active, None
        if active is not None:
            active.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BadInputError("got a closed TrainingDataIterator, but iteration needs an open "
                                "one")

    # -- resumption ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position and everything batch contents depend on; canonically encodable.

        Save it with ``ledger.canonical(state)`` (msgpack, never pickle) and restore it with
        :meth:`load_state_dict` — into a fresh iterator, in a fresh process, with any
        ``num_workers``: the remaining batches are exactly those the uninterrupted run gets.

        When recording, the experiment's events are flushed first: a state saved to disk is
        then never ahead of the ledger, however the process ends afterwards; and the state
        notes how many metrics and checkpoints of each name and epoch the run has logged
        (``logged``): those a resumed run will not log again. It names the run (``run``): a
        run continuing it (``parent=``) holds none of what came before it.
        """
        state = self._state()
        experiment = cast(Experiment, self.experiment)
        if self.recording:
            state["run"] = experiment.id
            if not experiment.closed:
                # where the run's record stood, as libraries before ``logged`` resumed from it
                state["recorded_until"] = experiment.flush() + 1
            # after suspend() too: a state saved then must still skip what came before it
            state["logged"] = experiment.logs_passed()
        return state

    def _state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "root_seed": root_seed_to_bytes(self.root_seed),
                "augment_seed": root_seed_to_bytes(self.augment_seed),
                "dataset": self.dataset.name, "dataset_digest": self.dataset.digest,
                "length": len(self.dataset), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last,
                "augmenter": self._maker.augmenter_spec,
                "epoch": self._epoch, "batch": self._batch, "started": self._started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict` (refused if saved under other settings)."""
        self._check_open()
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise BadInputError(f"got {type(state).__name__} state, but must be a state_dict of "
                                f"format {STATE_FORMAT}")
        mine = self._state()
        for key in ("root_seed", "augment_seed", "dataset_digest", "length", "batch_size",
                    "shuffle", "drop_last", "augmenter"):
            if not _same_setting(state.get(key), mine[key]):
                raise BadInputError(f"got a state saved with {key}={_shown(key, state.get(key))}, "
                                    f"but this iterator has {key}={_shown(key, mine[key])}")
        epoch, batch, started = state.get("epoch"), state.get("batch"), state.get("started")
        batches = self._maker.batches
        if (type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH or type(batch) is not int
                or not 0 <= batch <= batches or not isinstance(started, bool)
                or (batch and not started)):
            raise BadInputError(f"got position epoch={epoch!r} batch={batch!r} "
                                f"started={started!r}, but must be a position within "
                                f"{batches} batches per epoch")
        recorded_until = state.get("recorded_until")
        logged = checked_logged(state.get("logged"))
        saved_by = checked_saved_by(state)
        experiment = cast(Experiment, self.experiment)
        if self.recording and experiment.resumed:
            # A state of the parent (continued here) has nothing of this run's record before
            # it; one of a library that did not name the run is taken for this run's own.
            if saved_by is None:
                saved_by = experiment.id
            if saved_by != experiment.id:
                self._check_parents_state(saved_by)
            else:
                self._check_recorded_until(epoch, batch, started)
                if logged is not None:
                    experiment.skip_logs_to(logged)
                elif type(recorded_until) is int:
                    experiment.forget_logs_before(recorded_until)
        elif self.recording:
            self._check_fresh_runs_state(saved_by)
        self._stop_active()
        self._epoch, self._batch, self._started = epoch, batch, started
        self._reset_recorded = None
        self._restored = True

    def _check_recorded_until(self, epoch: int, batch: int, started: bool) -> None:
        """In a resumed run, refuse a position past what the run recorded: a state saved before
        its events were flushed (by a library older than :meth:`state_dict`'s flush, or another
        program's state) would resume after draws the ledger never got — a run with a hole in it
        that replay would still certify. A new run continuing another (``parent=``) began
        where its parent's state stood, its parent holding what came before: its draws are
        checked from its first one on (from nothing, when it has none yet)."""
        experiment = cast(Experiment, self.experiment)
        first_epoch, first_batch = 0, 0
        if experiment.parent is not None:
            epochs = [e for e in experiment.drawn_labels(EPOCH_RESET, ("epoch",), 1)
                      if type(e) is int]
            first_epoch = min(epochs, default=epoch + 1)
            if epoch < first_epoch:  # where it began, or before: nothing of its own to check
                return
            if epoch == first_epoch:  # the epoch it began in, maybe mid-way
                first_batch = min((b for b in experiment.drawn_labels(
                    AUGMENTATION_BATCH, ("epoch", epoch, "batch"), 3) if type(b) is int),
                    default=batch)
        for passed in range(first_epoch, epoch + started):
            if not experiment.has_draw(EPOCH_RESET, shuffle_path(passed)):
                self._refuse_ahead(epoch, batch, f"epoch {passed}'s shuffle")
        # The batches of the state's own epoch; an earlier epoch may have been cut short by
        # reset(), so how many of its batches were drawn is not known here.
        if self._records_batches and started:
            for done in range(first_batch, batch):
                if not experiment.has_draw(AUGMENTATION_BATCH, augment_path(epoch, done)):
                    self._refuse_ahead(epoch, batch, f"batch {done} of epoch {epoch}")

    def _check_parents_state(self, saved_by: Any) -> None:
        """A resumed run may load a state of its own or of the run it continues (``parent=``):
        one of any other run cannot be checked against this run's record, and is refused."""
        experiment = cast(Experiment, self.experiment)
        if experiment.parent is None or saved_by != experiment.parent:
            continues = ("" if experiment.parent is None
                         else f" or of {experiment.parent}, which it continues")
            raise ForeignStateError(f"got a state saved by run {quoted(saved_by)}, but resumed "
                                    f"run {experiment.id} continues only a state of its "
                                    f"own{continues}: load the state {experiment.id} saved")

    def _check_fresh_runs_state(self, saved_by: Any) -> None:
        """A new run may start from a state of the run it continues (``parent=``): one saved by
        any other run would start it mid-way with nothing in its record linking it to the run
        that drew what came before, and is refused. A state that names no run (an older
        library's) is taken as before."""
        experiment = cast(Experiment, self.experiment)
        if saved_by is None or saved_by in (experiment.id, experiment.parent):
            return
        raise ForeignStateError(f"got a state saved by run {quoted(saved_by)}, but new run "
                                f"{experiment.id} does not continue it: create the run with "
                                f"parent={quoted(saved_by)} to continue that run")

    def _refuse_ahead(self, epoch: int, batch: int, missing: str) -> NoReturn:
        raise StateAheadError(f"got a state at epoch {epoch} batch {batch}, but "
                              f"{cast(Experiment, self.experiment).id} has no record of "
                              f"{missing}: the state is ahead of the ledger (events not yet "
                              f"written when it was saved were lost); resume from an earlier "
                              f"state (the run is left incomplete, to be resumed again)")

    # -- life cycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the current pass and the worker processes. Safe to call twice."""
        if self._closed:
            return
        try:
            self._stop_active()
        finally:
            self._closed = True
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty with ``num_workers=0`` or before a pass)."""
        return [] if self._pool is None else self._pool.pids

    def __enter__(self) -> "TrainingDataIterator":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TrainingDataIterator({self.dataset.name!r}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers}, epoch={self._epoch}, batch={self._batch})")


def checked_saved_by(state: Mapping[str, Any]) -> str | None:
    """A state's ``run``, checked: the id of the run that saved it, or None for a state that
    names none (saved by an iterator recording nothing, or by a library older than ``run``).
    A ``run`` given but not an id — ``None`` put there, say — is refused: taken for no run, it
    let a state of one run start another, unrelated one mid-epoch."""
    if "run" not in state:
        return None
    saved_by = state["run"]
    if not isinstance(saved_by, str):
        raise BadInputError(f"got a state whose 'run' is {saved_by!r:.40}, but a state_dict names "
                            f"the run that saved it by its id (or, recording nothing, has no "
                            f"'run')")
    return saved_by


def checked_logged(logged: Any) -> list[tuple[str, str, int | None, int]] | None:
    """A state's ``logged`` counts, checked: None for a state saved without them."""
    if logged is None:
        return None
    if isinstance(logged, list) and all(
            isinstance(entry, (list, tuple)) and len(entry) == 4
            and isinstance(entry[0], str) and isinstance(entry[1], str)
            and (entry[2] is None or type(entry[2]) is int) and type(entry[3]) is int
            and entry[3] >= 0 for entry in logged):
        return [(kind, name, epoch, count) for kind, name, epoch, count in logged]
    raise BadInputError("got a state whose 'logged' is not a list of [kind, name, epoch, "
                        "count], but a state_dict saves it so")


def _same_setting(saved: Any, mine: Any) -> bool:
    """Equal and of the same types throughout: a saved batch_size of 4.0 or shuffle of 1 is not
    this iterator's 4 or True, whatever ``==`` says."""
    if type(saved) is not type(mine):
        return False
    if isinstance(mine, dict):
        return saved.keys() == mine.keys() and all(_same_setting(saved[k], mine[k]) for k in mine)
    if isinstance(mine, list):
        return len(saved) == len(mine) and all(map(_same_setting, saved, mine))
    if isinstance(mine, float):  # by bits: a NaN fill is its own setting, -0.0 is not 0.0
        return struct.pack("<d", saved) == struct.pack("<d", mine)
    return saved == mine


SEED_KEYS = ("root_seed", "augment_seed")
"""State keys holding a 128-bit seed as 16 big-endian bytes."""


def _shown(key: str, value: Any) -> str:
    """A state setting as an error shows it: a seed as the int it was given as (its first bytes
    are zero for any seed below 2**64, so two such seeds showed alike), a digest by its start."""
    if key in SEED_KEYS and isinstance(value, bytes) and len(value) == 16:
        return str(int.from_bytes(value, "big"))
    if isinstance(value, bytes):
        return value.hex()[:16] + "…"
    return repr(value)
