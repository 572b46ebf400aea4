"""``ledger list`` and ``ledger show``: what the ledger holds."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.display import printable, short
from cli.main import cli, db_option
from cli.output import emit_json, iso_time, json_option
from ledger.environment import recorded_distribution
from ledger.experiment_info import ResumeSummary, describe_experiment
from ledger.json_view import json_view
from ledger.store import Store
from replay.causes import shown_version


@cli.command("list", epilog="Exit codes: 0 ok; 2 unreadable or foreign database.")
@click.option("--name", "names", metavar="NAME", multiple=True,
              help="Only experiments of this name; repeat for several.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["ok", "failed", "incomplete", "malformed", "unreadable"]),
              help="Only experiments with this status; repeat for several.")
@db_option
@json_option
@click.pass_obj
def list_command(obj: dict, names: tuple[str, ...], statuses: tuple[str, ...],
                 as_json: bool) -> None:
    """List experiments, newest first, with their status: ok, failed or incomplete (malformed
    or unreadable when a damaged run_completed records another status or cannot be decoded)."""
    with Store.open(obj["db_url"]) as store:
        rows = [row for row in store.experiments()
                if (not names or row.name in names) and (not statuses or row.status in statuses)]
    if as_json:
        emit_json({"experiments": [{"exp": row.exp, "name": row.name,
                                    "created": iso_time(row.created_t), "status": row.status}
                                   for row in rows]})
        return
    if not rows:
        click.echo("no experiments match" if names or statuses else "no experiments")
        return
    lines = [f"{'EXPERIMENT':<20} {'CREATED':<25} {'STATUS':<11} NAME"]
    lines += [printable(f"{row.exp!s:<20} {iso_time(row.created_t)!s:<25} {row.status!s:<11} "
                        f"{row.name!s}") for row in rows]
    click.echo("\n".join(lines))


@cli.command("show", epilog="Exit codes: 0 ok; 2 unknown experiment or unreadable database.")
@click.argument("exp")
@db_option
@json_option
@click.pass_obj
def show_command(obj: dict, exp: str, as_json: bool) -> None:
    """Show one experiment: metadata, event counts by kind, streams, head and status, and each
    session that resumed it (with how its environment differs from the recorded one)."""
    with Store.open(obj["db_url"]) as store:
        info = describe_experiment(store, exp)
    if as_json:
        emit_json(info.to_json())
        return
    click.echo(f"experiment  {info.exp}")
    click.echo(printable(f"name        {info.name}"))
    click.echo(f"created     {iso_time(info.created_t)}")
    click.echo(printable(f"status      {info.status}") + (
        "" if info.complete else "  (INCOMPLETE: no run_completed event)"))
    if info.error is not None:
        click.echo(printable(f"error       {info.error}"))
    source = f"  ({info.root_seed_source})" if info.root_seed_source else ""
    click.echo(printable(f"root seed   {info.root_seed if info.root_seed is not None else '-'}"
                         f"{source}"))
    click.echo(f"head        {info.head.hex() if info.head else '- (run incomplete)'}")
    for key, value in sorted(info.metadata.items()):
        where = ("" if key != "parent" or info.parent_in_ledger is None else
                 "  (in this ledger)" if info.parent_in_ledger else "  (not in this ledger)")
        shown = _no_commit(value) if key == "code" and _no_git(value) else _shown(value)
        click.echo(printable(f"{key:<11} {shown}{where}"))
    if info.metrics:
        click.echo("metrics (last value recorded):")
        for metric in info.metrics:
            epoch = "-" if metric.epoch is None else f"epoch {_shown(metric.epoch)}"
            click.echo(printable(f"  {metric.name:<22} {epoch:<10} {_shown(metric.last)}  "
                                 f"({metric.count:,} recorded)"))
    if info.resumes:
        click.echo("resumes:")
        for resume in info.resumes:
            _show_resume(resume, info.metadata.get("code"))
    click.echo("events by kind:")
    for kind, count in info.counts.items():
        click.echo(printable(f"  {kind!s:<22} {count:>10,}"))
    click.echo("streams:")
    for head in info.streams:
        click.echo(printable(f"  {head.stream!s:<22} {head.count:>10,}  head {short(head.head)}"))


NO_REPOSITORY = "(no git repository with a commit was found)"
"""Why a session recorded no commit: its code was outside a git repository, in one without a
commit yet, or git was not installed (:func:`ledger.environment.code_version`)."""


def _no_commit(code: object) -> str:
    """A code version without a commit as ``show`` prints it: ``no commit recorded`` and why."""
    return f"no commit recorded {_why_no_commit(code)}"


def _why_no_commit(code: object) -> str:
    """Why a code version has no commit: the distribution that installed the code, when it
    names one (:func:`ledger.environment.recorded_distribution`), else :data:`NO_REPOSITORY`."""
    distribution = recorded_distribution(code)
    if distribution is None:
        return NO_REPOSITORY
    name, version = distribution
    return f"(installed from the distribution {name} {version})"


def _no_git(code: object) -> bool:
    """Whether a recorded code version is the one of code outside git: ``{"vcs": None}``."""
    return isinstance(code, dict) and "vcs" in code and code["vcs"] is None


def _show_resume(resume: ResumeSummary, created_code: object) -> None:
    """One session that resumed the run: where and by which process, then each difference of
    its code version, and each library, Python and platform difference of its environment,
    from the recorded ones. When one of the two sessions found no git repository, its code
    differs by the commit alone, said so in one line as the creating session's is shown,
    rather than as each git field recorded on one side and 'absent' on the other."""
    by = "" if resume.user is None else f"  by {_shown(resume.user)}"
    click.echo(printable(f"  seq {resume.seq}  {iso_time(resume.t)}{by}  host "
                         f"{_shown(resume.host)}  pid {_shown(resume.pid)}"))
    if resume.code_differences and _no_git(resume.code) != _no_git(created_code):
        if _no_git(resume.code):
            commit = _dict_get(created_code, "commit")
            click.echo(printable(f"    code.commit: {_shown_version(commit)} recorded, no commit "
                                 f"at resume {_why_no_commit(resume.code)}"))
        else:
            commit = _dict_get(resume.code, "commit")
            click.echo(printable(f"    code.commit: {_no_commit(created_code)}, "
                                 f"{_shown_version(commit)} at resume"))
    else:
        _show_differences(resume.code_differences, "code version", "code.")
    _show_differences(resume.environment_differences,
                      "environment", "", " (libraries, Python, platform)")


def _show_differences(found: list[tuple[str, Any, Any]] | None, what: str, prefix: str,
                      compared: str = "") -> None:
    """A resume's differences of ``what`` from the recorded one, one line each — or that there
    are none (``compared`` says what was compared), or that the resume recorded none."""
    if found is None:
        click.echo(f"    {what} not recorded")
    elif not found:
        click.echo(f"    {what} as recorded{compared}")
    for key, old, new in found or []:
        click.echo(printable(f"    {prefix}{key}: {_shown_version(old)} recorded, "
                             f"{_shown_version(new)} at resume"))


def _dict_get(value: object, key: str) -> object:
    """``value[key]`` of a recorded map, None when it is no map or lacks the key."""
    return value.get(key) if isinstance(value, dict) else None


def _shown_version(value: object) -> str:
    """A version as replay shows it (``absent`` when not recorded), anything but text as
    :func:`_shown` shows it: a forged value nested a thousand deep cannot stop the listing."""
    return shown_version(value) if value is None or isinstance(value, str) else _shown(value)


def _shown(value: object) -> str:
    """A recorded value on one line: text as it is, anything else as JSON (``true``, ``null``,
    double quotes), which readers who do not know Python's repr can read and parse."""
    viewed = json_view(value)
    if isinstance(viewed, str):
        return viewed
    return json.dumps(viewed, sort_keys=True, ensure_ascii=False, allow_nan=False)
