"""Datasets: what counts as one, its content digest, where its arrays are stored and re-loaded.

Found by the datasets mutation sweep: checks whose removal no test noticed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ledger.datasets
from ledger import CannotReplayError, ExperimentManager, array_digest, load_dataset, value_digest
from ledger.datasets import (check_arrays, check_name, check_role, dataset_digest,
                             default_data_dir, in_memory_dataset, prepare_data_dir, read_npz)
from ledger.errors import BadInputError
from ledger.events import DATASET_REGISTERED
from trainer_helpers import bodies, noisy_data

FEATURES = np.arange(24, dtype=np.float64).reshape(8, 3)
LABELS = np.arange(8, dtype=np.int8)


@pytest.mark.parametrize("features, labels, message", [
    (np.zeros((0, 3)), None, r"at least one sample along axis 0, got shape \(0, 3\)"),
    (FEATURES, LABELS[:7], r"one entry per sample \(8\), got shape \(7,\)"),
    (FEATURES, np.zeros(9), r"one entry per sample \(8\), got shape \(9,\)"),
    (np.array([[1.0], [None]], dtype=object), None, "numeric or boolean array, got dtype object"),
    (np.zeros(3, dtype=[("a", "<i4")]), None, "numeric or boolean array"),
    (np.zeros(3, dtype="m8[s]"), None, "numeric or boolean array, got dtype timedelta64"),
    (np.array(["a", "b"]), None, "numeric or boolean array, got dtype <U1"),
], ids=["no-samples", "fewer-labels", "more-labels", "objects",
        "structured", "timedelta", "strings"])
def test_arrays_that_are_not_a_dataset_are_refused_saying_why(features: Any, labels: Any,
                                                              message: str) -> None:
    """Objects have no stable bytes to digest, and a dataset without samples or with labels
    that do not pair with them cannot be trained on: refused before anything is stored."""
    with pytest.raises(BadInputError, match=message):
        check_arrays(features, labels)


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8,
                    reason="longdouble is float64 on this platform")
@pytest.mark.parametrize("role", ["features", "labels"])
def test_extended_precision_arrays_are_refused_naming_their_dtype(role: str) -> None:
    """A longdouble array's padding bytes are not part of its values: the same data, computed
    in two processes, used to register under two digests (and replay compared garbage)."""
    arrays = {"features": FEATURES, "labels": LABELS.astype(np.float64)}
    arrays[role] = arrays[role].astype(np.longdouble) / 3
    with pytest.raises(BadInputError, match=f"{role} of dtype {np.dtype(np.longdouble)} "
                                            f"cannot be registered: .*padding"):
        check_arrays(arrays["features"], arrays["labels"])


def test_a_dataset_without_labels_is_registered_stored_and_reloaded_without_them(
        manager: ExperimentManager) -> None:
    """No labels given means none recorded: not an empty or a copied array."""
    with manager.create_experiment("unlabelled", seed=1) as exp:
        data = exp.register_dataset("x-only", FEATURES)
    assert data.labels is None and data.loader is not None and data.loader["labels"] is None
    assert data.digest == value_digest(["ledger/dataset/v1", array_digest(FEATURES), None])
    [event] = [b for b in bodies(manager.store, exp.id) if b["kind"] == DATASET_REGISTERED]
    assert event["params"]["labels"] is None
    features, labels = load_dataset(data.loader, manager.data_dir)
    assert labels is None and np.array_equal(features, FEATURES)


def test_the_digest_covers_features_and_labels_under_its_tag() -> None:
    """The digest is the module's documented formula, so an auditor can recompute it; other
    labels with the same features are other content."""
    assert dataset_digest(FEATURES, LABELS) == value_digest(
        ["ledger/dataset/v1", array_digest(FEATURES), array_digest(LABELS)])
    assert dataset_digest(FEATURES, LABELS) != dataset_digest(FEATURES, LABELS[::-1].copy())
    assert dataset_digest(FEATURES, LABELS) != dataset_digest(FEATURES, None)


def test_big_endian_and_non_contiguous_arrays_are_kept_as_little_endian_c_arrays() -> None:
    """A dataset's arrays are C-contiguous and little-endian (what the iterator hands to a
    model, and what torch can take), with their values and digest unchanged."""
    big = FEATURES.astype(">f8")
    dataset = in_memory_dataset("big", big, LABELS.astype(">i2"))
    assert dataset.features.dtype.str == "<f8" and dataset.labels is not None
    assert dataset.labels.dtype.str == "<i2"
    assert np.array_equal(dataset.features, FEATURES)
    assert dataset.digest == dataset_digest(FEATURES, LABELS.astype("<i2"))
    for layout in (np.asfortranarray(FEATURES), FEATURES[:, ::2]):
        features, _ = check_arrays(layout)
        assert features.flags.c_contiguous and np.array_equal(features, layout)


def test_names_and_roles_are_checked_at_their_bounds() -> None:
    """A name is non-empty text up to 200 characters, a role up to 64: the bounds themselves
    are allowed, blank text and other types are not."""
    assert check_name("n" * 200) == "n" * 200
    assert check_role("r" * 64) == "r" * 64
    for bad in ("   ", "", "n" * 201, 5, None, b"name"):
        with pytest.raises(BadInputError, match="a dataset name must be a non-empty str"):
            check_name(bad)


def test_an_empty_data_dir_variable_means_the_folder_beside_the_ledger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LEDGER_DATA_DIR=`` (set but empty, as a shell leaves it) is not the current folder."""
    monkeypatch.setenv("LEDGER_DATA_DIR", "")
    assert default_data_dir(tmp_path / "ledger.db") == tmp_path / "ledger-data"
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir(tmp_path / "ledger.db") == tmp_path / "elsewhere"


