"""Turning ledger values into JSON-ready and human-readable forms."""

from __future__ import annotations

import json
import math
from typing import Any

from ledger.json_view import json_view
from ledger.recorded_differences import ABSENT
from ledger.text import escape_unprintable
from replay.diff import DiffReport


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


def counted(number: int, noun: str) -> str:
    """A count and its noun, agreeing: ``1 event``, ``2 events``, ``4,213 events``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def agreeing(number: int, singular: str, plural: str) -> str:
    """The verb of a count's subject, agreeing with it: ``differs`` for 1, ``differ`` else."""
    return singular if number == 1 else plural


def runs_differ_line(report: DiffReport) -> str:
    """The stderr line of a diff that found the runs differ (exit 1), as ``verify`` and
    ``replay`` give one for their failed checks: the first divergence."""
    assert report.first_divergence is not None  # set whenever runs differ
    return printable(f"ledger: runs differ: {report.first_divergence.describe()}")


def short_value(value: object) -> str:
    """A value as ``--json`` shows it, written as JSON — ``true``, ``null``, ``{"a": 1}``,
    ``"x"`` (text quoted, so ``"1"`` and ``1`` differ on screen as they do in the runs) — as
    the rest of the CLI's text writes values, not Python's ``True``, ``None``, ``'x'``; bytes
    (digests) as bare hex and NaN or ±Infinity bare; ``absent`` for a key a run lacks
    (:data:`ledger.recorded_differences.ABSENT`); at most 70 characters."""
    if value is ABSENT:
        return "absent"
    shown = json_view(value)
    if isinstance(value, (bytes, bytearray, memoryview)) or (
            isinstance(value, float) and not math.isfinite(value)):
        text = str(shown)
    else:
        text = json.dumps(shown, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return text if len(text) <= 70 else text[:67] + "..."
