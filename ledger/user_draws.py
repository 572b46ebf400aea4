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

DrawFunction = Callable[..., Any]
_draws: dict[tuple[str, int], DrawFunction] = {}


def register_draw(name: str, version: int) -> Callable[[DrawFunction], DrawFunction]:
    """Register ``function(rng, **params)`` as the user draw point ``name`` at ``version``."""
    check_declared("draw", name, version)

    def decorate(function: DrawFunction) -> DrawFunction:
        existing = _draws.get((name, version))
        if existing is not None and existing is not function and (
                existing.__module__, existing.__qualname__) != (function.__module__,
                                                               function.__qualname__):
            raise BadInputError(f"draw {name!r} version {version} is already registered by "
                                f"{existing.__module__}.{existing.__qualname__}")
        _draws[(name, version)] = function
        return function

    return decorate


def lookup_draw(name: str, version: int) -> DrawFunction:
    """The function registered as ``name`` at ``version``; CannotReplayError when there is none."""
    function = _draws.get((name, version))
    if function is None:
        raise CannotReplayError(f"user draw {name!r} version {version} is not registered: install "
                                f"the package that defines it (entry-point group "
                                f"'ledger.replayers') or name its module with --trust MODULE")
    return function


def latest_version(name: str) -> int:
    """The highest version registered under ``name`` (BadInputError when none is)."""
    versions = [version for (known, version) in _draws if known == name]
    if not versions:
        raise BadInputError(f"no draw registered as {name!r}: decorate it with "
                            f"@register_draw({name!r}, version=1)")
    return max(versions)


def result_digest(result: Any) -> bytes:
    """The digest recorded for a draw's result: ``array_digest`` of it as an array."""
    return array_digest(np.asarray(result))
