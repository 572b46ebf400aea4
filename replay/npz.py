"""Reading the arrays of a stored ``.npz`` dataset straight into memory, never unpickling.

``np.load`` reads an ``.npz`` member in 256 KB pieces through ``zipfile`` (checking its CRC) and
copies each piece into the array. A member the ledger stored uncompressed can instead be read
with one ``readinto`` at its offset in the file: one copy, the GIL released, no CRC (the dataset
digest that replay checks covers every byte anyway). Members this fast path does not handle —
compressed, Fortran-ordered, other header versions — are read by :func:`ledger.datasets.read_npz`.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from io import BufferedReader

import numpy as np
from numpy.lib import format as npy_format

from ledger.datasets import read_npz
from ledger.errors import BadInputError
from ledger.npz_sizes import HEADER_READERS, check_member_sizes

_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"


def read_npz_arrays(path: Path, features_key: str = "features", labels_key: str | None = "labels"
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``(features, labels)`` arrays of ``path``, as ``read_npz`` returns them, read faster.

    Raises BadInputError for a file that is not a readable ``.npz`` holding those arrays.
    """
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            check_member_sizes(archive, path, [key for key in (features_key, labels_key)
                                               if key is not None])
            features = _read_member(archive, raw, path, features_key)
            labels = None if labels_key is None else _read_member(archive, raw, path, labels_key)
    except _NotFast:
        return read_npz(path, features_key, labels_key)
    except BadInputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise BadInputError(f"cannot read dataset file {path}: {error}") from None
    return features, labels


class _NotFast(Exception):
    """The member is of a form the fast path leaves to ``np.load``."""


def _read_member(archive: zipfile.ZipFile, raw: BufferedReader, path: Path, key: str
                 ) -> np.ndarray:
    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise BadInputError(f"{path} has no array {key!r}, got arrays "
                            f"{sorted(name.removesuffix('.npy') for name in archive.namelist())}"
                            ) from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise _NotFast
    raw.seek(info.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if signature != _LOCAL_SIGNATURE:
        raise BadInputError(f"{path}: member {key!r} has no local zip header")
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    raw.seek(start)
    reader = HEADER_READERS.get(npy_format.read_magic(raw))
    if reader is None:
        raise _NotFast
    shape, fortran_order, dtype = reader(raw)
    if fortran_order:
        raise _NotFast
    if dtype.hasobject:
        raise BadInputError(f"{path}: array {key!r} holds Python objects, which are never "
                            f"unpickled")
    array = np.empty(shape, dtype=dtype)  # its size was checked by check_member_sizes
    if raw.tell() - start + array.nbytes != info.file_size:
        raise BadInputError(f"{path}: array {key!r} does not fill its member")
    # ndarray has the buffer protocol. numpy < 2.5's stubs give it __buffer__ only for
    # Python >= 3.12 (mypy checks as 3.11: arg-type); numpy >= 2.5's, on Python >= 3.12
    # only, always do (the ignore is then unused)
    if array.nbytes and raw.readinto(
            array.reshape(-1).view(np.uint8)  # type: ignore[arg-type, unused-ignore]
    ) != array.nbytes:
        raise BadInputError(f"{path}: array {key!r} is truncated")
    return array
