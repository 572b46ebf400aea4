"""``ledger diff``: where two runs split, and why."""

from __future__ import annotations

import click

from cli.display import agreeing, counted, printable, runs_differ_line, short_value
from cli.main import cli, db_option, one_db
from cli.output import emit_json, json_option
from ledger.store import Store
from replay.diff import DiffReport, diff_runs, side_names


@cli.command("diff", epilog="Exit codes: 0 identical; 1 the runs differ (or one fails "
                            "verification); 2 unknown experiment or unreadable database.")
@click.argument("exp_a")
@click.argument("exp_b")
@click.option("--db-b", metavar="URL", multiple=True,
              help="Ledger of EXP_B when it is not the same as EXP_A's.")
@db_option
@json_option
@click.pass_obj
def diff_command(obj: dict, exp_a: str, exp_b: str, db_b: tuple[str, ...], as_json: bool
                 ) -> None:
    """Compare two runs draw for draw and name their first divergence and its likely cause.

    Events are aligned by identity — (kind, path) for draws, whatever stream recorded them —
    so runs with different worker counts compare directly. Also lists every difference in
    configuration, dataset digests, code version and environment.
    """
    url_b = one_db(db_b, option="--db-b")  # two different ones: refused, as for --db
    with Store.open(obj["db_url"]) as store:
        if url_b is not None:
            with Store.open(url_b) as other:
                report = diff_runs(store, exp_a, exp_b, store_b=other)
        else:
            report = diff_runs(store, exp_a, exp_b)
    if as_json:
        emit_json(report.to_json())
    else:
        _print(report)
    if not report.identical:
        click.echo(runs_differ_line(report), err=True)
        raise click.exceptions.Exit(1)


def _print(report: DiffReport) -> None:
    """The report for humans: the verdict, each run that did not complete ok, what differs."""
    name_a, name_b = side_names(report.exp_a, report.exp_b)
    if report.identical:
        click.echo(f"IDENTICAL: {name_a} and {name_b} "
                   f"({counted(report.compared, 'event')} compared)")
        if report.config or report.code or report.environment:
            click.echo("  every event agrees: the differences below changed nothing either run "
                       "recorded")
    else:
        click.echo(f"DIFFERENT: {name_a} vs {name_b}")
        assert report.first_divergence is not None  # set whenever runs differ
        click.echo(printable(f"  first divergence: {report.first_divergence.describe()}"))
        differ = agreeing(report.differing, "differs", "differ")
        click.echo(f"  {counted(report.differing, 'event')} {differ}, {report.missing_in_b:,} "
                   f"missing in {name_b}, {report.extra_in_b:,} extra, of "
                   f"{report.compared:,}")
    for exp, status in ((name_a, report.status_a), (name_b, report.status_b)):
        if status == "incomplete":
            click.echo(f"  {exp} is incomplete (no run_completed): only what it recorded is "
                       f"compared")
        elif status != "ok":
            click.echo(printable(f"  {exp} completed with status {short_value(status)}"))
    for title, rows in (("configuration differs", report.config),
                        ("datasets differ", report.datasets), ("code differs", report.code),
                        ("environment differs", report.environment),
                        ("last metric values differ", report.metrics)):
        if rows:
            click.echo(f"  {title}:")
            for key, a, b in rows:
                click.echo(printable(f"    {key}: {short_value(a)} vs {short_value(b)}"))
