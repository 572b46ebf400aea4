"""JSON views of ledger values, and the report's canonical bytes.

Ledger values are shown as :func:`ledger.json_view.json_view` shows them everywhere: bytes as
lowercase hex, tuples as lists, and floats that JSON cannot hold (NaN, ±infinity) as the strings
``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

**Canonical bytes** of a report — what a signature covers — are exactly::

    json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
               allow_nan=False).encode("utf-8")

i.e. keys sorted by code point, no whitespace, strings as UTF-8 with only ``"``, ``\\``
and control characters escaped, integers in decimal, floats as Python's shortest
round-trip ``repr``. Reports are parsed strictly: a duplicate key or a NaN literal is refused.
A name from a tampered ledger that is not text (bytes in a TEXT column) is shown as JSON views
show bytes, and one that is not UTF-8 keeps its escaped bytes as ``\\udcXX`` escapes, which
parse back to the same string.
"""

from __future__ import annotations

import json
from typing import Any

from ledger.errors import BadInputError
from ledger.json_view import json_view
from ledger.times import utc_text


def recorded_text(value: Any) -> str | None:
    """A recorded value that should be text, or None: whoever can write a ledger can record
    any type there, and the report quotes only text where its schema expects text."""
    return value if isinstance(value, str) else None


def recorded_int(value: Any) -> int | None:
    """A recorded value that should be an integer, or None — ``True`` included, which Python
    counts as an int but the report's schema does not."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def canonical_json(document: Any) -> bytes:
    """The canonical bytes of a JSON document (see the module docstring)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=json_view).encode("utf-8", "backslashreplace")


def pretty_json(document: Any) -> bytes:
    """The document as written to files: keys sorted, indented, UTF-8, ending in a newline."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False,
                       default=json_view) + "\n").encode("utf-8", "backslashreplace")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadInputError(f"JSON object has the key {key!r} twice")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise BadInputError(f"JSON holds {name}, which is not JSON")


def parse_json(data: bytes, what: str = "file") -> Any:
    """Parse UTF-8 JSON strictly (no duplicate keys, no NaN); BadInputError when it is not."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_refuse_duplicates,
                          parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise BadInputError(f"{what} is not UTF-8 text, so not a JSON report") from None
    except (ValueError, RecursionError) as error:
        if isinstance(error, BadInputError):
            raise BadInputError(f"{what}: {error}") from None
        raise BadInputError(f"{what} is not JSON ({error})") from None


def rfc3339(t_ns: Any) -> str | None:
    """A wall-clock time in nanoseconds as RFC 3339 UTC with milliseconds (None if not an int)."""
    if isinstance(t_ns, bool) or not isinstance(t_ns, int):
        return None
    try:
        return utc_text(t_ns)
    except OverflowError:
        return None


def hex_or_none(value: Any) -> str | None:
    """Bytes as lowercase hex; anything else None."""
    return bytes(value).hex() if isinstance(value, (bytes, bytearray)) else None
