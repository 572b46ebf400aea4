"""TrainingDataIterator without a ledger: epochs, shuffling, reset, drop_last, resumption."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from ledger import (BadInputError, DataAugmenter, TrainingDataIterator, array_digest, canonical,
                    generator, value_digest)
from ledger.batches import batch_input_digest, fast_array_digest
from ledger.errors import EncodingError
from ledger.sampling import epoch_order
from trainer_helpers import epoch_batches, indexed_data, run_epochs, same_batches

ROOT = Path(__file__).resolve().parent.parent


def indices_of(batches: list[tuple[np.ndarray, np.ndarray]]) -> list[list[int]]:
    """The sample indices of each batch (labels of indexed_data are the indices)."""
    return [y.tolist() for _x, y in batches]


def flat(batches: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    return [index for batch in indices_of(batches) for index in batch]


def test_an_epoch_visits_every_sample_once_in_the_order_derived_for_it() -> None:
    batches = TrainingDataIterator(indexed_data(103), 10, seed=7)
    epoch = epoch_batches(batches)
    assert [len(y) for _x, y in epoch] == [10] * 10 + [3]
    assert sorted(flat(epoch)) == list(range(103))
    assert flat(epoch) == generator(7, ("epoch", 0, "shuffle")).permutation(103).tolist()
    for x, y in epoch:
        assert np.array_equal(x[:, 0], y.astype(np.float32))  # features travel with labels


def test_successive_epochs_are_reshuffled() -> None:
    batches = TrainingDataIterator(indexed_data(200), 20, seed=1)
    orders = [flat(epoch_batches(batches)) for _ in range(4)]
    assert all(sorted(order) == list(range(200)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4
    assert orders[2] == epoch_order(1, 2, 200, True).tolist()


def test_shuffle_off_keeps_the_order_every_epoch() -> None:
    batches = TrainingDataIterator(indexed_data(25), 10, seed=1, shuffle=False)
    assert flat(run_epochs(batches, 2)) == list(range(25)) * 2


def test_drop_last_drops_the_short_batch() -> None:
    batches = TrainingDataIterator(indexed_data(25), 10, seed=1, drop_last=True)
    assert len(batches) == 2
    epoch = epoch_batches(batches)
    assert [len(y) for _x, y in epoch] == [10, 10]
    assert flat(epoch) == epoch_order(1, 0, 25, True)[:20].tolist()


def test_reset_starts_the_next_epoch_and_drops_what_was_left() -> None:
    batches = TrainingDataIterator(indexed_data(50), 10, seed=3)
    first = iter(batches)
    next(first)
    assert (batches.epoch, batches.batch) == (0, 1)
    batches.reset()
    assert (batches.epoch, batches.batch) == (1, 0)
    assert flat(epoch_batches(batches)) == epoch_order(3, 1, 50, True).tolist()
    with pytest.raises(StopIteration):
        next(first)  # the abandoned pass is over


@pytest.mark.parametrize("supersede, position", [("a new pass", (0, 1)), ("reset", (1, 0)),
                                                   ("load_state_dict", (0, 0)), ("close", (0, 1))])
def test_a_pass_in_progress_is_over_once_superseded(supersede: str,
                                                    position: tuple[int, int]) -> None:
    """A new ``for`` loop, reset(), load_state_dict() or close() ends the pass in progress at
    once: it hands out nothing more, so two loops never share or interleave batches, and no
    batch of an abandoned pass counts in the new position."""
    batches = TrainingDataIterator(indexed_data(50), 10, seed=3)
    state = batches.state_dict()
    first = iter(batches)
    next(first)
    if supersede == "a new pass":
        iter(batches)
    elif supersede == "reset":
        batches.reset()
    elif supersede == "close":
        batches.close()
    else:
        batches.load_state_dict(state)
    with pytest.raises(StopIteration):
        next(first)
    assert (batches.epoch, batches.batch) == position


def test_reset_before_the_first_pass_starts_epoch_zero_and_is_not_counted_twice() -> None:
    batches = TrainingDataIterator(indexed_data(30), 10, seed=3)
    batches.reset()
    assert flat(epoch_batches(batches)) == epoch_order(3, 0, 30, True).tolist()
    batches.reset()  # at an epoch's end: the next epoch, as iteration would
    assert flat(epoch_batches(batches)) == epoch_order(3, 1, 30, True).tolist()
    assert flat(epoch_batches(batches)) == epoch_order(3, 2, 30, True).tolist()


def test_a_pass_left_early_is_continued_by_the_next_for_loop() -> None:
    batches = TrainingDataIterator(indexed_data(60), 10, seed=4)
    taken = []
    for x, y in batches:
        taken.append(y.tolist())
        if len(taken) == 2:
            break
    rest = indices_of(epoch_batches(batches))
    assert [i for b in taken + rest for i in b] == epoch_order(4, 0, 60, True).tolist()
    assert batches.epoch_finished and batches.next_epoch == 1


def test_batches_are_fresh_arrays_the_caller_owns() -> None:
    data = indexed_data(40)
    batches = TrainingDataIterator(data, 8, seed=5)
    for x, y in batches:
        x[:] = -1
        y[:] = -1
    assert data[0].min() == 0 and data[1].min() == 0
    assert sorted(flat(epoch_batches(batches))) == list(range(40))


def test_features_without_labels_give_plain_arrays() -> None:
    features = np.arange(12, dtype=np.float64).reshape(6, 2)
    batches = list(TrainingDataIterator(features, 4, seed=1, shuffle=False))
    assert [b.shape for b in batches] == [(4, 2), (2, 2)]


def test_the_augmenter_runs_per_batch_with_the_derived_generator() -> None:
    features, labels = indexed_data(30)
    augmenter = DataAugmenter(noise_std=0.5)
    epoch = epoch_batches(TrainingDataIterator((features, labels), 8, augmenter=augmenter,
                                               seed=11))
    for index, (x, y) in enumerate(epoch):
        assert np.array_equal(x, augmenter(features[y], seed=11, epoch=0, batch_index=index))


def test_an_augmenter_seed_is_honoured_without_an_experiment() -> None:
    data = indexed_data(30)
    one = epoch_batches(TrainingDataIterator(data, 8, augmenter=DataAugmenter(noise_std=1.0,
                                                                               seed=5)))
    two = epoch_batches(TrainingDataIterator(data, 8, augmenter=DataAugmenter(noise_std=1.0,
                                                                               seed=5)))
    other = epoch_batches(TrainingDataIterator(data, 8, augmenter=DataAugmenter(noise_std=1.0,
                                                                                 seed=6)))
    assert same_batches(one, two) and not same_batches(one, other)


def test_the_augmenter_keeps_its_own_seed_when_the_iterator_has_another() -> None:
    features, labels = indexed_data(30)
    augmenter = DataAugmenter(noise_std=1.0, seed=5)
    epoch = epoch_batches(TrainingDataIterator((features, labels), 8, augmenter=augmenter,
                                               seed=9))
    assert flat(epoch) == epoch_order(9, 0, 30, True).tolist()
    x, y = epoch[0]
    assert np.array_equal(x, augmenter(features[y], seed=5, epoch=0, batch_index=0))


def test_without_any_seed_one_is_drawn_and_kept() -> None:
    batches = TrainingDataIterator(indexed_data(30), 8)
    assert 0 <= batches.root_seed < 2**128
    assert flat(epoch_batches(batches)) == epoch_order(batches.root_seed, 0, 30, True).tolist()


# -- resumption -----------------------------------------------------------------------------------

def uninterrupted(data: tuple, epochs: int, **settings: object) -> list:
    return run_epochs(TrainingDataIterator(data, 7, seed=21, **settings), epochs)


@pytest.mark.parametrize("stop_after", [0, 1, 5, 6, 7, 13, 14, 20])
def test_resuming_a_saved_state_gives_exactly_the_batches_that_were_left(stop_after: int) -> None:
    """Saved after ``stop_after`` batches (7 per epoch: 6 and 13 are ends, 14 the end of
    the second epoch), restored in a fresh iterator: the rest equals the uninterrupted run."""
    data = indexed_data(45)
    augmenter = DataAugmenter(noise_std=0.2, mask_prob=0.2)
    expected = uninterrupted(data, 3, augmenter=augmenter)
    first = TrainingDataIterator(data, 7, seed=21, augmenter=augmenter)
    got = []
    while len(got) < stop_after:
        for x, y in first:
            got.append((x.copy(), y.copy()))
            if len(got) == stop_after:
                break
    state = msgpack.unpackb(canonical(first.state_dict()), raw=False)  # as saved on disk
    second = TrainingDataIterator(data, 7, seed=21, augmenter=DataAugmenter(noise_std=0.2,
                                                                             mask_prob=0.2))
    second.load_state_dict(state)
    while len(got) < len(expected):
        got.extend(epoch_batches(second))
    assert same_batches(got, expected)


def test_a_state_saved_at_an_epochs_end_resumes_into_the_next_epoch() -> None:
    data = indexed_data(21)
    first = TrainingDataIterator(data, 7, seed=2)
    epoch_batches(first)
    state = first.state_dict()
    assert (state["epoch"], state["batch"], state["started"]) == (0, 3, True)
    second = TrainingDataIterator(data, 7, seed=2)
    second.load_state_dict(state)
    assert second.next_epoch == 1
    assert flat(epoch_batches(second)) == epoch_order(2, 1, 21, True).tolist()


def preempted_training(data: tuple[np.ndarray, np.ndarray], epochs: int, stop_at: int | None,
                       saved_epoch: str) -> tuple[list[int], dict]:
    """The README's preemption recipe: ``epochs`` passes, stopped after batch ``stop_at`` (a
    count over the run) saving the iterator state and ``saved_epoch`` ("next_epoch" or the
    loop's "epoch"); returns the sample indices trained on and the saved file's contents."""
    batches = TrainingDataIterator(data, 7, seed=2)
    trained: list[int] = []
    for epoch in range(epochs):
        for _x, y in batches:
            trained.extend(y.tolist())
            if stop_at is not None and len(trained) // 7 == stop_at:
                where = batches.next_epoch if saved_epoch == "next_epoch" else epoch
                return trained, {"epoch": where, "iterator": batches.state_dict()}
    return trained, {}


@pytest.mark.parametrize("saved_epoch, same", [("next_epoch", True), ("epoch", False)])
def test_the_readmes_preemption_recipe_resumes_at_an_epochs_last_batch(saved_epoch: str,
                                                                      same: bool) -> None:
    """Preempted at an epoch's last batch, the state resumes into the next epoch: a loop
    restarted at the loop's own ``epoch`` (what the README's recipe used to save) trained one
    epoch more than the uninterrupted run; restarted at ``batches.next_epoch``, the same."""
    data = indexed_data(21)
    uninterrupted, _ = preempted_training(data, 3, None, saved_epoch)
    trained, saved = preempted_training(data, 3, 3, saved_epoch)  # epoch 0's last batch
    resumed = TrainingDataIterator(data, 7, seed=2)
    resumed.load_state_dict(saved["iterator"])
    for _epoch in range(saved["epoch"], 3):
        for _x, y in resumed:
            trained.extend(y.tolist())
    assert (trained == uninterrupted) is same


def test_an_iterator_restored_to_an_earlier_epoch_gives_that_epochs_batches() -> None:
    """Loading an earlier state into the iterator that saved it (a retry from a checkpoint)
    gives the earlier epoch's batches again, not those of the epoch it had reached."""
    batches = TrainingDataIterator(indexed_data(30), 10, seed=4)
    next(iter(batches))
    state = batches.state_dict()
    run_epochs(batches, 2)  # the rest of epoch 0, then epoch 1
    assert batches.epoch == 1
    batches.load_state_dict(state)
    assert flat(epoch_batches(batches)) == epoch_order(4, 0, 30, True)[10:].tolist()


