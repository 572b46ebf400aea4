"""Replay certifies honest runs and names the first divergence of dishonest ones, with its cause."""

from __future__ import annotations

import getpass
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import ledger.experiment
from ledger.augment import DataAugmenter, register_op
from ledger.environment import environment_fingerprint
from ledger.errors import CannotReplayError, CheckFailedError, UnknownExperimentError
from ledger.store import Store
from replay import Cause, replay_run
from replay_helpers import record_run

_behaviour = {"scale": 1.0}


@register_op("test_unseeded_noise", version=1)
def unseeded_noise(batch: np.ndarray, rng: np.random.Generator, *, std: float = 0.1) -> None:
    """A broken op: it ignores its generator, like the original bug report's augmenter."""
    batch += np.random.default_rng().normal(0.0, std, batch.shape).astype(batch.dtype)


@register_op("test_library_sensitive", version=1)
def library_sensitive(batch: np.ndarray, rng: np.random.Generator, *, std: float = 0.1) -> None:
    """An op whose output changes with something outside the ledger (here a module variable)."""
    batch += (rng.normal(0.0, std, batch.shape) * _behaviour["scale"]).astype(batch.dtype)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def _url(folder: Path) -> str:
    return f"sqlite:///{folder / 'ledger.db'}"


@pytest.mark.parametrize("num_workers,jobs", [(0, 1), (2, 1), (0, 2)])
def test_replay_certifies_a_recorded_run(folder: Path, num_workers: int, jobs: int) -> None:
    exp = record_run(_url(folder), folder / "data", num_workers=num_workers)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, jobs=jobs, data_dir=folder / "data")
    assert report.certified, report.first_divergence
    assert report.compared["augmentation_batch"] == 2 * 10  # 600 rows / 64 = 10 batches, 2 epochs
    assert report.compared["epoch_reset"] == 2
    assert report.compared["dataset_registered"] == 1
    assert report.compared.get("worker_spawned", 0) == num_workers
    assert report.matched == sum(report.compared.values())
    assert report.head is not None and report.not_draws["metric"] == 2


def test_an_op_that_ignores_its_seed_is_caught_at_its_first_batch(folder: Path) -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_unseeded_noise", "std": 0.1}])
    exp = record_run(_url(folder), folder / "data", augmenter=augmenter)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert not report.certified and divergence is not None
    assert divergence.kind == "augmentation_batch"
    assert divergence.path == ["epoch", 0, "batch", 0, "augment"]
    assert divergence.cause is Cause.OUTPUT
    assert "nondeterministic" in divergence.detail
    assert report.mismatched == 20


def test_a_changed_dataset_file_is_caught_before_any_draw(folder: Path) -> None:
    exp = record_run(_url(folder), folder / "data")
    (stored,) = (folder / "data").rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"].copy(), archive["labels"]
    features[3, 2] += 1.0
    np.savez(stored, features=features, labels=labels)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.kind == "dataset_registered"
    assert divergence.cause is Cause.INPUT
    assert dict(report.compared) == {"dataset_registered": 1}


def test_a_missing_dataset_file_cannot_replay(folder: Path) -> None:
    exp = record_run(_url(folder), folder / "data")
    for stored in (folder / "data").rglob("*.npz"):
        stored.unlink()
    with Store.open(_url(folder)) as store, pytest.raises(CannotReplayError, match="missing"):
        replay_run(store, exp, data_dir=folder / "data")


def test_a_ledger_with_an_edited_body_is_refused_before_replay(folder: Path) -> None:
    exp = record_run(_url(folder), folder / "data")
    connection = sqlite3.connect(folder / "ledger.db")
    connection.execute("DROP TRIGGER ledger_events_no_update")
    body, row_id = connection.execute(
        "SELECT body, id FROM ledger_events WHERE kind = 'epoch_reset' LIMIT 1").fetchone()
    edited = bytearray(body)
    edited[-3] ^= 0x01
    connection.execute("UPDATE ledger_events SET body = ? WHERE id = ?", (bytes(edited), row_id))
    connection.commit()
    connection.close()
    with Store.open(_url(folder)) as store, pytest.raises(CheckFailedError,
                                                          match="fails verification"):
        replay_run(store, exp, data_dir=folder / "data")


