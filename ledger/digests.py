"""Domain-tagged SHA-256 digests (DESIGN §2–3): of arrays, of event bodies, of any value.

Every digest starts with a tag ``ledger/<what>/v<N>\\x00`` so that hashes of different things can
never be confused. Digests are 32 raw bytes; :func:`hex_digest` shows them as lowercase hex.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ledger.canonical import canonical
from ledger.errors import EncodingError

ARRAY_TAG = b"ledger/array/v1\x00"
EVENT_TAG = b"ledger/event/v1\x00"
VALUE_TAG = b"ledger/value/v1\x00"
ZERO_DIGEST = bytes(32)
"""The ``prev`` of the first event of every stream."""


def unstable_bytes(dtype: np.dtype) -> str | None:
    """Why an array of ``dtype`` has bytes its values do not determine, or None when they do.

    Object and structured arrays hold pointers or padding; ``longdouble`` (and its complex
    twin), where it is wider than float64, is x86's 80-bit format padded to 12 or 16 bytes with
    whatever the memory held — the same values digested differently from one process to the
    next — or another platform's own format.
    """
    if dtype.hasobject or dtype.fields is not None or dtype.kind == "V":
        return "only plain dtypes have stable bytes"
    if ((dtype.type is np.longdouble and dtype.itemsize > 8)
            or (dtype.type is np.clongdouble and dtype.itemsize > 16)):
        return ("its bytes hold padding that is not part of its values (and its format differs "
                "from one platform to another): convert it to float64 (complex128)")
    return None


def array_digest(array: Any) -> bytes:
    """Digest an array by dtype, shape and C-ordered little-endian bytes.

    The same values give the same digest whatever the memory order or byte order of the copy
    (a Fortran-ordered or big-endian array equals its C-ordered little-endian twin; a bool
    array digests as bytes 0 and 1, whatever byte its memory holds for True). Object and
    structured arrays are refused: their bytes do not determine their values.
    """
    array = np.asarray(array)
    dtype = array.dtype
    unstable = unstable_bytes(dtype)
    if unstable is not None:
        raise EncodingError(f"cannot digest an array of dtype {dtype}: {unstable}")
    little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    data = np.ascontiguousarray(array, dtype=little)
    if dtype.kind == "b":
        # A bool array viewed from other bytes may hold 2..255 for True: digest its values.
        data = np.not_equal(data.view(np.uint8), 0)
    hasher = hashlib.sha256(ARRAY_TAG)
    hasher.update(canonical([little.str, list(array.shape)]))
    # ndarray has the buffer protocol. numpy < 2.5's stubs give it __buffer__ only for
    # Python >= 3.12 (mypy checks as 3.11: arg-type); numpy >= 2.5's, on Python >= 3.12
    # only, always do (the ignore is then unused)
    hasher.update(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type, unused-ignore]
    return hasher.digest()


def value_digest(value: Any) -> bytes:
    """Digest any canonically encodable value (a metric, a configuration, a spec)."""
    return hashlib.sha256(VALUE_TAG + canonical(value)).digest()


def event_hash_of_bytes(body_bytes: bytes) -> bytes:
    """Hash an event body that is already in canonical bytes: what the chain links by."""
    return hashlib.sha256(EVENT_TAG + body_bytes).digest()


def event_hash(body: dict) -> bytes:
    """Hash an event body given as a map (DESIGN §3)."""
    return event_hash_of_bytes(canonical(body))


def hex_digest(digest: bytes | None) -> str | None:
    """Show a digest as lowercase hex (``None`` stays ``None``)."""
    return None if digest is None else digest.hex()
