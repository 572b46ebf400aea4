"""The benchmarks' environment settings, read and checked before any benchmark runs.

A bad value (``BENCH_PIPELINE_ROUNDS=abc``, ``0``, ``-1``) stops with one line naming the
variable, never a traceback, and never after minutes of other benchmarks: ``python -m bench``
checks every setting first, ``python -m bench.bench_x`` checks its own before it starts.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple


class Setting(NamedTuple):
    """One ``BENCH_*`` variable: its default, smallest allowed value and what it sets."""

    default: int
    minimum: int
    means: str


SETTINGS: dict[str, Setting] = {
    "BENCH_EVENTS": Setting(1_000_000, 4, "events of the append, verify and report ledgers "
                                          "(verify and report also build one of N/4)"),
    "BENCH_ROUNDS": Setting(3, 1, "rounds of the verify benchmark"),
    "BENCH_PIPELINE_ROUNDS": Setting(5, 1, "timed rounds of the pipeline benchmark"),
    "BENCH_DEMO_ROUNDS": Setting(3, 0, "rounds of the demo's training job in the pipeline "
                                       "benchmark (0 skips it)"),
    "BENCH_REPLAY_ROUNDS": Setting(3, 1, "rounds of the replay benchmark"),
    "BENCH_TORCH_ROUNDS": Setting(3, 1, "rounds of the torch benchmark"),
    "BENCH_PG_EVENTS": Setting(100_000, 1, "events per writer of the PostgreSQL benchmark"),
    "BENCH_PG_ROUNDS": Setting(2, 1, "rounds of the PostgreSQL benchmark"),
}


def setting(name: str) -> int:
    """The value of ``name`` from the environment (else its default), checked.

    Raises ``SystemExit`` with one line when the value is not a whole number at least the
    setting's minimum.
    """
    spec = SETTINGS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return spec.default
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or value < spec.minimum:
        raise SystemExit(f"bench: error: {name}={text!r}: it must be a whole number "
                         f">= {spec.minimum} ({spec.means})")
    return value


def check_settings() -> None:
    """Check every setting now, so that a bad one stops before any benchmark runs."""
    for name in SETTINGS:
        setting(name)


def usage(doc: str) -> str:
    """``doc`` followed by the settings and their defaults: what ``--help`` prints."""
    lines = [doc.strip(), "", "Environment (defaults in brackets):"]
    lines += [f"  {name:<22} {spec.means} [{spec.default}]" for name, spec in SETTINGS.items()]
    return "\n".join(lines)


def standalone(doc: str | None) -> None:
    """Start of ``python -m bench.bench_x``: answer ``--help``, refuse arguments, check settings."""
    arguments = sys.argv[1:]
    if any(argument in ("-h", "--help") for argument in arguments):
        print(usage(doc or ""))
        raise SystemExit(0)
    if arguments:
        raise SystemExit(f"bench: error: unexpected argument(s) {' '.join(arguments)} "
                         f"(settings are environment variables: see --help)")
    check_settings()