def test_a_state_saved_before_any_pass_resumes_before_the_first_epoch() -> None:
    """A state saved before the first pass says so (started False): the restored iterator's
    reset() then starts epoch 0, as the saving iterator's would, not epoch 1."""
    data = indexed_data(30)
    state = TrainingDataIterator(data, 10, seed=3).state_dict()
    assert (state["epoch"], state["batch"], state["started"]) == (0, 0, False)
    restored = TrainingDataIterator(data, 10, seed=3)
    restored.load_state_dict(state)
    restored.reset()
    assert flat(epoch_batches(restored)) == epoch_order(3, 0, 30, True).tolist()


def test_a_resumed_iterator_does_not_restart_from_sample_zero() -> None:
    data = indexed_data(40)
    first = TrainingDataIterator(data, 10, seed=8, shuffle=False)
    iterator = iter(first)
    next(iterator)
    next(iterator)
    second = TrainingDataIterator(data, 10, seed=8, shuffle=False)
    second.load_state_dict(first.state_dict())
    assert flat(epoch_batches(second)) == list(range(20, 40))


def test_a_state_is_refused_by_an_iterator_with_other_settings() -> None:
    data = indexed_data(40)
    state = TrainingDataIterator(data, 10, seed=8).state_dict()
    for other, key in [(TrainingDataIterator(data, 8, seed=8), "batch_size"),
                       (TrainingDataIterator(data, 10, seed=9), "root_seed"),
                       (TrainingDataIterator(indexed_data(41), 10, seed=8), "dataset_digest"),
                       (TrainingDataIterator(data, 10, seed=8, shuffle=False), "shuffle"),
                       (TrainingDataIterator(data, 10, seed=8, drop_last=True), "drop_last"),
                       (TrainingDataIterator(data, 10, seed=8,
                                             augmenter=DataAugmenter(noise_std=0.1)), "augmenter")]:
        with pytest.raises(BadInputError, match=f"got a state saved with {key}="):
            other.load_state_dict(state)


