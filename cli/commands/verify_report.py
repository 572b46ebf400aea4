"""``ledger verify-report``: check a report's signature and every digest it embeds."""

from __future__ import annotations

from pathlib import Path

import click

from cli.display import printable
from cli.main import NonEmptyPath, OnceOption, cli, db_option, refuse_unread_db
from cli.output import emit_json, json_option
from ledger.errors import BadInputError, CheckFailedError
from ledger.events import check_experiment_id
from ledger.store import Store
from report.check import check_report


@cli.command("verify-report", epilog="Exit codes: 0 the signature and every digest check; 1 "
                                     "something was altered (report, signature, a listed file), "
                                     "the report does not match its schema, or the wrong key, "
                                     "experiment or ledger; 2 not JSON, not "
                                     "a report, a missing or unreadable key or signature, or "
                                     "neither --public-key nor --unsigned.")
@click.argument("report", type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option("--public-key", cls=OnceOption, type=NonEmptyPath(dir_okay=False, path_type=Path),
              metavar="KEY", help="Ed25519 public key (PEM) the report should be signed with.")
@click.option("--signature", cls=OnceOption,
              type=NonEmptyPath(dir_okay=False, path_type=Path), metavar="SIG",
              help="Detached signature file [default: REPORT.sig].")
@click.option("--unsigned", is_flag=True,
              help="Check a report exported without --sign-key (instead of --public-key): "
                   "every digest, --exp and --against-ledger as for a signed one, but nothing "
                   "vouches for who wrote it.")
@click.option("--exp", "expected_exp", cls=OnceOption, metavar="EXP",
              help="Fail unless the report is of this experiment.")
@click.option("--against-ledger", is_flag=True,
              help="Also check that the ledger (--db) still holds the run head and stream "
                   "heads the report certifies.")
@db_option
@json_option
@click.pass_obj
def verify_report_command(obj: dict, report: Path, public_key: Path | None,
                          signature: Path | None, unsigned: bool, expected_exp: str | None,
                          against_ledger: bool, as_json: bool) -> None:
    """Verify a report: its Ed25519 signature over the canonical JSON bytes, its match with
    schemas/report.v1.json, the SHA-256 of every file it lists that lies beside it, and
    SHA256SUMS when present."""
    _check_key_choice(public_key, signature, unsigned)
    if expected_exp is not None:  # a malformed id is bad usage (exit 2), not a report that
        check_experiment_id(expected_exp)  # failed its check (exit 1) quoting all of it
    if not against_ledger:
        refuse_unread_db(obj, "only --against-ledger reads one: add it, or drop --db")
    if against_ledger:
        with Store.open(obj["db_url"]) as store:
            outcome = check_report(report, public_key, signature=signature, exp=expected_exp,
                                   store=store)
    else:
        outcome = check_report(report, public_key, signature=signature, exp=expected_exp)
    if as_json:
        emit_json(outcome.to_json())
    else:
        # the signature state already names --unsigned ("not checked: --unsigned")
        vouched = " (nothing vouches for who wrote this report)" if unsigned else ""
        click.echo(printable(f"{'OK' if outcome.ok else 'FAILED'}: {report} (report "
                             f"{outcome.report_id} of {outcome.exp}); signature "
                             f"{outcome.signature}{vouched}"))
        for name, state in sorted(outcome.files.items()):
            click.echo(printable(f"  {name}: {state}"))
        for note in outcome.notes:
            click.echo(printable(f"  note: {note}"))
    if not outcome.ok:
        click.echo(printable(f"ledger: check failed: {'; '.join(outcome.failures)}"), err=True)
        raise click.exceptions.Exit(CheckFailedError.exit_code)


def _check_key_choice(public_key: Path | None, signature: Path | None, unsigned: bool) -> None:
    """Exactly one of ``--public-key`` and ``--unsigned``: an auditor must say whether the
    signature is to be checked, never have it skipped by a forgotten option."""
    if unsigned and (public_key is not None or signature is not None):
        given = "--public-key" if public_key is not None else "--signature"
        raise BadInputError(f"--unsigned checks a report without its signature: it cannot go "
                            f"with {given}")
    if not unsigned and public_key is None:
        raise BadInputError("give --public-key KEY to check the report's signature, or "
                            "--unsigned for a report exported without --sign-key")
