"""A user's own draw points: named, versioned functions of a seeded generator that replay can rerun.

Register the function once, at module level of an importable module::

    from ledger import register_draw

    @register_draw("dropout_mask", version=1)
    def dropout_mask(rng, *, shape, rate):
        return rng.random(shape) >= rate

then draw through the experiment, which derives the seed from the path, records a ``user_draw``
event (path, seed, the draw's name, version and params, the digest of its result) and returns
the result::

    mask = exp.draw("dropout_mask", ("dropout", "layer3", epoch), shape=[64, 128], rate=0.1)

Replay reruns it from the record when the defining module is installed as a plug-in
(entry-point group ``ledger.replayers``) or named with ``ledger replay --trust MODULE``.

WARNING: (name, version) is a promise: change what the function computes and register it under a
new version, keeping the old one, or old runs stop replaying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ledger.digests import array_digest
from ledger.declared import check_declared
from ledger.errors import BadInputError, CannotReplayError
from ledger.registered_functions import (check_params_fit, highest_version, keyword_parameters,
                                         refuse_other_code, registered_keys)
from ledger.text import error_text

DrawFunction = Callable[..., Any]
_draws: dict[tuple[str, int], DrawFunction] = {}
_parameters: dict[tuple[str, int], tuple[dict[str, Any], tuple[str, ...]]] = {}
MAX_VERSION = 2**63 - 1
"""Versions are recorded as 64-bit ints."""


def register_draw(name: str, version: int) -> Callable[[DrawFunction], DrawFunction]:
    """Register ``function(rng, **params)`` as the user draw point ``name`` at ``version``.

    Its parameters after ``rng`` must be passable by keyword and not be named ``name``,
    ``path`` or ``version`` (the arguments of ``exp.draw``). Registering other code under a
    taken (name, version) raises BadInputError (the code is compared, not only the name);
    re-registering the same function (a module imported again) is allowed.
    """
    check_declared("draw", name, version)
    if version > MAX_VERSION:
        raise BadInputError(f"a draw version is below 2**63, got {version}")

    def decorate(function: DrawFunction) -> DrawFunction:
        parameters = keyword_parameters(f"draw {name!r}", function, ("rng",),
                                        reserved=("name", "path", "version"))
        refuse_other_code(f"draw {name!r} version {version}", _draws.get((name, version)),
                          function)
        _draws[(name, version)] = function
        _parameters[(name, version)] = parameters
        return function

    return decorate


def check_draw_params(name: str, version: int, params: dict[str, Any]) -> None:
    """Refuse (BadInputError) params that draw ``name`` at ``version`` does not take, or
    misses: before the function runs, so that nothing is drawn or recorded."""
    defaults, required = _parameters.get((name, version), ({}, ()))
    check_params_fit(f"draw {name!r} v{version}", defaults, required, params)


def lookup_draw(name: str, version: int) -> DrawFunction:
    """The function registered as ``name`` at ``version``; CannotReplayError when there is none."""
    function = _draws.get((name, version))
    if function is None:
        raise CannotReplayError(f"user draw {name!r} version {version} is not registered: install "
                                f"the package that defines it (entry-point group "
                                f"'ledger.replayers') or name its module with --trust MODULE")
    return function


def registered_draw(name: str, version: int) -> DrawFunction:
    """The function registered as ``name`` at ``version``, for a draw being recorded:
    BadInputError naming the versions there are when there is none (:func:`lookup_draw` is
    replay's, whose advice is how to make a ledger's draw replayable)."""
    function = _draws.get((name, version))
    if function is None:
        registered = registered_keys(key for key in _draws if key[0] == name)
        raise BadInputError(f"draw {name!r} version {version} is not registered (registered: "
                            f"{registered})")
    return function


def latest_version(name: str) -> int:
    """The highest version registered under ``name`` (BadInputError when none is)."""
    version = highest_version(_draws, name)
    if version is None:
        raise BadInputError(f"no draw registered as {name!r}: decorate it with "
                            f"@register_draw({name!r}, version=1)")
    return version


def result_digest(result: Any) -> bytes:
    """The digest recorded for a draw's result: ``array_digest`` of it as an array."""
    try:
        array = np.asarray(result)
    except (TypeError, ValueError) as error:  # a ragged list, say
        raise BadInputError(f"a draw's result must be an array or array-like of one shape: "
                            f"{error_text(error, 160)}") from None
    if array.dtype.hasobject:  # None, a dict, a set: no array of numbers, bools or text
        raise BadInputError(f"a draw's result must be an array or array-like of one shape (of "
                            f"numbers, bools or text), got {type(result).__name__}: give "
                            f"several values as one array, or draw each at its own path")
    return array_digest(array)
