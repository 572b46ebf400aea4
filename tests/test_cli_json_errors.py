"""A command given ``--json`` prints exactly one JSON document on stdout (DESIGN §5) — also when
it fails before printing its own: an error document (schemas/cli-error.v1.json) with the exit
code, a kind to tell failures apart, and the message that goes to stderr as one line.

Before, stdout was empty on every such failure, so ``ledger replay EXP --json | jq .verdict``
broke on a tampered ledger (exit 1) or missing data (exit 3) instead of reading the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from ledger.store import Store
from ledger_builders import drop_append_only_triggers, execute, flip_byte, rows
from replay_helpers import record_run
from report_helpers import schema_errors


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A recorded run: (ledger URL, experiment id, data folder)."""
    folder = tmp_path_factory.mktemp("json-errors")
    url = f"sqlite:///{folder / 'ledger.db'}"
    return url, record_run(url, folder / "data"), folder / "data"


def _error_document(result: Any, exit_code: int, kind: str) -> dict[str, Any]:
    """The one error document of ``result``, checked against its schema and stderr."""
    assert result.returncode == exit_code, result.stderr
    document = json.loads(result.stdout)  # exactly one document: json.loads refuses two
    assert schema_errors(document, "cli-error.v1.json") == []
    assert document["error"]["exit_code"] == exit_code and document["error"]["kind"] == kind
    # the stderr line is the message behind the program's name and the word "error"
    assert result.stderr == f"ledger: error: {document['error']['message']}\n"
    return document["error"]


@pytest.mark.parametrize("command", [["show"], ["verify"], ["replay"], ["diff", "exp-other"]])
def test_an_unknown_experiment_is_an_error_document(
        recorded: tuple[str, str, Path], command: list[str]) -> None:
    url, _exp, _data = recorded
    result = run_cli("--db", url, command[0], "--json", "exp-000000000000", *command[1:])
    error = _error_document(result, 2, "unknown_experiment")
    assert "exp-000000000000" in error["message"]


def test_a_missing_database_is_a_store_error_document(tmp_path: Path) -> None:
    result = run_cli("--db", f"sqlite:///{tmp_path / 'missing.db'}", "list", "--json")
    assert "no ledger at" in _error_document(result, 2, "store")["message"]


def test_a_bad_option_after_json_is_a_usage_error_document(
        recorded: tuple[str, str, Path]) -> None:
    url, exp, _data = recorded
    result = run_cli("--db", url, "replay", exp, "--json", "--jobs", "0")
    assert "--jobs" in _error_document(result, 2, "usage")["message"]


@pytest.mark.parametrize("arguments", [["verify", "{exp}", "--json", "--bogus"],
                                       ["verify", "--bogus", "{exp}", "--json"],
                                       ["list", "--json", "--bogus"],
                                       ["replay", "--json", "{exp}", "extra-argument"]])
def test_an_unknown_option_or_argument_around_json_is_a_usage_error_document(
        recorded: tuple[str, str, Path], arguments: list[str]) -> None:
    """Click refuses these while parsing, before ``--json``'s own callback runs: the
    document must not depend on where the bad token stands."""
    url, exp, _data = recorded
    result = run_cli("--db", url, *(argument.format(exp=exp) for argument in arguments))
    error = _error_document(result, 2, "usage")
    assert "--bogus" in error["message"] or "extra-argument" in error["message"]


@pytest.mark.parametrize("arguments", [["lst", "--json"], ["--json-not", "lst", "--json"],
                                       ["--json", "list"]])
def test_an_unknown_command_given_json_is_a_usage_error_document(arguments: list[str]) -> None:
    """``ledger lst --json`` (a typo) left stdout empty, where a script reads one document."""
    error = _error_document(run_cli(*arguments), 2, "usage")
    assert any(word in error["message"] for word in ("lst", "--json-not", "--json"))
    unasked = run_cli("lst", "--", "--json")
    assert unasked.returncode == 2 and unasked.stdout == ""


def test_json_after_a_double_dash_is_an_argument_not_the_flag(
        recorded: tuple[str, str, Path]) -> None:
    url, _exp, _data = recorded
    result = run_cli("--db", url, "list", "--bogus", "--", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("ledger: error: No such option '--bogus'")


def test_replay_without_its_data_is_a_cannot_replay_document(
        recorded: tuple[str, str, Path], tmp_path: Path) -> None:
    url, exp, _data = recorded
    result = run_cli("--db", url, "replay", exp, "--json", "--no-record",
                     "--data-dir", str(tmp_path))
    _error_document(result, 3, "cannot_replay")


@pytest.mark.parametrize("option", [["--jobs", "1"], ["--data-dir", "data"], ["--take-over"]],
                         ids=["jobs-at-its-default", "data-dir", "take-over"])
def test_an_option_replay_full_cannot_honour_is_a_bad_input_document(
        recorded: tuple[str, str, Path], option: list[str]) -> None:
    """Refused rather than ignored — also when given at its default value."""
    url, exp, _data = recorded
    result = run_cli("--db", url, "replay", exp, "--full", "--json", *option)
    error = _error_document(result, 2, "bad_input")
    assert error["message"].startswith(f"{option[0]} cannot be used with --full")


def test_replay_of_a_tampered_ledger_is_a_check_failed_document(
        recorded: tuple[str, str, Path], tmp_path: Path) -> None:
    url, exp, data = recorded
    copy = tmp_path / "tampered.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    with Store.open(f"sqlite:///{copy}") as store:
        drop_append_only_triggers(store)
        row = rows(store, exp, "main")[2]
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND "
                "stream = 'main' AND seq = 2", body=flip_byte(row["body"], len(row["body"]) - 3),
                exp=exp)
    result = run_cli("--db", f"sqlite:///{copy}", "replay", exp, "--json", "--no-record",
                     "--data-dir", str(data))
    assert "fails verification" in _error_document(result, 1, "check_failed")["message"]
    # verify prints its own document for the same finding: one document, not two
    result = run_cli("--db", f"sqlite:///{copy}", "verify", exp, "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False


def test_without_json_an_error_prints_nothing_on_stdout(recorded: tuple[str, str, Path]) -> None:
    url, _exp, _data = recorded
    result = run_cli("--db", url, "show", "exp-000000000000")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("ledger: error: unknown experiment")
