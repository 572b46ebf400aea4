"""Canonical encoding (DESIGN §2): one byte string per value, whatever produced the value.

``canonical(obj)`` is ``msgpack.packb(obj, use_bin_type=True)`` after normalising: dict keys must
be ``str`` and are sorted (a ``str`` subclass, key or value, is its text); tuples become lists;
numpy scalars become Python ``int``/``float``/``bool``; floats are float64; integers must fit in
64 bits; no ext types. Everything else is refused with :class:`~ledger.errors.EncodingError`,
because a value that could encode two ways would make two equal runs hash differently.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from ledger.errors import EncodingError
from ledger.text import quoted

MAX_DEPTH = 64
"""Deepest nesting accepted; deeper values are refused rather than risk the recursion limit."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_PLAIN = frozenset({str, bool, float, bytes, type(None)})
"""Types that are canonical as they are (checked by exact type: subclasses take the slow path)."""
_local = threading.local()


def _normalise(obj: Any, depth: int) -> Any:
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is int:
        if _INT_MIN <= obj <= _INT_MAX:
            return obj
        raise EncodingError(f"integer {obj} does not fit in 64 bits")
    if depth >= MAX_DEPTH:
        raise EncodingError(f"value nested deeper than {MAX_DEPTH} levels")
    if kind is dict:
        return _normalise_dict(obj, depth + 1)
    if kind is list or kind is tuple:
        return [item if type(item) in _PLAIN else _normalise(item, depth + 1) for item in obj]
    return _normalise_other(obj, depth)


def _normalise_dict(obj: dict, depth: int) -> dict:
    if all(type(key) is str for key in obj):
        keys = sorted(obj)
    else:  # str subclasses (numpy's str_, a str enum) are keys by their text, as values are
        texts = {_text_key(key): value for key, value in obj.items()}
        if len(texts) != len(obj):
            raise EncodingError("dict has two keys with the same text")
        obj, keys = texts, sorted(texts)
    result = {}
    for key in keys:
        value = obj[key]
        result[key] = value if type(value) in _PLAIN else _normalise(value, depth)
    return result


def _text_key(key: Any) -> str:
    if not isinstance(key, str):
        raise EncodingError(f"dict key {key!r} is a {type(key).__name__}, but keys must be str")
    return str.__str__(key)  # its text: a subclass's own __str__ (an Enum's "E.RED") is not


def _normalise_other(obj: Any, depth: int) -> Any:
    """Subclasses and numpy scalars: accepted only where they have one obvious meaning."""
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.timedelta64):  # an integer subclass in numpy, but its unit is lost
        raise EncodingError("cannot encode a value of type timedelta64 canonically: its unit "
                            "would be lost (give a number of a named unit)")
    if isinstance(obj, int):
        # Its value, as msgpack packs it: int() would use a subclass's own __int__.
        return _normalise(int.__int__(obj), depth)
    if isinstance(obj, np.integer):
        return _normalise(int(obj), depth)
    if isinstance(obj, float):
        return float.__float__(obj)  # its value, whatever a subclass's __float__ says
    if isinstance(obj, (np.float16, np.float32)):
        return float(obj)
    if isinstance(obj, str):
        return str.__str__(obj)  # its text, whatever the subclass's __str__ says
    # Subclasses are what they hold, as msgpack packs them: their buffer, their entries — not
    # what their own __bytes__ or keys() would say.
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(memoryview(obj))
    if isinstance(obj, dict):
        return _normalise_dict(dict(dict.items(obj)), depth + 1)
    if isinstance(obj, msgpack.ExtType):  # a tuple subclass: it would pass for a list
        raise EncodingError("cannot encode a value of type ExtType canonically: no ext types")
    if isinstance(obj, (list, tuple)):
        return [_normalise(item, depth + 1) for item in obj]
    raise EncodingError(f"cannot encode a value of type {type(obj).__name__} canonically")


def normalise(obj: Any, depth: int = 0) -> Any:
    """Return ``obj`` rebuilt from plain Python types in canonical form (sorted dicts, lists).

    ``depth``: how many containers ``obj`` will sit in (1 for an event's params, a field of
    the body), so that the whole it joins stays within :data:`MAX_DEPTH`.
    """
    return _normalise(obj, depth)


def normalise_entries(what: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``normalise(dict(given))``, or an EncodingError naming the entry that cannot be encoded
    (``got hyperparams['scaler'] that cannot be recorded: cannot encode a value of type
    ndarray …``): a user's map of settings, where the bare message named neither."""
    try:
        return normalise(dict(given))
    except EncodingError as error:
        for key, value in given.items():
            try:
                normalise({key: value})
            except EncodingError as entry:
                raise EncodingError(f"got {what}[{quoted(key)}] that cannot be recorded: "
                                    f"{entry}") from None
        raise EncodingError(f"got {what} that cannot be recorded: {error}") from None


def pack_normalised(obj: Any) -> bytes:
    """msgpack bytes of a value that is already normalised (the fast path for hot loops)."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    try:
        return packer.pack(obj)
    except UnicodeEncodeError as error:
        raise EncodingError(f"string {error.object[:40]!r} is not valid Unicode "
                            f"({error.reason})") from None
    except (TypeError, ValueError, OverflowError) as error:
        raise EncodingError(f"cannot encode value canonically: {error}") from None


def canonical(obj: Any) -> bytes:
    """Encode ``obj`` to its canonical msgpack bytes, or raise EncodingError saying why not."""
    return pack_normalised(_normalise(obj, 0))
