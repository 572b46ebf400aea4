"""Entry point of the ``ledger`` command: the click group and the one place errors become exits.

Exit codes (DESIGN §5), the same for every command:
  0  ok / certified / identical
  1  a check failed (tampered chain, divergence, runs differ)
  2  bad usage, unknown experiment, unreadable or foreign database, malformed file
  3  cannot replay (missing data or code, import refused, a draw its params cannot re-execute)
  130 / 141  interrupted (Ctrl-C) / the reader of stdout went away (128 + the signal)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from cli import _aborted_while_starting
from cli.output import (emit_json, error_document, forget_json_request, json_requested,
                        note_json_request)
from ledger import __version__
from ledger.errors import LedgerError
from ledger.text import escape_unprintable, quoted

EXIT_CODES_HELP = """\b
Exit codes (the same for every command):
  0  ok / certified / identical
  1  a check failed (tampered chain, divergence, runs differ)
  2  bad usage, unknown experiment, malformed id or file, unreadable or foreign database
  3  cannot replay (missing data or code, import refused, a draw its params cannot re-execute)
  130  interrupted (Ctrl-C)
  141  the reader of the output went away before all of it was written"""


DB_HELP = "Ledger database URL [default: sqlite:///ledger.db in the current folder]."


class _OneUrl(click.types.StringParamType):
    """A ``--db`` URL. The option takes every occurrence (``multiple``), so that a second one
    naming another ledger is refused rather than the last silently chosen; ``LEDGER_URL`` holds
    one URL, never split (a SQLite path may hold spaces)."""

    def split_envvar_value(self, rv: str) -> list[str]:
        """``LEDGER_URL`` whole, as one URL."""
        return [rv]


def one_db(given: tuple[str, ...], where: str = "", option: str = "--db") -> str | None:
    """The one ledger the ``option`` (``--db``, ``--db-b``) occurrences ``given`` name (None for
    none); two different ones are refused (usage error, exit 2), and so is an empty one
    (``--db "$URL"`` with URL unset), which would otherwise fall back to LEDGER_URL or the
    current folder's ledger.db unseen."""
    check_db_url(given, option)
    if len(set(given)) > 1:
        raise click.UsageError(f"got {option} twice{where}, naming two ledgers: give it once")
    return given[0] if given else None


