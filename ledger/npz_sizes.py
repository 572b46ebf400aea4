"""What an ``.npz`` archive declares its arrays hold, checked before any array is read.

An ``.npz`` is a zip of ``.npy`` members; each member's header declares its array's shape and
dtype, and the zip directory its uncompressed size. Readers allocate the array from the header
first, so a 300-byte file whose header promises terabytes, or a small compressed member that
inflates to gigabytes, would exhaust memory before its content could be checked against a
recorded digest. :func:`check_member_sizes` refuses, from the headers alone, a member whose
array does not exactly fill its declared size, and arrays that together declare more bytes than
the machine's memory.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ledger.errors import BadInputError
from ledger.processes import physical_memory

HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0,
                  (2, 0): npy_format.read_array_header_2_0}
"""The ``.npy`` header versions read, by format version (numpy writes 1.0, or 2.0 for long
headers)."""


def check_member_sizes(archive: zipfile.ZipFile, path: Path, keys: Iterable[str]
                       ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Check the members ``{key}.npy`` of ``archive`` that exist (see the module docstring);
    raise BadInputError naming ``path`` and the member otherwise. Return the (shape, dtype)
    each checked member declares, by key."""
    declared = 0
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    limit = physical_memory()
    for key in keys:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            continue  # the reader names missing arrays itself
        declared += info.file_size
        if declared > limit:
            raise BadInputError(f"cannot read dataset file {path}: its arrays declare "
                                f"{declared:,} bytes, more than this machine's memory "
                                f"({limit:,} bytes)")
        with archive.open(info) as member:
            try:
                reader = HEADER_READERS.get(npy_format.read_magic(member))
                if reader is None:
                    raise BadInputError(f"cannot read dataset file {path}: array {key!r} has an "
                                        f".npy format version this program does not read")
                shape, _fortran, dtype = reader(member)
            except ValueError as error:
                raise BadInputError(f"cannot read dataset file {path}: array {key!r} has no "
                                    f"readable .npy header ({error})") from None
            header = member.tell()
        if dtype.hasobject:
            raise BadInputError(f"cannot read dataset file {path}: array {key!r} holds Python "
                                f"objects, which are never unpickled")
        if header + math.prod(shape) * dtype.itemsize != info.file_size:
            raise BadInputError(f"cannot read dataset file {path}: array {key!r} declares shape "
                                f"{shape} of {dtype}, which does not fill its "
                                f"{info.file_size:,}-byte member")
        arrays[key] = (shape, dtype)
    return arrays
