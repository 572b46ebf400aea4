"""Model-based tests of TrainingDataIterator: random sequences of what a training script does —
take batches, break out of a pass, loop over an epoch, ``reset()``, save and restore the state
into a fresh iterator (with other ``num_workers``), close and reopen, suspend and resume the run —
each batch handed out checked against the model: the batch the *uninterrupted* iterator (same
data, seed, batch_size, shuffle, drop_last, augmenter) gives at that (epoch, batch) position.

The model is the position ``(epoch, batch, started)`` and the README's rules for it: a pass
continues the current epoch where it stopped and starts the next one once it is exhausted;
``reset()`` starts the next epoch at once (the first, if none has started); a restored state
continues exactly where it was saved, an epoch's end included. The uninterrupted batches are
themselves checked against the README's formula (the epoch's derived permutation, then the
augmenter under the batch's derived seed).

:class:`RecordedIteratorMachine` runs the same rules inside an experiment recording into an
SQLite ledger, restores within the run and across ``exp.suspend()`` /
``manager.resume_experiment`` (from the latest state, an earlier checkpoint as a killed run
does, or the start), continues a completed run in a child run (``parent=``), logs a per-batch
loss, and at the end of each run checks the recorded draws and losses against what was handed
out, verifies the ledger and certifies the run by replay.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize, invariant,
                                 precondition, rule)

from ledger import (BadInputError, DataAugmenter, ExperimentManager, TrainingDataIterator,
                    array_digest, canonical, generator, verify)
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET, METRIC
from ledger.sampling import shuffle_path
from replay import replay_run
from trainer_helpers import bodies

START_METHOD = "fork"
Batch = tuple[bytes, str, tuple[int, ...], bytes | None]
"""A batch as compared: features bytes, dtype, shape, and label bytes (None without labels)."""


@dataclass(frozen=True)
class Config:
    """Everything batch contents depend on, and the data."""

    rows: int
    sample_shape: tuple[int, ...]
    dtype: str
    labelled: bool
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int | None
    noise_std: float | None
    mask_prob: float | None
    mask_fill: float | None
    scale_jitter: float | None
    augmenter_seed: int | None
    prefetch: int
    """Batches each worker makes ahead (contents never depend on it)."""

    def data(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Features whose every value holds the sample index plus a fraction (samples of
        ``sample_shape``); labels the index."""
        index = np.arange(self.rows)
        width = int(np.prod(self.sample_shape))
        features = (index[:, None] + np.linspace(0, 0.5, width)[None, :]).astype(self.dtype)
        features = features.reshape((self.rows,) + self.sample_shape)
        return features, (index.astype(np.int64) if self.labelled else None)

    def augmenter(self) -> DataAugmenter | None:
        """A fresh augmenter of this configuration (None without ops)."""
        if self.noise_std is None and self.mask_prob is None and self.scale_jitter is None:
            return None
        return DataAugmenter(noise_std=self.noise_std, mask_prob=self.mask_prob,
                             mask_fill=self.mask_fill, scale_jitter=self.scale_jitter,
                             seed=self.augmenter_seed)

    def batches(self) -> int:
        """Batches per epoch."""
        return self.rows // self.batch_size if self.drop_last else -(-self.rows // self.batch_size)


@st.composite
def configs(draw: st.DrawFn, recorded: bool = False) -> Config:
    """A small dataset (7–40 rows) and iterator settings; inside an experiment the seed is the
    experiment's and the augmenter has none of its own."""
    batch_size = draw(st.integers(1, 9))
    drop_last = draw(st.booleans())
    rows = draw(st.integers(max(7, batch_size) if drop_last else 7, 40))
    seeds = st.integers(0, 2**128 - 1)
    return Config(rows=rows, sample_shape=draw(st.sampled_from([(3,), (), (1,), (2, 2)])),
                  dtype=draw(st.sampled_from(["float32", "float64"])),
                  labelled=recorded or draw(st.booleans()), batch_size=batch_size,
                  shuffle=draw(st.booleans()), drop_last=drop_last,
                  seed=draw(seeds) if recorded else draw(st.none() | seeds),
                  noise_std=draw(st.none() | st.just(0.25)),
                  mask_prob=(mask_prob := draw(st.none() | st.just(0.3))),
                  # a NaN or -0.0 fill: a state compares floats by their bits
                  mask_fill=None if mask_prob is None else draw(
                      st.sampled_from([None, -0.0, float("nan")])),
                  scale_jitter=draw(st.none() | st.just(0.2)),
                  augmenter_seed=None if recorded else draw(st.none() | seeds),
                  prefetch=draw(st.integers(1, 3)))


