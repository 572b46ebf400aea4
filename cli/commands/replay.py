"""``ledger replay``: re-execute a run's draws and certify it, or name the first divergence."""

from __future__ import annotations

import sys

import click

from cli.display import agreeing, counted, printable, short_value
from cli.main import (OnceOption, WholeNumber, check_module_names, cli, db_option,
                      refuse_empty_folder)
from cli.output import (emit_json, iso_time, json_option, options_given,
                        refuse_take_over_without_record, trusted_output_to_stderr)
from ledger.audit import require_audit_append
from ledger.errors import BadInputError, CheckFailedError, LedgerError, StoreError
from ledger.store import Store
from replay.causes import shown_version
from replay.diff import DiffReport
from replay.engine import ReplayReport, record_replay, replay_run
from replay.full import replay_full


class _Progress:
    """``replaying: 1,234 / 5,678 events`` on stderr while it runs, when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            click.echo(f"\rreplaying: {done:,} / {counted(total, 'event')}", err=True, nl=False)

    def finish(self) -> None:
        """Erase the progress line."""
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)


@cli.command("replay", epilog="Exit codes: 0 certified; 1 diverged, or the ledger fails "
                              "verification (not replayed); 2 unknown experiment, unreadable "
                              "database, or one this connection cannot record in (see "
                              "--no-record); 3 cannot replay (data or code missing, import not "
                              "allowed).")
@click.argument("exp")
@click.option("--jobs", "-j", type=WholeNumber(min=1), default=1, show_default=True,
              help="Processes that re-execute draws in parallel (at most the usable cores).")
@click.option("--trust", "trusted", multiple=True, metavar="MODULE", callback=check_module_names,
              help="Import MODULE so that the custom ops, loaders or draws it registers can "
                   "replay (repeatable). Nothing else named in a ledger is ever imported.")
@click.option("--data-dir", cls=OnceOption,
              type=click.Path(file_okay=False), callback=refuse_empty_folder,
              default=None,
              help="Folder of the run's stored datasets [default: $LEDGER_DATA_DIR, or "
                   "ledger-data/ beside an SQLite ledger].")
@click.option("--full", is_flag=True,
              help="Re-run the recorded job with its configuration and root seed into a scratch "
                   "ledger and compare the runs event by event, metrics and checkpoints "
                   "included.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record this replay's certificate in the experiment's audit stream (a --full "
                   "replay writes nothing to the audited ledger either way).")
@click.option("--take-over", is_flag=True,
              help="Take the experiment's audit stream from a writer that is gone (a replay or "
                   "report killed on another machine holds it until taken over).")
@db_option
@json_option
@click.pass_obj
def replay_command(obj: dict, exp: str, jobs: int, trusted: tuple[str, ...],
                   data_dir: str | None, full: bool, record: bool, take_over: bool,
                   as_json: bool) -> None:
    """Re-execute every recorded draw of EXP and compare digests, event by event.

    Verifies the ledger first (a tampered ledger is never replayed), re-loads each dataset and
    checks its digest, then re-derives every seed from the root seed and path and re-executes
    each draw from its recorded params. Prints CERTIFIED with counts per kind and the run's
    head, or DIVERGED with the first divergent event and its likely cause.
    """
    refuse_take_over_without_record(record, take_over)
    if full:
        _check_full_options(click.get_current_context())
        return _full(obj["db_url"], exp, trusted, as_json)
    progress = _Progress()
    with trusted_output_to_stderr(), Store.open(obj["db_url"]) as store:
        store.bounded_writes = True  # its record waits for a lock no longer than a read
        if record:  # asked first: a replay can run for hours, then could not record its verdict
            store.require_experiment(exp)
            require_audit_append(store, "this replay's certificate", exp, take_over=take_over)
        report = replay_run(store, exp, jobs=jobs, trusted=trusted, data_dir=data_dir,
                            on_progress=progress)
        if record:
            _record(store, report, take_over)
    progress.finish()
    if as_json:
        emit_json(report.to_json())
    else:
        _print(report)
    if not report.certified:
        assert report.first_divergence is not None  # set whenever a run is not certified
        click.echo(printable(f"ledger: replay diverged: {report.first_divergence.describe()}"),
                   err=True)
        raise click.exceptions.Exit(CheckFailedError.exit_code)


def _record(store: Store, report: ReplayReport, take_over: bool) -> None:
    """Record the verdict; when that fails (a full disk, a lock), say the verdict in the one
    error line rather than lose the replay's work without a word."""
    try:
        record_replay(store, report, take_over=take_over)
    except LedgerError as error:
        verdict = "CERTIFIED" if report.certified else "DIVERGED"
        raise StoreError(f"the replay of {report.exp} was {verdict} "
                         f"({counted(sum(report.compared.values()), 'draw')} compared), but its "
                         f"certificate could not be recorded: {error}") from None


