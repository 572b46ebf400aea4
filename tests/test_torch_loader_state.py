"""Mid-epoch state of RecordedDataLoader: ``state_dict()`` / ``load_state_dict()``.

A trainer preempted mid-epoch saves the loader's state beside its weights; a fresh loader (a
fresh process, other ``num_workers``, persistent workers) restored from it continues the epoch
at the next batch with exactly the batches — indices, transform draws, batch numbers — the
uninterrupted run hands out, and a resumed run records (or checks) only what comes after.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import torch_helpers  # noqa: E402 - registers the test transforms
from conftest import ROOT, readme_python_block, run_cli  # noqa: E402
from ledger.canonical import canonical  # noqa: E402
from ledger.errors import BadInputError, ForeignStateError, StateAheadError  # noqa: E402
from ledger.events import decode_body  # noqa: E402
from ledger.experiment import Experiment, ExperimentManager  # noqa: E402
from ledger.integrations.torch import RecordedDataLoader, RecordedTransform  # noqa: E402
from ledger.sampling import epoch_order  # noqa: E402
from replay.engine import replay_run  # noqa: E402

SEED = 1234
ROWS = 100
BATCH = 16
BATCHES = -(-ROWS // BATCH)  # 7, the last one short
Batch = tuple[bytes, bytes]


def arrays(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Features of the fraud set; labels the sample index, so a batch's ``y`` shows its
    indices."""
    features, _labels = torch_helpers.fraud_arrays(rows)
    return features, np.arange(rows, dtype=np.int64)


def as_bytes(item: Any) -> Batch:
    x, y = item
    return x.numpy().tobytes(), y.numpy().tobytes()


def jitter() -> RecordedTransform:
    return RecordedTransform("jitter", std=0.5)


@pytest.fixture
def exp(manager: ExperimentManager) -> Iterator[Experiment]:
    with manager.create_experiment("loader-state", seed=SEED) as run:
        yield run


def loader(run: Any, data: Any, **options: Any) -> RecordedDataLoader:
    """A loader of the tests' settings; ``options`` override them."""
    settings: dict[str, Any] = {"transform": jitter(), "record": False, **options}
    return RecordedDataLoader(run, data, settings.pop("batch_size", BATCH), **settings)


def uninterrupted(run: Experiment, data: Any, epochs: int) -> list[list[Batch]]:
    """The batches of one loader looped over ``epochs`` epochs, never stopped."""
    reference = loader(run, data)
    return [[as_bytes(item) for item in reference] for _epoch in range(epochs)]


def interrupted_state(run: Experiment, data: Any, *, epoch: int, batch: int,
                      **options: Any) -> dict[str, Any]:
    """The state of a loader that ran whole epochs up to ``epoch``, then handed out ``batch``
    batches of it and stopped there."""
    first = loader(run, data, **options)
    for _done in range(epoch):
        for _item in first:
            pass
    if batch:
        for taken, _item in enumerate(first, start=1):
            if taken == batch:
                break
    return first.state_dict()


# -- the state itself ------------------------------------------------------------------------------

def test_a_state_is_small_plain_and_survives_json_torch_save_and_canonical(
        exp: Experiment) -> None:
    data = exp.register_dataset("fraud", *arrays())
    exp.log_metric("lr", 0.1)  # no epoch: null in ``logged``
    exp.log_metric("loss", 0.5, epoch=0)
    state = interrupted_state(exp, data, epoch=1, batch=3, record=True)
    assert (state["epoch"], state["batch"], state["run"]) == (1, 3, exp.id)
    assert sorted(state["logged"], key=repr) == [["metric", "loss", 0, 1],
                                                 ["metric", "lr", None, 1]]
    plain = {key: value for key, value in state.items() if key != "logged"}
    assert all(type(value) in (int, bool, str) for value in plain.values()), plain
    assert json.loads(json.dumps(state)) == state
    saved = io.BytesIO()
    torch.save(state, saved)
    saved.seek(0)
    assert torch.load(saved, weights_only=True) == state
    assert msgpack.unpackb(canonical(state), raw=False) == state


