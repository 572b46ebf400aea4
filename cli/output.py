"""Output helpers shared by every command: JSON documents, human text, progress, time."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ledger.json_view import json_view


def emit_json(document: Any) -> None:
    """Print exactly one JSON document on stdout (keys sorted, so output is stable).

    Every value goes through :func:`ledger.json_view.json_view` here (callers need not), so no
    command can print a ``NaN`` literal — valid to Python's parser, an error to every strict
    one.
    """
    click.echo(json.dumps(json_view(document), indent=2, sort_keys=True, ensure_ascii=False,
                          allow_nan=False))


def iso_time(t_ns: int | None) -> str | None:
    """A wall-clock time in nanoseconds as RFC 3339 UTC (``None`` stays ``None``).

    A value that is no such time — a tampered row can hold text or a number out of range — is
    shown as ``invalid (…)`` rather than stopping the listing (verify names the tampering).
    """
    if t_ns is None:
        return None
    try:
        shown = datetime.fromtimestamp(t_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        shown = None
    if shown is None or type(t_ns) is not int:
        return f"invalid ({str(t_ns)[:40]!r})"
    return shown.replace("+00:00", "Z")


def json_option(function):  # noqa: ANN001, ANN201 - click decorator
    """The shared ``--json`` flag of every command that shows data."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of text.")(function)


class Progress:
    """A one-line progress counter on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}: {done:,} events", err=True, nl=False)

    def finish(self) -> None:
        """Clear the progress line."""
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)
