"""Hostile input to the trainer API: a clear LedgerError, nothing recorded, never a hang.

Each case here was found by a sweep that fed the public API odd values and saw a raw
TypeError/ValueError/OverflowError from deep inside, a blocked call, or events recorded for a
call that was then refused.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator
from ledger.augment import register_op
from ledger.errors import BadInputError, LedgerError, StoreError
from ledger.iterator import MAX_TIMEOUT, MAX_WORKERS
from ledger.store import Store

FEATURES = np.arange(40, dtype=np.float32).reshape(20, 2)
LABELS = np.zeros(20, dtype=np.int8)


def _kinds(manager: ExperimentManager, exp: str) -> list[str]:
    with Store.open(manager.store.url_with_secrets) as store:
        return [kind for _stream, _seq, kind, _body in store.iter_run_bodies(exp)]


def test_a_named_pipe_as_dataset_file_is_refused_not_waited_on(manager: ExperimentManager,
                                                               tmp_path: Path) -> None:
    pipe = tmp_path / "data.npz"
    os.mkfifo(pipe)
    outcome: list[BaseException | None] = []

    def register() -> None:
        with manager.create_experiment("pipe", seed=1) as exp:
            try:
                exp.register_dataset("d", path=pipe)
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                outcome.append(error)

    thread = threading.Thread(target=register, daemon=True)
    thread.start()
    thread.join(60)  # a safeguard against the hang this test is about, not a timing assertion
    assert outcome, "register_dataset blocked on a named pipe"
    assert isinstance(outcome[0], BadInputError) and "not a regular file" in str(outcome[0])


def _npy(path: Path) -> Path:
    np.save(path, FEATURES)
    return path


def _truncated(path: Path) -> Path:
    np.savez(path, features=FEATURES, labels=LABELS)
    path.write_bytes(path.read_bytes()[:100])
    return path


def _huge_header(path: Path) -> Path:
    header = np.lib.format.header_data_from_array_1_0(FEATURES)
    header["shape"] = (10**12, 10**6)
    with zipfile.ZipFile(path, "w") as archive, archive.open("features.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, header)
    return path


@pytest.mark.parametrize("make", [_npy, _truncated, _huge_header],
                         ids=["plain-npy", "truncated-npz", "header-of-exabytes"])
def test_dataset_files_that_are_not_readable_npz_are_refused(
        manager: ExperimentManager, tmp_path: Path, make: Any) -> None:
    path = make(tmp_path / "data.npz")
    with manager.create_experiment("files", seed=1) as exp:
        with pytest.raises(BadInputError, match="cannot read dataset file"):
            exp.register_dataset("d", path=path, labels_key=None)
        assert "dataset_registered" not in _kinds(manager, exp.id)


@pytest.mark.parametrize("arguments", [{"path": 5}, {"path": b"data.npz"},
                                       {"features": [[1.0, 2.0], [3.0]]}],
                         ids=["path-int", "path-bytes", "ragged-list"])
def test_datasets_of_the_wrong_type_are_refused(manager: ExperimentManager,
                                                arguments: dict[str, Any]) -> None:
    with manager.create_experiment("types", seed=1) as exp:
        with pytest.raises(BadInputError):
            exp.register_dataset("d", **arguments)


def test_float16_features_are_refused_before_anything_is_recorded(
        manager: ExperimentManager) -> None:
    with manager.create_experiment("half", seed=1) as exp:
        data = exp.register_dataset("d", FEATURES.astype(np.float16), LABELS)
        with pytest.raises(BadInputError, match="float32 or float64"):
            TrainingDataIterator(data, 4, experiment=exp, augmenter=DataAugmenter(noise_std=0.1))
        assert "epoch_reset" not in _kinds(manager, exp.id)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, "1", [1], True, 0, -1.0])
def test_timeouts_that_no_clock_can_hold_are_refused(timeout: Any) -> None:
    with pytest.raises(BadInputError, match="timeout"):
        TrainingDataIterator((FEATURES, LABELS), 4, seed=1, num_workers=1, timeout=timeout)


def test_an_experiment_must_be_an_experiment() -> None:
    with pytest.raises(BadInputError, match="must be an Experiment"):
        TrainingDataIterator((FEATURES, LABELS), 4, experiment="exp-123")  # type: ignore[arg-type]


def test_huge_batch_size_and_prefetch_need_no_huge_shared_memory() -> None:
    expected = [x for x, _y in TrainingDataIterator((FEATURES, LABELS), 2**62, seed=3)]
    with TrainingDataIterator((FEATURES, LABELS), 2**62, seed=3, num_workers=1,
                              prefetch=2**62) as batches:
        got = [x for x, _y in batches]
    assert len(got) == len(expected) == 1 and np.array_equal(got[0], expected[0])


def _times(batch: np.ndarray, rng: np.random.Generator, *, factor: float) -> None:
    batch *= factor


_FIRST_TIMES = _times


def _times(batch: np.ndarray, rng: np.random.Generator, *, factor: float) -> None:  # noqa: F811
    batch *= factor * 2  # same module, same name: only the code tells them apart


_SECOND_TIMES = _times


def test_an_op_version_cannot_be_taken_over_by_other_code() -> None:
    register_op("hostile_times", 1)(_FIRST_TIMES)
    register_op("hostile_times", 1)(_FIRST_TIMES)  # the same function again (a re-import): fine
    with pytest.raises(BadInputError, match="with other code"):
        register_op("hostile_times", 1)(_SECOND_TIMES)
    assert np.array_equal(DataAugmenter(ops=[{"op": "hostile_times", "factor": 3.0}])(
        np.ones((1, 2), np.float32), seed=1), np.full((1, 2), 3.0, np.float32))


@pytest.mark.parametrize("function", [5, int], ids=["not-callable", "no-signature"])
def test_an_op_must_be_a_function(function: Any) -> None:
    with pytest.raises(BadInputError, match="must be a function"):
        register_op("hostile_not_a_function", 1)(function)


def test_an_op_check_must_be_a_function() -> None:
    with pytest.raises(BadInputError, match="check must be a function"):
        register_op("hostile_bad_check", 1, check=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("ops", [5, "gaussian_noise", [{"op": "gaussian_noise", "std": 0.1,
                                                        1: 2}]],
                         ids=["int", "str", "non-str-key"])
def test_augmenter_ops_of_the_wrong_shape_are_refused(ops: Any) -> None:
    with pytest.raises(BadInputError):
        DataAugmenter(ops=ops)


@pytest.mark.parametrize("url", ["sqlite:///l\x00.db", "sqlite://:memory:", 5],
                         ids=["nul", "bad-port", "not-str"])
def test_urls_that_are_not_urls_are_refused(url: Any) -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        ExperimentManager(url)


def test_an_empty_url_is_refused_not_taken_for_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ExperimentManager(os.environ.get("URL", ""))`` with the variable unset named no ledger,
    yet recorded into $LEDGER_URL's or the current folder's; an empty $LEDGER_URL stays unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGER_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with pytest.raises(StoreError, match="^got an empty database URL: give one"):
        ExperimentManager("")
    assert not (tmp_path / "elsewhere.db").exists()
    monkeypatch.setenv("LEDGER_URL", "")
    with ExperimentManager(data_dir=tmp_path / "data") as manager:
        manager.create_experiment("default", seed=1).close()
    assert (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("data_dir", [5, "a\x00b"], ids=["int", "nul"])
def test_a_data_dir_must_be_a_path(tmp_path: Path, data_dir: Any) -> None:
    with pytest.raises(BadInputError, match="data_dir"):
        ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=data_dir)


@pytest.mark.parametrize("arguments", [{"hyperparams": [1, 2]}, {"hyperparams": "abc"},
                                       {"entrypoint": "x"}, {"entrypoint": ["a"]}],
                         ids=["hyperparams-list", "hyperparams-str", "entrypoint-str",
                              "entrypoint-list"])
def test_hyperparams_and_entrypoint_must_be_maps(manager: ExperimentManager,
                                                 arguments: dict[str, Any]) -> None:
    with pytest.raises(BadInputError, match="must be a map"):
        manager.create_experiment("maps", seed=1, **arguments)
    assert manager.store.experiments() == []


@pytest.mark.parametrize(("arguments", "message"), [
    ({"hyperparams": {"lr": 0.1, "scaler": np.ones(2)}},
     r"^got hyperparams\['scaler'\] that cannot be recorded: cannot encode a value of type "
     r"ndarray canonically$"),
    ({"hyperparams": {"layers": {"sizes": {64, 32}}}}, r"^got hyperparams\['layers'\] that "),
    ({"hyperparams": {3: "x"}}, r"^got hyperparams\[3\] that cannot be recorded: dict key 3 "),
    ({"entrypoint": {"module": "m", "call": print}}, r"^got entrypoint\['call'\] that ")],
    ids=["array", "nested-set", "int-key", "entrypoint-function"])
def test_a_hyperparam_that_cannot_be_recorded_is_named(manager: ExperimentManager,
                                                       arguments: dict[str, Any],
                                                       message: str) -> None:
    """A numpy array among the hyperparams was refused as "cannot encode a value of type ndarray
    canonically": neither the argument nor the key was named."""
    with pytest.raises(BadInputError, match=message):
        manager.create_experiment("maps", seed=1, **arguments)
    assert manager.store.experiments() == []


