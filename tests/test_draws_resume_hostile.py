"""Hostile input and wrong usage of resuming, user draw points and the augmenter.

Each case was found by a sweep: a resumed run that contradicted itself and still certified, a
faithful resume refused, an op whose check made the recording differ from what ran, draws that
replayed as "nondeterministic" because they were called with other params than recorded, and
raw Python errors from deep inside.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forgery import copy_run
from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator, register_draw
from ledger.augment import register_op
from ledger.errors import BadInputError, CheckFailedError, StoreError
from ledger.store import Store
from ledger_builders import delete_event, drop_append_only_triggers
from replay.engine import replay_run
from trainer_helpers import bodies

FEATURES = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
LABELS = (np.arange(64) % 2).astype(np.int8)


def _kinds(manager: ExperimentManager, exp: str) -> list[str]:
    return [kind for _s, _q, kind, _b in manager.store.iter_run_bodies(exp)]


# -- resuming ------------------------------------------------------------------------------------

def test_a_refused_re_log_stays_refused_on_retry(manager: ExperimentManager) -> None:
    exp = manager.create_experiment("retry", seed=1)
    exp.register_dataset("ds", FEATURES, LABELS)
    exp.log_metric("acc", 0.5, epoch=0)
    exp.log_checkpoint("w", np.ones(3), epoch=0)
    exp.suspend()
    resumed = manager.resume_experiment(exp.id)
    for _attempt in range(2):
        with pytest.raises(BadInputError, match="diverges"):
            resumed.log_metric("acc", 0.9, epoch=0)
        with pytest.raises(BadInputError, match="diverges"):
            resumed.log_checkpoint("w", np.zeros(3), epoch=0)
        with pytest.raises(BadInputError, match="other content"):
            resumed.register_dataset("ds", FEATURES * 2, LABELS)
    assert resumed.log_metric("acc", 0.5, epoch=0) is None  # the recorded value: not re-recorded
    resumed.close()
    assert _kinds(manager, exp.id).count("metric") == 1
    assert _kinds(manager, exp.id).count("dataset_registered") == 1


def _train(exp: Any, epochs: list[int], state: dict | None = None) -> dict[int, dict]:
    data = exp.register_dataset("ds", FEATURES, LABELS)
    batches = TrainingDataIterator(data, 16, augmenter=DataAugmenter(noise_std=0.1),
                                   experiment=exp)
    if state is not None:
        batches.load_state_dict(state)
    states = {}
    for epoch in epochs:
        for x, _y in batches:
            exp.log_metric("batch_loss", float(np.abs(x).mean()), epoch=epoch)  # per batch
        exp.log_checkpoint("w", np.full(3, float(epoch)), epoch=epoch)
        states[epoch] = batches.state_dict()
    return states


def test_a_faithful_resume_re_logs_a_metric_logged_many_times_per_epoch(
        manager: ExperimentManager, tmp_path: Path) -> None:
    exp = manager.create_experiment("repeated", seed=7)
    states = _train(exp, [0, 1])  # then preempted
    exp.suspend()
    before = _kinds(manager, exp.id).count("metric")
    resumed = manager.resume_experiment(exp.id)
    _train(resumed, [1], states[0])  # epoch 1 again, from the epoch-0 checkpoint
    resumed.close()
    assert _kinds(manager, exp.id).count("metric") == before == 8
    with Store.open(manager.store.url_with_secrets) as store:
        assert replay_run(store, exp.id, data_dir=tmp_path / "data").certified


def test_a_suspended_run_records_nothing(manager: ExperimentManager) -> None:
    exp = manager.create_experiment("suspended", seed=1)
    exp.log_metric("acc", 0.5, epoch=0)
    exp.suspend()
    for call in (lambda: exp.log_metric("acc", 0.5, epoch=0),
                 lambda: exp.log_checkpoint("w", np.ones(2))):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_a_state_past_the_last_epoch_is_refused() -> None:
    with TrainingDataIterator((FEATURES, LABELS), 16, seed=1) as batches:
        with pytest.raises(BadInputError, match="position"):
            batches.load_state_dict(batches.state_dict() | {"epoch": 2**64})



def test_a_failed_run_is_refused_naming_its_status(manager: ExperimentManager) -> None:
    """A run that ended failed is complete: continuing it would append after its end."""
    with pytest.raises(ValueError, match="diverged"):
        with manager.create_experiment("failing", seed=1) as exp:
            raise ValueError("diverged")
    with pytest.raises(BadInputError, match=f"got {exp.id}, which completed with status failed: "
                                            f"only an incomplete run can be resumed"):
        manager.resume_experiment(exp.id)


def test_a_run_that_fails_verification_is_not_resumed(manager: ExperimentManager) -> None:
    """Continuing a damaged chain would bury the damage under new events: refused, naming the
    first finding, and nothing appended."""
    exp = manager.create_experiment("damaged", seed=1)
    for value in (0.1, 0.2, 0.3):
        exp.log_metric("loss", value, epoch=0)
    exp.suspend()
    drop_append_only_triggers(manager.store)
    delete_event(manager.store, exp.id, "main", 2)
    with pytest.raises(CheckFailedError, match=f"{exp.id} fails verification, not resumed"):
        manager.resume_experiment(exp.id)
    assert "run_resumed" not in _kinds(manager, exp.id)


def test_a_run_completed_while_this_process_resumed_it_is_refused(
        manager: ExperimentManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes resuming one run: the other completed it between this one's status check
    and its claim of main (here, the status this process read is the stale 'incomplete'). The
    check after the claim refuses it, and main is released for whoever comes next."""
    with manager.create_experiment("raced", seed=1) as exp:
        exp.log_metric("loss", 0.5, epoch=0)
    real = manager.store.experiment

    def stale(exp_id: str) -> Any:
        return dataclasses.replace(real(exp_id), status="incomplete")

    monkeypatch.setattr(manager.store, "experiment", stale)
    with pytest.raises(BadInputError, match="which another process completed while this one "
                                            "resumed it"):
        manager.resume_experiment(exp.id)
    assert _kinds(manager, exp.id)[-1] == "run_completed"
    with pytest.raises(BadInputError, match="another process completed"):  # main not held
        manager.resume_experiment(exp.id)


