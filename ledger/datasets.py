"""Datasets: content digests, content-addressed ``.npz`` storage, and loader specs for replay.

A dataset is a features array (samples along the first axis) and an optional labels array of the
same length. Its **digest** is ``value_digest(["ledger/dataset/v1", array_digest(features),
array_digest(labels) or None])``. ``dataset_registered`` records that digest and a **loader
spec** — a map that tells replay where to find the arrays again:

``{"kind": "npz", "base": "data_dir", "path": "datasets/<digest hex>.npz", "digest": <hex>,
"features": "features", "labels": "labels" | None}``
    in-memory arrays, stored content-addressed in the ledger's data folder (``path`` relative to
    it): ``ledger-data/`` beside an SQLite ledger, or ``$LEDGER_DATA_DIR`` / ``data_dir=``.
``{"kind": "npz", "base": "absolute", "path": "/abs/file.npz", ...}``
    a file the user gave, referenced where it is (not copied).

Either way :func:`load_dataset` re-loads the arrays and re-checks the digest.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ledger.digests import array_digest, unstable_bytes, value_digest
from ledger.durable_files import flush_folder, write_file_durably
from ledger.errors import BadInputError, CannotReplayError
from ledger.npz_sizes import check_member_sizes

DATASET_TAG = "ledger/dataset/v1"
DATA_DIR_ENV = "LEDGER_DATA_DIR"
DATA_DIR_NAME = "ledger-data"
"""Folder beside an SQLite ledger where registered arrays are stored."""
LOADER_KIND = "npz"
_NAME_MAX = 200


class Dataset:
    """Arrays with a name and a content digest; ``loader`` is set once the dataset is registered.

    Iterating a Dataset is done by :class:`~ledger.iterator.TrainingDataIterator`. The arrays are
    C-contiguous and must not be modified in place (the digest would no longer describe them).
    The digest of an unregistered dataset is computed when first asked for.
    """

    __slots__ = ("name", "features", "labels", "loader", "_digest")

    def __init__(self, name: str, features: np.ndarray, labels: np.ndarray | None,
                 digest: bytes | None = None, loader: dict[str, Any] | None = None) -> None:
        self.name = name
        self.features = features
        self.labels = labels
        self.loader = loader
        self._digest = digest

    @property
    def digest(self) -> bytes:
        """The content digest (see the module docstring)."""
        if self._digest is None:
            self._digest = dataset_digest(self.features, self.labels)
        return self._digest

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {len(self)} samples, features {self.features.dtype}"
                f"{list(self.features.shape[1:])}, {'registered' if self.loader else 'in memory'})")


def check_arrays(features: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the arrays C-contiguous, or raise BadInputError saying what is wrong with them."""
    features = _plain_array("features", features)
    if features.ndim < 1 or features.shape[0] < 1:
        raise BadInputError(f"features must have at least one sample along axis 0, "
                            f"got shape {features.shape}")
    if labels is None:
        return features, None
    labels = _plain_array("labels", labels)
    if labels.ndim < 1 or labels.shape[0] != features.shape[0]:
        raise BadInputError(f"labels must have one entry per sample ({features.shape[0]}), "
                            f"got shape {labels.shape}")
    return features, labels


def _plain_array(what: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:  # ragged lists, a tensor needing grad
        raise BadInputError(f"{what} must be an array (or a rectangular nested list): "
                            f"{error}") from None
    if array.dtype.hasobject or array.dtype.fields is not None or array.dtype.kind in "VUSMm":
        raise BadInputError(f"{what} must be a numeric or boolean array, got dtype {array.dtype}")
    unstable = unstable_bytes(array.dtype)
    if unstable is not None:  # its digest would differ from one process to the next
        raise BadInputError(f"{what} of dtype {array.dtype} cannot be registered: {unstable}")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # ascontiguousarray makes a 0-d array 1-d: a single value would pass the shape checks.
    return array if array.ndim == 0 else np.ascontiguousarray(array)


def check_name(name: Any) -> str:
    """Return ``name`` if it is a non-empty str of at most 200 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX:
        raise BadInputError(f"a dataset name must be a non-empty str of at most {_NAME_MAX} "
                            f"characters, got {name!r}")
    return name


_ROLE_MAX = 64


def check_role(role: Any) -> str | None:
    """Return ``role`` if it is None or a non-empty str of at most 64 characters.

    A role (``train``, ``test``, ``validation``, …) is what the compliance report's train/test
    independence check (R5) goes by; it is recorded as given.
    """
    if role is not None and (not isinstance(role, str) or not role.strip()
                             or len(role) > _ROLE_MAX):
        raise BadInputError(f"a dataset role must be None or a non-empty str of at most "
                            f"{_ROLE_MAX} characters, got {role!r}")
    return role


def dataset_digest(features: np.ndarray, labels: np.ndarray | None) -> bytes:
    """The content digest of a dataset: what ``dataset_registered`` records as its output."""
    return value_digest([DATASET_TAG, array_digest(features),
                         None if labels is None else array_digest(labels)])


def in_memory_dataset(name: str, features: Any, labels: Any = None) -> Dataset:
    """A Dataset of arrays that is not registered anywhere (for runs that record nothing)."""
    features, labels = check_arrays(features, labels)
    return Dataset(check_name(name), features, labels)


def default_data_dir(database: str | os.PathLike[str] | None) -> Path | None:
    """Where registered arrays go: ``$LEDGER_DATA_DIR``, else ``ledger-data/`` beside an SQLite
    file.

    ``database`` is the SQLite file path of the ledger, or None for other databases; returns
    None when neither applies (then the caller must be given a folder).
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)
    if database:
        return Path(database).resolve().parent / DATA_DIR_NAME
    return None