@pytest.mark.parametrize("arguments", [{"model": 5}, {"purpose": object()}, {"purpose": b"x"}],
                         ids=["model-int", "purpose-object", "purpose-bytes"])
def test_model_and_purpose_must_be_text(manager: ExperimentManager,
                                        arguments: dict[str, Any]) -> None:
    with pytest.raises(BadInputError, match="must be a str"):
        manager.create_experiment("texts", seed=1, **arguments)
    assert manager.store.experiments() == []


@pytest.mark.parametrize("value", ["high", None, [1, 2], {"a": 1}, True, np.array([0.5, 0.6])],
                         ids=["str", "none", "list", "dict", "bool", "array"])
def test_a_metric_value_must_be_a_number(manager: ExperimentManager, value: Any) -> None:
    with manager.create_experiment("metrics", seed=1) as exp:
        with pytest.raises(BadInputError, match="must be a real number"):
            exp.log_metric("auc", value)
    assert "metric" not in _kinds(manager, exp.id)


@pytest.mark.parametrize(("value", "message"), [
    (2**64, r"^metric 'auc' got an int of 65 bits, but an int must be in \[-2\*\*63, 2\*\*64\) "
            r"to be recorded: give a float$"),
    (-2**63 - 1, r"^metric 'auc' got an int of 64 bits, but an int must be in \[-2\*\*63, "
                 r"2\*\*64\)"),
    (np.longdouble(0.5), r"^metric 'auc' got a value of type longdouble, but it must be a real "
                         r"number \(int or float\) \(convert it to float\)$")],
    ids=["int-2**64", "int-below-int64", "longdouble"])
