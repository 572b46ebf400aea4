"""Hostile input and wrong usage of resuming, user draw points and the augmenter.

Each case was found by a sweep: a resumed run that contradicted itself and still certified, a
faithful resume refused, an op whose check made the recording differ from what ran, draws that
replayed as "nondeterministic" because they were called with other params than recorded, and
raw Python errors from deep inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator, register_draw
from ledger.augment import register_op
from ledger.errors import BadInputError, StoreError
from ledger.store import Store
from replay.engine import replay_run

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
    (lambda exp: register_draw("hostile_offset", 2**64)(_offset), "below 2\\*\\*63")],
    ids=["unknown-param", "missing-param", "both", "path-int", "version-bool", "version-huge"])
def test_draw_calls_are_checked_before_anything_is_drawn(manager: ExperimentManager,
                                                         call: Any, match: str) -> None:
    with manager.create_experiment("draw-calls", seed=3) as exp:
        with pytest.raises(BadInputError, match=match):
            call(exp)
    assert "user_draw" not in _kinds(manager, exp.id)


@register_draw("hostile_ragged", 1)
def _ragged(rng: np.random.Generator) -> list:
    return [[1.0], [2.0, 3.0]]


def test_a_ragged_draw_result_is_refused(manager: ExperimentManager) -> None:
    with manager.create_experiment("ragged", seed=3) as exp:
        with pytest.raises(BadInputError, match="one shape"):
            exp.draw("hostile_ragged", ("m",))
    assert "user_draw" not in _kinds(manager, exp.id)
