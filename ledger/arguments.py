"""Checks of plain arguments the public API shares: flags and epochs.

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