def test_a_metric_value_the_ledger_cannot_hold_is_refused_naming_the_metric(
        manager: ExperimentManager, value: Any, message: str) -> None:
    """An int beyond 64 bits was an EncodingError that named neither the metric nor what to do
    ("integer 18446744073709551616 does not fit in 64 bits"); a longdouble was told to call
    .item(), which gives a longdouble again."""
    with manager.create_experiment("metrics", seed=1) as exp:
        with pytest.raises(BadInputError, match=message):
            exp.log_metric("auc", value)
        exp.log_metric("auc", 2**64 - 1)  # the edges are recorded
        exp.log_metric("low", -2**63)
    assert _kinds(manager, exp.id).count("metric") == 2


def test_metric_numbers_of_every_kind_are_recorded_as_python_numbers(
        manager: ExperimentManager) -> None:
    with manager.create_experiment("numbers", seed=1) as exp:
        values = [exp.log_metric(f"m{k}", value, epoch=np.int64(k)).params
                  for k, value in enumerate([np.float32(0.5), np.int16(3), 7, float("nan"),
                                             float("inf"), np.array(2.5)])]
    assert [(p["epoch"], type(p["value"])) for p in values] == [
        (0, float), (1, int), (2, int), (3, float), (4, float), (5, float)]
    assert values[0]["value"] == 0.5 and values[3]["value"] != values[3]["value"]  # NaN kept


