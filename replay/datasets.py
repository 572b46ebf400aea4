"""Re-loading the datasets a run registered, through their recorded loader specs.

The built-in loader reads ``.npz`` files (:mod:`replay.npz`: nothing is ever unpickled).
Other loader kinds replay when a plug-in or trusted module registers them with
:func:`register_loader`; a spec of an unregistered kind is refused with exit 3.

Loading and checking are two steps: :func:`load_registered_dataset` makes the arrays available to
replayers at once, :func:`dataset_redraw` digests them (25 MB of SHA-256 for the benchmark's
dataset, the GIL released) so that the engine can run it beside other work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ledger.datasets import (DATA_DIR_ENV, LOADER_KIND, check_arrays, dataset_digest,
                             unusable_file)
from ledger.errors import BadInputError, CannotReplayError, LedgerError
from ledger.text import error_summary, quoted
from replay.context import LoadedDataset, ReplayContext
from replay.npz import read_npz_arrays
from replay.registry import TRUSTED_CODE_ERRORS, Redraw, hint

Loader = Callable[[dict[str, Any], Path | None], tuple[np.ndarray, np.ndarray | None]]
_loaders: dict[str, Loader] = {}


def register_loader(kind: str) -> Callable[[Loader], Loader]:
    """Register ``function(spec, data_dir) -> (features, labels)`` for loader specs of ``kind``."""

    def decorate(function: Loader) -> Loader:
        _loaders[kind] = function
        return function

    return decorate


@register_loader(LOADER_KIND)
def load_npz(spec: dict[str, Any], data_dir: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The built-in loader: an ``.npz`` file beside the ledger or at an absolute path."""
    path = _npz_file(spec, data_dir)
    try:
        return read_npz_arrays(path, spec.get("features", "features"), spec.get("labels"))
    except BadInputError as error:
        raise CannotReplayError(str(error)) from None


def _npz_file(spec: dict[str, Any], data_dir: Path | None) -> Path:
    """The existing file an ``npz`` loader spec names (CannotReplayError when there is none)."""
    relative = spec.get("path")
    if not isinstance(relative, str) or "\x00" in relative:
        raise CannotReplayError(f"dataset loader spec has no usable path: {relative!r}")
    if spec.get("base") == "absolute":
        path = Path(relative)
    elif data_dir is None:
        raise CannotReplayError(f"dataset file {relative} is relative to the ledger's data "
                                f"folder: give --data-dir (or set {DATA_DIR_ENV})")
    else:
        path = data_dir / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise CannotReplayError(f"dataset path {relative!r} leaves the data folder")
    try:
        problem = unusable_file(path)
    except OSError as error:  # a folder on the way that this user cannot search
        raise CannotReplayError(f"cannot read dataset file {path}: "
                                f"{error.strerror or error}") from None
    if problem is not None:
        raise CannotReplayError(f"dataset file {path} {problem}: replay needs the data")
    return path


def _same_arrays(spec: dict[str, Any], data_dir: Path | None, loader: Loader
                 ) -> tuple[Any, ...] | None:
    """What names the arrays an ``npz`` spec reads — its file (device and inode, however the
    path is spelt) and keys — so that events naming them again share one copy; None for
    other loaders."""
    keys = (spec.get("features", "features"), spec.get("labels"))
    if loader is not load_npz or not all(key is None or type(key) is str for key in keys):
        return None
    try:
        found = _npz_file(spec, data_dir).stat()
    except OSError as error:
        raise CannotReplayError(f"cannot read dataset file: {error}") from None
    return ("npz-arrays", found.st_dev, found.st_ino, *keys)


def load_registered_dataset(context: ReplayContext, body: dict[str, Any]) -> LoadedDataset:
    """Re-load the dataset of a ``dataset_registered`` event and make it available to replayers
    under its recorded digest. Its content is not checked here: see :func:`dataset_redraw`."""
    params = body["params"] if isinstance(body["params"], dict) else {}
    spec = params.get("loader")
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise CannotReplayError(f"{body['exp']} dataset {params.get('name')!r} has no loader spec")
    loader = _loaders.get(spec["kind"])
    if loader is None:
        raise CannotReplayError(f"dataset loader {spec['kind']!r} is not registered: {hint()}")
    # A forged run may register one file a thousand times: it is read (and held) once.
    same = _same_arrays(spec, context.data_dir, loader)
    arrays = context.cache.get(same) if same is not None else None
    if arrays is None:
        arrays = _load(loader, spec, context.data_dir, params.get("name"))
        if same is not None:
            context.cache[same] = arrays
    features, labels = arrays
    recorded = body["output"] if isinstance(body["output"], bytes) else b""
    loaded = context.datasets[recorded] = LoadedDataset(str(params.get("name")), recorded,
                                                        features, labels)
    return loaded


def _load(loader: Loader, spec: dict[str, Any], data_dir: Path | None, name: Any
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """The checked arrays ``loader`` returns for ``spec``. Whatever stops it — bad arrays, a
    plug-in loader's own exception or ``sys.exit`` — is exit 3 naming the dataset: not an
    internal error (exit 2), nor, for ``sys.exit(0)``, an exit 0 that reads as a certificate."""
    try:
        return check_arrays(*loader(spec, data_dir))
    except BadInputError as error:
        raise CannotReplayError(f"dataset {quoted(name)}: {error}") from None
    except LedgerError:
        raise
    except TRUSTED_CODE_ERRORS as error:
        raise CannotReplayError(f"dataset {quoted(name)}: its loader {spec['kind']!r} failed "
                                f"({error_summary(error)})") from None


def dataset_redraw(loaded: LoadedDataset) -> Redraw:
    """The re-loaded dataset's digest now, to compare with the one its event recorded."""
    return Redraw(output=dataset_digest(loaded.features, loaded.labels))


def check_description(body: dict[str, Any], loaded: LoadedDataset) -> None:
    """Refuse a ``dataset_registered`` whose content matched its digest but whose description
    of it (``length``, ``features`` and ``labels`` dtype and shape: what reports show) is not
    that content's — a forged size, say, beside a certified dataset. Raises CannotReplayError."""
    params = body["params"] if isinstance(body["params"], dict) else {}
    described = {"length": len(loaded.features), "features": _described(loaded.features),
                 "labels": None if loaded.labels is None else _described(loaded.labels)}
    for key, actual in described.items():
        if key in params and params[key] != actual:
            raise CannotReplayError(f"dataset {loaded.name!r} records {key} "
                                    f"{quoted(params[key])}, but its data has {actual}")


def _described(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": array.dtype.str, "shape": list(array.shape)}