def as_batch(handed: Any, labelled: bool) -> Batch:
    """What an iterator handed out, in comparable form (checking its shape: pair or array)."""
    if labelled:
        assert isinstance(handed, tuple) and len(handed) == 2
        x, y = handed
        assert isinstance(y, np.ndarray) and len(y) == len(x)
        labels: bytes | None = y.tobytes()
    else:
        assert isinstance(handed, np.ndarray)
        x, labels = handed, None
    assert isinstance(x, np.ndarray) and x.flags.c_contiguous
    return x.tobytes(), x.dtype.str, x.shape, labels


@dataclass(frozen=True)
class Position:
    """The model: the epoch in progress, how many of its batches were handed out, and whether
    it has started."""

    epoch: int = 0
    batch: int = 0
    started: bool = False

    def pass_start(self, batches: int) -> Position:
        """Where a new ``for`` pass starts: the current epoch, or the next once it is done."""
        if not self.started:
            return replace(self, started=True)
        if self.batch >= batches:
            return Position(self.epoch + 1, 0, True)
        return self

    def after_reset(self) -> Position:
        """``reset()``: the next epoch (the first, if none has started), at its first batch."""
        return Position(self.epoch + 1 if self.started else self.epoch, 0, True)


class Uninterrupted:
    """The model's batches: those of one iterator looped over epoch after epoch, never stopped,
    each epoch also checked against the README's formula."""

    def __init__(self, config: Config, root: int, augment_root: int) -> None:
        self.config = config
        self.root, self.augment_root = root, augment_root
        features, labels = config.data()
        data = features if labels is None else (features, labels)
        self.features, self.labels = features, labels
        self.iterator = TrainingDataIterator(data, config.batch_size, seed=root,
                                             augmenter=config.augmenter(),
                                             shuffle=config.shuffle, drop_last=config.drop_last)
        assert self.iterator.augment_seed == augment_root
        self.epochs: list[list[Batch]] = []

    def batch(self, epoch: int, batch: int) -> Batch:
        """Batch ``batch`` of ``epoch`` of the uninterrupted run."""
        while len(self.epochs) <= epoch:
            got = [as_batch(b, self.config.labelled) for b in self.iterator]
            assert got == self.formula(len(self.epochs))
            self.epochs.append(got)
        return self.epochs[epoch][batch]

    def formula(self, epoch: int) -> list[Batch]:
        """Epoch ``epoch`` by the README: order = the derived permutation (or arange), batch b
        = order[b*batch_size:(b+1)*batch_size], augmented under ("epoch", e, "batch", b,
        "augment")."""
        config = self.config
        order = (generator(self.root, ("epoch", epoch, "shuffle")).permutation(config.rows)
                 if config.shuffle else np.arange(config.rows))
        augmenter = config.augmenter()
        out = []
        for b in range(config.batches()):
            indices = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = self.features[indices]
            if augmenter is not None:
                x = augmenter(x, epoch=epoch, batch_index=b, seed=self.augment_root)
            y = None if self.labels is None else self.labels[indices]
            out.append(as_batch(x if y is None else (x, y), config.labelled))
        return out

    def close(self) -> None:
        self.iterator.close()


def loss_of(features: bytes) -> float:
    """A stand-in loss of a batch, from the bytes of its features: a function of them only."""
    return float(sum(features) % 9973)


def assert_closed(iterator: TrainingDataIterator, by: str) -> None:
    """The iterator refuses a new pass: ``by`` closed it."""
    try:
        iter(iterator)
    except BadInputError as refused:
        assert "closed" in str(refused)
    else:
        raise AssertionError(f"{by} left its iterator open")


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """A state as saved to a file and read back (the README's ``ledger.canonical``)."""
    loaded = msgpack.unpackb(canonical(state), raw=False)
    assert isinstance(loaded, dict)
    return loaded


