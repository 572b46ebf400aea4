"""What the op, transform and draw registries check of a function registered under (name,
version).

Augmentation ops (:mod:`ledger.augment_ops`), PyTorch transforms
(:mod:`ledger.integrations.transforms`) and user draws (:mod:`ledger.user_draws`) are recorded
by a declared name and version and called as ``function(data, generator, **params)`` (a draw
with the generator alone). The registries need the same three answers: which
parameters the function takes (and whether every one can be passed by keyword), what its code
is (so that other code cannot take a (name, version) that is already taken), and a printable
name for messages — and, when one is called, whether the params given fit it. The answers live
here once, so the three registries word their refusals alike.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from ledger.errors import BadInputError


def qualified_name(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, or what there is of it for a callable object."""
    return (f"{getattr(function, '__module__', None)}."
            f"{getattr(function, '__qualname__', type(function).__qualname__)}")


def behaviour(function: Callable[..., Any]) -> tuple[Any, ...]:
    """What a function computes, as far as Python can tell: its name, bytecode, constants,
    names and defaults — equal for the same function imported again, different once its code
    changes (line numbers aside, so that an edit elsewhere in its file does not count)."""
    if isinstance(function, functools.partial):  # the function and what is bound to it
        return ("partial", behaviour(function.func), repr(function.args),
                repr(sorted(function.keywords.items())))
    code = getattr(function, "__code__", None)
    if code is None:  # a builtin or a callable object: its name is all there is to compare
        return (qualified_name(function),)
    return (qualified_name(function), _code_behaviour(code),
            getattr(function, "__defaults__", None), getattr(function, "__kwdefaults__", None))


def _code_behaviour(code: Any) -> tuple[Any, ...]:
    constants = tuple(_code_behaviour(value) if hasattr(value, "co_code") else value
                      for value in code.co_consts)
    return (code.co_code, constants, code.co_names, code.co_varnames)


def keyword_parameters(what: str, function: Callable[..., Any], leading: tuple[str, ...],
                       reserved: Collection[str] = ()) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(defaults, required names) of the parameters ``function`` takes after its leading
    positional ones (``leading`` names them in messages, e.g. ``("batch", "rng")``).

    Raises BadInputError naming ``what`` when the signature cannot be read, the leading
    parameters are missing, a parameter cannot be passed by keyword (``*args``, ``**kwargs``,
    positional-only) or one is named as a ``reserved`` key of the recorded spec.
    """
    count, shown = len(leading), ", ".join(leading)
    if not callable(function):
        raise BadInputError(f"{what} must be a function ({shown}, **params), got "
                         f"{type(function).__name__}")
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature, say
        raise BadInputError(f"{what} must be a function ({shown}, **params) whose signature "
                         f"Python can read") from None
    if len(parameters) < count or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                      for p in parameters[:count]):
        raise BadInputError(f"{what} must take ({shown}, **params)")
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for parameter in parameters[count:]:
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise BadInputError(f"{what} must name its parameters, each passable by keyword (no "
                             f"*args, **kwargs or positional-only {parameter.name!r})")
        if parameter.name in reserved:
            raise BadInputError(f"{what} may not have a parameter named {parameter.name!r}: "
                             f"{sorted(reserved)} are keys of its recorded spec")
        if parameter.default is parameter.empty:
            required.append(parameter.name)
        else:
            defaults[parameter.name] = parameter.default
    return defaults, tuple(required)


def refuse_other_code(what: str, existing: Callable[..., Any] | None,
                      function: Callable[..., Any]) -> None:
    """Raise BadInputError when ``existing`` (registered as ``what``, e.g. "op 'x' version 1")
    is other code than ``function``: a (name, version) is a promise about what runs. The same
    function registered again (its module imported again) passes."""
    if existing is not None and behaviour(existing) != behaviour(function):
        raise BadInputError(f"{what} is already registered by {qualified_name(existing)} with "
                            f"other code: register the new one under a new version")


def highest_version(keys: Iterable[tuple[str, int]], name: str) -> int | None:
    """The highest version registered under ``name`` among registry ``keys``; None if none."""
    return max((version for known, version in keys if known == name), default=None)


def registered_keys(keys: Iterable[tuple[str, int]]) -> list[str]:
    """Registry ``keys`` as ``name@version``, sorted: how refusals list what is registered."""
    return sorted(f"{name}@{version}" for name, version in keys)


def check_params_fit(what: str, defaults: Mapping[str, Any], required: Collection[str],
                     params: Mapping[str, Any]) -> None:
    """Raise BadInputError when ``params`` name a parameter the registered function ``what``
    does not take, or leave out one it needs: before it runs, so nothing is drawn or
    recorded."""
    accepted = {*defaults, *required}
    unknown = sorted(set(params) - accepted)
    missing = [name for name in required if name not in params]
    if unknown or missing:
        problems = ([f"unknown parameter(s) {unknown}"] if unknown else []) + (
            [f"needs parameter(s) {missing}"] if missing else [])
        raise BadInputError(f"{what}: {' and '.join(problems)}; it takes {sorted(accepted)}")
