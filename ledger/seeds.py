"""Seed derivation (DESIGN §1): every draw point's seed comes from the root seed and a path.

``derive(root, path)`` is the first 16 bytes, big-endian, of
``SHA-256(b"ledger/seed/v1\\x00" + canonical([root.to_bytes(16, "big"), list(path)]))``, and the
generator for a path is ``numpy.random.Generator(numpy.random.PCG64(derive(root, path)))``.

WARNING: the seed of a draw point depends on its root seed and its whole path, nothing else.
Renaming a label, changing an int label to a str (``1`` vs ``"1"``) or reordering labels changes
every number drawn below it. Never derive by arithmetic on a base seed (``seed + worker_id``): seed
42 worker 1 would equal seed 43 worker 0.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence, Set
from typing import Any, cast

import numpy as np

from ledger.canonical import pack_normalised
from ledger.errors import BadInputError

SEED_TAG = b"ledger/seed/v1\x00"
SEED_SCHEME = "ledger/seed/v1"
"""Name and version of the derivation scheme, recorded so that replay knows which one ran."""
ROOT_SEED_BITS = 128
_LABEL_MAX = 2**64 - 1
_ROOT_LIMIT = 2**ROOT_SEED_BITS

Label = str | int
Path = tuple[Label, ...]


def check_root_seed(root: int) -> int:
    """Return ``root`` if it is an int in ``[0, 2**128)``; raise saying what it got otherwise."""
    if (isinstance(root, (bool, np.timedelta64))
            or not isinstance(root, (int, np.integer))):
        raise BadInputError(f"root seed must be an int in [0, 2**128), got {type(root).__name__}")
    root = _int_value(root)
    if not 0 <= root < 2**ROOT_SEED_BITS:
        raise BadInputError(f"root seed must be in [0, 2**128), got {root}")
    return root


def check_path(path: Sequence[Label]) -> Path:
    """Return ``path`` as a tuple if each label is a str or an int in ``[0, 2**64)``."""
    given = type(path)
    labels = (cast(tuple, path) if given is tuple else tuple(path) if given is list
              else _other_sequence(path))
    for label in labels:
        kind = type(label)
        # mypy does not narrow through ``kind``: where ``kind is int``, label is an int.
        if kind is str or (kind is int and 0 <= label <= _LABEL_MAX):  # type: ignore[operator]
            continue
        return _check_path_slowly(labels)
    return labels


def _other_sequence(path: Any) -> tuple:
    """The labels of a path given as neither a tuple nor a list (the per-draw paths are
    tuples): refused when it is text or bytes, or unordered."""
    if isinstance(path, (str, bytes, bytearray, memoryview)):
        # Bytes of any kind are a string, not a path of int labels (b"ab" is not (97, 98)).
        raise BadInputError(f"a seed path is a sequence of labels, got the string {path!r}")
    if isinstance(path, (Set, Mapping)):
        # Unordered: a set of str iterates in an order PYTHONHASHSEED decides, so its seed
        # would change from one process to the next (DESIGN §1's invariance promise).
        raise BadInputError(f"a seed path is a sequence of labels, got the unordered "
                            f"{type(path).__name__} {path!r}")
    try:
        return tuple(path)
    except TypeError:
        raise BadInputError(f"a seed path is a sequence of labels, got {type(path).__name__} "
                            f"{path!r}") from None


def _check_path_slowly(labels: tuple) -> Path:
    checked: list[Label] = []
    for label in labels:
        if (isinstance(label, (bool, np.timedelta64))  # numpy's timedelta64 is an integer
                or not isinstance(label, (str, int, np.integer))):
            raise BadInputError(f"path labels must be str or non-negative int, got {label!r}")
        if isinstance(label, str):
            # Its text, as canonical() encodes a str subclass: str() would use the subclass's
            # own __str__ ("Colour.RED" for a str Enum) and derive a seed for another path.
            checked.append(str.__str__(label))
        elif 0 <= _int_value(label) <= _LABEL_MAX:
            checked.append(_int_value(label))
        else:
            raise BadInputError(f"path label {label} must be in [0, 2**64)")
    return tuple(checked)


def _int_value(number: int | np.integer) -> int:
    """The value of an int or numpy integer, as canonical() encodes it: int() would use an int
    subclass's own ``__int__`` and derive a seed for another root or path."""
    return int.__int__(number) if isinstance(number, int) else int(number)


def derive_bytes(root: int, path: Sequence[Label]) -> bytes:
    """The 16-byte derived seed of ``path`` under ``root`` — what events record."""
    if type(root) is not int or not 0 <= root < _ROOT_LIMIT:
        root = check_root_seed(root)
    encoded = pack_normalised([root.to_bytes(16, "big"), list(check_path(path))])
    return hashlib.sha256(SEED_TAG + encoded).digest()[:16]


def derive(root: int, path: Sequence[Label]) -> int:
    """The derived seed of ``path`` under ``root`` as an int in ``[0, 2**128)``."""
    return int.from_bytes(derive_bytes(root, path), "big")


def generator(root: int, path: Sequence[Label]) -> np.random.Generator:
    """A fresh numpy Generator (PCG64) for ``path``: the only RNG a draw point should use."""
    return np.random.Generator(np.random.PCG64(derive(root, path)))


def draw_root_seed() -> int:
    """A root seed from the OS (128 bits), for runs the user gave no seed; it is recorded."""
    return secrets.randbits(ROOT_SEED_BITS)


def root_seed_to_bytes(root: int) -> bytes:
    """The root seed as recorded in ``experiment_created`` params: 16 bytes, big-endian.

    (A 128-bit integer does not fit the 64-bit integers of canonical encoding.)
    """
    return check_root_seed(root).to_bytes(16, "big")


def root_seed_from_bytes(recorded: bytes) -> int:
    """The root seed back from its 16 recorded bytes."""
    if not isinstance(recorded, bytes) or len(recorded) != 16:
        raise BadInputError("a recorded root seed must be 16 bytes")
    return int.from_bytes(recorded, "big")