def test_a_state_is_refused_by_an_iterator_whose_augmenter_has_another_seed() -> None:
    """Without an experiment an augmenter's own seed drives the augmentation: a state saved
    under seed 5 would give other batches under seed 6, with the same ops and root seed. The
    message shows each seed as the int it was given as: by their first 8 bytes, as it did, the
    two showed alike (0000000000000000…, like every seed below 2**64)."""
    data = indexed_data(40)
    saved = TrainingDataIterator(data, 10, seed=8, augmenter=DataAugmenter(noise_std=0.1,
                                                                           seed=5))
    other = TrainingDataIterator(data, 10, seed=8, augmenter=DataAugmenter(noise_std=0.1,
                                                                           seed=6))
    with pytest.raises(BadInputError, match="^got a state saved with augment_seed=5, but this "
                                            "iterator has augment_seed=6$"):
        other.load_state_dict(saved.state_dict())


@pytest.mark.parametrize("seeds", [(8, 9), (42, 2**128 - 1)])
def test_a_state_of_another_root_seed_is_refused_naming_both_seeds(seeds: tuple[int, int]
                                                                   ) -> None:
    """A state saved under seed 8 loaded into an iterator of seed 9 names 8 and 9, not the first
    8 bytes of each (all zero for both), which showed two different seeds as the same one."""
    data = indexed_data(40)
    saved, mine = seeds
    with pytest.raises(BadInputError, match=f"^got a state saved with root_seed={saved}, but "
                                            f"this iterator has root_seed={mine}$"):
        TrainingDataIterator(data, 10, seed=mine).load_state_dict(
            TrainingDataIterator(data, 10, seed=saved).state_dict())