def test_a_restored_loader_continues_the_epoch_at_the_next_batch_then_the_next_epochs(
        exp: Experiment) -> None:
    """Saved after 3 batches of epoch 1: a fresh loader's next pass is epoch 1 from batch 3 on,
    the later passes epochs 2 and 3 — the uninterrupted run's batches, bit for bit."""
    data = exp.register_dataset("fraud", *arrays())
    expected = uninterrupted(exp, data, 4)
    state = interrupted_state(exp, data, epoch=1, batch=3)
    restored = loader(exp, data)
    restored.load_state_dict(state)
    assert restored.next_epoch == 1
    assert [as_bytes(item) for item in restored] == expected[1][3:]
    assert restored.epoch == 1 and restored.state_dict()["batch"] == BATCHES
    assert [as_bytes(item) for item in restored] == expected[2]
    assert [as_bytes(item) for item in restored] == expected[3]


@pytest.mark.parametrize(("saved_with", "restored_with"), [
    ({"num_workers": 0}, {"num_workers": 2}),
    ({"num_workers": 2}, {"num_workers": 0}),
    ({"num_workers": 2, "persistent_workers": True},
     {"num_workers": 2, "persistent_workers": True}),
], ids=["0-to-2-workers", "2-to-0-workers", "persistent-workers"])
def test_a_restored_loader_gives_the_same_batches_for_any_workers(
        exp: Experiment, saved_with: dict, restored_with: dict) -> None:
    data = exp.register_dataset("fraud", *arrays())
    expected = uninterrupted(exp, data, 3)
    state = interrupted_state(exp, data, epoch=1, batch=5, **saved_with)
    restored = loader(exp, data, **restored_with)
    restored.load_state_dict(state)
    assert [as_bytes(item) for item in restored] == expected[1][5:]
    assert [as_bytes(item) for item in restored] == expected[2]


def test_a_state_saved_at_an_epoch_s_end_resumes_into_the_next_epoch(exp: Experiment) -> None:
    """No epoch lost, none repeated: the next pass is epoch 1 whole, then epoch 2."""
    data = exp.register_dataset("fraud", *arrays())
    expected = uninterrupted(exp, data, 3)
    state = interrupted_state(exp, data, epoch=1, batch=0)  # epoch 0 done, nothing of 1
    assert (state["epoch"], state["batch"]) == (0, BATCHES)
    restored = loader(exp, data, num_workers=2)
    restored.load_state_dict(state)
    assert restored.next_epoch == 1
    assert [as_bytes(item) for item in restored] == expected[1]
    assert restored.epoch == 1
    assert [as_bytes(item) for item in restored] == expected[2]


def test_a_resumed_loader_hands_out_the_rest_of_the_epoch_s_derived_permutation(
        exp: Experiment) -> None:
    """Not from sample 0, not another order: the samples of epoch 2's permutation of the
    run's root seed from the saved position on."""
    data = exp.register_dataset("fraud", *arrays())
    state = interrupted_state(exp, data, epoch=2, batch=2)
    restored = loader(exp, data, num_workers=2)
    restored.load_state_dict(state)
    handed = np.concatenate([y.numpy() for _x, y in restored])
    order = epoch_order(SEED, 2, ROWS, True)
    assert handed.tolist() == order[2 * BATCH:].tolist()
    assert handed[0] != order[0]


def test_the_state_counts_batches_handed_out_not_those_workers_made_ahead(
        manager: ExperimentManager) -> None:
    """With 2 workers prefetching 4 batches each, torch asks for all 7 batches of the epoch
    before the caller has taken 2; the state says 2, only 2 batches are recorded, and a loader
    restored from it hands out batch 2 next."""
    with manager.create_experiment("prefetch", seed=SEED) as run:
        data = run.register_dataset("fraud", *arrays())
        expected = uninterrupted(run, data, 1)[0]
        ahead = loader(run, data, num_workers=2, prefetch_factor=4, record=True)
        passing = iter(ahead)
        taken = [as_bytes(next(passing)) for _ in range(2)]
        assert ahead._worker_batches._send_idx == BATCHES  # asked for the whole epoch
        state = ahead.state_dict()
        assert (state["epoch"], state["batch"]) == (0, 2)
        recorded = [decode_body(body) for _s, _q, kind, body in
                    manager.store.iter_run_bodies(run.id) if kind == "augmentation_batch"]
        assert [b["path"] for b in recorded] == [["epoch", 0, "batch", b, "augment"]
                                                 for b in range(2)]
        restored = loader(run, data)
        restored.load_state_dict(state)
        assert taken + [as_bytes(item) for item in restored] == expected
        del passing


