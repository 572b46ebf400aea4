"""Declared names: how ledgers name code (ops, draws, jobs) — by a stable name and a version.

A ledger must stay readable for years, so it never names code by import path; registries map a
declared (name, version) to the function that implements it.
"""

from __future__ import annotations

from typing import Any

from ledger.errors import BadInputError


def check_declared(what: str, name: Any, version: Any) -> tuple[str, int]:
    """Return ``(name, version)`` if name is a non-empty str and version an int >= 1."""
    if not isinstance(name, str) or not name:
        raise BadInputError(f"a {what} name is a non-empty str, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadInputError(f"a {what} version is an int >= 1, got {version!r}")
    return name, version