def test_float_settings_are_compared_by_their_bits() -> None:
    """A NaN mask fill (masked values marked missing) is its own setting — ``==`` would refuse
    the state the iterator itself saved — and a -0.0 fill is not 0.0: they fill other bits."""
    data = indexed_data(40)

    def iterator(fill: float) -> TrainingDataIterator:
        return TrainingDataIterator(data, 10, seed=8,
                                    augmenter=DataAugmenter(mask_prob=0.5, mask_fill=fill))

    saved = iterator(float("nan"))
    next(iter(saved))
    state = msgpack.unpackb(canonical(saved.state_dict()))  # as a checkpoint stores it
    resumed = iterator(float("nan"))
    resumed.load_state_dict(state)
    assert same_batches(list(resumed), list(saved))
    with pytest.raises(BadInputError, match="got a state saved with augmenter="):
        iterator(0.0).load_state_dict(iterator(-0.0).state_dict())


@pytest.mark.parametrize("forge", ["extra op key", "missing op key", "op dropped", "op added"])
def test_a_state_whose_augmenter_spec_differs_in_shape_is_refused(forge: str) -> None:
    """The augmenter spec is compared whole: an op with a parameter more or less, or a list
    with an op more or less, is another augmentation (and a missing key is refused, not a
    KeyError)."""
    batches = TrainingDataIterator(indexed_data(40), 10, seed=8,
                                   augmenter=DataAugmenter(noise_std=0.1, mask_prob=0.2))
    state = msgpack.unpackb(canonical(batches.state_dict()))
    ops = state["augmenter"]
    if forge == "extra op key":
        ops[0]["mean"] = 0.0
    elif forge == "missing op key":
        del ops[1]["fill"]
    elif forge == "op dropped":
        ops.pop()
    else:
        ops.append(dict(ops[0]))
    with pytest.raises(BadInputError, match="got a state saved with augmenter="):
        batches.load_state_dict(state)