class IteratorMachine(RuleBasedStateMachine):
    """One TrainingDataIterator without an experiment, driven at random, checked against the
    model. Subclasses change how iterators are made and add rules."""

    def __init__(self) -> None:
        super().__init__()
        self.iterator: TrainingDataIterator | None = None
        self.reference: Uninterrupted | None = None
        self.active: Any = None
        self.position = Position()
        self.handed: list[tuple[int, int, Batch]] = []
        self.started_epochs: set[int] = set()
        self.epochs_here: set[int] = set()
        """The epochs started (or re-entered) in this process: since the run's last resume."""

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self, config: Config, max_workers: int) -> None:
        self.config = config
        self.max_workers = max_workers
        self.features, self.labels = config.data()
        first = self.make_iterator(max_workers, seed=config.seed)
        self.root = first.root_seed
        self.reference = Uninterrupted(config, first.root_seed, first.augment_seed)
        self.iterator = first

    def data(self) -> Any:
        return self.features if self.labels is None else (self.features, self.labels)

    def make_iterator(self, num_workers: int, *, seed: int | None) -> TrainingDataIterator:
        """A fresh iterator of this configuration."""
        config = self.config
        return TrainingDataIterator(self.data(), config.batch_size, seed=seed,
                                    augmenter=config.augmenter(), shuffle=config.shuffle,
                                    drop_last=config.drop_last, num_workers=num_workers,
                                    start_method=START_METHOD, prefetch=config.prefetch)

    def fresh(self, num_workers: int) -> TrainingDataIterator:
        """A fresh iterator for a restore: same settings, the run's root seed."""
        return self.make_iterator(num_workers, seed=self.root)

    def workers(self, wanted: int) -> int:
        return min(wanted, self.max_workers)

    @property
    def it(self) -> TrainingDataIterator:
        assert self.iterator is not None
        return self.iterator

    # -- helpers ---------------------------------------------------------------------------------

    def expect_batch(self, handed: Any) -> None:
        """Check a batch just handed out against the uninterrupted run's at the model's
        position, and advance the model."""
        assert self.reference is not None
        position = self.position
        assert position.started and position.batch < self.config.batches()
        got = as_batch(handed, self.config.labelled)
        expected = self.reference.batch(position.epoch, position.batch)
        assert got == expected, (f"batch {position.batch} of epoch {position.epoch} differs "
                                 f"from the uninterrupted run's")
        self.handed.append((position.epoch, position.batch, got))
        self.position = replace(position, batch=position.batch + 1)

    def begin_pass(self) -> None:
        """``iter(it)``: a new pass, where the model says it starts."""
        self.position = self.position.pass_start(self.config.batches())
        self.active = iter(self.it)
        self.started(self.position.epoch)
        self.check_position()

    def started(self, epoch: int) -> None:
        self.started_epochs.add(epoch)
        self.epochs_here.add(epoch)

    def check_position(self) -> None:
        it, position = self.it, self.position
        assert (it.epoch, it.batch) == (position.epoch, position.batch)
        finished = position.started and position.batch >= self.config.batches()
        assert it.epoch_finished == finished
        assert it.next_epoch == position.epoch + finished

    def replace_iterator(self, new: TrainingDataIterator, state: dict[str, Any],
                         position: Position) -> None:
        """Load ``state`` (saved at ``position``) into ``new`` and carry on with it."""
        new.load_state_dict(state)
        self.iterator, self.active, self.position = new, None, position
        self.check_position()

    def state_now(self) -> dict[str, Any]:
        state = round_trip(self.it.state_dict())
        position = self.position
        assert (state["epoch"], state["batch"], state["started"]) == (
            position.epoch, position.batch, position.started)
        return state

    # -- rules -----------------------------------------------------------------------------------

    @rule(count=st.integers(1, 12))
    def take(self, count: int) -> None:
        """Take batches one at a time, as ``next()`` on the pass in progress (a new pass when
        there is none or the last one ended: a training loop's next ``for``)."""
        for _ in range(count):
            if self.active is None:
                self.begin_pass()
            try:
                handed = next(self.active)
            except StopIteration:
                assert self.position.batch == self.config.batches(), (
                    f"the pass ended after batch {self.position.batch} of "
                    f"{self.config.batches()}")
                self.active = None
                continue
            self.expect_batch(handed)

    @rule()
    def abandon_pass(self) -> None:
        """Break out of the pass in progress and start another (``for`` again)."""
        self.begin_pass()

    @rule()
    def loop_over_an_epoch(self) -> None:
        """``for batch in it``: the rest of the current epoch, or the whole next one."""
        self.position = self.position.pass_start(self.config.batches())
        self.started(self.position.epoch)
        for handed in self.it:
            self.expect_batch(handed)
        assert self.position.batch == self.config.batches()
        self.active = None
        self.check_position()

    @rule()
    def reset(self) -> None:
        """``reset()``: the next epoch now, the pass in progress abandoned."""
        old = self.active
        self.it.reset()
        self.position = self.position.after_reset()
        self.started(self.position.epoch)
        if old is not None:
            assert next(old, None) is None, "the pass reset() abandoned goes on"
        self.active = None
        self.check_position()

    @rule(workers=st.integers(0, 2))
    def restore_into_a_fresh_iterator(self, workers: int) -> None:
        """Save the state now and continue in a fresh iterator (maybe other ``num_workers``)."""
        state = self.state_now()
        old = self.it
        old.close()
        self.replace_iterator(self.fresh(self.workers(workers)), state, self.position)

    @rule(workers=st.integers(0, 2))
    def close_and_reopen(self, workers: int) -> None:
        """Close the iterator (iteration refused, the pass ended, the position kept), then
        continue from its state in a fresh one."""
        before = self.state_now()
        old, active = self.it, self.active
        old.close()
        old.close()  # safe twice
        if active is not None:
            assert next(active, None) is None, "a pass of a closed iterator goes on"
        for refused in (lambda: iter(old), old.reset, lambda: old.load_state_dict(before)):
            try:
                refused()
            except BadInputError:
                pass
            else:
                raise AssertionError("a closed iterator was used")
        after = round_trip(old.state_dict())
        assert canonical(after) == canonical(before)  # NaN fills compare by their bits
        self.replace_iterator(self.fresh(self.workers(workers)), after, self.position)

    # -- invariants and tear-down ----------------------------------------------------------------

    @invariant()
    def batches_per_epoch(self) -> None:
        if self.iterator is not None:
            assert len(self.iterator) == self.config.batches()
            self.check_position()

    def teardown(self) -> None:
        if self.iterator is not None:
            self.iterator.close()
        if self.reference is not None:
            self.reference.close()


