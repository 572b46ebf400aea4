"""Entry point of the ``ledger`` command: the click group and the one place errors become exits.

Exit codes (DESIGN §5), the same for every command:
  0  ok / certified / identical
  1  a check failed (tampered chain, divergence, runs differ)
  2  bad usage, unknown experiment, unreadable or foreign database, malformed file
  3  cannot replay (missing data or code, import refused, environment mismatch not allowed)
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ledger import __version__
from ledger.errors import LedgerError
from ledger.text import escape_unprintable

EXIT_CODES_HELP = """\b
Exit codes (the same for every command):
  0  ok / certified / identical
  1  a check failed (tampered chain, divergence, runs differ)
  2  bad usage, unknown experiment, unreadable or foreign database
  3  cannot replay (missing data or code, import refused)"""


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", metavar="URL", envvar="LEDGER_URL", show_envvar=True,
              help="Ledger database URL [default: sqlite:///ledger.db in the current folder].")
@click.version_option(__version__, prog_name="ledger")
@click.pass_context
def cli(context: click.Context, db_url: str | None) -> None:
    """Reproducibility Ledger: record every random draw of a training run, verify, replay."""
    context.obj = {"db_url": db_url}


_NO_COMMAND = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""Raised by click >= 8.2 when the group gets no command (older click prints help and exits)."""


def _register_commands() -> None:
    from cli import commands  # noqa: F401 - importing registers the commands on `cli`


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error ends as one line on stderr and its documented exit code."""
    for stream in (sys.stdout, sys.stderr):  # text from a hostile ledger must not stop output
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    # SQLAlchemy logs a failed connection reset with its traceback; the error itself reaches
    # the user as one line below (LEDGER_DEBUG shows the log).
    if not os.environ.get("LEDGER_DEBUG"):
        logging.getLogger("sqlalchemy").addHandler(logging.NullHandler())
        logging.getLogger("sqlalchemy").propagate = False
    _register_commands()
    try:
        code = cli.main(args=argv, prog_name="ledger", standalone_mode=False)
    except click.exceptions.Exit as done:
        code = done.exit_code
    except _NO_COMMAND as usage:  # `ledger` alone: the help on stdout, not a squashed error line
        click.echo(usage.ctx.get_help())
        code = usage.exit_code
    except click.exceptions.Abort:
        click.echo("ledger: aborted", err=True)
        code = 130
    except click.ClickException as error:
        click.echo(f"ledger: error: {_one_line(error.format_message())}", err=True)
        code = error.exit_code
    except LedgerError as error:
        click.echo(f"ledger: error: {_one_line(str(error))}", err=True)
        code = error.exit_code
    except BrokenPipeError:
        sys.stderr.close()
        code = 1
    except Exception as error:  # never a traceback for users; LEDGER_DEBUG=1 shows it
        if os.environ.get("LEDGER_DEBUG"):
            raise
        click.echo(f"ledger: internal error: {type(error).__name__}: {_one_line(str(error))} "
                   f"(set LEDGER_DEBUG=1 for a traceback)", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    """``text`` on one line, anything unprintable (say, bytes a driver quotes) escaped."""
    return escape_unprintable(" ".join(text.split()))