def test_a_resumed_run_keeps_its_root_seed_and_where_it_came_from(
        manager: ExperimentManager) -> None:
    """A run seeded from the OS stays so when resumed: the resumed Experiment reports the
    recorded name, root seed and source, not 'user'."""
    exp = manager.create_experiment("os-seeded")
    exp.suspend()
    resumed = manager.resume_experiment(exp.id)
    assert (resumed.root_seed, resumed.root_seed_source) == (exp.root_seed, "os")
    assert resumed.name == "os-seeded" and resumed.id == exp.id
    assert resumed.resumed and not exp.resumed
    resumed.close()



def test_run_resumed_marks_the_seam_and_the_last_checkpoint(manager: ExperimentManager) -> None:
    """An auditor reads from run_resumed where the interrupted process stopped (the seq of its
    last event) and which checkpoint the run went on from (the last one recorded), by whom."""
    exp = manager.create_experiment("seam", seed=1)
    exp.log_checkpoint("w", np.zeros(3), epoch=0)
    exp.log_metric("loss", 0.5, epoch=0)
    exp.log_checkpoint("w", np.ones(3), epoch=1)
    exp.log_metric("loss", 0.25, epoch=1)
    exp.suspend()
    manager.resume_experiment(exp.id).close()
    main = [b for b in bodies(manager.store, exp.id) if b["stream"] == "main"]
    [seam] = [b for b in main if b["kind"] == "run_resumed"]
    last_checkpoint = [b for b in main if b["kind"] == "checkpoint"][-1]
    seam_params = {key: seam["params"][key] for key in ("after_seq", "last_checkpoint")}
    assert seam_params == {"after_seq": seam["seq"] - 1, "last_checkpoint": {
        "name": "w", "epoch": 1, "digest": last_checkpoint["output"]}}
    assert main[seam["seq"] - 1]["kind"] == "metric"
    assert seam["meta"]["pid"] == os.getpid()
    plain = manager.create_experiment("no-checkpoint", seed=1)
    plain.suspend()
    manager.resume_experiment(plain.id).close()
    [seam] = [b for b in bodies(manager.store, plain.id) if b["kind"] == "run_resumed"]
    assert (seam["params"]["after_seq"], seam["params"]["last_checkpoint"]) == (0, None)