@pytest.mark.parametrize("epoch", [-1, True, 1.5, "3", [0]],
                         ids=["negative", "bool", "float", "str", "list"])
def test_metric_and_checkpoint_epochs_must_be_ints(manager: ExperimentManager,
                                                   epoch: Any) -> None:
    with manager.create_experiment("epochs", seed=1) as exp:
        with pytest.raises(BadInputError, match="epoch"):
            exp.log_metric("auc", 0.5, epoch=epoch)
        with pytest.raises(BadInputError, match="epoch"):
            exp.log_checkpoint("w", np.ones(2), epoch=epoch)
    assert {"metric", "checkpoint"}.isdisjoint(_kinds(manager, exp.id))


@pytest.mark.parametrize("state", [[np.ones(2), np.ones(3)], {"w": [[1], [2, 3]]}, None, "abc",
                                   {"w": None}, {"w": {"nested": np.ones(2)}}],
                         ids=["ragged-list", "ragged-value", "none", "str", "none-value",
                              "nested-map"])
def test_a_checkpoint_must_be_arrays(manager: ExperimentManager, state: Any) -> None:
    with manager.create_experiment("checkpoints", seed=1) as exp:
        with pytest.raises(BadInputError, match="checkpoint") as refused:
            exp.log_checkpoint("final", state)
        assert "state_arrays" not in str(refused.value)  # a torch hint only for tensors
    assert "checkpoint" not in _kinds(manager, exp.id)


def test_a_checkpoint_map_may_not_use_the_key_that_names_one_array(
        manager: ExperimentManager) -> None:
    """``{"": weights}`` was recorded with the params of a single array (``arrays: {"": …}``)
    but the digest of a map: the record read as one array whose digest no reader reproduced."""
    with manager.create_experiment("checkpoints", seed=1) as exp:
        with pytest.raises(BadInputError, match="^got a checkpoint key '', but a map's keys must "
                                                "be non-empty"):
            exp.log_checkpoint("final", {"": np.ones(2), "b": np.zeros(1)})
        single = exp.log_checkpoint("single", np.ones(2))
    assert single.params["arrays"] == {"": {"dtype": "<f8", "shape": [2]}}
    assert _kinds(manager, exp.id).count("checkpoint") == 1


@pytest.mark.parametrize("change", [{"epoch": True}, {"batch": True}, {"batch_size": 4.0},
                                    {"shuffle": 1}, {"length": 20.0}],
                         ids=["epoch-bool", "batch-bool", "batch_size-float", "shuffle-int",
                              "length-float"])
def test_a_state_dict_of_lookalike_types_is_refused(change: dict[str, Any]) -> None:
    with TrainingDataIterator((FEATURES, LABELS), 4, seed=3) as batches:
        state = batches.state_dict() | change
        with pytest.raises(BadInputError):
            batches.load_state_dict(state)
        assert (batches.epoch, batches.batch) == (0, 0)


def test_verify_takes_a_url_or_a_store(manager: ExperimentManager, tmp_path: Path) -> None:
    from ledger import verify
    with manager.create_experiment("verified", seed=1):
        pass
    assert verify(manager.store.url_with_secrets).ok
    with pytest.raises(StoreError, match="no ledger"):
        verify(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(BadInputError, match="Store or a ledger URL"):
        verify(5)


def test_worker_counts_are_bounded() -> None:
    with pytest.raises(BadInputError, match="at most 256"):
        TrainingDataIterator((FEATURES, LABELS), 4, seed=1, num_workers=100_000)


def test_the_largest_worker_count_and_timeout_are_accepted() -> None:
    """The bounds are inclusive: MAX_WORKERS workers and a MAX_TIMEOUT wait are allowed (the
    error messages say "at most"); the workers start only at the first pass, so none run here."""
    with TrainingDataIterator((FEATURES, LABELS), 4, seed=1, num_workers=MAX_WORKERS,
                              timeout=MAX_TIMEOUT) as batches:
        assert (batches.num_workers, batches.timeout) == (MAX_WORKERS, MAX_TIMEOUT)
        assert batches.worker_pids == []


def test_every_refusal_here_is_a_ledger_error() -> None:
    assert issubclass(BadInputError, LedgerError) and issubclass(StoreError, LedgerError)
