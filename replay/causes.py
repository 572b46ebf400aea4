"""Why a draw diverged: the classification shared by replay and diff.

Three causes, checked in this order for each event: the recorded seed is not the one the path
derives (*seed derivation differs*); the draw's input is not the recorded one (*input differs*:
the data changed); the same seed and input gave another output (*same seed, different output*:
nondeterministic code, or a library whose version differs from the recorded environment).
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Cause(str, Enum):
    """The likely cause of a divergence."""

    SEED = "seed derivation differs"
    INPUT = "input differs"
    OUTPUT = "same seed, different output"
    MISSING = "event missing"
    EXTRA = "event extra"
    PARAMS = "parameters differ"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested map as ``{"a.b.c": leaf}`` (lists are leaves), for comparing fingerprints."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key in sorted(value):
        flat.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(recorded: Any, current: Any) -> list[tuple[str, Any, Any]]:
    """Every leaf that differs between two nested maps: ``(key, recorded, current)``."""
    before, after = flatten(recorded or {}), flatten(current or {})
    return [(key, before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def library_differences(recorded_env: Any, current_env: Any) -> list[tuple[str, Any, Any]]:
    """Package, Python and BLAS version and BLAS thread-count differences: what can change a
    draw's output."""
    relevant = ("packages.", "python.version", "blas.", "blas_threads.")
    return [(key, old, new) for key, old, new in differences(recorded_env, current_env)
            if key.startswith(relevant)]


def explain_output(recorded_env: Any, current_env: Any) -> str:
    """The detail of a *same seed, different output* divergence: which versions differ, if any.

    A package or Python version that differs is named as the likely cause. A BLAS thread count
    that differs alone is named beside nondeterministic code, not instead of it: it changes
    only draws that multiply matrices (their summation order), which most draws never do.
    """
    changed = [(_shown_name(key), old, new) for key, old, new
               in library_differences(recorded_env, current_env) if key.startswith(
                   ("packages.", "python.version", "blas_threads."))]
    versions = [change for change in changed if not change[0].startswith("BLAS threads")]
    listed = ", ".join(f"{name} {old or 'absent'} recorded, {new or 'absent'} now"
                       for name, old, new in changed)
    if versions:
        return f"environment differs from the recorded one: {listed}"
    if changed:
        return (f"nondeterministic code, or a matrix product summed in another order: same "
                f"seed, same input and the same library versions gave another output, and "
                f"{listed}")
    return ("nondeterministic code: same seed, same input and the same library versions "
            "gave another output")


def _shown_name(key: str) -> str:
    """``packages.numpy`` -> ``numpy``; ``blas_threads.libopenblas.so`` -> ``BLAS threads of
    libopenblas.so``."""
    if key.startswith("blas_threads."):
        return f"BLAS threads of {key.removeprefix('blas_threads.')}"
    return key.removeprefix("packages.")
