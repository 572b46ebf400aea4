"""Checks of plain arguments the public API shares: flags, epochs and counts.

Python would take ``shuffle="False"`` as true and ``epoch=True`` as 1; a recorded run must not
silently mean something other than what its caller wrote, so these refuse look-alikes with a
BadInputError instead of coercing them.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np

from ledger.errors import BadInputError

MAX_EPOCH = 2**64 - 1
"""An epoch is a path label, and path labels are 64-bit unsigned ints."""

MAX_COUNT = 2**63 - 1
"""The largest batch size or prefetch depth: what the ledger's 64-bit integers (and numpy's
indices) hold, so that a recorded setting is refused at once rather than in the first pass."""


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool when it is one (numpy's too); BadInputError for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise BadInputError(f"got {name}={value!r}, but it must be True or False")


@overload
def check_epoch(epoch: Any, *, optional: Literal[False] = False) -> int: ...
@overload
def check_epoch(epoch: Any, *, optional: bool) -> int | None: ...


def check_epoch(epoch: Any, *, optional: bool = False) -> int | None:
    """``epoch`` as an int in [0, 2**64) (numpy ints too), or None when ``optional``;
    BadInputError for anything else (bools, floats, text, negatives)."""
    if epoch is None and optional:
        return None
    if (isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer))
            or not 0 <= epoch <= MAX_EPOCH):
        allowed = " or None" if optional else ""
        raise BadInputError(f"got epoch {epoch!r}, but it must be an int in [0, 2**64){allowed}")
    return int(epoch)


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int in [minimum, 2**63) (numpy ints too); BadInputError for anything else
    (bools, floats, text, values out of range)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BadInputError(f"got {name}={value!r}, but must be an int >= {minimum}")
    if value > MAX_COUNT:
        raise BadInputError(f"got {name}={value!r}, but must be at most 2**63 - 1")
    return int(value)
