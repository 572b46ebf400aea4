"""replay.npz reads stored datasets exactly as np.load does, and refuses what np.load refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ledger.datasets import dataset_digest, read_npz
from ledger.errors import BadInputError, CannotReplayError
from replay.npz import read_npz_arrays


def _same(path: Path, labels_key: str | None = "labels") -> None:
    expected = read_npz(path, "features", labels_key)
    got = read_npz_arrays(path, "features", labels_key)
    for want, have in zip(expected, got):
        if want is None:
            assert have is None
            continue
        assert have.dtype == want.dtype and have.shape == want.shape
        assert np.array_equal(have, want)
    assert dataset_digest(*got) == dataset_digest(*expected)


@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<i2", "|b1", "<u8"])
def test_stored_members_read_like_np_load(tmp_path: Path, dtype: str) -> None:
    features = (np.arange(600).reshape(100, 6) % 7).astype(dtype)
    np.savez(tmp_path / "d.npz", features=features, labels=np.arange(100, dtype=np.int8))
    _same(tmp_path / "d.npz")
    _same(tmp_path / "d.npz", labels_key=None)


def test_compressed_and_fortran_members_take_np_load(tmp_path: Path) -> None:
    features = np.asfortranarray(np.random.default_rng(1).normal(size=(50, 3)))
    np.savez(tmp_path / "f.npz", features=features, labels=np.zeros(50))
    np.savez_compressed(tmp_path / "c.npz", features=features, labels=np.zeros(50))
    _same(tmp_path / "f.npz")
    _same(tmp_path / "c.npz")


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", features=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(BadInputError, match="objects"):
        read_npz_arrays(tmp_path / "o.npz", "features", None)


def test_a_missing_array_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", features=np.zeros((3, 2)))
    with pytest.raises(BadInputError, match="no array 'labels'"):
        read_npz_arrays(tmp_path / "m.npz", "features", "labels")


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", features=np.zeros((1000, 8)), labels=np.zeros(1000))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        read_npz_arrays(tmp_path / "t.npz", "features", "labels")


def test_a_dataset_path_the_system_cannot_look_up_cannot_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat that fails other than 'no such file' — a folder on the way this user cannot
    search (EACCES, which root, running these tests, never gets) — is exit 3 naming the file,
    not an internal error."""
    from replay.datasets import load_npz

    def cannot_search(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", cannot_search)
    spec = {"kind": "npz", "base": "data_dir", "path": "datasets/0a1b.npz"}
    with pytest.raises(CannotReplayError, match="cannot read dataset file .*0a1b.npz: "
                                                "Permission denied"):
        load_npz(spec, tmp_path)


def test_a_stored_dataset_whose_labels_no_longer_fit_cannot_replay(tmp_path: Path) -> None:
    """A stored file replaced by one whose labels no longer fit its features (another length)
    is unusable data: exit 3 naming the dataset — not the arrays' BadInputError, exit 2."""
    from ledger.store import Store
    from replay import replay_run
    from replay_helpers import record_run

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    (stored,) = (tmp_path / "data").rglob("*.npz")
    np.savez(stored, features=np.zeros((600, 6), np.float32), labels=np.zeros(500, np.int8))
    with Store.open(url) as store, pytest.raises(
            CannotReplayError, match=r"^dataset 'dataset-small': labels must have one entry per "
                                     r"sample \(600\)"):
        replay_run(store, exp, data_dir=tmp_path / "data")


def test_a_dataset_relative_to_a_data_folder_needs_one(tmp_path: Path) -> None:
    """A file stored in the ledger's data folder cannot be found without that folder (a server
    ledger has none by default): exit 3 saying how to give it."""
    from replay.datasets import load_npz

    spec = {"kind": "npz", "base": "data_dir", "path": "datasets/0a1b.npz"}
    with pytest.raises(CannotReplayError, match=r"dataset file datasets/0a1b.npz is relative "
                                                r"to the ledger's data folder: give --data-dir"):
        load_npz(spec, None)