def _check_full_options(context: click.Context) -> None:
    """Refuse options ``--full`` cannot honour rather than ignore them: its job re-runs in
    this process and makes its own data (so no --jobs, no --data-dir), and it records nothing
    in the audited ledger (so no --take-over). Refused when given at all, default value or not."""
    given = options_given(context, {"--jobs": "jobs", "--data-dir": "data_dir",
                                    "--take-over": "take_over"})
    if given:
        raise BadInputError(f"{' and '.join(given)} cannot be used with --full: it re-runs the "
                            f"recorded job in this process, where the job makes its own data, "
                            f"and records nothing in the audited ledger")


def _full(url: str | None, exp: str, trusted: tuple[str, ...], as_json: bool) -> None:
    with trusted_output_to_stderr(), Store.open(url) as store:
        report = replay_full(store, exp, trusted=trusted)
    if as_json:
        emit_json(report.to_json())
    elif report.certified:
        click.echo(f"CERTIFIED: {exp} re-ran as job {report.job} v{report.version} and is "
                   f"identical, metrics and checkpoints included "
                   f"({counted(report.diff.compared, 'event')} compared)")
    else:
        click.echo(f"DIVERGED: {exp} re-ran as job {report.job} v{report.version}")
        assert report.diff.first_divergence is not None  # set whenever runs differ
        click.echo(printable(f"  first divergence: {report.diff.first_divergence.describe()}"))
    if not as_json:
        _print_rerun_differences(report.diff)
    if not report.certified:
        assert report.diff.first_divergence is not None  # set whenever runs differ
        click.echo(printable(f"ledger: full replay diverged: "
                             f"{report.diff.first_divergence.describe()}"),
                   err=True)
        raise click.exceptions.Exit(CheckFailedError.exit_code)


def _print_rerun_differences(diff: DiffReport) -> None:
    """How the re-run's code version and environment differ from the recorded run's (a run
    recorded from a checkout at a commit, re-run from a wheel, which has none), below the
    verdict they do not change — as ``replay`` lists the environment's."""
    for what, rows in (("code", diff.code), ("environment", diff.environment)):
        if rows:
            click.echo(f"  {what} differs from the recorded one:")
            for key, recorded, now in rows:
                click.echo(printable(f"    {key}: {short_value(recorded)} recorded, "
                                     f"{short_value(now)} now"))


def _print(report: ReplayReport) -> None:
    head = report.head.hex() if report.head else "none (run incomplete)"
    so_far = ("" if report.head else " (run incomplete: the draws recorded so far)") + (
        " (the run failed: the draws it recorded before its error)"
        if report.status == "failed" else "")
    if report.certified:
        click.echo(f"CERTIFIED: {report.exp} reproduces draw for draw{so_far}")
    else:
        click.echo(f"DIVERGED: {report.exp}{so_far}")
        assert report.first_divergence is not None  # set whenever a run is not certified
        click.echo(printable(f"  first divergence: {report.first_divergence.describe()}"))
        click.echo(f"  {report.mismatched:,} of "
                   f"{counted(sum(report.compared.values()), 're-executed event')} "
                   f"{agreeing(report.mismatched, 'differs', 'differ')}")
    click.echo(f"  run head     {head}")
    click.echo("  re-executed  " + (", ".join(f"{kind} {count:,}" for kind, count
                                               in sorted(report.compared.items()))
                                    or "none (the run recorded no draw)"))
    if report.skipped:
        click.echo("  skipped      " + ", ".join(f"{kind} {count:,}" for kind, count
                                                  in sorted(report.skipped.items()))
                   + " (not re-executed: replay stops at a changed dataset)")
    if report.not_draws:
        click.echo("  not draws    " + ", ".join(f"{kind} {count:,}" for kind, count
                                                  in sorted(report.not_draws.items()))
                   + " (compared by --full)")
    click.echo(f"  replayed by  {report.replayed_by} at {iso_time(report.finished_t)}")
    if report.environment_differences:
        click.echo("  environment differs from the recorded one:")
        for key, old, new in report.environment_differences:
            click.echo(printable(f"    {key}: {shown_version(old)} recorded, "
                                 f"{shown_version(new)} now"))
