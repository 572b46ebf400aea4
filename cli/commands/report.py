"""``ledger report``: export the compliance report of one experiment."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TextIO

import click

from cli.display import printable
from cli.main import (NonEmptyPath, OnceOption, WholeNumber, check_module_names, cli,
                      db_option, refuse_empty_folder)
from cli.output import (emit_json, json_option, options_given,
                        refuse_take_over_without_record, trusted_output_to_stderr)
from ledger.errors import BadInputError
from ledger.store import Store
from report.export import FORMATS, export_report
from report.governance import RETENTION_CLASSES
from report.model import ReportOptions
from report.signing import load_private_key


def _date(_context: click.Context, _parameter: click.Parameter, value: str | None
          ) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"got {value!r}, but must be a date YYYY-MM-DD") from None


@cli.command("report", epilog="Exit codes: 0 the report was written — also for an incomplete, "
                              "failed, tampered or diverged run, which the report states "
                              "prominently; 2 unknown experiment, bad option, unreadable key or "
                              "database, a file that cannot be written, or a ledger this "
                              "connection cannot record the export in (see --no-record).")
@click.argument("exp")
@click.option("--format", "fmt", cls=OnceOption, type=click.Choice(FORMATS), default=None,
              help="Format written to -o FILE or stdout (a bundle has all three) [default: "
                   "html for -o FILE.html or .htm, md for .md or .markdown, otherwise json].")
@click.option("-o", "--output", cls=OnceOption, type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="Write the report to FILE instead of stdout.")
@click.option("--bundle", cls=OnceOption,
              type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write JSON, HTML, Markdown, the per-event appendix, the two in-toto "
                   "attestations, the signature and SHA256SUMS to DIR (new or empty).")
@click.option("--appendix", cls=OnceOption,
              type=NonEmptyPath(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the per-event NDJSON appendix to FILE (a bundle always has it).")
@click.option("--full-appendix", is_flag=True,
              help="Put each event's whole body (JSON view) in the appendix lines (with "
                   "--appendix or --bundle).")
@click.option("--replay", "run_replay", is_flag=True,
              help="Replay the run first and put its certificate in R8 (otherwise R8 quotes "
                   "the last recorded replay).")
@click.option("--jobs", "-j", type=WholeNumber(min=1), default=1, show_default=True,
              help="Processes for --replay (at most the usable cores).")
@click.option("--trust", "trusted", multiple=True, metavar="MODULE", callback=check_module_names,
              help="Module --replay may import for custom ops, loaders or draws (repeatable).")
@click.option("--data-dir", cls=OnceOption,
              type=click.Path(file_okay=False), callback=refuse_empty_folder,
              default=None,
              help="Folder of the run's stored datasets, for --replay and the train/test "
                   "independence check [default: $LEDGER_DATA_DIR or ledger-data/ beside "
                   "an SQLite ledger].")
@click.option("--sign-key", cls=OnceOption,
              type=NonEmptyPath(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign with this Ed25519 private key (from `ledger keygen`): writes "
                   "REPORT.json.sig beside the JSON report.")
@click.option("--responsible", cls=OnceOption,
              metavar="NAME", help="Responsible person named in R13 sign-off.")
@click.option("--role", cls=OnceOption,
              metavar="ROLE", help="Role of the responsible person (R13).")
@click.option("--generated-by", cls=OnceOption, metavar="WHO",
              help="Who generated the report (R0) [default: user@host].")
@click.option("--retention-class", cls=OnceOption, type=click.Choice(sorted(RETENTION_CLASSES)),
              default="technical-documentation", show_default=True,
              help="Retention class of R11 (10 years for technical documentation, 6 months "
                   "for logs).")
@click.option("--retain-years", cls=OnceOption, type=WholeNumber(min=1, max=100), default=None,
              help="Keep for this many years instead of the class default.")
@click.option("--retain-from", cls=OnceOption, callback=_date, metavar="YYYY-MM-DD",
              help="Start of the retention period [default: the report's date].")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record this export (and a --replay) in the experiment's audit stream.")
@click.option("--take-over", is_flag=True,
              help="Take the experiment's audit stream from a writer that is gone (a replay or "
                   "report killed on another machine holds it until taken over).")
@db_option
@json_option
@click.pass_obj
def report_command(obj: dict, exp: str, fmt: str | None, output: Path | None, bundle: Path | None,
                   appendix: Path | None, full_appendix: bool, run_replay: bool, jobs: int,
                   trusted: tuple[str, ...], data_dir: str | None, sign_key: Path | None,
                   responsible: str | None, role: str | None, generated_by: str | None,
                   retention_class: str, retain_years: int | None, retain_from: date | None,
                   record: bool, take_over: bool, as_json: bool) -> None:
    """Export the compliance report of EXP (sections R0–R14 of REPORT.md).

    Builds one report from the ledger — run identity, code, environment, data, configuration,
    the randomness inventory with its seed tree, the replay certificate, full chain
    verification, history, retention, non-claims, sign-off and the crosswalk to the
    frameworks — and writes it as JSON (schemas/report.v1.json), self-contained HTML or
    Markdown. Without -o or --bundle the report goes to stdout.
    """
    if bundle is not None and output is not None:
        raise BadInputError("give -o FILE or --bundle DIR, not both")
    if bundle is not None and fmt is not None:  # ignored, it would promise one format only
        raise BadInputError(f"--format chooses the one format of -o FILE or stdout, but a "
                            f"bundle holds JSON, HTML and Markdown: drop --format {fmt}")
    fmt = fmt or format_for(output)
    if responsible is not None and not responsible.strip():
        raise BadInputError("got a blank --responsible, which would sign R13 off in no one's "
                            "name: give the person's name, or leave the option out")
    if generated_by is not None and not generated_by.strip():
        raise BadInputError("got a blank --generated-by, which would name no one as the "
                            "report's author in R0: give a name, or leave the option out for "
                            "user@host")
    if role is not None and not responsible:  # R13 names a role only with its person
        raise BadInputError("--role is the role of the person --responsible NAME names in R13: "
                            "give --responsible too, or leave --role out")
    if bundle is not None and appendix is not None:
        raise BadInputError("a bundle always holds the appendix: drop --appendix")
    refuse_take_over_without_record(record, take_over)
    _refuse_idle_options(click.get_current_context(), run_replay=run_replay,
                         appendix_written=bundle is not None or appendix is not None,
                         full_appendix=full_appendix)
    if as_json and output is None and bundle is None and fmt != "json":
        raise BadInputError(f"--json prints the JSON report or, with -o/--bundle, a summary "
                            f"of the files: it cannot go with --format {fmt} on stdout")
    key = load_private_key(sign_key) if sign_key is not None else None
    options = ReportOptions(replay=run_replay, jobs=jobs, trusted=trusted, data_dir=data_dir,
                            record=record, take_over=take_over, generated_by=generated_by,
                            responsible=responsible, role=role,
                            retention_class=retention_class,
                            retain_months=None if retain_years is None else 12 * retain_years,
                            retain_from=retain_from, full_appendix=full_appendix)
    stdout = sys.stdout  # the report's; what a --replay's trusted code prints goes to stderr
    with trusted_output_to_stderr() as redirection, Store.open(obj["db_url"]) as store:
        store.bounded_writes = True  # its record waits for a lock no longer than a read

        def deliver(data: bytes) -> None:
            with redirection.to_stdout():
                _write_stdout(stdout, data)

        result = export_report(store, exp, options, fmt=fmt, output=output, bundle=bundle,
                               appendix=appendix, key=key, deliver=deliver)
    summary = result.report["summary"]
    if result.stdout is not None:
        for path in result.written:
            click.echo(printable(f"ledger: wrote {path.path}"), err=True)
        if summary["attention"]:
            click.echo(printable(f"ledger: note: {summary['headline']} (see the report's alerts)"),
                       err=True)
        return
    if as_json:
        emit_json({"report_id": result.report["R0"]["report_id"], "exp": exp,
                   "summary": summary, "report_sha256": result.report_sha256,
                   "files": [{"path": str(w.path), "role": w.role, "sha256": w.sha256}
                             for w in result.written]})
        return
    click.echo(printable(f"REPORT {result.report['R0']['report_id']}: {summary['headline']}"))
    for alert in summary["alerts"]:
        click.echo(printable(f"  ! {alert}"))
    for written in result.written:
        click.echo(printable(f"  wrote {written.path}  ({written.role}, sha256 "
                             f"{written.sha256[:16]}…)"))


def _refuse_idle_options(context: click.Context, *, run_replay: bool, appendix_written: bool,
                         full_appendix: bool) -> None:
    """BadInputError for an option that would change nothing: ``--jobs`` or ``--trust``
    without ``--replay`` (only a replay runs processes or imports modules), and
    ``--full-appendix`` when no appendix is written. Ignored, an auditor would believe the
    report was made with them; refused when given at all, default value or not, as ``replay
    --full`` refuses ``--jobs``."""
    if not run_replay:
        given = options_given(context, {"--jobs": "jobs", "--trust": "trusted"})
        if given:
            one = len(given) == 1
            raise BadInputError(f"{' and '.join(given)} {'is' if one else 'are'} for --replay "
                                f"only: give --replay too, or leave {'it' if one else 'them'} "
                                f"out")
    if full_appendix and not appendix_written:
        raise BadInputError("--full-appendix needs an appendix to put the bodies in: give "
                            "--appendix FILE or --bundle DIR")


SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}
"""The format ``-o FILE`` implies by its suffix when ``--format`` is not given."""


def format_for(output: Path | None) -> str:
    """The report format for ``-o output`` without ``--format``: by the file's suffix (case
    ignored), JSON for any other suffix and for stdout — so ``-o report.html`` never holds
    JSON."""
    if output is None:
        return "json"
    return SUFFIX_FORMATS.get(output.suffix.lower(), "json")


def _write_stdout(stdout: TextIO, data: bytes) -> None:
    """The report's bytes to ``stdout``, whole and flushed (its export is recorded next), or
    ReaderGone (exit 141) when the reader left."""
    write_bytes = getattr(stdout, "write_bytes", None)  # the CLI's guarded stdout
    if write_bytes is not None:
        write_bytes(data)
    else:
        stdout.buffer.write(data)
    stdout.flush()