class UnrecordedIteratorMachine(IteratorMachine):
    """Without an experiment: ``seed=`` (or the augmenter's, or the OS's) is the root; saved
    states may be restored later, going back (a fresh iterator, or the one in use)."""

    saved = Bundle("saved")

    @initialize(config=configs(), max_workers=st.integers(0, 15).map(lambda k: max(0, k - 13)))
    def start(self, config: Config, max_workers: int) -> None:
        self.setup(config, max_workers)

    @rule(target=saved)
    def save(self) -> tuple[dict[str, Any], Position]:
        """``state_dict()``, saved to a file and read back."""
        return self.state_now(), self.position

    @rule(saved=saved, workers=st.integers(0, 2))
    def restore_an_earlier_state(self, saved: tuple[dict[str, Any], Position], workers: int
                                 ) -> None:
        """Go back to a saved checkpoint in a fresh iterator: its batches are the
        uninterrupted run's again from there."""
        state, position = saved
        self.it.close()
        self.replace_iterator(self.fresh(self.workers(workers)), state, position)

    @rule(saved=saved)
    def restore_in_place(self, saved: tuple[dict[str, Any], Position]) -> None:
        """Load a saved state into the iterator in use: the pass in progress ends (batches a
        worker made ahead for it are not handed out), and the saved position goes on."""
        state, position = saved
        old = self.active
        self.replace_iterator(self.it, state, position)
        if old is not None:
            assert next(old, None) is None, "the pass load_state_dict replaced goes on"