def test_a_draw_that_differs_under_another_recorded_numpy_is_environment_caused(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = environment_fingerprint()
    # Below pyproject's numpy floor, so never the numpy installed here.
    recorded["packages"] = {**recorded["packages"], "numpy": "1.25.2"}
    monkeypatch.setattr(ledger.experiment, "environment_fingerprint", lambda: recorded)
    augmenter = DataAugmenter(ops=[{"op": "test_library_sensitive", "std": 0.1}])
    exp = record_run(_url(folder), folder / "data", augmenter=augmenter)
    monkeypatch.setitem(_behaviour, "scale", 2.0)  # what a new numpy's kernels might do
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.cause is Cause.OUTPUT
    assert divergence.path == ["epoch", 0, "batch", 0, "augment"]
    assert f"numpy 1.25.2 recorded, {np.__version__} now" in divergence.detail
    assert ("packages.numpy", "1.25.2", np.__version__) in report.environment_differences


def test_a_draw_that_differs_under_another_recorded_blas_thread_count_names_it(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = environment_fingerprint()
    recorded["blas_threads"] = {"libopenblas.so": 64}
    monkeypatch.setattr(ledger.experiment, "environment_fingerprint", lambda: recorded)
    augmenter = DataAugmenter(ops=[{"op": "test_library_sensitive", "std": 0.1}])
    exp = record_run(_url(folder), folder / "data", augmenter=augmenter)
    monkeypatch.setitem(_behaviour, "scale", 2.0)  # what another summation order might do
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.cause is Cause.OUTPUT
    assert "BLAS threads of libopenblas.so 64 recorded, absent now" in divergence.detail
    assert divergence.detail.startswith("nondeterministic code, or a matrix product")
    assert ("blas_threads.libopenblas.so", 64, None) in report.environment_differences


def test_an_unregistered_op_cannot_replay_and_says_how_to_allow_it(folder: Path) -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_library_sensitive", "std": 0.1}])
    exp = record_run(_url(folder), folder / "data", augmenter=augmenter)
    from ledger import augment_ops

    saved = dict(augment_ops._REGISTRY)
    try:
        for key in [k for k in augment_ops._REGISTRY if "test_library_sensitive" in str(k)]:
            del augment_ops._REGISTRY[key]
        with Store.open(_url(folder)) as store, pytest.raises(CannotReplayError,
                                                              match="--trust"):
            replay_run(store, exp, data_dir=folder / "data")
    finally:
        augment_ops._REGISTRY.clear()
        augment_ops._REGISTRY.update(saved)


def test_unknown_experiment_is_bad_input(folder: Path) -> None:
    record_run(_url(folder), folder / "data")
    with Store.open(_url(folder)) as store, pytest.raises(UnknownExperimentError):
        replay_run(store, "exp-000000000000")


@pytest.mark.parametrize("current,start", [
    ({"packages": {"numpy": "2.0.0"}, "blas_threads": {"libx.so": 1}},
     "environment differs from the recorded one: numpy 1.26.0 recorded, 2.0.0 now"),
    ({"packages": {"numpy": "1.26.0"}, "blas_threads": {"libx.so": 2}},
     "nondeterministic code, or a matrix product summed in another order"),
    ({"packages": {"numpy": "1.26.0"}, "blas_threads": {"libx.so": 1}},
     "nondeterministic code: same seed")])
def test_a_thread_count_alone_is_not_named_as_the_cause(current: dict, start: str) -> None:
    """Versions that differ are the likely cause; BLAS threads alone only stand beside code."""
    from replay.causes import explain_output

    recorded = {"packages": {"numpy": "1.26.0"}, "blas_threads": {"libx.so": 1}}
    assert explain_output(recorded, current).startswith(start)


def test_a_version_not_recorded_is_shown_absent_and_zero_threads_stay_zero() -> None:
    """An empty version is as good as none ("absent", never an empty gap in the sentence),
    while a thread count of 0 is a recorded value and is shown as 0."""
    from replay.causes import explain_output, shown_version

    assert [shown_version(value) for value in (None, "", 0, "1.26.0")] == [
        "absent", "absent", "0", "1.26.0"]
    detail = explain_output({"packages": {"numpy": "1.26.0"}}, {"packages": {"numpy": ""}})
    assert detail.endswith("numpy 1.26.0 recorded, absent now")


def test_a_replayer_the_os_has_no_name_for_still_replays(folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    exp = record_run(_url(folder), folder / "data")

    def nameless() -> str:  # getpass.getuser in a container run as a uid without passwd entry
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.setattr(getpass, "getuser", nameless)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    assert report.certified and report.replayed_by == f"unknown@{socket.gethostname()}"

