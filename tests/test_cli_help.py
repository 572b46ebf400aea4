"""Every command says what it does and its exit codes, and is documented in README.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest

import cli.commands  # noqa: F401 - importing registers every command on the group
from cli.main import OnceOption, WholeNumber, cli
from conftest import ROOT, run_cli

COMMANDS = sorted(cli.commands)
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_core_commands_are_registered() -> None:
    assert {"list", "show", "verify"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_text(name: str) -> None:
    command = cli.commands[name]
    assert command.help and len(command.help.split()) >= 4, f"ledger {name} has no help text"
    for parameter in command.params:
        if isinstance(parameter, click.Option) and parameter.name != "help":
            assert parameter.help, f"ledger {name} {parameter.opts[0]} has no help text"


def test_the_group_help_lists_every_command_and_the_exit_codes(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert "Exit codes" in text
    for code, meaning in [(0, "ok"), (1, "check failed"), (2, "bad usage"), (3, "cannot replay"),
                          (130, "interrupted"), (141, "reader of the output went away")]:
        assert re.search(rf"^\s*{code}\s+.*{meaning}", text, re.MULTILINE), (code, meaning)
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", text, re.MULTILINE), name
    assert "--db" in text and "LEDGER_URL" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_says_what_it_does_and_its_exit_codes(name: str,
                                                                 tmp_path: Path) -> None:
    result = run_cli(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"Usage: ledger {name}")
    assert cli.commands[name].help.split("\n")[0].split()[0] in text
    exit_codes = re.search(r"Exit codes?:?(.*)", text, re.DOTALL)
    assert exit_codes, f"ledger {name} --help does not state its exit codes"
    assert re.search(r"\b0\b", exit_codes.group(1)) and re.search(r"\b2\b", exit_codes.group(1))
    assert list(tmp_path.iterdir()) == []  # asking for help creates nothing


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_in_the_readme(name: str) -> None:
    assert re.search(rf"`ledger {re.escape(name)}(?=[\s`])", README), (
        f"README.md does not document `ledger {name}`")


def _flags(command: click.Command) -> list[str]:
    """Every flag ``command`` accepts, short and long, ``--no-…`` forms included."""
    context = click.Context(command, info_name=command.name)
    return [flag for parameter in command.get_params(context)
            if isinstance(parameter, click.Option)
            for flag in (*parameter.opts, *parameter.secondary_opts)]


@pytest.mark.parametrize("name", ["ledger", *COMMANDS])
def test_every_flag_is_documented_in_the_readme(name: str) -> None:
    """A flag `--help` shows must be findable in the README (`--generated-by`, `--version`, `-j`
    were not)."""
    command = cli if name == "ledger" else cli.commands[name]
    missing = [flag for flag in _flags(command)
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README)]
    assert not missing, f"README.md does not document {name} {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_that_opens_a_ledger_takes_db_after_its_name(name: str) -> None:
    """``ledger verify EXP --db URL`` must not be told "No such option '--db'. Did you mean
    '--seed'?" (what `ledger demo --db URL` said): every command that reads the group's ledger
    URL takes ``--db`` itself too."""
    command = cli.commands[name]
    assert command.callback is not None
    opens_ledger = "obj" in inspect.signature(command.callback).parameters  # click.pass_obj
    flags = {flag for parameter in command.params for flag in parameter.opts}
    assert ("--db" in flags) == opens_ledger, (name, opens_ledger)


ONCE = {  # single-valued options naming a file, folder, key, id or a statement of the report
    "demo": ["--data-dir"],
    "keygen": ["--out"],
    "replay": ["--data-dir"],
    "report": ["--format", "--output", "--bundle", "--appendix", "--data-dir", "--sign-key",
               "--responsible", "--role", "--generated-by", "--retention-class",
               "--retain-years", "--retain-from"],
    "verify-report": ["--public-key", "--signature", "--exp"],
}
"""Numbers a script may override by appending (--jobs, --workers, --epochs, --seed) still take
the last value, as click does; flags and repeatable options (--trust, --name) are unaffected."""

TWO_VALUES = {"--format": ("html", "md"), "--retention-class": ("logs", "technical-documentation"),
              "--retain-years": ("3", "5"), "--retain-from": ("2026-01-01", "2026-02-01"),
              "--exp": ("exp-111111111111", "exp-222222222222")}


def test_the_options_given_once_are_those_that_name_one_thing() -> None:
    found = {name: [max(parameter.opts, key=len) for parameter in command.params
                    if isinstance(parameter, OnceOption)]
             for name, command in cli.commands.items()}
    assert {name: opts for name, opts in found.items() if opts} == ONCE


@pytest.mark.parametrize("name, option", [(name, option) for name, options in ONCE.items()
                                          for option in options])
def test_an_option_given_twice_with_two_values_is_refused(tmp_path: Path, name: str,
                                                          option: str) -> None:
    """``report -o a.html … -o b.html`` wrote b.html alone, the first value silently dropped
    (so did --sign-key, --bundle, keygen --out, …): two different values are a usage error,
    one line, exit 2, nothing written."""
    first, second = TWO_VALUES.get(option, (str(tmp_path / "a"), str(tmp_path / "b")))
    arguments = {"report": ["exp-123412341234"], "replay": ["exp-123412341234"],
                 "verify-report": [str(tmp_path / "r.json"), "--unsigned"]}.get(name, [])
    done = run_cli(name, *arguments, option, first, option, second, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines() == [
        f"ledger: error: got {option} twice, {first!r} and {second!r}: give it once"]
    assert list(tmp_path.iterdir()) == []


def test_an_option_given_twice_with_the_same_value_is_taken(tmp_path: Path) -> None:
    """Only two different values are refused: ``keygen --out k --out k`` writes k.key."""
    done = run_cli("keygen", "--out", "k", "--out", "k", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["k.key", "k.pub"]


PATH_OPTIONS = [(name, max(parameter.opts, key=len)) for name, command in cli.commands.items()
                for parameter in command.params
                if isinstance(parameter, OnceOption) and isinstance(parameter.type, click.Path)]


def test_path_options_are_those_that_name_a_file_or_folder() -> None:
    assert sorted(PATH_OPTIONS) == [
        ("demo", "--data-dir"), ("replay", "--data-dir"), ("report", "--appendix"),
        ("report", "--bundle"), ("report", "--data-dir"), ("report", "--output"),
        ("report", "--sign-key"), ("verify-report", "--public-key"),
        ("verify-report", "--signature")]


def test_keygen_out_given_twice_as_the_same_prefix_is_taken(tmp_path: Path) -> None:
    """``keygen --out`` names files by a prefix: one prefix however spelt is one value (it was
    refused as two), but ``k/`` (k/.key) and ``k`` (k.key) stay two."""
    done = run_cli("keygen", "--out", "k", "--out", "./k", "--out", str(tmp_path / "k"),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["k.key", "k.pub"]
    (tmp_path / "sub").mkdir()
    refused = run_cli("keygen", "--out", "sub", "--out", "sub/", cwd=tmp_path)
    assert refused.returncode == 2 and "got --out twice, 'sub' and 'sub/'" in refused.stderr
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize("name, option", [(name, option) for name, options in ONCE.items()
                                          for option in options])
def test_an_option_given_an_empty_value_is_refused(tmp_path: Path, name: str,
                                                   option: str) -> None:
    """``--bundle "$OUT"`` with OUT unset wrote the bundle into the current folder, ``--sign-key
    ""`` failed with "Is a directory: 3", ``--generated-by ""`` took the default unseen: an
    empty value is a usage error naming the option, exit 2, nothing written."""
    arguments = {"report": ["exp-123412341234"], "replay": ["exp-123412341234"],
                 "verify-report": [str(tmp_path / "r.json"), "--unsigned"]}.get(name, [])
    done = run_cli(name, *arguments, option, "", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"ledger: error: got an empty {option}: give a")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, option", [
    ("report", "--output"), ("report", "--appendix"), ("report", "--sign-key"),
    ("verify-report", "--public-key"), ("verify-report", "--signature")])
def test_a_file_option_given_a_folder_name_is_refused(tmp_path: Path, name: str,
                                                      option: str) -> None:
    """``report -o out/`` wrote a file named ``out``: a name ending in a slash names a folder,
    refused where a file is wanted (exit 2, nothing written)."""
    arguments = {"report": ["exp-123412341234"],
                 "verify-report": [str(tmp_path / "r.json"), "--unsigned"]}[name]
    done = run_cli(name, *arguments, option, "out/", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    [line] = done.stderr.splitlines()
    assert line.endswith("got 'out/', which names a folder (it ends in /), but a file is "
                         "wanted: give its name")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_report_path_is_refused(tmp_path: Path) -> None:
    done = run_cli("verify-report", "", "--unsigned", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "ledger: error: Invalid value for 'REPORT': got an empty path: name a file"]


@pytest.mark.parametrize("name, option", PATH_OPTIONS)
def test_a_path_option_given_twice_as_the_same_path_is_taken(tmp_path: Path, name: str,
                                                             option: str) -> None:
    """``-o a.html -o ./a.html`` names one file, yet was refused as two values: a path option
    compares its occurrences as absolute paths, so one path however spelt is taken (the command
    then goes on, here to refuse what follows: an unknown experiment, a missing report)."""
    arguments = {"report": ["exp-123412341234"], "replay": ["exp-123412341234"],
                 "verify-report": [str(tmp_path / "r.json"), "--unsigned"]}.get(name, [])
    # demo would train: a bad --workers, checked after the path (click takes options in the
    # order given), stops it
    after = ["--workers", "999"] if name == "demo" else []
    spellings = ["a", "./a", str(tmp_path / "a")]
    done = run_cli(name, *arguments, *[word for spelling in spellings
                                       for word in (option, spelling)], *after, cwd=tmp_path)
    assert done.returncode == 2 and "twice" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_only_a_path_option_compares_paths(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that is no path (``keygen --out``'s prefix: ``k/`` names k/.key, not k.key) is
    compared as given; two different paths are still refused, each named as it was typed."""
    from click.testing import CliRunner

    @click.command()
    @click.option("--out", cls=OnceOption, type=click.Path())
    @click.option("--prefix", cls=OnceOption)
    def command(out: str | None, prefix: str | None) -> None:
        click.echo(f"{out} {prefix}")

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    taken = runner.invoke(command, ["--out", "a.html", "--out", "./a.html",
                                    "--out", str(tmp_path / "a.html")])
    assert (taken.exit_code, taken.output) == (0, "a.html None\n")
    refused = runner.invoke(command, ["--prefix", "k", "--prefix", "./k"])
    assert refused.exit_code == 2 and "got --prefix twice, 'k' and './k'" in refused.output
    other = runner.invoke(command, ["--out", "a.html", "--out", "sub/../a.html"])
    assert other.exit_code == 2 and "'a.html' and 'sub/../a.html'" in other.output