@pytest.mark.parametrize("change", [{"epoch": -1}, {"batch": 99}, {"batch": 1, "started": False},
                                    {"format": "pickle"}, {"epoch": 1.0}, {"epoch": 2**64},
                                    {"batch": 1.0, "started": True}, {"batch": 5, "started": True},
                                    {"started": 1}])
def test_a_malformed_state_is_refused(change: dict) -> None:
    """Positions out of range, of look-alike types (1.0 for 1, 1 for True) or inconsistent
    (batches handed out of an epoch not started) are refused, naming the position."""
    batches = TrainingDataIterator(indexed_data(40), 10, seed=8)
    with pytest.raises(BadInputError, match="got position|format"):
        batches.load_state_dict({**batches.state_dict(), **change})


def test_the_last_epoch_is_a_position_a_state_may_hold() -> None:
    """Epochs are 64-bit path labels: a state at epoch 2**64 - 1 is loaded (2**64 is not)."""
    batches = TrainingDataIterator(indexed_data(40), 10, seed=8)
    batches.load_state_dict({**batches.state_dict(), "epoch": 2**64 - 1, "started": True})
    assert (batches.epoch, batches.batch, batches.next_epoch) == (2**64 - 1, 0, 2**64 - 1)


def test_resumption_works_in_a_fresh_process(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from ledger import DataAugmenter, TrainingDataIterator, canonical
        import msgpack
        from trainer_helpers import indexed_data
        mode, path, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
        batches = TrainingDataIterator(indexed_data(50), 8, seed=5, num_workers=workers,
                                       augmenter=DataAugmenter(noise_std=0.1))
        out = []
        if mode == "resume":
            with open(path, "rb") as handle:
                batches.load_state_dict(msgpack.unpackb(handle.read(), raw=False))
            out = [x for x, _y in batches]  # the rest of epoch 1
        else:
            for x, _y in batches:
                out.append(x)
            for x, _y in batches:
                out.append(x)
                if len(out) == 10:
                    break
            with open(path, "wb") as handle:
                handle.write(canonical(batches.state_dict()))
        sys.stdout.write(np.concatenate(out).tobytes().hex())
        batches.close()
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    state = tmp_path / "state.msgpack"

    def run(*args: str) -> bytes:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, env=env)
        assert done.returncode == 0, done.stderr
        return bytes.fromhex(done.stdout)

    before = run("save", str(state), "0")
    after = run("resume", str(state), "2")
    whole = np.concatenate([x for x, _y in uninterrupted_fn(indexed_data(50))]).tobytes()
    assert before + after == whole


def uninterrupted_fn(data: tuple) -> list:
    return run_epochs(TrainingDataIterator(data, 8, seed=5,
                                           augmenter=DataAugmenter(noise_std=0.1)), 2)