def test_the_data_folder_of_a_relative_ledger_path_is_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved when opened, so that a trainer changing folder later stores its datasets
    where replay will look for them."""
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = default_data_dir("runs/ledger.db")
    assert folder == tmp_path / "runs" / "ledger-data" and folder is not None
    assert folder.is_absolute()


def test_prepare_data_dir_returns_the_folders_it_created_deepest_first(tmp_path: Path) -> None:
    """The demo removes them again when it fails next: exactly those it created, so none of
    the user's own folders."""
    (tmp_path / "mine").mkdir()
    created = prepare_data_dir(tmp_path / "mine" / "a" / "b")
    assert created == [tmp_path / "mine" / "a" / "b" / "datasets", tmp_path / "mine" / "a" / "b",
                       tmp_path / "mine" / "a"]
    assert prepare_data_dir(tmp_path / "mine" / "a" / "b") == []


def test_a_data_folder_that_cannot_take_files_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught before a run writes anything (root, which runs these tests, may write anywhere:
    the permission check is what is stubbed)."""
    def no_write(path: Any, mode: int) -> bool:
        return not mode & os.W_OK

    monkeypatch.setattr(ledger.datasets.os, "access", no_write)
    with pytest.raises(BadInputError, match="datasets is not writable"):
        prepare_data_dir(tmp_path)


def test_read_npz_names_a_missing_file_and_a_missing_array(tmp_path: Path) -> None:
    """Both are BadInputError naming the file or array, never a raw KeyError or OSError."""
    with pytest.raises(BadInputError, match="no such file"):
        read_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "d.npz", x=FEATURES, y=LABELS)
    with pytest.raises(BadInputError, match=r"has no array 'features', got arrays \['x', 'y'\]"):
        read_npz(tmp_path / "d.npz")
    with pytest.raises(BadInputError, match=r"has no array 'labels', got arrays \['x', 'y'\] "
                                            r"\(a file of features only is registered with "
                                            r"labels_key=None\)"):
        read_npz(tmp_path / "d.npz", "x")
    with pytest.raises(BadInputError, match="not a regular file"):
        read_npz(tmp_path)


def test_load_dataset_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    """A loader of another kind, a relative file without a data folder, or an unreadable file
    cannot replay: CannotReplayError, saying which."""
    np.savez(tmp_path / "d.npz", features=FEATURES, labels=LABELS)
    digest = dataset_digest(FEATURES, LABELS).hex()
    spec = {"kind": "npz", "base": "data_dir", "path": "d.npz", "digest": digest,
            "features": "features", "labels": "labels"}
    assert np.array_equal(load_dataset(spec, tmp_path)[1], LABELS)
    with pytest.raises(CannotReplayError, match="must be kind 'npz'"):
        load_dataset({**spec, "kind": "csv"}, tmp_path)
    with pytest.raises(CannotReplayError, match="must be kind 'npz'"):
        load_dataset([spec], tmp_path)  # type: ignore[arg-type]
    with pytest.raises(CannotReplayError, match="relative to the ledger's data folder"):
        load_dataset(spec, None)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CannotReplayError, match="not an .npz archive"):
        load_dataset({**spec, "path": "bad.npz"}, tmp_path)


def test_a_file_under_the_name_with_other_dtypes_is_written_again(
        manager: ExperimentManager) -> None:
    """A file under the digest's name whose members declare these shapes but other dtypes (a
    foreign or hand-made file) is not these arrays: it is replaced, so replay finds them."""
    with manager.create_experiment("first", seed=1) as exp:
        data = exp.register_dataset("d", FEATURES, LABELS)
    assert data.loader is not None and manager.data_dir is not None
    target = manager.data_dir / data.loader["path"]
    np.savez(target, features=FEATURES.astype(np.float32), labels=LABELS.astype(np.uint8))
    with pytest.raises(CannotReplayError, match="but the ledger recorded"):
        load_dataset(data.loader, manager.data_dir)
    with manager.create_experiment("again", seed=1) as exp:
        exp.register_dataset("d", FEATURES, LABELS)
    features, labels = load_dataset(data.loader, manager.data_dir)
    assert features.dtype == np.float64 and np.array_equal(features, FEATURES)


def test_a_dataset_says_whether_it_is_registered(manager: ExperimentManager) -> None:
    """What a trainer sees when printing it: size, feature dtype and shape, and where it is."""
    assert repr(in_memory_dataset("d", FEATURES)) == (
        "Dataset('d', 8 samples, features float64[3], in memory)")
    with manager.create_experiment("repr", seed=1) as exp:
        data = exp.register_dataset("d", FEATURES, LABELS)
    assert repr(data) == "Dataset('d', 8 samples, features float64[3], registered)"
    assert len(data) == 8


@pytest.mark.parametrize("features, labels, message", [
    (3.0, None, r"features must have at least one sample along axis 0, got shape \(\)"),
    (np.float32(1.0), 1, r"features must have at least one sample along axis 0, got shape \(\)"),
    (FEATURES[:1], np.int8(1), r"labels must have one entry per sample \(1\), got shape \(\)"),
], ids=["float", "numpy-scalar", "scalar-label"])
def test_a_single_value_is_not_a_dataset(manager: ExperimentManager, features: Any, labels: Any,
                                         message: str) -> None:
    """A scalar passed by mistake (a mean instead of the column, say) was registered as a
    dataset of one sample: np.ascontiguousarray made it 1-d before its shape was checked."""
    with manager.create_experiment("scalar", seed=1) as exp:
        with pytest.raises(BadInputError, match=message):
            exp.register_dataset("d", features, labels)
    assert DATASET_REGISTERED not in [b["kind"] for b in bodies(manager.store, exp.id)]


def test_a_stored_member_cut_inside_a_whole_archive_is_written_again(
        manager: ExperimentManager) -> None:
    """The zip directory is whole but a member holds fewer bytes than its header declares (a
    file cut and re-zipped by hand, say): not these arrays, so written again, not an error."""
    with manager.create_experiment("first", seed=1) as exp:
        data = exp.register_dataset("d", FEATURES, LABELS)
    assert data.loader is not None and manager.data_dir is not None
    target = manager.data_dir / data.loader["path"]
    with zipfile.ZipFile(target, "w") as archive:
        for key, array in (("features", FEATURES), ("labels", LABELS)):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(
                    member, np.lib.format.header_data_from_array_1_0(array))
                member.write(array.tobytes()[:-1])
    with manager.create_experiment("again", seed=1) as exp:
        exp.register_dataset("d", FEATURES, LABELS)
    features, labels = load_dataset(data.loader, manager.data_dir)
    assert np.array_equal(features, FEATURES) and np.array_equal(labels, LABELS)


def _member(archive: zipfile.ZipFile, key: str, header_of: np.ndarray, data: bytes) -> None:
    with archive.open(f"{key}.npy", "w") as member:
        np.lib.format.write_array_header_1_0(
            member, np.lib.format.header_data_from_array_1_0(header_of))
        member.write(data)


def test_a_member_that_its_header_does_not_describe_is_refused_before_it_is_read(
        tmp_path: Path) -> None:
    """A header promising an array of 8 TB in a small member, or a member with bytes beyond
    its array: refused from the headers, before numpy allocates or silently ignores them."""
    huge = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(10**6, 10**6), strides=(0, 0))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        _member(archive, "features", huge, b"")
    with zipfile.ZipFile(tmp_path / "junk.npz", "w") as archive:
        _member(archive, "features", FEATURES, FEATURES.tobytes() + b"junk")
    for name in ("huge.npz", "junk.npz"):
        with pytest.raises(BadInputError, match="which does not fill its"):
            read_npz(tmp_path / name, labels_key=None)


def test_running_out_of_memory_while_reading_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrays that fit the machine may still not fit what is free: BadInputError naming the
    file, not a raw MemoryError from numpy."""
    np.savez(tmp_path / "d.npz", features=FEATURES, labels=LABELS)

    def exhausted(self: Any, key: str) -> np.ndarray:
        raise MemoryError("Unable to allocate")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", exhausted)
    with pytest.raises(BadInputError, match=r"cannot read dataset file .*d.npz: MemoryError"):
        read_npz(tmp_path / "d.npz")


