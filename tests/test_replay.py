"""Replay certifies honest runs and names the first divergence of dishonest ones, with its cause."""

from __future__ import annotations

import getpass
import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ledger.experiment
import replay.gate
from ledger import register_draw
from ledger.augment import DataAugmenter, register_op
from ledger.environment import environment_fingerprint
from ledger.errors import (CannotReplayError, CheckFailedError, StoreError,
                           UnknownExperimentError)
from ledger.store import Store
from replay import Cause, replay_run
from replay.datasets import register_loader
from replay_helpers import record_run, sample_data

_behaviour = {"scale": 1.0, "truncate": False, "raise": False}


@register_op("test_unseeded_noise", version=1)
def unseeded_noise(batch: np.ndarray, rng: np.random.Generator, *, std: float = 0.1) -> None:
    """A broken op: it ignores its generator, like the original bug report's augmenter."""
    batch += np.random.default_rng().normal(0.0, std, batch.shape).astype(batch.dtype)


@register_op("test_library_sensitive", version=1)
def library_sensitive(batch: np.ndarray, rng: np.random.Generator, *, std: float = 0.1) -> None:
    """An op whose output changes with something outside the ledger (here a module variable)."""
    batch += (rng.normal(0.0, std, batch.shape) * _behaviour["scale"]).astype(batch.dtype)