def test_a_forged_run_without_a_root_seed_is_refused_by_name(manager: ExperimentManager,
                                                             tmp_path: Path) -> None:
    """Re-recorded consistently without its root seed, a run still verifies; resuming it
    cannot reproduce anything, and says why rather than failing with a KeyError."""
    exp = manager.create_experiment("seedless", seed=1)
    exp.log_metric("loss", 0.5, epoch=0)
    exp.suspend()

    def drop_seed(body: dict[str, Any]) -> None:
        if body["kind"] == "experiment_created":
            del body["params"]["root_seed"]

    with ExperimentManager(f"sqlite:///{tmp_path / 'forged.db'}") as forged:
        copy_run(manager.store, exp.id, forged.store, drop_seed)
        with pytest.raises(BadInputError, match=f"{exp.id} has no recorded root seed"):
            forged.resume_experiment(exp.id)


# -- op checks ---------------------------------------------------------------------------------------

def _to_radians(params: dict[str, Any]) -> dict[str, Any]:
    return {"angle": float(params["angle"]) * np.pi / 180}


@register_op("hostile_rotate", 1, check=_to_radians)
def _rotate(batch: np.ndarray, rng: np.random.Generator, *, angle: float) -> None:
    batch *= np.float32(np.cos(angle))


@register_op("hostile_adds_key", 1, check=lambda params: {**params, "extra": 1})
def _adds_key(batch: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0) -> None:
    batch *= np.float32(scale)


@register_op("hostile_returns_none", 1, check=lambda params: None)
def _returns_none(batch: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0) -> None:
    batch *= np.float32(scale)


@pytest.mark.parametrize("op,match", [("hostile_rotate", "changed its own result"),
                                      ("hostile_adds_key", "must return the op's parameters"),
                                      ("hostile_returns_none", "must return the op's parameters")])
