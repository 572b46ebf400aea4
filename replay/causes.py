"""Why a draw diverged: the classification shared by replay and diff.

Three causes, checked in this order for each event: the recorded seed is not the one the path
derives (*seed derivation differs*); the draw's input is not the recorded one (*input differs*:
the data changed); the same seed and input gave another output (*same seed, different output*:
nondeterministic code, or a library whose version differs from the recorded environment).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ledger.recorded_differences import (differences, flatten, library_differences, same,
                                         session_differences)

__all__ = ["Cause", "differences", "explain_output", "flatten", "library_differences", "same",
           "session_differences", "shown_version"]


class Cause(str, Enum):
    """The likely cause of a divergence."""

    SEED = "seed derivation differs"
    INPUT = "input differs"
    OUTPUT = "same seed, different output"
    MISSING = "event missing"
    EXTRA = "event extra"
    PARAMS = "parameters differ"
    STATUS = "status differs"
    """(diff) Every event both runs recorded agrees, but one run failed or is incomplete."""
    EPOCHS = "epochs out of step"
    """(diff) A metric or checkpoint that one run logged after drawing another epoch than the
    other did: the runs' training loops label their epochs differently."""


def explain_output(recorded_env: Any, current_env: Any,
                   sides: tuple[str, str] = ("recorded", "now")) -> str:
    """The detail of a *same seed, different output* divergence: which versions differ, if any.

    A package or Python version that differs is named as the likely cause. A BLAS thread count
    that differs alone is named beside nondeterministic code, not instead of it: it changes
    only draws that multiply matrices (their summation order), which most draws never do.

    ``sides`` words where each environment comes from: a replay compares the recorded one with
    this machine's (``numpy 1.26.0 recorded, 2.4.6 now``); a diff compares two recorded runs
    (``numpy 1.26.0 in exp-a, 2.4.6 in exp-b``).
    """
    changed = [(_shown_name(key), old, new) for key, old, new
               in library_differences(recorded_env, current_env) if key.startswith(
                   ("packages.", "python.version", "blas_threads."))]
    versions = [change for change in changed if not change[0].startswith("BLAS threads")]
    first, second = sides
    listed = ", ".join(f"{name} {shown_version(old)} {first}, "
                       f"{shown_version(new)} {second}" for name, old, new in changed)
    if versions:
        lead = ("environment differs from the recorded one" if sides == ("recorded", "now")
                else "environments differ")
        return f"{lead}: {listed}"
    if changed:
        return (f"nondeterministic code, or a matrix product summed in another order: same "
                f"seed, same input and the same library versions gave another output, and "
                f"{listed}")
    return ("nondeterministic code: same seed, same input and the same library versions "
            "gave another output")


def shown_version(value: Any) -> str:
    """A version or thread count as shown: ``absent`` when not recorded (0 threads stays 0), as
    where a library is loaded on one side only."""
    return "absent" if value is None or value == "" else str(value)


def _shown_name(key: str) -> str:
    """``packages.numpy`` -> ``numpy``; ``blas_threads.libopenblas.so`` -> ``BLAS threads of
    libopenblas.so``."""
    if key.startswith("blas_threads."):
        return f"BLAS threads of {key.removeprefix('blas_threads.')}"
    return key.removeprefix("packages.")
