"""Output helpers shared by every command: JSON documents, human text, progress, time."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from cli.display import counted
from ledger.errors import (BadInputError, CannotReplayError, CheckFailedError, LedgerError,
                           StoreError, UnknownExperimentError)
from ledger.json_view import json_view
from ledger.times import utc_text


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
    if type(t_ns) is not int:
        return f"invalid ({str(t_ns)[:40]!r})"
    try:
        return utc_text(t_ns)
    except OverflowError:
        return f"invalid ({str(t_ns)[:40]!r})"


class _JsonRequest:
    """Whether the running command was given ``--json``: then an error it ends with is printed
    as a JSON document on stdout too (see :func:`error_document`)."""

    given = False


def json_requested() -> bool:
    """True when the command being run was given ``--json``."""
    return _JsonRequest.given


def forget_json_request() -> None:
    """Start a command's run with no ``--json`` seen."""
    _JsonRequest.given = False


def note_json_request() -> None:
    """Remember that the running command was given ``--json``."""
    _JsonRequest.given = True


def _note_json(_context: click.Context, _parameter: click.Parameter, value: bool) -> bool:
    if value:
        note_json_request()
    return value


def json_option(function):  # noqa: ANN001, ANN201 - click decorator
    """The shared ``--json`` flag of every command that shows data."""
    return click.option("--json", "as_json", is_flag=True, callback=_note_json,
                        help="Print one JSON document on stdout instead of text (also when "
                             "the command fails: then an error document).")(function)


_ERROR_KINDS = ((UnknownExperimentError, "unknown_experiment"), (CheckFailedError, "check_failed"),
                (CannotReplayError, "cannot_replay"), (StoreError, "store"),
                (BadInputError, "bad_input"), (LedgerError, "error"),
                (click.ClickException, "usage"))


def error_document(error: BaseException, exit_code: int, message: str) -> dict[str, Any]:
    """The JSON document a ``--json`` command prints on stdout when it fails before printing
    its own (schemas/cli-error.v1.json): so that a machine reading stdout always gets exactly
    one document, and tells the failure by ``error.kind`` and ``error.exit_code``. The same
    message goes to stderr as one line."""
    kind = next((name for cls, name in _ERROR_KINDS if isinstance(error, cls)), "internal")
    return {"error": {"exit_code": exit_code, "kind": kind, "message": message}}


class Progress:
    """A one-line progress counter on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}: {counted(done, 'event')}", err=True, nl=False)

    def finish(self) -> None:
        """Clear the progress line."""
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)


class TrustedOutput:
    """The redirection :func:`trusted_output_to_stderr` holds; the command's own output written
    within it goes through :meth:`to_stdout`."""

    def __init__(self, saved: int | None) -> None:
        self._saved = saved
        """A copy of the descriptor 1 the command started with (None: nothing redirected)."""

    @contextlib.contextmanager
    def to_stdout(self) -> Iterator[None]:
        """Descriptor 1 on the real stdout again while the command writes its own output (the
        report ``ledger report`` delivers once its replay is done)."""
        if self._saved is None:
            yield
            return
        _flush_stray_output()
        os.dup2(self._saved, 1)
        try:
            yield
        finally:
            os.dup2(2, 1)

    def restore(self) -> None:
        """Descriptor 1 back on the real stdout for good, what trusted code left in buffers
        written to stderr first."""
        if self._saved is not None:
            _flush_stray_output()
            os.dup2(self._saved, 1)
            os.close(self._saved)
            self._saved = None


@contextlib.contextmanager
def trusted_output_to_stderr() -> Iterator[TrustedOutput]:
    """What trusted code prints while it runs — a ``--trust`` module as it is imported, a
    ``--full`` job as it trains — goes to stderr: stdout holds the command's output alone, with
    ``--json`` exactly one document (and ``ledger report`` on stdout, the report alone).

    ``sys.stdout`` and file descriptor 1 both point at stderr meanwhile: code writing to the
    descriptor (``os.write(1, …)``, a C library's ``printf``) got its bytes before the
    document. Output of the command's own within the block goes through
    :meth:`TrustedOutput.to_stdout`.
    """
    sys.stdout.flush()
    redirection = TrustedOutput(_descriptor_1_to_stderr())
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield redirection
    finally:
        redirection.restore()


def _descriptor_1_to_stderr() -> int | None:
    """Point descriptor 1 at stderr's; return a copy of the old one (None when either cannot
    be duplicated: nothing is redirected then)."""
    try:
        saved = os.dup(1)
    except OSError:
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


def _flush_stray_output() -> None:
    """Write out, while descriptor 1 still points at stderr, what trusted code left buffered
    for it: in ``sys.__stdout__`` and in C's stdio (``printf`` to a pipe is buffered) — else it
    would reach stdout later. C's is best effort where libc cannot be found."""
    with contextlib.suppress(OSError, ValueError):
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def options_given(context: click.Context, options: dict[str, str]) -> list[str]:
    """Which of ``options`` (flag → parameter name) the user gave, default value or not, in
    the order listed: for refusing options that would change nothing."""
    return [flag for flag, name in options.items()
            if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]


def refuse_take_over_without_record(record: bool, take_over: bool) -> None:
    """``--take-over`` takes the audit stream over to record in it: with ``--no-record``
    nothing is recorded, so it would be ignored — refused, as options that change nothing
    are."""
    if take_over and not record:
        raise BadInputError("--take-over takes the audit stream over to record in it: it cannot "
                            "go with --no-record")
