"""What ``log_metric`` and ``log_checkpoint`` accept, and the digest of a checkpoint.

A metric is a real number at an epoch; a checkpoint is one array or a map of named arrays, of
which only the digest (with each array's dtype and shape) is recorded. Anything else is refused
with a BadInputError before an event is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ledger.digests import array_digest, value_digest
from ledger.errors import BadInputError
from ledger.text import error_summary

STATE_TAG = "ledger/state/v1"


def _state_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an array of a checkpoint, or BadInputError saying why it is not one."""
    if value is None or isinstance(value, (str, bytes, Mapping)):
        raise BadInputError(f"checkpoint {name} is {type(value).__name__}, but must be an array "
                            f"(or a list of numbers)")
    try:
        return np.asarray(value)
    except Exception as error:  # numpy raises ValueError, TypeError, RuntimeError (torch), ...
        raise BadInputError(f"checkpoint {name} is not an array ({error_summary(error, 120)})"
                            f"{_conversion_hint(value)}") from None


def _conversion_hint(value: Any) -> str:
    """What to do with a value numpy cannot read: a torch tensor (bfloat16, requiring grad, on
    a GPU) has a converter — it used to be asked whether it was a ragged list."""
    if type(value).__module__.split(".")[0] == "torch":
        return ("; convert a torch state_dict with "
                "ledger.integrations.torch.state_arrays(model.state_dict())")
    return "; a ragged list? give several arrays as a dict of name to array"


def checkpoint_arrays(state: Any) -> dict[str, np.ndarray]:
    """The arrays of a model state by name: ``{"": array}`` for one array, else the map's.

    Refuses (BadInputError) what has no stable bytes: an empty map, non-str keys, values that
    are not arrays (None, text, nested maps, ragged lists); and the key ``""`` in a map, which
    is the record's name for one array.
    """
    if isinstance(state, Mapping):
        if not state:
            raise BadInputError("got an empty checkpoint, but it must hold at least one array")
        arrays = {}
        for key, value in state.items():
            if not isinstance(key, str):
                raise BadInputError(f"checkpoint keys must be str, got {key!r}")
            if not key:  # the record would read as one array's, its digest a map's
                raise BadInputError("got a checkpoint key '', but a map's keys must be non-empty: "
                                    "'' is how the record names a checkpoint of one array")
            arrays[key] = _state_array(repr(key), value)
        return arrays
    return {"": _state_array("state", state)}


def state_digest(state: Any) -> bytes:
    """Digest of a model state: ``array_digest`` of one array, or for a map of arrays
    ``value_digest(["ledger/state/v1", {name: array_digest(array)}])``."""
    return checkpoint_record(state)[0]


def checkpoint_record(state: Any) -> tuple[bytes, dict[str, Any]]:
    """What a ``checkpoint`` event records of a model state, its arrays read once: the
    :func:`state_digest` and each array's dtype and shape by name."""
    arrays = checkpoint_arrays(state)
    if isinstance(state, Mapping):
        digest = value_digest([STATE_TAG, {key: array_digest(array)
                                           for key, array in arrays.items()}])
    else:
        digest = array_digest(arrays[""])
    return digest, {key: {"dtype": array.dtype.str, "shape": list(array.shape)}
                    for key, array in arrays.items()}


def check_metric_value(name: str, value: Any) -> int | float:
    """A metric's value as a Python int or float (numpy scalars too; NaN and infinities are
    kept, as a diverged loss is worth recording); BadInputError for anything else."""
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, np.floating):  # a longdouble: its .item() is itself
            hint = " (convert it to float)"
        elif hasattr(value, "item"):
            hint = " (call .item() on a one-value array or tensor)"
        raise BadInputError(f"metric {name!r} got a value of type {type(value).__name__}, but "
                            f"it must be a real number (int or float){hint}")
    if isinstance(value, int) and not -2**63 <= value < 2**64:  # what the ledger's ints hold
        raise BadInputError(f"metric {name!r} got an int of {value.bit_length()} bits, but an "
                            f"int must be in [-2**63, 2**64) to be recorded: give a float")
    return value