class OnceOption(click.Option):
    """A single-valued option that names one thing — a file, folder, key, id, a statement of the
    report — and so is given once: twice with different values is refused (usage error, exit 2),
    where click silently kept the last (``report -o a.html … -o b.html`` wrote only b.html).
    The same value twice is taken — for a path option (type ``click.Path``), the same path
    however spelt (``-o a.html -o ./a.html``): see :meth:`same_as`. Use as
    ``@click.option(..., cls=OnceOption)``; not for flags or ``multiple`` options. ``--db`` and
    ``--db-b``, which also refuse an empty URL and, for ``--db``, one before and one after the
    command, collect theirs with ``multiple`` instead."""

    def __init__(self, *args: Any, path_like: bool = False, **attrs: Any) -> None:
        """``path_like``: the value names files though its type is text (``keygen --out``
        PREFIX), so it is compared as a path is, a trailing slash apart (:meth:`same_as`)."""
        self.path_like = path_like
        super().__init__(*args, **attrs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        """Let the parser collect every occurrence, for :meth:`consume_value` to check."""
        if self.is_flag or self.multiple or self.count:
            raise TypeError(f"OnceOption is for single-valued options, not {self.opts[0]}")
        parser.add_option(obj=self, opts=self.opts, dest=self.name, action="append",
                          nargs=self.nargs)

    def consume_value(self, ctx: click.Context, opts: Any) -> tuple[Any, Any]:
        """The one value given; two different ones are a usage error, and so is an empty one
        (``--bundle "$OUT"`` with OUT unset): a path option read it as the current folder —
        the bundle went there, a key was read from it ("Is a directory") — and any other
        silently took its default."""
        given = opts.get(self.name)
        if isinstance(given, list) and "" in given and self.callback is not refuse_empty_folder:
            raise click.UsageError(f"got an empty {max(self.opts, key=len)}: give a value, or "
                                   f"leave the option out")
        if isinstance(given, list):
            distinct: dict[Any, Any] = {}
            for value in given:  # the first spelling of each is the one taken
                distinct.setdefault(self.same_as(value), value)
            values = list(distinct.values())
            if len(values) > 1:
                name = max(self.opts, key=len)
                raise click.UsageError(f"got {name} twice, {quoted(values[0])} and "
                                       f"{quoted(values[1])}: give it once")
            opts = {**opts, self.name: values[0]}
        return super().consume_value(ctx, opts)

    def same_as(self, value: Any) -> Any:
        """What two occurrences of the option are compared by: a path option's path made
        absolute, so ``a.html``, ``./a.html`` and ``$PWD/a.html`` — one file — are one value;
        any other value as given. Only lexically (``..`` and symlinks are left as they are):
        ``link/../a`` need not be ``a``, and a link and its target are two names, which the
        report treats apart."""
        if isinstance(self.type, click.Path) and isinstance(value, str) and value:
            return Path(value).absolute()
        if self.path_like and isinstance(value, str) and value:
            # a prefix: "k/" (k/.key) is not "k" (k.key), though both are the path k
            return Path(value).absolute(), value.endswith(("/", os.sep))
        return value


class NonEmptyPath(click.Path):
    """A path type that refuses an empty value (``ledger verify-report "$REPORT"`` with REPORT
    unset) — click reads it as the current folder, and the error that followed named a file
    descriptor ("Is a directory: 3"), not the argument — and, where a file is wanted, one
    ending in a slash: ``report -o out/`` wrote a file named ``out``, the slash dropped."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        """The path, or a usage error for an empty one or a folder's given for a file."""
        if isinstance(value, str) and not value:
            self.fail("got an empty path: name a file", param, ctx)
        if isinstance(value, str) and not self.dir_okay and value.endswith(("/", os.sep)):
            self.fail(f"got {quoted(value)}, which names a folder (it ends in /), but a file is "
                      f"wanted: give its name", param, ctx)
        return super().convert(value, param, ctx)


class WholeNumber(click.IntRange):
    """A numeric option's type: a whole number within bounds. A value that is none, or out of
    bounds, is refused saying what the option takes ("got 'abc', but must be a whole number
    from 0 to 64"), where click said "'abc' is not a valid integer range", naming no range."""

    name = "integer"  # the metavar in --help: INTEGER, not click's INTEGER RANGE

    def __init__(self, min: int | None = None, max: int | None = None) -> None:  # noqa: A002
        super().__init__(min=min, max=max)

    def _describe_range(self) -> str:
        """The bounds as --help shows them beside the default ("1 or more", not "x>=1")."""
        return self.takes().removeprefix("a whole number").lstrip(", ")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        """``value`` as an int within bounds; otherwise a usage error saying what is taken."""
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"got {quoted(value)}, but must be {self.takes()}", param, ctx)

    def takes(self) -> str:
        """What the option takes, in words: "a whole number from 1 to 100", "… 1 or more"."""
        if self.min is not None and self.max is not None:
            return f"a whole number from {self.min} to {_bound(self.max)}"
        if self.min is not None:
            return f"a whole number, {self.min} or more"
        if self.max is not None:
            return f"a whole number, {_bound(self.max)} or less"
        return "a whole number"


def _bound(number: int) -> str:
    """``number`` as a reader takes it in: 2**128 - 1 rather than its 39 digits."""
    bits = (number + 1).bit_length() - 1
    return f"2**{bits} - 1" if bits >= 32 and number + 1 == 2 ** bits else str(number)


class _LedgerGroup(click.Group):
    """The command group; a Ctrl-C while a command works is click's Abort without the blank
    line click writes first (to close a terminal's ``^C`` echo): on a stderr that is no
    terminal, a log or a pipe, that line came before ``ledger: aborted``, two lines where one
    is promised. On a terminal the line break is kept."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a KeyboardInterrupt ends it as click's Abort (exit 130)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if sys.stderr.isatty():
                click.echo(err=True)
            raise click.exceptions.Abort() from None


@click.group(cls=_LedgerGroup, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", metavar="URL", envvar="LEDGER_URL", show_envvar=True,
              multiple=True, type=_OneUrl(), help=DB_HELP)
@click.version_option(__version__, prog_name="ledger")
@click.pass_context
def cli(context: click.Context, db_url: tuple[str, ...]) -> None:
    """Reproducibility Ledger: record every random draw of a training run, verify, replay."""
    named = context.get_parameter_source("db_url") is click.core.ParameterSource.COMMANDLINE
    context.obj = {"db_url": one_db(db_url), "db_named": named}


def check_db_url(given: tuple[str, ...] | str | None, option: str) -> None:
    """Refuse an empty URL given to ``option`` (usage error, exit 2): it names no ledger."""
    for url in (given,) if isinstance(given, str) else given or ():
        if not url:
            raise click.UsageError(f"got an empty {option}: give a database URL, e.g. "
                                   f"sqlite:///ledger.db")


def check_module_names(_context: click.Context, _parameter: click.Parameter,
                       names: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse a ``--trust`` that names no module (``--trust 'a b'``, ``--trust ''``) or names a
    file (``--trust my_ops.py``): a usage error, exit 2, before anything runs — it was exit 3
    from ``replay`` (as if the ledger could not be replayed) and, from ``report --replay``, a
    report written with the replay INCONCLUSIVE and exit 0."""
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise click.UsageError(f"got --trust {quoted(name)}, but it takes a dotted module "
                                   f"name, as in --trust my_ops or --trust lab.replay_ops")
        if name.endswith(".py"):  # a file name: importing it ran my_ops, then failed on "py"
            raise click.UsageError(f"got --trust {quoted(name)}, a file name, but it takes the "
                                   f"module's name: --trust {name[:-3]}")
    return names