DATASETS_FOLDER = "datasets"
"""Where in a data folder stored arrays go (``datasets/<digest hex>.npz``)."""


def prepare_data_dir(data_dir: Path) -> list[Path]:
    """Create the folder stored arrays go to under ``data_dir`` (and ``data_dir``), or raise
    BadInputError saying why it cannot be: a command can check its data folder before it
    writes anything else. Folders it creates are flushed to disk with their parents' entries;
    they are returned, deepest first, for a command that fails next to remove again."""
    folder = data_dir / DATASETS_FOLDER
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            flush_folder(created.parent)
    except OSError as error:
        raise BadInputError(f"cannot store datasets in {data_dir}: "
                            f"{error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):  # there already, but no file can go in it
        raise BadInputError(f"cannot store datasets in {data_dir}: {folder} is not writable")
    return missing


def store_npz(data_dir: Path, features: np.ndarray, labels: np.ndarray | None,
              digest: bytes) -> dict[str, Any]:
    """Store the arrays content-addressed under ``data_dir``; return their loader spec.

    The file is named by the dataset digest and written whole and durably before this returns
    (:mod:`ledger.durable_files`), so storing the same data twice writes it once, and neither a
    crash nor a full disk leaves a truncated file under any name — the ``dataset_registered``
    event recorded next never names a file that a power loss could take back. A file already
    under the name is kept only if it holds these arrays' shapes and dtypes whole
    (:func:`_stored_whole`); one cut or emptied (by a crash of a version that did not flush, or
    by hand) is written again.
    """
    relative = Path(DATASETS_FOLDER) / f"{digest.hex()}.npz"
    target = data_dir / relative
    arrays = {"features": features} if labels is None else {
        "features": features, "labels": labels}
    if not _stored_whole(target, arrays):
        prepare_data_dir(data_dir)
        try:
            # The keys are 'features' and 'labels', never savez's own allow_pickle.
            write_file_durably(target, lambda stream: np.savez(
                stream, **arrays))  # type: ignore[arg-type]
        except OSError as error:
            raise BadInputError(f"cannot store dataset in {data_dir}: "
                                f"{error.strerror or error}") from None
    return loader_spec("data_dir", relative.as_posix(), digest, "features",
                       None if labels is None else "labels")


def _stored_whole(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Whether ``path`` is an ``.npz`` of exactly ``arrays``' members, each declaring its
    array's shape and dtype and filling its member — what a cut, emptied or foreign file fails.
    Only the zip directory and the ``.npy`` headers are read: checking the bytes themselves
    against the digest is replay's work, and would cost as much as writing the file again."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as handle, zipfile.ZipFile(handle) as archive:
            if sorted(archive.namelist()) != sorted(f"{key}.npy" for key in arrays):
                return False
            declared = check_member_sizes(archive, path, arrays)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, BadInputError):
        return False
    return all(declared[key] == (array.shape, array.dtype) for key, array in arrays.items())


def loader_spec(base: str, path: str, digest: bytes, features_key: str,
                labels_key: str | None) -> dict[str, Any]:
    """A loader spec (see the module docstring) as recorded in ``dataset_registered``."""
    return {"kind": LOADER_KIND, "base": base, "path": path, "digest": digest.hex(),
            "features": features_key, "labels": labels_key}


def read_npz(path: Path, features_key: str = "features", labels_key: str | None = "labels"
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the arrays of an ``.npz`` file (never unpickling anything).

    Only a regular file is opened (a named pipe would block forever); anything that is not a
    readable ``.npz`` archive — a plain ``.npy``, a truncated file, a header promising more
    than memory holds — is refused with BadInputError.
    """
    if not path.exists():
        raise BadInputError(f"cannot read dataset file {path}: no such file")
    if not path.is_file():
        raise BadInputError(f"cannot read dataset file {path}: not a regular file (a folder, "
                            f"pipe or device)")
    try:
        # Opened here, so that it is closed whatever np.load makes of it (it leaks the handle
        # of a file it fails to read as a zip archive).
        with path.open("rb") as handle:
            try:
                members = zipfile.ZipFile(handle)
            except zipfile.BadZipFile:
                raise BadInputError(f"cannot read dataset file {path}: not an .npz archive"
                                    ) from None
            with members:
                check_member_sizes(members, path, [key for key in (features_key, labels_key)
                                                   if key is not None])
            handle.seek(0)
            archive = _npz(np.load(handle, allow_pickle=False), path)
            with archive:
                if features_key not in archive.files:
                    raise BadInputError(f"{path} has no array {features_key!r}, "
                                        f"got arrays {sorted(archive.files)}")
                features = archive[features_key]
                labels = None
                if labels_key is not None:
                    if labels_key not in archive.files:
                        raise BadInputError(f"{path} has no array {labels_key!r}, "
                                            f"got arrays {sorted(archive.files)} (a file of "
                                            f"features only is registered with "
                                            f"labels_key=None)")
                    labels = archive[labels_key]
    except BadInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as error:
        raise BadInputError(f"cannot read dataset file {path}: {type(error).__name__}: "
                            f"{error}") from None
    return features, labels


def check_path_argument(what: str, value: Any) -> Path:
    """``value`` as a Path, or BadInputError when it is not a str or os.PathLike without NUL, or
    is the empty text: ``Path("")`` is the current folder, so ``code_dir=""`` (an unset
    variable, say) recorded whatever repository the process happened to start in."""
    if not isinstance(value, (str, os.PathLike)) or "\x00" in os.fspath(value):
        raise BadInputError(f"got {what} {value!r}, but it must be a path (str or os.PathLike)")
    if os.fspath(value) == "":
        raise BadInputError(f"got an empty {what}, but it must name a file or folder (\".\" for "
                            f"the current one)")
    return Path(value)


def _npz(loaded: Any, path: Path) -> np.lib.npyio.NpzFile:
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy gives its array
        raise BadInputError(f"cannot read dataset file {path}: not an .npz archive")
    return loaded


def dataset_from_file(name: str, path: str | os.PathLike[str], features_key: str = "features",
                      labels_key: str | None = "labels") -> Dataset:
    """A Dataset read from the user's ``.npz`` file, with a loader spec that references it."""
    source = check_path_argument("dataset path", path).resolve()
    features, labels = check_arrays(*read_npz(source, features_key, labels_key))
    digest = dataset_digest(features, labels)
    return Dataset(check_name(name), features, labels, digest,
                   loader_spec("absolute", str(source), digest, features_key, labels_key))


def unusable_file(path: Path) -> str | None:
    """Why ``path`` is no dataset file to read — ``is missing``, ``is a folder``, … — or None
    when it is a regular file (a symlink to one included). A folder, a pipe or a link that
    leads nowhere was reported "missing" beside a file that was there."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return "is a symbolic link that leads nowhere (its target is missing, or links loop)"
    if path.is_dir():
        return "is a folder, not a dataset file"
    if path.exists():
        return "is not a regular file (a pipe, device or socket), not a dataset file"
    return "is missing"


def load_dataset(loader: dict[str, Any], data_dir: str | os.PathLike[str] | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-load a recorded dataset from its loader spec and check its digest (what replay does).

    Raises CannotReplayError when the file is missing, unreadable or holds other data.
    """
    if not isinstance(loader, dict) or loader.get("kind") != LOADER_KIND:
        raise CannotReplayError(f"unknown dataset loader {loader!r}: must be kind {LOADER_KIND!r}")
    if loader.get("base") == "absolute":
        path = Path(loader["path"])
    elif data_dir is None:
        raise CannotReplayError(f"dataset file {loader.get('path')} is relative to the ledger's "
                                f"data folder: give one (or set {DATA_DIR_ENV})")
    else:
        path = Path(data_dir) / loader["path"]
    problem = unusable_file(path)
    if problem is not None:
        raise CannotReplayError(f"dataset file {path} {problem}")
    try:
        features, labels = check_arrays(*read_npz(path, loader.get("features", "features"),
                                                  loader.get("labels")))
    except BadInputError as error:
        raise CannotReplayError(str(error)) from None
    found = dataset_digest(features, labels).hex()
    if found != loader.get("digest"):
        raise CannotReplayError(f"dataset file {path} has digest {found}, but the ledger "
                                f"recorded {loader.get('digest')}")
    return features, labels
