"""``ledger demo``: the fraud-detection scenario end to end, twice, and the comparison."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import click

from cli.display import agreeing, counted, printable, runs_differ_line
from cli.main import (OnceOption, WholeNumber, cli, db_option, refuse_empty_folder,
                      stream_output)
from cli.output import emit_json, json_option
from ledger.errors import LedgerError
from replay.registry import import_failure

if TYPE_CHECKING:
    from examples.fraud.demo import DemoResult

DEMO_EPOCHS = 5
"""The demo's default epochs: ``examples.fraud.train.HYPERPARAMS["epochs"]`` (a test holds them
equal). The demo's modules are imported only when it runs: a project's own ``examples`` package
that hides the installed one then stops ``ledger demo`` with one line, not every command with a
traceback."""


@cli.command("demo", epilog="Exit codes: 0 the two runs are identical; 1 they differ (as with "
                            "--inject-nondeterminism); 2 unusable database or data folder.")
@click.option("--seed", type=WholeNumber(0, 2**128 - 1), default=42, show_default=True,
              help="Root seed of both runs.")
@click.option("--workers", type=WholeNumber(0, 64), default=2, show_default=True,
              help="Worker processes loading and augmenting batches.")
@click.option("--epochs", type=WholeNumber(1, 1000), default=DEMO_EPOCHS,
              show_default=True, help="Training epochs per run.")
@click.option("--inject-nondeterminism", is_flag=True,
              help="Reproduce the original bug (the augmenter ignores its seed): the runs differ.")
@click.option("--data-dir", cls=OnceOption,
              type=click.Path(file_okay=False), callback=refuse_empty_folder,
              envvar="LEDGER_DATA_DIR",
              show_envvar=True, default=None,
              help="Folder for the dataset files [default: ledger-data/ beside an SQLite "
                   "ledger; required for PostgreSQL].")
@db_option
@json_option
@click.pass_obj
def demo_command(obj: dict, seed: int, workers: int, epochs: int, inject_nondeterminism: bool,
                 data_dir: str | None, as_json: bool) -> None:
    """Train fraud-detection-v3 twice with the same seed and show that the runs are identical.

    Generates the synthetic dataset-fraud-2024Q1 (100,000 transactions, 30 features, 1.5 %
    fraud), trains the numpy MLP by mini-batch SGD with Gaussian noise and feature masking in
    worker processes, records training loss and validation AUC per epoch and the final
    weights, then compares the two runs draw for draw. The ledger is created if missing (--db,
    LEDGER_URL, or ./ledger.db).
    """
    stream_output()  # its progress, epoch by epoch, as it comes

    def progress(run: int, epoch: int, loss: float, auc: float) -> None:
        click.echo(f"run {run}/2  epoch {epoch + 1}/{epochs}  train loss {loss:.4f}  "
                   f"val AUC {auc:.4f}", err=as_json)

    def banner() -> None:
        if not as_json:
            injected = ", nondeterminism injected" if inject_nondeterminism else ""
            click.echo(f"training fraud-detection-v3 twice: seed {seed}, "
                       f"{counted(workers, 'worker')}, {counted(epochs, 'epoch')}{injected}")

    try:
        from examples.fraud.demo import run_demo
    except ImportError as error:
        raise LedgerError(f"cannot import the demo (examples.fraud): "
                          f"{import_failure(error)}") from None
    result = run_demo(obj["db_url"], data_dir=data_dir, seed=seed, workers=workers, epochs=epochs,
                      inject_nondeterminism=inject_nondeterminism, on_epoch=progress,
                      on_start=banner)
    if as_json:
        emit_json(result.to_json())
    else:
        _print(result, _ledger_command(click.get_current_context(), result.ledger))
    if not result.identical:
        assert result.diff is not None  # run_demo always compares its two runs
        click.echo(runs_differ_line(result.diff), err=True)
        raise click.exceptions.Exit(1)


def _ledger_command(context: click.Context, url: str) -> str:
    """``ledger``, with ``--db URL`` when the ledger was named on the command line: the commands
    the demo suggests must open the same ledger (the URL as shown, without its password)."""
    if not context.ensure_object(dict).get("db_named"):
        return "ledger"
    return f"ledger --db {shlex.quote(url)}"


def _print(result: DemoResult, ledger: str) -> None:
    click.echo(f"ledger      {result.ledger}  (datasets in {result.data_dir})")
    for index, run in enumerate(result.runs, start=1):
        click.echo(f"run {index}       {run.exp}  final val AUC {run.aucs[-1]:.6f}  "
                   f"head {run.head.hex()[:16] if run.head else '-'}  ({run.seconds:.1f} s)")
    diff = result.diff
    assert diff is not None  # run_demo always compares its two runs
    if result.identical:
        click.echo(f"IDENTICAL: {counted(diff.compared, 'event')} compared, every seed, input "
                   f"and output digest equal")
        click.echo(f"  check it: {ledger} verify {result.runs[0].exp}; "
                   f"{ledger} diff {result.runs[0].exp} {result.runs[1].exp}")
        return
    differ = agreeing(diff.differing, "differs", "differ")
    click.echo(f"DIFFERENT: the runs diverge ({diff.differing:,} of "
               f"{counted(diff.compared, 'event')} {differ})")
    if diff.first_divergence is not None:
        click.echo(printable(f"  first differing event: {diff.first_divergence.describe()}"))
    click.echo(f"  see: {ledger} diff {result.runs[0].exp} {result.runs[1].exp}")