def test_a_users_file_given_by_a_relative_path_is_recorded_absolute(
        manager: ExperimentManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay runs from another folder: the loader spec must name the file wherever it runs."""
    (tmp_path / "inputs").mkdir()
    np.savez(tmp_path / "inputs" / "mine.npz", features=FEATURES, labels=LABELS)
    monkeypatch.chdir(tmp_path / "inputs")
    with manager.create_experiment("relative", seed=1) as exp:
        data = exp.register_dataset("mine", path="mine.npz")
    assert data.loader is not None
    assert data.loader["path"] == str(tmp_path / "inputs" / "mine.npz")
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(load_dataset(data.loader, None)[0], FEATURES)


def test_a_users_file_is_checked_like_arrays_given_directly(manager: ExperimentManager,
                                                             tmp_path: Path) -> None:
    """Labels that do not pair with the samples, or text features, are refused from a file as
    from memory, before anything is recorded; big-endian arrays come back little-endian."""
    np.savez(tmp_path / "short.npz", features=FEATURES, labels=LABELS[:5])
    np.savez(tmp_path / "text.npz", features=np.array([["a"], ["b"]]))
    np.savez(tmp_path / "big.npz", features=FEATURES.astype(">f8"), labels=LABELS)
    with manager.create_experiment("files", seed=1) as exp:
        with pytest.raises(BadInputError, match=r"one entry per sample \(8\)"):
            exp.register_dataset("short", path=tmp_path / "short.npz")
        with pytest.raises(BadInputError, match="numeric or boolean"):
            exp.register_dataset("text", path=tmp_path / "text.npz", labels_key=None)
        big = exp.register_dataset("big", path=tmp_path / "big.npz")
    assert big.features.dtype.str == "<f8" and big.digest == dataset_digest(FEATURES, LABELS)
    assert [b["params"]["name"] for b in bodies(manager.store, exp.id)
            if b["kind"] == DATASET_REGISTERED] == ["big"]
