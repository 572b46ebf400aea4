"""Wall-clock times of the ledger (integer nanoseconds since the epoch) shown as RFC 3339 UTC.

The text is cut at the shown precision, never rounded: ``…:59.9999999`` stays in its second
(through a float, ``t / 1e9`` would round it to the next second, minute or day).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_text(t_ns: int, timespec: str = "milliseconds") -> str:
    """``t_ns`` as ``YYYY-MM-DDTHH:MM:SS[.fff]Z`` cut to ``timespec`` (``datetime.isoformat``'s).

    Raises OverflowError for a time outside years 1–9999 (a tampered row can hold any integer).
    """
    moment = _EPOCH + timedelta(microseconds=t_ns // 1000)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
