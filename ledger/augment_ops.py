"""The augmentation op registry: stable declared names mapped to code, and the built-in ops.

An op is recorded in the ledger as ``{"op": name, "version": v, **params}`` — never by Python
import path, so a renamed module cannot orphan old records. Replay rebuilds an augmenter from
these specs through this registry.

Writing a custom op::

    from ledger import register_op

    @register_op("sign_flip", version=1)
    def sign_flip(batch, rng, *, prob: float = 0.05):
        # flip the sign of each value independently with probability prob
        flip = rng.random(batch.shape) < prob
        batch[flip] *= -1

An op receives the batch (a private copy it may change in place; samples along axis 0) and the
batch's numpy Generator, takes its parameters as keyword arguments (defaults are filled into the
recorded spec), and either returns None (changed in place) or an array of the same shape and
dtype. It must draw randomness only from ``rng``.

WARNING: the (name, version) pair is a promise. Change what an op computes — even the order of
its draws — and you must register it under a new version, keeping the old one registered, or old
runs will no longer replay. Worker processes started with ``spawn`` or ``forkserver`` import the
module that defines a custom op, so define ops at module level in an importable module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ledger.canonical import canonical, normalise, normalise_entries
from ledger.errors import BadInputError
from ledger.registered_functions import (check_params_fit, highest_version, keyword_parameters,
                                         refuse_other_code, registered_keys)

OpFunction = Callable[..., "np.ndarray | None"]
ParamsCheck = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class OpInfo:
    """One registered op: its declared name and version, its function and parameter defaults."""

    name: str
    version: int
    function: OpFunction
    defaults: dict[str, Any]
    required: tuple[str, ...]
    check: ParamsCheck | None

    @property
    def builtin(self) -> bool:
        """True for the ops this module defines (workers need not import anything for them)."""
        return self.function.__module__ == __name__

    def make_spec(self, params: dict[str, Any]) -> dict[str, Any]:
        """The recorded spec of this op with ``params``: defaults filled, values canonical."""
        check_params_fit(f"op {self.name!r} v{self.version}", self.defaults, self.required, params)
        full = {**self.defaults, **params}
        if self.check is not None:
            full = self._checked(full)
        return {"op": self.name, "version": self.version,
                **normalise_entries(f"op {self.name!r} v{self.version} params", full)}

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        """``check(params)``, refused unless it returns this op's parameters and returns them
        unchanged when given its own result: the check runs again whenever an augmenter is
        rebuilt from its recorded spec (worker processes, replay), so a check that converts
        (degrees to radians, say) would make what runs differ from what was recorded."""
        assert self.check is not None
        checked = self.check(dict(params))
        if not isinstance(checked, dict) or set(checked) - {*self.defaults, *self.required}:
            raise BadInputError(f"op {self.name!r} v{self.version}: its check must return the "
                                f"op's parameters as a dict, got {checked!r:.120}")
        again = self.check(dict(checked))
        if not isinstance(again, dict) or canonical(normalise(again)) != canonical(
                normalise(checked)):
            raise BadInputError(f"op {self.name!r} v{self.version}: its check changed its own "
                                f"result ({checked!r:.80} became {again!r:.80}); it runs again "
                                f"on the recorded parameters (in workers and replay), so it "
                                f"must return already-checked parameters unchanged")
        return checked


_REGISTRY: dict[tuple[str, int], OpInfo] = {}


def register_op(name: str, version: int, *, check: ParamsCheck | None = None
                ) -> Callable[[OpFunction], OpFunction]:
    """Register an augmentation op under a stable ``name`` and ``version`` (a decorator).

    ``check`` optionally validates and normalises the parameters (e.g. casts to float) and
    raises BadInputError for bad values. Registering another function under a (name, version)
    that is taken raises BadInputError; re-registering the same function (a module re-import)
    is allowed.
    """
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise BadInputError(f"an op name must be letters, digits and _, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadInputError(f"an op version must be an int >= 1, got {version!r}")
    if check is not None and not callable(check):
        raise BadInputError(f"op {name!r}: check must be a function of the params, got "
                            f"{type(check).__name__}")

    def decorate(function: OpFunction) -> OpFunction:
        defaults, required = keyword_parameters(f"op {name!r}", function, ("batch", "rng"),
                                                reserved=("op", "version"))
        existing = _REGISTRY.get((name, version))
        refuse_other_code(f"op {name!r} version {version}",
                          None if existing is None else existing.function, function)
        _REGISTRY[(name, version)] = OpInfo(name, version, function, defaults, required, check)
        return function

    return decorate


def lookup_op(name: str, version: int | None = None) -> OpInfo:
    """The registered op ``name`` at ``version`` (default: its highest registered version)."""
    if version is None:
        version = highest_version(_REGISTRY, name)
        if version is None:
            raise BadInputError(f"unknown augmentation op {name!r}: registered ops are "
                                f"{registered_ops()}")
    info = _REGISTRY.get((name, version))
    if info is None:
        raise BadInputError(f"augmentation op {name!r} version {version} is not registered "
                            f"(registered: {registered_ops()})")
    return info


def registered_ops() -> list[str]:
    """Every registered op as ``name@version``, sorted."""
    return registered_keys(_REGISTRY)


# -- built-in ops ----------------------------------------------------------------------------------

def _float_dtype(op: str, batch: np.ndarray) -> np.dtype:
    if batch.dtype not in (np.float32, np.float64):
        raise BadInputError(f"op {op!r} needs float32 or float64 features, got {batch.dtype}")
    return batch.dtype


def _finite_float(op: str, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadInputError(f"{op} {name} must be a number in [{low}, {high}], got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        raise BadInputError(f"{op} {name} must be in [{low}, {high}], got {value}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadInputError(f"{op} {name} must be in [{low}, {high}], got {value}")
    return value


def _check_noise(params: dict[str, Any]) -> dict[str, Any]:
    return {"std": _finite_float("gaussian_noise", "std", params["std"], 0.0, math.inf)}


def _check_mask(params: dict[str, Any]) -> dict[str, Any]:
    fill = params["fill"]
    if isinstance(fill, bool) or not isinstance(fill, (int, float, np.integer, np.floating)):
        raise BadInputError(f"feature_mask fill must be a number, got {fill!r}")
    try:
        fill = float(fill)
    except OverflowError:  # an int beyond any float
        raise BadInputError(f"feature_mask fill must be a float, got {fill}") from None
    return {"prob": _finite_float("feature_mask", "prob", params["prob"], 0.0, 1.0),
            "fill": fill}


def _check_jitter(params: dict[str, Any]) -> dict[str, Any]:
    return {"jitter": _finite_float("scale_jitter", "jitter", params["jitter"], 0.0, 0.999)}


@register_op("gaussian_noise", 1, check=_check_noise)
def gaussian_noise(batch: np.ndarray, rng: np.random.Generator, *, std: float) -> None:
    """Add N(0, std²) noise to every value (drawn in the batch's float dtype)."""
    dtype = _float_dtype("gaussian_noise", batch)
    noise = rng.standard_normal(batch.shape, dtype=dtype)
    noise *= dtype.type(std)
    batch += noise


@register_op("feature_mask", 1, check=_check_mask)
def feature_mask(batch: np.ndarray, rng: np.random.Generator, *, prob: float,
                 fill: float = 0.0) -> None:
    """Set each value independently, with probability ``prob``, to ``fill`` (float32 uniforms)."""
    dtype = _float_dtype("feature_mask", batch)
    mask = rng.random(batch.shape, dtype=np.float32) < np.float32(prob)
    np.copyto(batch, dtype.type(fill), where=mask)


@register_op("scale_jitter", 1, check=_check_jitter)
def scale_jitter(batch: np.ndarray, rng: np.random.Generator, *, jitter: float) -> None:
    """Multiply each sample by its own factor drawn uniformly from [1 - jitter, 1 + jitter)."""
    dtype = _float_dtype("scale_jitter", batch)
    shape = (batch.shape[0],) + (1,) * (batch.ndim - 1)
    factors = rng.uniform(1.0 - jitter, 1.0 + jitter, size=shape).astype(dtype)
    batch *= factors
