"""How two recorded values or environments differ, leaf by leaf.

Shared by ``ledger show`` (a resumed session's environment against the recorded one), replay
and diff (which versions differ when a draw's output does), and the report.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from ledger.json_view import json_view


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested map as ``{"a.b.c": leaf}`` (lists are leaves), for comparing fingerprints.

    Walks with its own stack, not recursion: a ledger is someone else's data, and msgpack
    decodes maps nested a thousand deep. Keys that are not str (a forger's bytes keys) are
    shown as ``str(key)``, and sorted as such.
    """
    flat: dict[str, Any] = {}
    pending = [(prefix, value)]
    while pending:
        name, item = pending.pop()
        if not isinstance(item, dict):
            flat[name] = item
            continue
        for key in sorted(item, key=str, reverse=True):
            pending.append((f"{name}.{key}" if name else str(key), item[key]))
    return flat


def same(a: Any, b: Any) -> bool:
    """Whether two recorded values are the same value as the ledger encodes them: 1 and 1.0,
    True and 1, b"v1" and "v1" differ (DESIGN §2 keeps them apart, and so do their digests);
    NaN equals NaN (both runs recorded the same value); values too deeply nested to compare
    count as different. A value msgpack cannot hold (none comes from a ledger) is compared by
    Python's equality, its type included."""
    try:
        return msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True)
    except (RecursionError, ValueError):
        return False
    except (TypeError, OverflowError):
        try:
            return type(a) is type(b) and bool(a == b)
        except (RecursionError, ValueError, TypeError):
            return False


class _Absent:
    """The value of a key one side lacks, where that differs from a key recorded as null."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
"""What :func:`differences` with ``keep_absent`` gives for the side that lacks a key: a
hyperparameter ``{"dropout": None}`` against none at all differs, and shows as ``null`` vs
``absent``. Text shows it as ``absent``; JSON leaves that side's field out."""


def differences(recorded: Any, current: Any, whole: str = "", *, keep_absent: bool = False
                ) -> list[tuple[str, Any, Any]]:
    """Every leaf that differs between two nested maps: ``(key, recorded, current)``.

    ``whole`` names a value that is not a map (e.g. a code version recorded as one string),
    which would otherwise be listed under an empty key. A key one side lacks compares as null
    (environments and code versions, where a library not loaded and one whose version is
    unknown are alike); with ``keep_absent`` (values the user gave: hyperparameters, draw
    params) it differs even from null, and that side is :data:`ABSENT`.
    """
    before, after = (_leaves(value, whole) for value in (recorded, current))
    missing = ABSENT if keep_absent else None
    found = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if old is ABSENT or new is ABSENT or not same(old, new):
            found.append((key, old, new))
    return found


def _leaves(value: Any, whole: str) -> dict[str, Any]:
    """The leaves :func:`differences` compares: none for None, a map's flattened, else one."""
    if value is None:
        return {}
    return flatten(value) if isinstance(value, dict) else {whole: value}


def json_difference(key: str, old: Any, new: Any, names: tuple[str, str]) -> dict[str, Any]:
    """One difference as JSON: ``{"key": key, names[0]: old, names[1]: new}``, a side that is
    :data:`ABSENT` left out (so ``null`` means recorded as null)."""
    shown: dict[str, Any] = {"key": key}
    for name, value in zip(names, (old, new)):
        if value is not ABSENT:
            shown[name] = json_view(value)
    return shown


LIBRARY_KEYS = ("packages.", "python.version", "blas.", "blas_threads.")
"""The environment keys whose difference can change a draw's output: package, Python and BLAS
versions and BLAS thread counts (another machine alone, the platform keys, cannot)."""


def library_differences(recorded_env: Any, current_env: Any) -> list[tuple[str, Any, Any]]:
    """Package, Python and BLAS version and BLAS thread-count differences: what can change a
    draw's output."""
    return [(key, old, new) for key, old, new in differences(recorded_env, current_env)
            if key.startswith(LIBRARY_KEYS)]


def session_differences(recorded_env: Any, session_env: Any) -> list[tuple[str, Any, Any]]:
    """How the environment of a session that resumed a run differs from the one the run
    recorded at its creation: :func:`library_differences`, and the platform (another machine,
    OS release or CPU count), by key. Shown, never judged: replay compares digests."""
    platform = [(key, old, new) for key, old, new in differences(recorded_env, session_env)
                if key.startswith("platform.")]
    return sorted(library_differences(recorded_env, session_env) + platform,
                  key=lambda difference: difference[0])