# -- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, r"got batch_size=0, but must be an int >= 1"),
    ({"batch_size": 2.5}, "got batch_size=2.5"),
    ({"batch_size": 50, "drop_last": True}, "every epoch would be empty"),
    ({"batch_size": 4, "num_workers": -1}, "got num_workers=-1"),
    ({"batch_size": 4, "prefetch": 0}, "got prefetch=0"),
    ({"batch_size": 2**64}, r"got batch_size=18446744073709551616, but must be at most 2\*\*63"),
    ({"batch_size": 4, "prefetch": 2**63}, r"got prefetch=9223372036854775808, but must be at"),
    ({"batch_size": 4, "timeout": 0}, "got timeout=0"),
    ({"batch_size": 4, "augmenter": "noise"}, "got augmenter of type str"),
    ({"batch_size": 4, "seed": 2**128}, "root seed must be in"),
    # without an experiment too: record="yes" (or 0) was taken as it came, unchecked
    ({"batch_size": 4, "record": "yes"}, r"^got record='yes', but it must be True or False$"),
    ({"batch_size": 4, "record": 0}, r"^got record=0, but it must be True or False$"),
])
def test_bad_settings_are_refused_saying_what_was_given(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        TrainingDataIterator(indexed_data(40), **kwargs)


def test_bad_data_is_refused() -> None:
    with pytest.raises(BadInputError, match="got data of type list"):
        TrainingDataIterator([[1.0, 2.0]], 1, seed=1)
    with pytest.raises(BadInputError, match="labels must have one entry per sample"):
        TrainingDataIterator((np.zeros((4, 2)), np.zeros(3)), 1, seed=1)
    with pytest.raises(BadInputError, match="numeric or boolean"):
        TrainingDataIterator(np.array([["a"], ["b"]]), 1, seed=1)
    with pytest.raises(BadInputError, match="augmentation needs float32 or float64"):
        TrainingDataIterator(np.zeros((4, 2), dtype=np.int32), 1, seed=1,
                             augmenter=DataAugmenter(noise_std=0.1))


def test_a_tuple_of_other_than_two_arrays_is_refused() -> None:
    """Only a (features, labels) pair is data: a third array (weights, say) would be silently
    dropped, and a 1-tuple is not a features array."""
    features, labels = indexed_data(10)
    for data in [(features, labels, labels), (features,)]:
        with pytest.raises(BadInputError, match="got data of type tuple"):
            TrainingDataIterator(data, 2, seed=1)


def test_an_augmenter_without_ops_needs_no_float_features() -> None:
    """An augmenter with no ops changes nothing, so integer features are accepted with it (only
    augmentation needs floats) and the batches are those of no augmenter at all."""
    features = np.arange(24, dtype=np.int32).reshape(12, 2)
    plain = list(TrainingDataIterator(features, 5, seed=3))
    empty = list(TrainingDataIterator(features, 5, seed=3, augmenter=DataAugmenter()))
    assert len(plain) == 3 and all(np.array_equal(a, b) for a, b in zip(plain, empty))


def test_a_closed_iterator_refuses_to_iterate() -> None:
    batches = TrainingDataIterator(indexed_data(10), 5, seed=1)
    batches.close()
    batches.close()
    with pytest.raises(BadInputError, match="closed"):
        iter(batches)


# -- digests of the hot path ----------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(arrays(dtype=st.sampled_from(["<f4", ">f8", "<i8", "|u1", "?", "<c8"]),
              shape=array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
       st.booleans())
def test_fast_array_digest_equals_array_digest(array: np.ndarray, transpose: bool) -> None:
    view = array.T if transpose else array
    assert fast_array_digest(view) == array_digest(view)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_batch_input_digest_is_the_value_digest_of_dataset_and_indices(a: bytes, b: bytes) -> None:
    assert batch_input_digest(a, b) == value_digest([a, b])


@pytest.mark.parametrize("array", [
    np.array([1, "a"], dtype=object), np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
    np.zeros(3, dtype="V4"),
])
def test_fast_array_digest_refuses_what_array_digest_refuses(array: np.ndarray) -> None:
    """Object, structured and void arrays have no stable bytes (DESIGN §2): the fast digest
    refuses them like array_digest does, rather than hashing pointers or padding."""
    with pytest.raises(EncodingError):
        fast_array_digest(array)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("start_method", ["bogus", "Fork", 5])
def test_an_unknown_start_method_is_refused_when_the_iterator_is_made(num_workers: int,
                                                                       start_method: object
                                                                       ) -> None:
    """README: the start method is fork, spawn or forkserver. Any other was taken without a
    word with 0 workers (where it is unused) and refused only at the first pass with workers;
    now the iterator is refused when made, as its other arguments are."""
    with pytest.raises(BadInputError, match="start method"):
        TrainingDataIterator(indexed_data(20), 4, seed=1, num_workers=num_workers,
                             start_method=start_method)  # type: ignore[arg-type]