NUMBERS = {("demo", "--seed"): "a whole number from 0 to 2**128 - 1",
           ("demo", "--workers"): "a whole number from 0 to 64",
           ("demo", "--epochs"): "a whole number from 1 to 1000",
           ("replay", "--jobs"): "a whole number, 1 or more",
           ("report", "--jobs"): "a whole number, 1 or more",
           ("verify", "--jobs"): "a whole number, 1 or more",
           ("report", "--retain-years"): "a whole number from 1 to 100"}


def test_every_numeric_option_says_what_it_takes() -> None:
    """Every option taking a number is a WholeNumber, whose refusal names what it takes."""
    found = {(name, max(parameter.opts, key=len)): parameter.type.takes()
             for name, command in cli.commands.items() for parameter in command.params
             if isinstance(parameter.type, WholeNumber)}
    numeric = {(name, max(parameter.opts, key=len)) for name, command in cli.commands.items()
               for parameter in command.params
               if isinstance(parameter.type, (click.types.IntParamType,
                                              click.types.FloatParamType))}
    assert set(found) == numeric and found == NUMBERS


@pytest.mark.parametrize("name, option", sorted(NUMBERS))
@pytest.mark.parametrize("value", ["abc", "1.5", "-1"])
def test_a_bad_number_is_refused_saying_what_the_option_takes(tmp_path: Path, name: str,
                                                              option: str, value: str) -> None:
    """``demo --seed abc`` said "'abc' is not a valid integer range", click's words, naming no
    range: now "got 'abc', but must be a whole number from 0 to 2**128 - 1"."""
    arguments = ["exp-123412341234"] if name in ("replay", "report") else []
    done = run_cli(name, *arguments, f"{option}={value}", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    spelled = "'--jobs' / '-j'" if option == "--jobs" else repr(option)
    assert done.stderr.splitlines() == [f"ledger: error: Invalid value for {spelled}: got "
                                        f"{value!r}, but must be {NUMBERS[name, option]}"]
    assert list(tmp_path.iterdir()) == []