class RecordedIteratorMachine(IteratorMachine):
    """Inside an experiment recording into SQLite; restores happen within the run, and across
    ``suspend()`` and ``resume_experiment`` as the README's resume section describes, and a
    completed run may be continued by a child run (``parent=``) from its state."""

    checkpoints = Bundle("checkpoints")

    @initialize(config=configs(recorded=True), max_workers=st.sampled_from([0, 0, 0, 1, 2]))
    def start(self, config: Config, max_workers: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.manager = ExperimentManager(f"sqlite:///{self.folder}/l.db", data_dir=self.folder)
        self.exp = self.manager.create_experiment("stateful", seed=config.seed)
        self.resumes = 0
        self.start_state: tuple[dict[str, Any], Position] | None = None
        """Where the run began: None at the start, else the parent's state it continues."""
        self.config = config
        self.features, self.labels = config.data()
        self.dataset = self.exp.register_dataset("stateful-data", self.features, self.labels)
        self.setup(config, max_workers)
        assert self.root == config.seed

    def data(self) -> Any:
        return self.dataset

    def make_iterator(self, num_workers: int, *, seed: int | None) -> TrainingDataIterator:
        config = self.config
        return TrainingDataIterator(self.dataset, config.batch_size, experiment=self.exp,
                                    augmenter=config.augmenter(), shuffle=config.shuffle,
                                    drop_last=config.drop_last, num_workers=num_workers,
                                    start_method=START_METHOD, prefetch=config.prefetch)

    @rule(target=checkpoints)
    def checkpoint(self) -> tuple[dict[str, Any], Position, str]:
        """A checkpoint of this run: the state saved to a file (its events flushed first)."""
        return self.state_now(), self.position, self.exp.id

    @precondition(lambda self: self.start_state is None)
    @rule(workers=st.integers(0, 2))
    def continue_in_a_child_run(self, workers: int) -> None:
        """Complete the run (its record checked) and continue from its state in a new run,
        ``parent=`` it: the child's batches go on where the parent's stopped."""
        state = self.state_now()
        parent = self.exp
        parent.close()
        self.check_record()
        self.exp = self.manager.create_experiment("stateful-child", seed=self.config.seed,
                                                  parent=parent.id)
        self.start_state = (state, self.position)
        self.handed, self.started_epochs, self.epochs_here = [], set(), set()
        self.dataset = self.exp.register_dataset("stateful-data", self.features, self.labels)
        self.replace_iterator(self.fresh(self.workers(workers)), state, self.position)

    @rule(workers=st.integers(0, 2))
    def suspend_and_resume(self, workers: int) -> None:
        """Save the state, ``exp.suspend()``, resume the run in the same process and continue
        in a fresh iterator restored from the state."""
        state = self.state_now()
        self.resume_from(state, self.position, workers)

    @precondition(lambda self: self.resumes < 3)
    @rule(saved=consumes(checkpoints), workers=st.integers(0, 2))
    def resume_from_an_earlier_checkpoint(self, saved: tuple[dict[str, Any], Position, str],
                                          workers: int) -> None:
        """As a killed run does: suspend, resume, and re-execute from an earlier checkpoint of
        the run — the draws reached again are checked against the record, not recorded
        twice."""
        state, position, run = saved
        if run == self.exp.id:
            self.resume_from(state, position, workers)

    @precondition(lambda self: self.resumes < 3)
    @rule(workers=st.integers(0, 2))
    def resume_from_the_start(self, workers: int) -> None:
        """Suspend and resume with no state of the run saved: the resumed run's first iterator
        starts over at epoch 0, redoing the epochs the lost attempt drew (not repeating them);
        a child run's, from the parent's state it began with."""
        state, position = self.start_state or (None, Position())
        self.resume_from(state, position, workers)

    @rule()
    def a_fresh_iterator_is_refused(self) -> None:
        """A second iterator of the run's process, not restored, may not start epoch 0 again
        once the run drew it (an iterator made afresh per epoch) — in a resumed run too, once
        an iterator of the resumed process started an epoch (the first one may start over)."""
        if 0 not in self.started_epochs or (self.resumes and not self.epochs_here):
            return
        fresh = self.fresh(0)
        try:
            iter(fresh)
        except BadInputError as refused:
            assert "already drew epoch 0" in str(refused)
        else:
            raise AssertionError("a fresh iterator repeats epoch 0 of the run")
        finally:
            fresh.close()

    def resume_from(self, state: dict[str, Any] | None, position: Position, workers: int
                    ) -> None:
        old = self.it
        self.exp.suspend()  # closes the iterator, a pass in progress and its workers
        assert self.exp.status == "suspended"
        assert_closed(old, "suspending the run")
        self.exp = self.manager.resume_experiment(self.exp.id)
        self.resumes += 1
        self.epochs_here = set()
        self.dataset = self.exp.register_dataset("stateful-data", self.features, self.labels)
        new = self.fresh(self.workers(workers))
        if state is None:
            self.iterator, self.active, self.position = new, None, position
        else:
            self.replace_iterator(new, state, position)

    def teardown(self) -> None:
        try:
            if getattr(self, "exp", None) is None:
                return
            if not self.exp.closed:
                self.exp.close()  # closes the iterator, a pass in progress and its workers
            assert self.exp.status == "ok"
            if self.iterator is not None:
                assert_closed(self.iterator, "completing the run")
            self.check_record()
        finally:
            super().teardown()
            if getattr(self, "manager", None) is not None:
                self.manager.close()
            if getattr(self, "folder", None) is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    def expect_batch(self, handed: Any) -> None:
        """Also log the batch's loss (a function of the batch), as a training loop does: a
        resumed run re-logging it is checked against the record, not recorded twice."""
        super().expect_batch(handed)
        epoch, _batch, (x, _dtype, _shape, _y) = self.handed[-1]
        self.exp.log_metric("loss", loss_of(x), epoch=epoch)

    def check_record(self) -> None:
        """The run verifies and replays, and its draws are the positions handed out: one
        ``epoch_reset`` per epoch started, one ``augmentation_batch`` per batch handed out,
        whose output is the digest of what was handed out; and one loss per batch handed out,
        however often resumed runs re-executed it — the events of an uninterrupted run."""
        store = self.manager.store
        assert verify(store, self.exp.id).ok
        events = bodies(store, self.exp.id)
        losses = sorted((b["params"]["epoch"], b["params"]["value"]) for b in events
                        if b["kind"] == METRIC)
        positions = {(epoch, batch): loss_of(x) for epoch, batch, (x, *_rest) in self.handed}
        assert losses == sorted((epoch, loss) for (epoch, _b), loss in positions.items())
        resets = [tuple(b["path"]) for b in events if b["kind"] == EPOCH_RESET]
        assert len(resets) == len(set(resets))
        assert set(resets) == {shuffle_path(e) for e in self.started_epochs}
        augmented = {(b["params"]["epoch"], b["params"]["batch"]): b["output"]
                     for b in events if b["kind"] == AUGMENTATION_BATCH}
        if self.config.augmenter() is None:
            assert augmented == {}
        else:
            assert len(augmented) == sum(b["kind"] == AUGMENTATION_BATCH for b in events)
            handed: dict[tuple[int, int], bytes] = {}
            for epoch, batch, (x, dtype, shape, _y) in self.handed:
                handed[(epoch, batch)] = array_digest(
                    np.frombuffer(x, dtype=dtype).reshape(shape))
            assert augmented == handed
        assert replay_run(store, self.exp.id, data_dir=self.folder).certified


# No deadline: worker start-up times vary; a few examples use workers, most do not.
BASE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

UnrecordedIteratorMachine.TestCase.settings = settings(BASE, max_examples=200,
                                                       stateful_step_count=30)
TestUnrecordedIterator = UnrecordedIteratorMachine.TestCase

RecordedIteratorMachine.TestCase.settings = settings(BASE, max_examples=40,
                                                     stateful_step_count=25)
TestRecordedIterator = RecordedIteratorMachine.TestCase