def refuse_empty_folder(_context: click.Context, parameter: click.Parameter,
                        value: str | None) -> str | None:
    """Refuse an empty folder option (``--data-dir "$DIR"`` with DIR unset): usage error,
    exit 2. It was taken for no option at all, so the default folder was read or written
    unseen, where an empty ``--db`` is refused for naming no ledger."""
    if value is not None and not str(value):
        raise click.UsageError(f"got an empty {parameter.opts[0]}: give a folder (\".\" for the "
                               f"current one), or leave it out for the default")
    return value


def _db_after_command(context: click.Context, _param: click.Parameter, given: tuple[str, ...]
                      ) -> None:
    """``--db`` given after the command name: it names the ledger as it would before it (and
    wins over LEDGER_URL); two different ones are refused rather than one silently chosen."""
    value = one_db(given, " after the command")
    if value is None:
        return
    obj = context.ensure_object(dict)
    if obj.get("db_named") and obj.get("db_url") != value:
        raise click.UsageError(f"got --db twice, before and after the command, naming two "
                               f"ledgers: give it once")
    obj["db_url"], obj["db_named"] = value, True


def refuse_unread_db(obj: dict, why: str) -> None:
    """Refuse ``--db`` named on the command line where nothing reads a ledger (``why`` says
    what would): an auditor would believe the ledger was checked. LEDGER_URL, set for every
    command, is not refused."""
    if obj.get("db_named"):
        raise click.UsageError(f"--db names a ledger, but {why}")


def db_option(function):  # noqa: ANN001, ANN201 - click decorator
    """``--db URL`` on a command that opens the ledger, so that ``ledger verify EXP --db URL``
    works as ``ledger --db URL verify EXP`` does."""
    return click.option("--db", metavar="URL", expose_value=False, callback=_db_after_command,
                        multiple=True, help=DB_HELP)(function)


BROKEN_PIPE_EXIT = 141
"""Exit code when the reader of stdout closed it early: 128 + SIGPIPE, as a shell reports a
command that SIGPIPE stopped — apart from 1, which says a check failed."""


class ReaderGone(Exception):
    """The reader of stdout closed it early. Not an OSError, so that click does not turn it
    into exit 0 — which after a failed check would read as success."""


class OutputFailed(LedgerError):
    """stdout refused a write other than by a closed pipe — a full disk (``> /dev/full``), an
    I/O error: the command's output is lost, exit 2 naming why. The machine's failure, not an
    internal error of the ledger, as it was shown."""


HELD_OUTPUT_BYTES = 64 * 1024
"""Output held before it is written when stdout is no terminal: a pipe's capacity on Linux."""