def test_set_epoch_of_the_restored_epoch_keeps_the_position_another_starts_that_epoch(
        exp: Experiment) -> None:
    """The decision: a loop calling ``loader.set_epoch(epoch)`` for each epoch, resumed at
    ``loader.next_epoch``, goes on at the saved batch; set_epoch of another epoch is a choice
    of that epoch from its first batch, the rest of the restored one dropped."""
    data = exp.register_dataset("fraud", *arrays())
    expected = uninterrupted(exp, data, 3)
    state = interrupted_state(exp, data, epoch=1, batch=4)
    same = loader(exp, data)
    same.load_state_dict(state)
    same.set_epoch(same.next_epoch)
    assert (same.state_dict()["epoch"], same.state_dict()["batch"]) == (1, 4)
    assert [as_bytes(item) for item in same] == expected[1][4:]
    other = loader(exp, data)
    other.load_state_dict(state)
    other.set_epoch(2)
    assert (other.state_dict()["epoch"], other.state_dict()["batch"]) == (2, 0)
    assert [as_bytes(item) for item in other] == expected[2]


def test_a_state_saved_again_before_the_restored_pass_is_the_same_state(exp: Experiment) -> None:
    data = exp.register_dataset("fraud", *arrays())
    state = interrupted_state(exp, data, epoch=1, batch=4, num_workers=2)
    restored = loader(exp, data, num_workers=2)
    restored.load_state_dict(state)
    iter(restored)  # workers started and prefetching, nothing handed out yet
    assert restored.state_dict() == state


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(5, 40), batch_size=st.integers(1, 9), shuffle=st.booleans(),
       drop_last=st.booleans(), cuts=st.lists(st.integers(0, 12), min_size=1, max_size=5))