@register_op("test_reshaping", version=1)
def reshaping(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An op that returns a new batch; while a test says so, one of another shape, or an error
    (a broken op)."""
    if _behaviour["raise"]:
        raise RuntimeError("op exploded")
    noise = rng.random(batch.shape[1:]).astype(batch.dtype)
    return batch[:1].copy() if _behaviour["truncate"] else batch + noise


@register_op("test_overflowing", version=1)
def overflowing(batch: np.ndarray, rng: np.random.Generator) -> None:
    """An op whose float32 products overflow: its batches hold infinities."""
    batch *= np.float32(1e30) * (1 + rng.random(batch.shape, dtype=np.float32))
    batch *= np.float32(1e30)


@register_draw("test_scaled_noise", 1)
def scaled_noise(rng: np.random.Generator, *, size: int) -> np.ndarray:
    """A user draw whose result changes with something outside the ledger (the module's scale)."""
    return rng.random(size) * _behaviour["scale"]


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
    assert not report.skipped and report.to_json()["skipped"] == {}


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


def _change_stored_dataset(data_dir: Path) -> None:
    """Change one value of the run's one stored dataset, in place."""
    (stored,) = data_dir.rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"].copy(), archive["labels"]
    features[3, 2] += 1.0
    np.savez(stored, features=features, labels=labels)


def test_a_changed_dataset_file_is_caught_before_any_draw(folder: Path) -> None:
    exp = record_run(_url(folder), folder / "data")
    _change_stored_dataset(folder / "data")
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.kind == "dataset_registered"
    assert divergence.cause is Cause.INPUT
    assert dict(report.compared) == {"dataset_registered": 1}


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_replay_stopped_at_a_changed_dataset_counts_what_it_did_not_re_execute(
        folder: Path, jobs: int) -> None:
    """The early stop at a changed dataset reported neither the run's events that are not
    draws (every other verdict does) nor the draws it left unchecked."""
    exp = record_run(_url(folder), folder / "data")
    _change_stored_dataset(folder / "data")
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, jobs=jobs, data_dir=folder / "data")
    assert not report.certified
    assert dict(report.skipped) == {"augmentation_batch": 20, "epoch_reset": 2}
    assert dict(report.not_draws) == {"experiment_created": 1, "metric": 2, "run_completed": 1}
    assert report.to_json()["skipped"] == {"augmentation_batch": 20, "epoch_reset": 2}


def test_a_missing_dataset_file_cannot_replay(folder: Path) -> None:
    exp = record_run(_url(folder), folder / "data")
    for stored in (folder / "data").rglob("*.npz"):
        stored.unlink()
    with Store.open(_url(folder)) as store, pytest.raises(CannotReplayError, match="missing"):
        replay_run(store, exp, data_dir=folder / "data")


@pytest.mark.parametrize(("replace", "problem"), [
    (lambda path: path.mkdir(), "is a folder, not a dataset file"),
    (lambda path: os.mkfifo(path), "is not a regular file"),
    (lambda path: path.symlink_to("/dev/zero"), "is not a regular file"),
    (lambda path: path.symlink_to(path), "is a symbolic link that leads nowhere"),
    (lambda path: path.symlink_to(path.with_name("gone.npz")), "is a symbolic link that leads")],
    ids=["folder", "fifo", "device", "link-loop", "broken-link"])
def test_a_dataset_file_that_is_there_but_unusable_says_why(
        folder: Path, replace: Callable[[Path], None], problem: str) -> None:
    """A folder, a pipe, a device or a link leading nowhere where the dataset file was: replay
    said the file "is missing", beside a path that exists."""
    exp = record_run(_url(folder), folder / "data")
    (stored,) = (folder / "data").rglob("*.npz")
    stored.unlink()
    replace(stored)
    with Store.open(_url(folder)) as store, pytest.raises(
            CannotReplayError, match=f"dataset file {stored} {problem}"):
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



def test_a_replay_names_the_user_who_ran_it(folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificate says who replayed the run (user@host); "unknown" is only for a user the
    OS has no name for."""
    exp = record_run(_url(folder), folder / "data")
    monkeypatch.setattr(getpass, "getuser", lambda: "auditor-7")
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    assert report.certified and report.replayed_by == f"auditor-7@{socket.gethostname()}"


def test_a_changed_dataset_is_caught_however_long_its_digest_takes(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The datasets are digested on a thread beside the draws: replay waits for that digest
    however long it takes, so changed data is still the first divergence even when every draw
    is re-executed before the digest is done."""
    import time

    import replay.engine

    exp = record_run(_url(folder), folder / "data")
    _change_stored_dataset(folder / "data")
    digest = replay.engine.dataset_redraw

    def slow(loaded: object) -> object:
        time.sleep(1.0)
        return digest(loaded)

    monkeypatch.setattr(replay.engine, "dataset_redraw", slow)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.kind == "dataset_registered"
    assert divergence.cause is Cause.INPUT
    assert divergence.detail == "the dataset's content changed since the run registered it"


def test_replay_finds_the_data_beside_an_sqlite_ledger_by_default(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a data folder given, replay re-loads the datasets from ``ledger-data/`` beside
    the SQLite file, where the run stored them (DATA_DIR_ENV unset)."""
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    exp = record_run(_url(folder), folder / "ledger-data")
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp)
    assert report.certified and report.compared["dataset_registered"] == 1


def test_a_run_without_draws_is_certified(folder: Path) -> None:
    """A run that recorded no draw has nothing that can diverge: replay certifies it, having
    compared nothing, and names its head."""
    from ledger.experiment import ExperimentManager

    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment("empty", seed=1) as exp:
            pass
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp.id, data_dir=folder / "data")
    assert report.certified and report.matched == 0 and dict(report.compared) == {}
    assert report.head is not None


def test_a_replayer_that_returns_no_redraw_cannot_certify(folder: Path) -> None:
    """A plug-in replayer that returns nothing to compare (None) used to have its draw counted
    as matched, only the seed checked: a recorded output nothing reproduced was certified. It
    is exit 3, naming the replayer's kind and the event."""
    from replay import register_replayer

    register_replayer("test_lenient_draw")(lambda _context, _body: None)
    exp = _one_custom_draw(folder, "test_lenient_draw")
    with Store.open(_url(folder)) as store:
        with pytest.raises(CannotReplayError, match=r"replayer of 'test_lenient_draw' returned "
                                                    r"NoneType for main#1, not a Redraw"):
            replay_run(store, exp, data_dir=folder / "data")


def _one_custom_draw(folder: Path, kind: str) -> str:
    """Record a run whose only draw is one of the custom ``kind``; its experiment id."""
    from ledger.experiment import ExperimentManager
    from ledger.seeds import derive_bytes

    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment(kind, seed=1) as exp:
            exp.record(kind, path=("x",), seed=derive_bytes(1, ("x",)), output=bytes(32))
    return exp.id


def test_a_divergence_is_shown_with_its_digests_as_hex(folder: Path) -> None:
    """The certificate (to_json) and the one-line description name the divergent event, its
    path and its digests as lowercase hex — what an auditor compares with ``ledger show``."""
    augmenter = DataAugmenter(ops=[{"op": "test_unseeded_noise", "std": 0.1}])
    exp = record_run(_url(folder), folder / "data", augmenter=augmenter)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
        recorded = next(body for _s, _q, kind, body in store.iter_run_bodies(exp)
                        if kind == "augmentation_batch")
    from ledger.events import decode_body

    body = decode_body(recorded)
    divergence = report.first_divergence
    assert divergence is not None and divergence.actual is not None
    certificate = report.to_json()
    assert certificate["verdict"] == "diverged" and certificate["head"] == report.head.hex()
    shown = certificate["first_divergence"]
    assert shown["kind"] == "augmentation_batch" and shown["field"] == "output"
    assert shown["path"] == ["epoch", 0, "batch", 0, "augment"]
    assert shown["expected"] == body["output"].hex() and len(shown["actual"]) == 64
    assert shown["cause"] == Cause.OUTPUT.value
    line = divergence.describe()
    assert line.startswith(f"{exp} main#{body['seq']} augmentation_batch "
                           f"[epoch/0/batch/0/augment]: {Cause.OUTPUT.value} (output expected "
                           f"{body['output'].hex()}, got ")


def test_a_draw_recorded_without_a_seed_is_judged_by_its_output(folder: Path) -> None:
    """A plug-in draw may record no seed (nothing derived): replay has no seed to check, so it
    certifies the draw when its replayer reproduces the output, and names the output — never a
    seed the run did not record — when it does not, with the digest its replayer produced."""
    from ledger.experiment import ExperimentManager
    from replay import Redraw, register_replayer  # what a plug-in author imports

    register_replayer("test_seedless_draw")(
        lambda _context, body: Redraw(output=bytes([body["params"]["value"]]) * 32))
    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment("seedless", seed=1) as exp:
            exp.record("test_seedless_draw", path=("a",), params={"value": 1},
                       output=bytes([1]) * 32)
            exp.record("test_seedless_draw", path=("b",), params={"value": 2},
                       output=bytes([3]) * 32)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp.id, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and (report.matched, report.mismatched) == (1, 1)
    assert (divergence.path, divergence.field, divergence.cause) == (["b"], "output",
                                                                     Cause.OUTPUT)
    assert (divergence.expected, divergence.actual) == (bytes([3]) * 32, bytes([2]) * 32)


def test_a_draw_of_a_kind_no_replayer_knows_says_how_to_allow_one(folder: Path) -> None:
    """A custom draw whose replayer is not loaded cannot replay (exit 3): the message names its
    kind and event and how to allow the code — not a TypeError from calling nothing."""
    exp = _one_custom_draw(folder, "test_unregistered_draw")
    with Store.open(_url(folder)) as store:
        with pytest.raises(CannotReplayError, match=r"no replayer for events of kind "
                                                    r"'test_unregistered_draw' \(main#1\): "
                                                    r"install the package .* --trust MODULE"):
            replay_run(store, exp, data_dir=folder / "data")


def test_datasets_sharing_a_file_or_its_keys_are_each_reloaded_from_their_own_arrays(
        folder: Path) -> None:
    """Replay reads a file several registrations name once — but only when they name the same
    arrays: a train and a test set stored in one file under other keys, and another file under
    the same keys, are each re-loaded from their own arrays, so an honest run is certified."""
    from ledger.experiment import ExperimentManager

    (x, y), (other_x, other_y) = sample_data(seed=1), sample_data(seed=2)
    np.savez(folder / "split.npz", x_train=x[:500], y_train=y[:500], x_test=x[500:],
             y_test=y[500:])
    np.savez(folder / "other.npz", x_train=other_x, y_train=other_y)
    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment("split", seed=3) as exp:
            for name, file, features, labels in [
                    ("train", "split", "x_train", "y_train"), ("test", "split", "x_test", "y_test"),
                    ("train-x", "split", "x_train", None), ("test-x", "split", "x_test", None),
                    ("other", "other", "x_train", "y_train")]:
                exp.register_dataset(name, path=folder / f"{file}.npz", features_key=features,
                                     labels_key=labels)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp.id, data_dir=folder / "data")
    assert report.certified, report.first_divergence
    assert report.compared["dataset_registered"] == 5


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize(("broken", "message"), [
    ("truncate", r"^augmentation_batch main#3 cannot be re-executed from its recorded params "
                 r"\(BadInputError: op 'test_reshaping' returned shape \(1, 6\)"),
    ("raise", r"^augmentation_batch main#3 cannot be re-executed: RuntimeError: op exploded, "
              r"raised by augmenter op 'test_reshaping' version 1$")])
def test_an_op_that_breaks_at_replay_cannot_replay_naming_it(
        folder: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, broken: str,
        message: str) -> None:
    """An op that breaks its contract only at replay (a batch of another shape) leaves a draw
    that cannot be re-executed: exit 3 naming the event, as for an op that raises — not the
    op's BadInputError, exit 2, which reads as bad usage or a malformed file. An op that
    raises is named too: the message named the event and blamed its recorded params."""
    exp = record_run(_url(folder), folder / "data", epochs=1,
                     augmenter=DataAugmenter(ops=[{"op": "test_reshaping"}]))
    with Store.open(_url(folder)) as store:
        assert replay_run(store, exp, jobs=jobs, data_dir=folder / "data").certified
    monkeypatch.setitem(_behaviour, broken, True)
    with Store.open(_url(folder)) as store, pytest.raises(CannotReplayError, match=message):
        replay_run(store, exp, jobs=jobs, data_dir=folder / "data")


@register_loader("test_generated")
def generated(spec: dict[str, Any], _data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """A plug-in loader: the dataset is generated from its spec, no file is read."""
    return sample_data(seed=spec["seed"])


def test_a_dataset_a_plug_in_loader_reloads_is_certified(folder: Path) -> None:
    """A loader spec of a kind a trusted module registered (``register_loader``) is re-loaded by
    that loader alone: the npz rules (a file to find, read once per file) are not applied to
    it, and the run certifies with the arrays it returns."""
    from forgery import copy_run

    def generated_by_plug_in(body: dict[str, Any]) -> None:
        if body["kind"] == "dataset_registered":
            body["params"]["loader"] = {"kind": "test_generated", "seed": 7}

    exp = record_run(_url(folder), folder / "data", epochs=1)  # sample_data(seed=7)
    plug_in = f"sqlite:///{folder / 'plug-in.db'}"
    with Store.open(_url(folder)) as source, Store.open(plug_in, create=True) as target:
        copy_run(source, exp, target, generated_by_plug_in)
    for stored in (folder / "data").rglob("*.npz"):
        stored.unlink()
    with Store.open(plug_in) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    assert report.certified and report.compared["dataset_registered"] == 1


def test_a_run_whose_op_overflows_replays_quietly(folder: Path) -> None:
    """A run's op may overflow (its batches hold infinities, as the trainer saw them): replay
    meets the same overflows and certifies the run without a warning per batch, which would
    bury the verdict (and which this suite turns into errors)."""
    with np.errstate(all="ignore"):  # the trainer's own choice
        exp = record_run(_url(folder), folder / "data", epochs=1,
                         augmenter=DataAugmenter(ops=[{"op": "test_overflowing"}]))
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp, data_dir=folder / "data")
    assert report.certified and report.compared["augmentation_batch"] == 10


def test_a_features_only_file_registered_twice_is_read_once(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two datasets naming the same features of one file (no labels) are one set of arrays:
    replay reads the file once, as for datasets with labels."""
    import replay.datasets
    from ledger.experiment import ExperimentManager

    np.savez(folder / "features.npz", features=sample_data()[0])
    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment("features-only", seed=3) as exp:
            for name in ("first", "second"):
                exp.register_dataset(name, path=folder / "features.npz", labels_key=None)
    reads: list[Path] = []
    read = replay.datasets.read_npz_arrays
    monkeypatch.setattr(replay.datasets, "read_npz_arrays",
                        lambda path, *keys: reads.append(path) or read(path, *keys))
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp.id, data_dir=folder / "data")
    assert report.certified and report.compared["dataset_registered"] == 2 and len(reads) == 1


def test_a_user_draw_is_rerun_and_a_bare_generator_draw_checks_its_seed(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay reruns a registered user draw from its params: one whose result is no longer the
    recorded one (its code changed) is the first divergence, while the bare exp.generator draw
    beside it, which records no result, is matched by its seed."""
    from ledger.experiment import ExperimentManager

    with ExperimentManager(_url(folder), data_dir=folder / "data") as manager:
        with manager.create_experiment("user-draws", seed=5) as exp:
            exp.generator("model", "init")
            exp.draw("test_scaled_noise", ("model", "noise"), size=3)
    with Store.open(_url(folder)) as store:
        assert replay_run(store, exp.id, data_dir=folder / "data").certified
    monkeypatch.setitem(_behaviour, "scale", 2.0)
    with Store.open(_url(folder)) as store:
        report = replay_run(store, exp.id, data_dir=folder / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.path == ["model", "noise"]
    assert divergence.cause is Cause.OUTPUT and (report.matched, report.mismatched) == (1, 1)


def test_a_ledger_that_cannot_be_read_mid_replay_is_not_verified_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay's errors wait for verification (a tampered ledger is reported as such); but a
    read that failed — a PostgreSQL table another session locks, measured at 21 s: the lock
    waited out twice — cannot be verified either: its StoreError is reported at once."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    verified = []
    monkeypatch.setattr(replay.gate, "verify", lambda store, exp: verified.append(exp))

    def locked(self: Store, exp: str, kind: str) -> Any:
        raise StoreError(f"cannot read {url}: canceling statement due to lock timeout")

    monkeypatch.setattr(Store, "first_event_body", locked)
    with Store.open(url) as store, pytest.raises(StoreError, match="lock timeout"):
        replay_run(store, exp, data_dir=tmp_path / "data")
    assert verified == []