def test_an_op_check_must_be_stable_on_its_own_result(op: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        DataAugmenter(ops=[{"op": op, "angle": 90} if op == "hostile_rotate" else {"op": op}])


@pytest.mark.parametrize("arguments", [{"noise_std": 10**400}, {"mask_prob": 0.1,
                                                                "mask_fill": 10**400},
                                       {"scale_jitter": -10**400}, {"mask_fill": 5.0}],
                         ids=["huge-std", "huge-fill", "huge-jitter", "fill-without-mask"])
def test_augmenter_arguments_are_checked(arguments: dict[str, Any]) -> None:
    with pytest.raises(BadInputError):
        DataAugmenter(**arguments)


@pytest.mark.parametrize("batch", [np.float32(1.0), [[1.0], [2.0, 3.0]]], ids=["0-d", "ragged"])
def test_an_augmented_batch_is_an_array_of_samples(batch: Any) -> None:
    with pytest.raises(BadInputError, match="augment"):
        DataAugmenter(noise_std=0.1, seed=1)(batch)


# -- user draws ------------------------------------------------------------------------------------

@register_draw("hostile_offset", 1)
def _offset(rng: np.random.Generator, *, base: list, shift: int = 0) -> np.ndarray:
    assert type(shift) is int and type(base) is list  # what replay passes, from the record
    base.append(0)  # changing its params must not change what is recorded
    return rng.random(3) + shift + len(base)


def test_a_draw_is_called_with_the_params_it_records(manager: ExperimentManager,
                                                     tmp_path: Path) -> None:
    with manager.create_experiment("draws", seed=3) as exp:
        exp.draw("hostile_offset", ("model", "offset"), base=(1, 2), shift=np.int32(4))
    with Store.open(manager.store.url_with_secrets) as store:
        report = replay_run(store, exp.id, data_dir=tmp_path / "data")
    assert report.certified, report.first_divergence


def _other_offset(rng: np.random.Generator, *, base: list, shift: int = 0) -> np.ndarray:
    return rng.random(3) - shift


@pytest.mark.parametrize("function,match", [
    (_other_offset, "other code"), (42, "must be a function"),
    (lambda: 1, "must take \\(rng"), (lambda rng, name: 1, "'name'"),
    (lambda rng, size, /: 1, "positional-only")],
    ids=["other-code", "not-callable", "no-rng", "reserved-name", "positional-only"])
def test_a_draw_registration_is_checked(function: Any, match: str) -> None:
    version = 1 if function is _other_offset else 5
    with pytest.raises(BadInputError, match=match):
        register_draw("hostile_offset", version)(function)


@pytest.mark.parametrize("call,match", [
    (lambda exp: exp.draw("hostile_offset", ("m",), base=[], bogus=1), "unknown parameter"),
    (lambda exp: exp.draw("hostile_offset", ("m",)), "needs parameter\\(s\\) \\[.base.\\]"),
    (lambda exp: exp.draw("hostile_offset", ("m",), bogus=1),
     "unknown parameter\\(s\\) \\[.bogus.\\] and needs parameter\\(s\\) \\[.base.\\]"),
    (lambda exp: exp.draw("hostile_offset", 5, base=[]), "sequence of labels"),
    (lambda exp: exp.draw("hostile_offset", ("m",), version=True, base=[]), "version"),
    (lambda exp: register_draw("hostile_offset", 2**64)(_offset), "below 2\\*\\*63"),
    # an array param was refused as "cannot encode a value of type ndarray canonically": no draw
    # or param named
    (lambda exp: exp.draw("hostile_offset", ("m",), base=np.ones(2)),
     "^got draw 'hostile_offset' params\\['base'\\] that cannot be recorded: cannot encode a "
     "value of type ndarray canonically$")],
    ids=["unknown-param", "missing-param", "both", "path-int", "version-bool", "version-huge",
         "array-param"])
def test_draw_calls_are_checked_before_anything_is_drawn(manager: ExperimentManager,
                                                         call: Any, match: str) -> None:
    with manager.create_experiment("draw-calls", seed=3) as exp:
        with pytest.raises(BadInputError, match=match):
            call(exp)
    assert "user_draw" not in _kinds(manager, exp.id)


@register_draw("hostile_ragged", 1)
def _ragged(rng: np.random.Generator) -> list:
    return [[1.0], [2.0, 3.0]]


@register_draw("hostile_returns", 1)
def _returns(rng: np.random.Generator, *, kind: str = "none") -> Any:
    return {"none": None, "dict": {"a": rng.random(2)}, "set": {1, 2},
            "list": [None, rng.random()]}[kind]


@pytest.mark.parametrize(("kind", "shown"), [("none", "NoneType"), ("dict", "dict"),
                                             ("set", "set"), ("list", "list")])
def test_a_draw_result_that_is_no_array_is_refused_saying_so(manager: ExperimentManager,
                                                            kind: str, shown: str) -> None:
    """A draw returning None, a dict or a set was refused as "cannot digest an array of dtype
    object: only plain dtypes have stable bytes" — an array the user never gave."""
    with manager.create_experiment("returns", seed=3) as exp:
        with pytest.raises(BadInputError, match=rf"^a draw's result must be an array or "
                                                rf"array-like of one shape \(of numbers, bools or "
                                                rf"text\), got {shown}: "):
            exp.draw("hostile_returns", ("m",), kind=kind)
    assert "user_draw" not in _kinds(manager, exp.id)


def test_a_ragged_draw_result_is_refused(manager: ExperimentManager) -> None:
    with manager.create_experiment("ragged", seed=3) as exp:
        with pytest.raises(BadInputError, match="one shape"):
            exp.draw("hostile_ragged", ("m",))
    assert "user_draw" not in _kinds(manager, exp.id)