class _GuardedStdout:
    """``sys.stdout`` whose writes raise :class:`ReaderGone` on a broken pipe.

    Text is encoded here and written to the binary layer until every byte is taken: with
    ``PYTHONUNBUFFERED`` that layer is the raw file, whose short write (the reader left
    mid-write) the text layer would silently drop — output cut, exit 0.

    Into a pipe or a file, output is held (up to HELD_OUTPUT_BYTES) and written at once when
    the command ends — or before anything goes to stderr, so that the two keep their order —
    since ``click.echo`` writes and flushes line by line: ``ledger show EXP | head -1`` ended
    141 or 0 by how the reader's exit fell between two lines, though the pipe took the whole
    output. A command that reports progress on stdout (``ledger demo``) streams it instead
    (:func:`stream_output`), and a forked child writes its own output as it comes (what the
    parent held is the parent's to write).
    """

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.written = False
        self._held = bytearray()
        self._holding = not _is_terminal(wrapped)
        self.failure: ReaderGone | OutputFailed | None = None
        """A write to the pipe that failed while something else was written (to stderr):
        raised again by the command's last :meth:`push`."""

    def write(self, text: str) -> int:
        """Write all of ``text`` (encoded as the stream would) or raise ReaderGone."""
        self.write_bytes(text.encode(self._wrapped.encoding, self._wrapped.errors))
        return len(text)

    def write_bytes(self, data: bytes) -> None:
        """Write all of ``data`` to the binary layer (also a report, as it is signed), or raise
        ReaderGone; into a pipe or a file, hold it while the held output is small."""
        self.written = self.written or bool(data)
        if self._holding:
            self._held += data
            if len(self._held) >= HELD_OUTPUT_BYTES:
                self.push()
            return
        self._write_through(data)

    def _write_through(self, data: bytes | bytearray) -> None:
        try:
            self._wrapped.flush()
            view = memoryview(data)
            while view:
                view = view[self._wrapped.buffer.write(view) or 0:]
            self._wrapped.buffer.flush()
        except BrokenPipeError:
            raise ReaderGone from None
        except OSError as error:
            raise _output_failed(error) from None

    def push(self) -> None:
        """Write the held output now, or raise ReaderGone (or OutputFailed) — also a failure
        met earlier while pushing it before a write to stderr."""
        if self.failure is not None:
            raise self.failure
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._write_through(held)

    def push_before_stderr(self) -> None:
        """Write the held output before a line goes to stderr; a failure is kept for the end
        of the command (see :attr:`failure`), where it decides the exit code."""
        if self.failure is None and self._held:
            try:
                self.push()
            except (ReaderGone, OutputFailed) as error:
                self.failure = error

    def stream(self) -> None:
        """Write what is held, and from now on every write as it comes."""
        self._holding = False
        self.push_before_stderr()

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's held output (the parent writes it) and write
        the child's own as it comes."""
        self._held = bytearray()
        self._holding = False

    def flush(self) -> None:
        """Flush both layers down to the file, or raise ReaderGone — unless output is held,
        which the command's end writes."""
        if self._holding:
            return
        try:
            self._wrapped.flush()
            self._wrapped.buffer.flush()
        except BrokenPipeError:
            raise ReaderGone from None
        except OSError as error:
            raise _output_failed(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class _OrderedStderr:
    """``sys.stderr`` that writes stdout's held output first, so that ``2>&1`` keeps the
    order in which the command wrote its lines."""

    def __init__(self, wrapped: Any, stdout: _GuardedStdout) -> None:
        self._wrapped = wrapped
        self._stdout = stdout

    def write(self, text: str) -> int:
        """Write ``text`` after stdout's held output."""
        self._stdout.push_before_stderr()
        return self._wrapped.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (OSError, ValueError):
        return False


def stream_output() -> None:
    """From now on write stdout as it comes rather than hold it to the command's end: for a
    command whose output reports progress (``ledger demo``)."""
    if isinstance(sys.stdout, _GuardedStdout):
        sys.stdout.stream()


def _drop_held_output_in_child() -> None:
    if isinstance(sys.stdout, _GuardedStdout):
        sys.stdout.after_fork_in_child()


os.register_at_fork(after_in_child=_drop_held_output_in_child)


def _output_failed(error: OSError) -> OutputFailed:
    """The one-line error of a write to stdout that failed with ``error``."""
    return OutputFailed(f"cannot write the output: {error.strerror or error}")


def _register_commands() -> None:
    from cli import commands  # noqa: F401 - importing registers the commands on `cli`


def _reopen_closed_streams() -> None:
    """Point a standard stream whose descriptor is closed (``ledger verify 2>&-``, a job
    started without one) at the null device. Python makes such a stream None, and the first
    write or ``isatty`` failed: ``verify`` of a ledger that verifies exited 2, and with stdout
    closed every command ended in a traceback (exit 120). Now the command runs and exits with
    its own code, its output lost as any output to a closed descriptor is."""
    for name, descriptor in (("stdout", 1), ("stderr", 2)):
        if getattr(sys, name) is not None:
            continue
        opened = os.open(os.devnull, os.O_WRONLY)  # takes the lowest free descriptor: this one
        if opened != descriptor:
            os.dup2(opened, descriptor)
            os.close(opened)
        setattr(sys, name, open(descriptor, "w", encoding="utf-8", closefd=False))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error ends as one line on stderr and its documented exit code."""
    _reopen_closed_streams()
    for stream in (sys.stdout, sys.stderr):  # text from a hostile ledger must not stop output
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    # SQLAlchemy logs a failed connection reset with its traceback, psycopg a query a server
    # did not cancel on Ctrl-C; the error itself reaches the user as one line below
    # (LEDGER_DEBUG shows the log).
    if not os.environ.get("LEDGER_DEBUG"):
        for name in ("sqlalchemy", "psycopg"):
            logging.getLogger(name).addHandler(logging.NullHandler())
            logging.getLogger(name).propagate = False
    _register_commands()
    forget_json_request()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = guarded = _GuardedStdout(stdout)
    sys.stderr = _OrderedStderr(stderr, guarded)
    try:
        if signal.getsignal(signal.SIGINT) is _aborted_while_starting:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is Abort now
        code = cli.main(args=argv, prog_name="ledger", standalone_mode=False)
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.exceptions.NoArgsIsHelpError as usage:
        click.echo(usage.ctx.get_help())  # `ledger` alone: the help on stdout, not an error line
        code = usage.exit_code
    except click.exceptions.Abort:
        click.echo("ledger: aborted", err=True)
        code = 130
    except click.ClickException as error:
        if isinstance(error, click.UsageError) and _json_among(sys.argv[1:] if argv is None
                                                               else argv):
            note_json_request()  # refused while parsing, before --json's callback ran
        code = _failed(error, error.exit_code, f"error: {_one_line(error.format_message())}")
    except LedgerError as error:
        code = _failed(error, error.exit_code, f"error: {_one_line(str(error))}")
    except ReaderGone:  # `ledger list | head -1`: not a finding, and not a success either
        code = _reader_gone()
    except OSError as error:  # the machine's, not a bug of ours: see _os_error_text
        problem = LedgerError(_os_error_text(error))
        code = _failed(problem, problem.exit_code, f"error: {_one_line(str(problem))}")
    except BaseException as error:  # never a traceback for users; LEDGER_DEBUG=1 shows it
        # BaseException: trusted code (a --trust module, a plug-in's op) may raise one that is
        # no Exception; Ctrl-C reaches here as click's Abort, so a KeyboardInterrupt is not ours.
        if os.environ.get("LEDGER_DEBUG") or isinstance(error, KeyboardInterrupt):
            raise
        code = _failed(error, 2, f"internal error: {type(error).__name__}: "
                                 f"{_one_line(str(error))} (set LEDGER_DEBUG=1 for a traceback)")
    try:
        guarded.push()  # here, not at interpreter exit, so that a closed pipe is seen
        guarded.flush()
    except ReaderGone:
        code = _reader_gone()
    except OutputFailed as error:
        guarded.failure = None  # nothing more is written to stdout
        if not code:  # else the command's own error line has said why it failed: one line
            code = _failed(error, error.exit_code, f"error: {error}")
        _reader_gone()  # what is left unwritten must not fail again at exit
    sys.stdout, sys.stderr = stdout, stderr
    sys.exit(code if isinstance(code, int) else 0)


def _os_error_text(error: OSError) -> str:
    """An operating-system error no command translated — a path given as ``--db``, ``-o``,
    ``--bundle`` or ``keygen --out`` longer than the file system takes, say — as the one error
    line of exit 2: what failed and on which file (its name cut short). It was an internal
    error, a bug by its words, whose line repeated the whole path however long."""
    text = error.strerror or type(error).__name__
    return f"{text}: {quoted(error.filename)}" if error.filename is not None else text


def _json_among(tokens: list[str]) -> bool:
    """Whether ``tokens`` give ``--json`` (before any ``--``) to a command that takes it: a
    usage error found while parsing (an unknown option, before or after ``--json``) gets the
    error document too — as does ``--json`` before the command (``ledger --json list``, which
    is refused) and an unknown command given ``--json`` (``ledger lst --json``): a script
    expecting one document would otherwise read an empty stdout."""
    given = tokens[:tokens.index("--")] if "--" in tokens else tokens
    for token in given:
        command = cli.commands.get(token)
        if command is not None:
            return (any("--json" in parameter.opts for parameter in command.params)
                    and "--json" in given)
    return "--json" in given


def _failed(error: BaseException, code: int, line: str) -> int:
    """Report ``error``: one line on stderr and, for a ``--json`` command that printed nothing
    yet, its error document on stdout (see :func:`cli.output.error_document`); return
    ``code``. A closed stdout loses the document, not the exit code."""
    click.echo(f"ledger: {line}", err=True)
    if json_requested() and not getattr(sys.stdout, "written", True):
        try:
            emit_json(error_document(error, code, line.split(": ", 1)[-1]))
        except ReaderGone:
            _reader_gone()
    return code


def _reader_gone() -> int:
    """Point stdout at the null device (what is left unwritten has no reader, and flushing it
    at exit must not fail again); return the exit code of a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return BROKEN_PIPE_EXIT


def _one_line(text: str) -> str:
    """``text`` on one line, anything unprintable (say, bytes a driver quotes) escaped."""
    return escape_unprintable(" ".join(text.split()))
