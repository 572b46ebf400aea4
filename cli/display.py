"""Turning ledger values into JSON-ready and human-readable forms."""

from __future__ import annotations

import math
from typing import Any

from ledger.text import escape_unprintable


def jsonable(value: Any) -> Any:
    """A copy of ``value`` that JSON can hold: bytes become lowercase hex, tuples lists, and
    the floats JSON has no literal for (a NaN loss, an infinite hyperparameter) the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` — as in reports — so ``--json`` output parses
    with any strict parser."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def short(digest: bytes | str | None, width: int = 16) -> str:
    """A digest shortened for tables (full digests are in --json)."""
    if digest is None:
        return "-"
    text = digest.hex() if isinstance(digest, bytes) else digest
    return text[:width]


def printable(value: Any) -> str:
    """``str(value)`` with every character that is not printable escaped (``\\x1b``, ``\\n``,
    bidi controls …): text from a ledger — names, statuses, kinds, recorded environments — is
    someone else's, and must not move the cursor, retitle the terminal or forge a line."""
    return escape_unprintable(str(value))
