"""JSON views of ledger values: what every command, diff and report prints of them.

Ledger values are msgpack decoded from someone else's data, so a view must hold whatever a
ledger can: bytes become lowercase hex, tuples lists, map keys text, floats JSON has no literal
for (NaN, ±infinity) the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, other objects (a
msgpack ext type) their ``repr``, and nesting deeper than MAX_DEPTH ``"..."`` — msgpack decodes
maps a thousand levels deep, which neither ``json`` nor ``repr`` can print.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

MAX_DEPTH = 64
"""Levels of nesting shown in full; deeper values are shown as ``"..."``."""


def json_view(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that strict JSON can hold (see the module docstring)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {str(key): json_view(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, msgpack.ExtType):
        return [json_view(item, depth + 1) for item in value]
    return repr(value)
