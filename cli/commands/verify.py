"""``ledger verify``: re-hash every chain and name the first bad event."""

from __future__ import annotations

import click

from cli.display import counted, printable
from cli.main import WholeNumber, cli, db_option
from cli.output import Progress, emit_json, json_option
from ledger.errors import CheckFailedError
from ledger.store import Store
from ledger.verify import INTACT_NOTE, verify


@cli.command("verify", epilog="Exit codes: 0 every chain verifies; 1 a chain is broken or "
                              "tampered; 2 unknown experiment or unreadable database.")
@click.argument("exp", required=False)
@click.option("--jobs", "-j", type=WholeNumber(min=1), default=None,
              help="Processes to verify with (at most the usable cores) [default: the number "
                   "of cores, for large ledgers].")
@db_option
@json_option
@click.pass_obj
def verify_command(obj: dict, exp: str | None, jobs: int | None, as_json: bool) -> None:
    """Re-hash every stored event of EXP (or of the whole ledger) and check every chain link.

    Checks that each body hashes to its stored hash, agrees with its indexed columns, that seq
    has no gap, that each prev is the hash before it, and that run_completed's recorded stream
    counts and heads match what is stored. Names the first bad event of each broken chain.
    """
    progress = Progress("verifying")
    with Store.open(obj["db_url"]) as store:
        report = verify(store, exp, on_progress=progress, jobs=jobs)
    progress.finish()
    if as_json:
        emit_json(report.to_json())
    else:
        status = "OK" if report.ok else "FAILED"
        intact = "" if report.ok else f"; {report.intact:,} {INTACT_NOTE}"
        click.echo(f"{status}: {counted(report.events, 'event')} in "
                   f"{counted(report.chains, 'chain')} of "
                   f"{counted(report.experiments, 'experiment')}{intact}")
        if report.incomplete:
            click.echo(printable(_incomplete_line(report.incomplete)))
        for finding in report.findings:
            click.echo(printable(f"  {finding.describe()}"))
    if not report.ok:
        click.echo(printable(f"ledger: verification failed: {report.findings[0].describe()}"),
                   err=True)
        raise click.exceptions.Exit(CheckFailedError.exit_code)


def _incomplete_line(incomplete: list[str], shown: int = 5) -> str:
    """Which verified runs are incomplete: their end is not sealed by run_completed."""
    names = ", ".join(incomplete[:shown]) + (f" and {len(incomplete) - shown:,} more"
                                             if len(incomplete) > shown else "")
    return (f"  {counted(len(incomplete), 'incomplete run')} (no run_completed: events cut from "
            f"the end cannot be detected): {names}")

