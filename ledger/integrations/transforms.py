"""The transform registry: a user's random transform, by declared name and version.

A transform is recorded as ``{"transform": name, "version": v, "per": "sample" | "batch",
"params": {...}}`` — never by import path — and replay rebuilds it through this registry, when the
module that registers it is installed as a ``ledger.replayers`` plug-in or named with
``ledger replay --trust MODULE``. Register it at module level of an importable module (DataLoader
workers started with ``spawn`` import it too)::

    from ledger.integrations.torch import register_transform

    @register_transform("random_flip", version=1)
    def random_flip(x, generator, *, p=0.5):
        if torch.rand((), generator=generator) < p:
            x = x.flip(-1)
        return x

The function gets the sample (or, with ``per="batch"``, the whole batch of features) as a tensor it
may change in place, a ``torch.Generator`` seeded from the sample's or batch's path, and its
parameters as keywords (defaults are filled into the recorded spec). It must draw randomness only
from ``generator`` — or be registered with ``global_rng=True``, and then torch's global RNG is
seeded from the same path around each call (and restored after it).

WARNING: (name, version) is a promise. Change what a transform computes — even the order of its
draws — and register it under a new version, keeping the old one, or old runs stop replaying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.canonical import normalise
from ledger.errors import BadInputError, CannotReplayError
from ledger.registered_functions import (check_params_fit, highest_version, keyword_parameters,
                                         refuse_other_code, registered_keys)

PER = ("sample", "batch")
TransformFunction = Callable[..., Any]


@dataclass(frozen=True)
class TransformInfo:
    """One registered transform: declared name and version, function, parameter defaults."""

    name: str
    version: int
    function: TransformFunction
    defaults: dict[str, Any]
    required: tuple[str, ...]
    global_rng: bool

    def spec(self, per: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The recorded spec of this transform with ``params`` (defaults filled, canonical)."""
        if per not in PER:
            raise BadInputError(f"got per={per!r}, but must be one of {list(PER)}")
        check_params_fit(f"transform {self.name!r} v{self.version}", self.defaults,
                         self.required, params)
        return {"transform": self.name, "version": self.version, "per": per,
                "params": normalise({**self.defaults, **params})}


_registry: dict[tuple[str, int], TransformInfo] = {}


def register_transform(name: str, version: int, *, global_rng: bool = False
                       ) -> Callable[[TransformFunction], TransformFunction]:
    """Register ``function(x, generator, **params)`` as transform ``name`` at ``version``.

    Registering other code under a taken (name, version) raises BadInputError (the code is
    compared, not only the name: two lambdas differ); re-registering the same function (a module
    imported again) is allowed. Parameters after ``(x, generator)`` must be passable by keyword
    and not be named ``name``, ``version`` or ``per``.
    """
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise BadInputError(f"a transform name must be letters, digits and _, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadInputError(f"a transform version must be an int >= 1, got {version!r}")

    def decorate(function: TransformFunction) -> TransformFunction:
        defaults, required = keyword_parameters(f"transform {name!r}", function,
                                                ("x", "generator"),
                                                reserved=("name", "version", "per"))
        existing = _registry.get((name, version))
        refuse_other_code(f"transform {name!r} version {version}",
                          None if existing is None else existing.function, function)
        _registry[(name, version)] = TransformInfo(name, version, function, defaults, required,
                                                   bool(global_rng))
        return function

    return decorate


def lookup_transform(name: str, version: int | None = None) -> TransformInfo:
    """The transform ``name`` at ``version`` (default: its highest); BadInputError if unknown
    — or if ``name`` is no text or ``version`` no whole number (``version=[]`` was a bare
    TypeError from the lookup)."""
    if not isinstance(name, str):
        raise BadInputError(f"got transform name {name!r}, but it must be text")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise BadInputError(f"got transform version {version!r}, but it must be an int")
    if version is None:
        version = highest_version(_registry, name)
        if version is None:
            raise BadInputError(f"unknown transform {name!r}: registered transforms are "
                                f"{registered_transforms()}")
    info = _registry.get((name, version))
    if info is None:
        raise BadInputError(f"transform {name!r} version {version} is not registered "
                            f"(registered: {registered_transforms()})")
    return info


def replay_transform(spec: Any) -> tuple[TransformInfo, str, dict[str, Any]]:
    """The registered transform of a recorded spec, for replay: CannotReplayError when the
    module that registers it was not installed as a plug-in nor trusted."""
    if not isinstance(spec, dict) or not isinstance(spec.get("transform"), str) or not isinstance(
            spec.get("params"), dict) or spec.get("per") not in PER:
        raise CannotReplayError(f"malformed transform spec {spec!r}")
    version: Any = spec.get("version")  # as recorded: a key of another type is simply not found
    if (spec["transform"], version) not in _registry:
        raise CannotReplayError(f"transform {spec['transform']!r} version {version} is not "
                                f"registered: install the package that defines it (entry-point "
                                f"group 'ledger.replayers') or name its module with --trust "
                                f"MODULE")
    return _registry[(spec["transform"], version)], spec["per"], spec["params"]


def registered_transforms() -> list[str]:
    """Every registered transform as ``name@version``, sorted."""
    return registered_keys(_registry)
