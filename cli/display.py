"""Turning ledger values into JSON-ready and human-readable forms."""

from __future__ import annotations

from typing import Any

from ledger.text import escape_unprintable


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