def test_any_chain_of_saves_and_restores_hands_out_the_uninterrupted_batches(
        rows: int, batch_size: int, shuffle: bool, drop_last: bool, cuts: list[int]) -> None:
    """Take ``cut`` batches (passes going on epoch after epoch), save the state, restore it in a
    fresh loader, again and again: every state is at the position the batches handed out so far
    reach, and together the loaders hand out the uninterrupted loader's batches, in order."""
    assume(rows >= batch_size or not drop_last)
    per_epoch = rows // batch_size if drop_last else -(-rows // batch_size)
    options = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    with tempfile.TemporaryDirectory() as folder, ExperimentManager(
            f"sqlite:///{folder}/l.db", data_dir=folder) as opened, opened.create_experiment(
            "chain", seed=SEED) as run:
        data = run.register_dataset("fraud", *arrays(rows))
        reference = loader(run, data, **options)
        epochs = sum(cuts) // per_epoch + 1
        expected = [as_bytes(item) for _epoch in range(epochs) for item in reference]
        handed: list[Batch] = []
        current, passing = loader(run, data, **options), None
        for cut in cuts:
            for _ in range(cut):
                item = next(passing, None) if passing is not None else None
                if item is None:
                    passing = iter(current)
                    item = next(passing)
                handed.append(as_bytes(item))
            state = json.loads(json.dumps(current.state_dict()))
            done = len(handed)
            assert (state["epoch"], state["batch"]) in {
                (done // per_epoch, done % per_epoch),
                (done // per_epoch - 1, per_epoch)}  # an epoch's end, before or after its pass
            current, passing = loader(run, data, **options), None
            current.load_state_dict(state)
        handed += [as_bytes(item) for item in current]
        assert handed == expected[:len(handed)]
        assert len(handed) == -(-len(handed) // per_epoch) * per_epoch  # whole epochs


# -- refused states ----------------------------------------------------------------------------

@pytest.mark.parametrize(("other", "key"), [
    ({"batch_size": 8}, "batch_size"),
    ({"shuffle": False}, "shuffle"),
    ({"drop_last": True}, "drop_last"),
    ({"transform": RecordedTransform("jitter", std=0.25)}, "transform"),
    ({"transform": None}, "transform"),
    ({"num_replicas": 2, "rank": 0}, "num_replicas"),
    ({"num_replicas": 1, "rank": 0, "dataset": "other"}, "dataset_digest"),
])
def test_a_state_of_a_loader_with_other_settings_is_refused_naming_the_setting(
        exp: Experiment, other: dict, key: str) -> None:
    data = exp.register_dataset("fraud", *arrays())
    state = interrupted_state(exp, data, epoch=0, batch=2)
    if other.pop("dataset", None):
        data = exp.register_dataset("other", *arrays(ROWS + 1))
    mismatched = loader(exp, data, **other)
    with pytest.raises(BadInputError, match=f"^got a state saved with {key}=.*, but this loader "
                                            f"has {key}="):
        mismatched.load_state_dict(state)
    assert mismatched.state_dict()["epoch"] == 0 and mismatched.state_dict()["batch"] == 0


def test_a_state_of_another_rank_or_root_seed_is_refused(manager: ExperimentManager) -> None:
    with manager.create_experiment("one", seed=SEED) as first:
        data = first.register_dataset("fraud", *arrays())
        state = interrupted_state(first, data, epoch=0, batch=2, num_replicas=2, rank=0)
        with pytest.raises(BadInputError, match="saved with rank=0, but this loader has rank=1"):
            loader(first, data, num_replicas=2, rank=1).load_state_dict(state)
    with manager.create_experiment("two", seed=SEED + 1) as second:
        data = second.register_dataset("fraud", *arrays())
        with pytest.raises(BadInputError, match=f"saved with root_seed='{SEED}', but this "
                                                f"loader has root_seed='{SEED + 1}'"):
            loader(second, data, num_replicas=2, rank=0).load_state_dict(state)


MALFORMED: list[tuple[str, Any]] = [
    ("not a dict", [("epoch", 0)]),
    ("None", None),
    ("another format", {"format": "ledger/iterator-state/v1"}),
    ("epoch as text", {"epoch": "1"}),
    ("epoch a bool", {"epoch": True}),
    ("batch a bool", {"batch": True}),
    ("batch a float", {"batch": 2.0}),
    ("negative batch", {"batch": -1}),
    ("negative epoch", {"epoch": -1}),
    ("batch beyond the epoch", {"batch": BATCHES + 1}),
    ("epoch beyond 64 bits", {"epoch": 2**64}),
    ("no position", {"epoch": None, "batch": None}),
    ("batch_size as a float", {"batch_size": 16.0}),
    ("shuffle as 1", {"shuffle": 1}),
    ("rank a bool", {"rank": False}),
    ("root seed as an int", {"root_seed": SEED}),
    ("a setting missing", {"drop_last": None}),
    ("logged not a list", {"logged": "3 losses"}),
    ("logged entry malformed", {"logged": [["metric", "loss", 0, -1]]}),
]


@pytest.mark.parametrize(("_what", "change"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_state_is_one_bad_input_error(exp: Experiment, _what: str,
                                                  change: Any) -> None:
    data = exp.register_dataset("fraud", *arrays())
    good = interrupted_state(exp, data, epoch=0, batch=2, record=True)
    state = ({key: value for key, value in {**good, **change}.items() if value is not None}
             if isinstance(change, dict) else change)
    restored = loader(exp, data, record=True)
    restored.set_epoch(1)  # so that loading this state is no repeat of epoch 0
    with pytest.raises(BadInputError):
        restored.load_state_dict(state)
    assert (restored.state_dict()["epoch"], restored.state_dict()["batch"]) == (1, 0)


def test_a_recording_run_refuses_a_state_another_run_saved(manager: ExperimentManager) -> None:
    with manager.create_experiment("saver", seed=SEED) as saver:
        data = saver.register_dataset("fraud", *arrays())
        state = interrupted_state(saver, data, epoch=0, batch=2, record=True)
    with manager.create_experiment("other", seed=SEED) as other:
        data = other.register_dataset("fraud", *arrays())
        with pytest.raises(ForeignStateError, match=f"saved by run '{saver.id}', but new run"):
            loader(other, data, record=True).load_state_dict(state)


@pytest.mark.parametrize("run", [None, 3], ids=["none", "int"])
def test_a_loader_state_whose_run_is_not_an_id_is_refused(manager: ExperimentManager,
                                                          run: object) -> None:
    """Taken for a state naming no run, it started an unrelated run mid-epoch."""
    with manager.create_experiment("saver", seed=SEED) as saver:
        data = saver.register_dataset("fraud", *arrays())
        state = {**interrupted_state(saver, data, epoch=0, batch=2, record=True), "run": run}
    with manager.create_experiment("other", seed=SEED) as other:
        data = other.register_dataset("fraud", *arrays())
        with pytest.raises(BadInputError, match="got a state whose 'run' is"):
            loader(other, data, record=True).load_state_dict(state)


def test_a_resumed_run_refuses_a_state_ahead_of_its_record(manager: ExperimentManager) -> None:
    """A state claiming batches the run never recorded would leave a hole replay certifies."""
    exp = manager.create_experiment("ahead", seed=SEED)
    data = exp.register_dataset("fraud", *arrays())
    state = interrupted_state(exp, data, epoch=0, batch=2, record=True)
    exp.suspend()
    resumed = manager.resume_experiment(exp.id)
    data = resumed.register_dataset("fraud", *arrays())
    with pytest.raises(StateAheadError, match="no record of batch 2 of epoch 0"):
        loader(resumed, data, record=True).load_state_dict({**state, "batch": 4})
    restored = loader(resumed, data, record=True)
    restored.load_state_dict(state)
    assert len(list(restored)) == BATCHES - 2
    resumed.close()


# -- a preempted run, resumed: the uninterrupted run's record --------------------------------------

EPOCHS = 3


def train(run: Experiment, batches: RecordedDataLoader, handed: list[Batch], *,
          save_at: tuple[int, int] | None = None, stop_at: tuple[int, int] | None = None
          ) -> dict[str, Any] | None:
    """The training loop, from ``batches.next_epoch``: each batch's loss logged (a function of
    the batch), each epoch's end too. With ``save_at``, returns the loader's state saved right
    after handing out that (epoch, batch), as a JSON checkpoint file holds it; with
    ``stop_at``, stops right after handing out that one — the process dies there."""
    saved = None
    for epoch in range(batches.next_epoch, EPOCHS):
        batches.set_epoch(epoch)
        for x, y in batches:
            handed.append(as_bytes((x, y)))
            run.log_metric("loss", float(x.double().sum()), epoch=epoch)
            if save_at is not None or stop_at is not None:
                state = batches.state_dict()
                at = (state["epoch"], state["batch"] - 1)
                if at == save_at:
                    saved = json.loads(json.dumps(state))
                if at == stop_at:
                    return saved
        run.log_metric("epoch_done", epoch, epoch=epoch)
    return saved


def test_a_run_preempted_mid_epoch_resumes_to_the_uninterrupted_record(
        manager: ExperimentManager, tmp_path: Path) -> None:
    """Run A uninterrupted; run B saves its loader state after batch 2 of epoch 1, goes on to
    batch 5 (recorded, then lost with the process), and is suspended; resumed with a fresh
    loader (other num_workers) restored from that state, it re-checks batches 3–5 (their
    events and losses) and records the rest. ``ledger diff A B`` is IDENTICAL, ``ledger replay
    B`` certifies, and B's second session trains on A's batches from epoch 1 batch 3 on, bit
    for bit."""
    features, labels = arrays()
    with manager.create_experiment("preempted", seed=SEED) as straight:
        data = straight.register_dataset("fraud", features, labels)
        expected: list[Batch] = []
        train(straight, loader(straight, data, record=True, num_workers=2), expected)
    run = manager.create_experiment("preempted", seed=SEED)
    data = run.register_dataset("fraud", features, labels)
    lost: list[Batch] = []
    saved = train(run, loader(run, data, record=True, num_workers=2), lost,
                  save_at=(1, 2), stop_at=(1, 5))
    assert saved is not None and (saved["epoch"], saved["batch"]) == (1, 3)
    assert lost == expected[:BATCHES + 6]
    run.suspend()

    with manager.resume_experiment(run.id) as resumed:
        data = resumed.register_dataset("fraud", features, labels)
        batches = loader(resumed, data, record=True, num_workers=0)
        batches.load_state_dict(saved)
        second: list[Batch] = []
        train(resumed, batches, second)
    assert second == expected[BATCHES + 3:]
    kinds = [kind for _s, _q, kind, _b in manager.store.iter_run_bodies(run.id)]
    assert kinds.count("augmentation_batch") == EPOCHS * BATCHES
    assert kinds.count("epoch_reset") == EPOCHS
    assert kinds.count("metric") == EPOCHS * (BATCHES + 1)

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "LEDGER_DATA_DIR": str(tmp_path / "data")}
    diff = run_cli("--db", url, "diff", straight.id, run.id, env=env)
    assert diff.returncode == 0 and "IDENTICAL" in diff.stdout, diff.stdout + diff.stderr
    replay = run_cli("--db", url, "replay", run.id, "--trust", "torch_helpers", env=env)
    assert replay.returncode == 0 and "CERTIFIED" in replay.stdout, replay.stdout + replay.stderr


# -- the README --------------------------------------------------------------------------------------

def readme_run(folder: Path, monkeypatch: pytest.MonkeyPatch, *, preempt_at_step: int | None
               ) -> None:
    """Run the README's mid-epoch example in ``folder`` as written (the data and transform of
    the section's first example), SIGTERM raised in the process right after optimiser step
    ``preempt_at_step`` when given: the example saves its checkpoint and exits 143."""
    import signal

    first = readme_python_block("## PyTorch and many machines")
    setup = first[:first.index("with ExperimentManager")]
    code = readme_python_block("**Resuming mid-epoch.**", "loader.load_state_dict")
    monkeypatch.chdir(folder)
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        if preempt_at_step is not None:
            step, steps = torch.optim.SGD.step, [0]

            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                result = step(self, *args, **kwargs)
                steps[0] += 1
                if steps[0] == preempt_at_step:
                    signal.raise_signal(signal.SIGTERM)  # its handler runs before this returns
                return result

            patch.setattr(torch.optim.SGD, "step", counted)
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        try:
            exec(compile(setup + code, "README.md", "exec"), namespace)  # noqa: S102 - ours
        except SystemExit as stopped:
            assert preempt_at_step is not None and stopped.code == 143
        else:
            assert preempt_at_step is None, "the example was not preempted"
        finally:
            signal.signal(signal.SIGTERM, handler)


def draws_and_logs(folder: Path) -> tuple[str, list[tuple]]:
    """The one run of the ledger in ``folder``: its id, and its draws, metrics and checkpoints
    as (kind, path, output), sorted."""
    with ExperimentManager(f"sqlite:///{folder / 'ledger.db'}") as opened:
        [row] = opened.store.experiments()
        assert row.status == "ok"
        bodies = [decode_body(body) for _s, _q, kind, body in opened.store.iter_run_bodies(row.exp)
                  if kind not in ("experiment_created", "run_resumed", "run_completed",
                                  "dataset_registered")]
    return row.exp, sorted((b["kind"], repr(b["path"]), b["output"] or b"") for b in bodies)


def test_the_readme_mid_epoch_example_resumes_a_preempted_run_to_the_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example preempted by SIGTERM inside epoch 1 (after its 40th step of 32
    per epoch), then run again: it resumes from its checkpoint file and ends with the
    uninterrupted run's draws, batches and final weights, and replay certifies it."""
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    straight.mkdir()
    preempted.mkdir()
    readme_run(straight, monkeypatch, preempt_at_step=None)
    readme_run(preempted, monkeypatch, preempt_at_step=40)
    saved = torch.load(preempted / "checkpoint.pt", weights_only=True)["loader"]
    assert (saved["epoch"], saved["batch"]) == (1, 8)
    readme_run(preempted, monkeypatch, preempt_at_step=None)
    _id, expected = draws_and_logs(straight)
    exp, got = draws_and_logs(preempted)
    assert got == expected
    assert sum(kind == "augmentation_batch" for kind, _p, _o in got) == 3 * 2048 // 64
    with ExperimentManager(f"sqlite:///{preempted / 'ledger.db'}") as opened:
        report = replay_run(opened.store, exp)
    assert report.certified, report.first_divergence
