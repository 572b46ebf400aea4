"""``ledger list``, ``ledger show`` and ``ledger verify`` end to end, as a user runs them.

Every run is the real command in a subprocess. Data on stdout (exactly one JSON document with
--json), diagnostics on stderr, exit codes of DESIGN §5, and bad input refused with one line on
stderr, no traceback, and nothing written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import LEDGER_COMMAND, ROOT, run_cli
from ledger.store import Store, StreamWriter
from ledger_builders import (Recorded, drop_append_only_triggers, execute, flip_byte,
                             record_experiment, rows)

DONE = "exp-d0d0d0d0d0d0"
OPEN = "exp-0b0b0b0b0b0b"


@dataclass
class LedgerFile:
    path: Path
    done: Recorded
    open: Recorded

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--db", self.url, *args)


def build_ledger(url: str) -> tuple[Recorded, Recorded]:
    with Store.open(url, create=True) as store:
        done = record_experiment(store, DONE, name="fraud-baseline", root=42, created_t=10**18)
        running = record_experiment(store, OPEN, name="fraud-v2", root=7, complete=False,
                                    workers=1, created_t=2 * 10**18)
    return done, running


@pytest.fixture
def ledger_file(tmp_path: Path) -> LedgerFile:
    path = tmp_path / "ledger.db"
    done, running = build_ledger(f"sqlite:///{path}")
    return LedgerFile(path, done, running)


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 2,
                          says: str = "") -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if "--json" in result.args:  # exactly one document, also on failure: the error's
        error = json.loads(result.stdout)["error"]
        assert error["exit_code"] == code and error["message"] in lines[0]
    else:
        assert result.stdout == ""
    assert says.lower() in lines[0].lower(), lines[0]
    assert len(lines[0]) < 400
    return lines[0]


def one_json_document(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout)  # json.loads refuses anything after the one document


# -- list ---------------------------------------------------------------------------------------

def test_list_shows_experiments_newest_first(ledger_file: LedgerFile) -> None:
    result = ledger_file.cli("list")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["EXPERIMENT", "CREATED", "STATUS", "NAME"]
    assert lines[1].split()[0] == OPEN and "incomplete" in lines[1] and "fraud-v2" in lines[1]
    assert lines[2].split()[0] == DONE and " ok " in lines[2] and "fraud-baseline" in lines[2]
    assert len(lines) == 3


def test_list_json(ledger_file: LedgerFile) -> None:
    result = ledger_file.cli("list", "--json")
    assert result.returncode == 0, result.stderr
    document = one_json_document(result)
    assert [(e["exp"], e["name"], e["status"]) for e in document["experiments"]] == [
        (OPEN, "fraud-v2", "incomplete"), (DONE, "fraud-baseline", "ok")]
    assert document["experiments"][1]["created"] == "2001-09-09T01:46:40.000Z"


def test_list_filters_by_name_and_status(ledger_file: LedgerFile) -> None:
    def listed(*options: str) -> list[str]:
        result = ledger_file.cli("list", "--json", *options)
        assert result.returncode == 0, result.stderr
        return [e["exp"] for e in one_json_document(result)["experiments"]]

    assert listed("--name", "fraud-baseline") == [DONE]
    assert listed("--status", "incomplete") == [OPEN]
    assert listed("--name", "fraud-baseline", "--name", "fraud-v2") == [OPEN, DONE]
    assert listed("--status", "ok", "--status", "failed") == [DONE]
    assert listed("--name", "fraud-v2", "--status", "ok") == []
    assert ledger_file.cli("list", "--name", "no-such-model").stdout == "no experiments match\n"
    assert_one_line_error(ledger_file.cli("list", "--status", "done"), says="--status")


def test_list_escapes_control_characters_of_a_recorded_name(tmp_path: Path) -> None:
    """A name is someone else's text: it must not retitle the terminal (ESC ] 0 ; … BEL)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        record_experiment(store, DONE, name="evil\x1b]0;owned\x07", root=1)
    result = run_cli("--db", url, "list")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert result.stdout.splitlines()[1].endswith("evil\\x1b]0;owned\\x07")


def test_list_of_an_empty_ledger(tmp_path: Path) -> None:
    Store.open(f"sqlite:///{tmp_path / 'empty.db'}", create=True).close()
    result = run_cli("--db", f"sqlite:///{tmp_path / 'empty.db'}", "list", "--json")
    assert one_json_document(result) == {"experiments": []}


def test_the_ledger_url_comes_from_the_environment(ledger_file: LedgerFile) -> None:
    result = run_cli("list", "--json", env={"LEDGER_URL": ledger_file.url})
    assert result.returncode == 0, result.stderr
    assert len(one_json_document(result)["experiments"]) == 2


def test_the_default_ledger_is_ledger_db_in_the_current_folder(ledger_file: LedgerFile) -> None:
    result = run_cli("list", "--json", cwd=ledger_file.path.parent)
    assert result.returncode == 0, result.stderr
    assert len(one_json_document(result)["experiments"]) == 2


def test_text_the_terminal_cannot_encode_is_escaped_not_a_failure(tmp_path: Path) -> None:
    """A name with characters outside stdout's encoding (latin-1 here) is listed with them
    escaped, and --json stays one document that reads back the name."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        record_experiment(store, DONE, name="café-模型", root=42, created_t=10**18)
    def run_latin_1(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "--db", url, *args],
                              capture_output=True, encoding="latin-1", timeout=120,
                              env={**os.environ, "PYTHONIOENCODING": "latin-1"})

    result = run_latin_1("list")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert "café-\\u6a21\\u578b" in result.stdout
    result = run_latin_1("list", "--json")
    assert result.returncode == 0, result.stderr
    assert one_json_document(result)["experiments"][0]["name"] == "café-模型"


def test_json_documents_are_stable_keys_sorted_two_space_indent(ledger_file: LedgerFile) -> None:
    """Two runs of a --json command over the same ledger print the same bytes whatever order
    the code builds its maps in: keys sorted, so documents can be diffed and hashed."""
    for command in (LIST_JSON, SHOW_JSON, VERIFY_JSON):
        result = ledger_file.cli(*command)
        assert result.returncode == 0, result.stderr
        assert result.stdout == json.dumps(json.loads(result.stdout), indent=2, sort_keys=True,
                                           ensure_ascii=False) + "\n", command


# -- show ---------------------------------------------------------------------------------------

def test_show_a_complete_run(ledger_file: LedgerFile) -> None:
    result = ledger_file.cli("show", DONE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"experiment  {DONE}" in out and "fraud-baseline" in out
    assert "status      ok" in out and "INCOMPLETE" not in out
    assert f"head        {ledger_file.done.head.hex()}" in out
    assert "root seed   42" in out and "model       logistic-regression" in out
    [hyperparams] = [line for line in out.splitlines() if line.startswith("hyperparams ")]
    assert json.loads(hyperparams.split(maxsplit=1)[1]) == {"lr": 0.1, "epochs": 2}
    for kind, count in ledger_file.done.counts_by_kind().items():
        assert any(line.split() == [kind, str(count)] for line in out.splitlines()), kind
    for stream, events in ledger_file.done.streams.items():
        assert any(line.split()[:2] == [stream, str(len(events))] for line in out.splitlines())


def test_show_of_a_run_with_root_seed_0_shows_0_not_a_dash(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        record_experiment(store, DONE, name="seed-zero", root=0)
    result = run_cli("--db", url, "show", DONE)
    assert result.returncode == 0, result.stderr
    assert "root seed   0  (user)" in result.stdout.splitlines()


def test_show_an_incomplete_run_says_so(ledger_file: LedgerFile) -> None:
    result = ledger_file.cli("show", OPEN)
    assert result.returncode == 0, result.stderr
    assert "INCOMPLETE" in result.stdout
    assert "head        - (run incomplete)" in result.stdout


def test_show_json(ledger_file: LedgerFile) -> None:
    done = one_json_document(ledger_file.cli("show", DONE, "--json"))
    recorded = ledger_file.done
    assert done["exp"] == DONE and done["name"] == "fraud-baseline"
    assert (done["status"], done["complete"]) == ("ok", True)
    assert done["head"] == recorded.head.hex()
    assert done["counts"] == recorded.counts_by_kind()
    assert done["events"] == recorded.event_count()
    assert done["root_seed"] == "42" and done["root_seed_source"] == "user"
    assert done["metadata"]["model"] == "logistic-regression"
    assert done["streams"] == [{"stream": name, "count": len(events), "head": events[-1].hash.hex()}
                               for name, events in sorted(recorded.streams.items())]
    running = one_json_document(ledger_file.cli("show", "--json", OPEN))
    assert (running["status"], running["complete"], running["head"]) == ("incomplete", False, None)
    assert "run_completed" not in running["counts"]


def test_show_of_a_failed_run_gives_the_error_it_recorded(tmp_path: Path) -> None:
    """Why a run failed is the first thing asked of it; run_completed records it."""
    from ledger.experiment import ExperimentManager

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with pytest.raises(ValueError):
            with manager.create_experiment("crashes", seed=1) as failed:
                raise ValueError("loss became NaN\x1b[31m at step 1200")
        with manager.create_experiment("fine", seed=1) as fine:
            pass
    out = run_cli("--db", url, "show", failed.id).stdout.splitlines()
    assert "status      failed" in out
    assert r"error       ValueError: loss became NaN\x1b[31m at step 1200" in out
    assert not any(line.startswith("error") for line in run_cli("--db", url, "show",
                                                                 fine.id).stdout.splitlines())
    shown = one_json_document(run_cli("--db", url, "show", failed.id, "--json"))
    assert shown["error"] == "ValueError: loss became NaN\x1b[31m at step 1200"
    assert one_json_document(run_cli("--db", url, "show", fine.id, "--json"))["error"] is None


def test_show_gives_the_last_value_of_each_metric(ledger_file: LedgerFile) -> None:
    """What an engineer comparing two runs asks first (AUC 0.923 against 0.891)."""
    out = ledger_file.cli("show", DONE).stdout
    assert "metrics (last value recorded):" in out
    assert any(line.split() == ["val_auc", "epoch", "1", "0.6", "(2", "recorded)"]
               for line in out.splitlines()), out
    done = one_json_document(ledger_file.cli("show", DONE, "--json"))
    assert done["metrics"] == [{"name": "val_auc", "count": 2, "last": 0.6, "epoch": 1}]


def test_show_of_odd_metrics(tmp_path: Path) -> None:
    """No metric: no section. A metric without an epoch, a NaN value, a vector, a name that is
    not text (a forged body) — shown, as JSON, or left out; never a traceback."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        record_experiment(store, OPEN, name="quiet", epochs=0)
        record_experiment(store, DONE, name="odd", epochs=0, complete=False)
        with StreamWriter(store, DONE, "main", flush_interval=None) as writer:
            for params in ({"name": "loss", "value": float("nan"), "epoch": None},
                           {"name": 7, "value": 1.0, "epoch": 0},
                           {"name": "per_class", "value": [0.5, 0.25], "epoch": 3}):
                writer.append("metric", params=params)
    assert "metrics" not in run_cli("--db", url, "show", OPEN).stdout
    assert one_json_document(run_cli("--db", url, "show", OPEN, "--json"))["metrics"] == []
    result = run_cli("--db", url, "show", DONE)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split() == ["loss", "-", "NaN", "(1", "recorded)"] for line in lines)
    assert any(line.split() == ["per_class", "epoch", "3", "[0.5,", "0.25]", "(1", "recorded)"]
               for line in lines), result.stdout
    assert [metric["name"] for metric in one_json_document(
        run_cli("--db", url, "show", DONE, "--json"))["metrics"]] == ["loss", "per_class"]


# -- verify -------------------------------------------------------------------------------------

def test_verify_a_clean_ledger(ledger_file: LedgerFile) -> None:
    result = ledger_file.cli("verify")
    assert result.returncode == 0, result.stderr
    events = ledger_file.done.event_count() + ledger_file.open.event_count()
    incomplete = (f"  1 incomplete run (no run_completed: events cut from the end cannot be "
                  f"detected): {OPEN}")
    assert result.stdout.splitlines() == [f"OK: {events} events in 5 chains of 2 experiments",
                                          incomplete]
    chains = len(ledger_file.open.streams)
    assert ledger_file.cli("verify", OPEN).stdout.splitlines() == [
        f"OK: {ledger_file.open.event_count()} events in {chains} chain{'s' * (chains != 1)} "
        f"of 1 experiment", incomplete]
    assert ledger_file.cli("verify", DONE).stdout.splitlines() == [
        f"OK: {ledger_file.done.event_count()} events in 3 chains of 1 experiment"]
    one = one_json_document(ledger_file.cli("verify", OPEN, "--json"))
    assert (one["ok"], one["experiments"], one["events"], one["intact"], one["incomplete"]) == (
        True, 1, ledger_file.open.event_count(), ledger_file.open.event_count(), [OPEN])
    assert one_json_document(ledger_file.cli("verify", DONE, "--json"))["incomplete"] == []


def tamper(ledger_file: LedgerFile) -> None:
    """Flip one byte of the body of DONE's main seq 3, triggers dropped first."""
    with Store.open(ledger_file.url) as store:
        drop_append_only_triggers(store)
        body = rows(store, DONE, "main")[3]["body"]
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp "
                "AND stream = 'main' AND seq = 3", body=flip_byte(body, 20), exp=DONE)


def test_verify_names_the_tampered_event(ledger_file: LedgerFile) -> None:
    tamper(ledger_file)
    result = ledger_file.cli("verify")
    assert result.returncode == 1
    events = ledger_file.done.event_count() + ledger_file.open.event_count()
    # every stored event counted; intact: all but DONE's main from seq 3 on
    intact = events - (len(ledger_file.done.streams["main"]) - 3)
    assert result.stdout.splitlines()[0] == (
        f"FAILED: {events} events in 5 chains of 2 experiments; {intact} intact before the "
        f"first bad event of each broken chain")
    assert f"{DONE} stream main seq 3: stored body does not hash" in result.stdout
    line = assert_one_line_error_like(result)
    assert line.startswith("ledger: verification failed:") and f"{DONE} stream main seq 3" in line


def test_verify_lists_every_broken_chain_and_its_error_line_names_the_first(
        ledger_file: LedgerFile) -> None:
    tamper(ledger_file)
    with Store.open(ledger_file.url) as store:
        body = rows(store, OPEN, "main")[1]["body"]
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp "
                "AND stream = 'main' AND seq = 1", body=flip_byte(body, 20), exp=OPEN)
    result = ledger_file.cli("verify")
    assert result.returncode == 1
    findings = [line.strip() for line in result.stdout.splitlines() if line.startswith("  exp-")]
    assert len(findings) == 2, result.stdout
    assert any(f.startswith(f"{DONE} stream main seq 3:") for f in findings)
    assert any(f.startswith(f"{OPEN} stream main seq 1:") for f in findings)
    assert assert_one_line_error_like(result) == f"ledger: verification failed: {findings[0]}"


def assert_one_line_error_like(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_verify_json_of_a_tampered_ledger(ledger_file: LedgerFile) -> None:
    tamper(ledger_file)
    result = ledger_file.cli("verify", "--json")
    assert result.returncode == 1
    document = one_json_document(result)
    assert document["ok"] is False
    assert document["findings"][0]["exp"] == DONE
    assert (document["findings"][0]["stream"], document["findings"][0]["seq"]) == ("main", 3)
    assert "does not hash" in document["findings"][0]["problem"]
    assert_one_line_error_like(result)
    other = ledger_file.cli("verify", OPEN, "--json")
    assert other.returncode == 0 and one_json_document(other)["ok"] is True


# -- bad input: one line on stderr, exit 2, no traceback, nothing written ---------------------

# Each case runs a few read commands (text and --json); every run is a process, so not all.
LIST, SHOW, VERIFY = ("list",), ("show", DONE), ("verify",)
LIST_JSON, SHOW_JSON, VERIFY_JSON = ("list", "--json"), ("show", DONE, "--json"), (
    "verify", DONE, "--json")


def ids(command: tuple[str, ...]) -> str:
    return " ".join(command)


@pytest.mark.parametrize("command", [LIST_JSON, SHOW, VERIFY_JSON], ids=ids)
def test_a_missing_database_is_not_created(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "missing.db"
    result = run_cli("--db", f"sqlite:///{missing}", *command)
    assert_one_line_error(result, says="no ledger")
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_default_ledger_is_not_created_by_reading(tmp_path: Path) -> None:
    for command in (LIST, SHOW_JSON, VERIFY):
        assert_one_line_error(run_cli(*command, cwd=tmp_path), says="no ledger")
    assert list(tmp_path.iterdir()) == []


def test_only_a_missing_default_ledger_is_told_to_give_db(ledger_file: LedgerFile,
                                                         tmp_path: Path) -> None:
    """`give --db or set LEDGER_URL` helps who named no ledger; to who mistyped --db, --db-b or
    LEDGER_URL it says to do what they did — the path alone names the mistake."""
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    told = assert_one_line_error(run_cli("list", cwd=empty), says="no ledger at ledger.db")
    assert "give --db or set LEDGER_URL" in told
    for result in (run_cli("--db", missing, "list"),
                   run_cli("list", env={"LEDGER_URL": missing}),
                   ledger_file.cli("diff", DONE, DONE, "--db-b", missing)):
        line = assert_one_line_error(result, says=f"no ledger at {tmp_path / 'missing.db'}")
        assert "--db" not in line and "LEDGER_URL" not in line, line


@pytest.mark.parametrize("command", [LIST, SHOW_JSON], ids=ids)
def test_a_file_that_is_not_sqlite(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "notes.db"
    path.write_text("dear diary\n")
    assert_one_line_error(run_cli("--db", f"sqlite:///{path}", *command),
                          says="not an SQLite database")
    assert files_in(tmp_path) == {"notes.db": b"dear diary\n"}


@pytest.mark.parametrize("command", [LIST, VERIFY_JSON], ids=ids)
def test_an_empty_file_is_a_ledger_never_written_or_cut_short(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    """A 0-byte --db said 'not an SQLite database': true, but an empty file is what a ledger
    never written or truncated leaves, and the auditor is told so (exit 2 as before)."""
    path = tmp_path / "ledger.db"
    path.write_bytes(b"")
    line = assert_one_line_error(run_cli("--db", f"sqlite:///{path}", *command),
                                 says=f"{path} is an empty file (0 bytes), not a ledger: no "
                                      f"ledger was ever written to it, or it was cut short")
    assert "restore it from a copy" in line
    assert files_in(tmp_path) == {"ledger.db": b""}


@pytest.mark.parametrize("command", [SHOW, VERIFY_JSON], ids=ids)
def test_a_ledger_whose_format_marker_is_gone_says_so(ledger_file: LedgerFile,
                                                      command: tuple[str, ...]) -> None:
    with Store.open(ledger_file.url) as store:
        drop_append_only_triggers(store)
        execute(store, "DELETE FROM ledger_meta WHERE key = 'format'")
    line = assert_one_line_error(ledger_file.cli(*command),
                                 says="is a ledger whose format marker is gone")
    assert line.endswith("so it is not read: restore the ledger from a copy"), line


@pytest.mark.parametrize("command", [SHOW, VERIFY_JSON], ids=ids)
def test_an_sqlite_file_that_is_not_a_ledger(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "shop.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    connection.execute("INSERT INTO orders VALUES (1, 9.5)")
    connection.commit()
    connection.close()
    before = files_in(tmp_path)
    assert_one_line_error(run_cli("--db", f"sqlite:///{path}", *command),
                          says="is not a ledger: an SQLite database, but without the ledger's "
                               "tables (check the path or URL)")
    assert files_in(tmp_path) == before


def newer_ledger(path: Path) -> None:
    with Store.open(f"sqlite:///{path}", create=True) as store:
        record_experiment(store, DONE, workers=0)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_meta SET value = '99' WHERE key = 'schema_version'")


@pytest.mark.parametrize("command", [LIST_JSON, VERIFY], ids=ids)
def test_a_ledger_of_a_newer_schema_version(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "future.db"
    newer_ledger(path)
    before = files_in(tmp_path)
    line = assert_one_line_error(run_cli("--db", f"sqlite:///{path}", *command), says="99")
    assert "newer" in line and "upgrade" in line
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("command", [("show", "exp-ffffffffffff"),
                                     ("verify", "--json", "exp-ffffffffffff")], ids=ids)
def test_an_unknown_experiment(ledger_file: LedgerFile, command: tuple[str, ...]) -> None:
    before = files_in(ledger_file.path.parent)
    assert_one_line_error(ledger_file.cli(*command), says="unknown experiment exp-ffffffffffff")
    assert files_in(ledger_file.path.parent) == before


@pytest.mark.parametrize(("command", "exp"), [
    ("show", "../../etc/passwd"), ("verify", "a/b"), ("show", "x'; DROP TABLE ledger_events; --"),
    ("verify", "x'; DROP TABLE ledger_events; --"), ("show", "x" * 10_240),
    ("verify", "x" * 10_240), ("show", "-dash exp"),
], ids=lambda value: value[:20])
def test_a_malformed_experiment_id(ledger_file: LedgerFile, command: str, exp: str) -> None:
    before = files_in(ledger_file.path.parent)
    assert_one_line_error(ledger_file.cli(command, "--", exp), says="malformed experiment id")
    assert files_in(ledger_file.path.parent) == before
    with Store.open(ledger_file.url) as store:  # tables intact
        assert len(store.experiments()) == 2 and store.chain_sizes()


@pytest.mark.parametrize("command", [LIST, SHOW_JSON], ids=ids)
def test_an_unreachable_postgres_server(command: tuple[str, ...]) -> None:
    """One line, the password masked — "cannot open" with the 'postgres' extra installed, and
    without it (psycopg missing) "no driver", naming the extra to install."""
    has_driver = importlib.util.find_spec("psycopg") is not None
    line = assert_one_line_error(
        run_cli("--db", "postgresql://postgres:hunter2@127.0.0.1:1/ledger", *command),
        says="cannot open" if has_driver else "no driver")
    assert "hunter2" not in line


def test_errors_show_a_database_url_as_it_was_given(ledger_file: LedgerFile) -> None:
    """SQLAlchemy 2.x renders ``:`` in a database name percent-encoded: ``sqlite:///:memory:``
    was shown as ``sqlite:///%3Amemory%3A`` and the README's ``file:`` URI as ``file%3A…``, a
    URL the user never typed. Errors show the URL as given."""
    memory = assert_one_line_error(run_cli("--db", "sqlite:///:memory:", "list"),
                                   says="is not a ledger")
    assert memory.startswith("ledger: error: sqlite:///:memory: is not a ledger"), memory
    uri = f"sqlite:///file:{ledger_file.path}?immutable=1&uri=true"
    unknown = assert_one_line_error(run_cli("--db", uri, "show", "exp-123412341234"),
                                    says="unknown experiment")
    assert unknown.endswith(f"in {uri}"), unknown


@pytest.mark.parametrize("url", ["postgresql://bob:hun/ter2@127.0.0.1:1/ledger",
                                 "postgresql://bob:hunter2@127.0.0.1:1/ledger?connect_timeout=5",
                                 "postgresql://bob@127.0.0.1:1/ledger?password=hunter2"])
def test_a_database_url_shown_as_given_still_hides_its_password(url: str) -> None:
    """The URL as given, but never its password: neither in its credentials (one holding '/'
    included) nor as a ``password=`` argument, which SQLAlchemy's rendering showed."""
    line = assert_one_line_error(run_cli("--db", url, "list"))
    assert "hunter2" not in line and "127.0.0.1:1/ledger" in line, line
    assert "bob:***@" in line or "password=***" in line, line


@pytest.mark.parametrize("url", ["mysql://localhost/ledger", "::not a url::"])
def test_an_unsupported_database_url(tmp_path: Path, url: str) -> None:
    assert_one_line_error(run_cli("--db", url, "list", cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["--db", "LEDGER_URL", "--db-b", "demo"])
def test_a_database_url_of_bytes_that_are_not_utf8_is_refused_as_such(tmp_path: Path,
                                                                      where: str) -> None:
    """``--db sqlite:///\xff.db`` (a path in a Latin-1 file system, say): the lone surrogate
    Python decodes the byte to reached SQLAlchemy, which could not show or open the URL — an
    internal error. Now the URL is refused as not a database URL, saying why; nothing made."""
    url = "sqlite:///" + (tmp_path / "\udcff.db").as_posix()  # the byte 0xff, as argv gives it
    if where == "--db":
        result = run_cli("--db", url, "list", "--json", cwd=tmp_path)
    elif where == "LEDGER_URL":
        result = run_cli("list", "--json", cwd=tmp_path, env={"LEDGER_URL": url})
    elif where == "--db-b":
        result = run_cli("--db", url, "diff", DONE, DONE, "--db-b", url, cwd=tmp_path)
    else:  # demo says what it trains first, on stdout
        result = run_cli("--db", url, "demo", cwd=tmp_path)
        result.stdout = ""
    assert_one_line_error(result, says="not UTF-8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [("list",), ("show", DONE), ("verify", DONE),
                                     ("verify", DONE, "--jobs", "1")], ids=ids)
def test_db_may_follow_the_command_name(ledger_file: LedgerFile, command: tuple[str, ...],
                                        tmp_path: Path) -> None:
    """``ledger verify EXP --db URL``, as auditors type it: the same as ``--db`` first, and it
    wins over LEDGER_URL; two different ledgers named before and after are refused."""
    before = run_cli("--db", ledger_file.url, *command, "--json")
    after = run_cli(*command, "--db", ledger_file.url, "--json",
                    env={"LEDGER_URL": f"sqlite:///{tmp_path / 'elsewhere.db'}"})
    assert before.returncode == after.returncode == 0, after.stderr
    assert one_json_document(after) == one_json_document(before)
    assert run_cli("--db", ledger_file.url, *command, "--db", ledger_file.url).returncode == 0
    assert_one_line_error(run_cli("--db", ledger_file.url, *command, "--db",
                                  f"sqlite:///{tmp_path / 'other.db'}"),
                          says="got --db twice")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for twice in (("--db", ledger_file.url, "--db", other, *command),
                  (*command, "--db", ledger_file.url, "--db", other)):
        assert_one_line_error(run_cli(*twice), says="naming two ledgers")  # the last won
    assert run_cli(*command, "--db", ledger_file.url, "--db", ledger_file.url).returncode == 0
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "elsewhere.db").exists()


def test_db_b_naming_two_ledgers_is_refused(ledger_file: LedgerFile, tmp_path: Path) -> None:
    """``--db-b`` given twice with two ledgers compared EXP_B of the last one without a word
    (IDENTICAL against a ledger the auditor did not mean); refused as ``--db`` is. The same
    URL twice is one ledger."""
    other = tmp_path / "other.db"
    shutil.copy(ledger_file.path, other)
    command = ("--db", ledger_file.url, "diff", DONE, DONE)
    for json_flag in ((), ("--json",)):
        result = run_cli(*command, "--db-b", f"sqlite:///{other}", "--db-b", ledger_file.url,
                         *json_flag)
        assert_one_line_error(result, says="got --db-b twice, naming two ledgers")
    same = run_cli(*command, "--db-b", f"sqlite:///{other}", "--db-b", f"sqlite:///{other}")
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("IDENTICAL")


@pytest.mark.parametrize("args", [("--db", "", "list"), ("list", "--db", ""),
                                  ("--db", "", "verify", DONE, "--json"),
                                  ("diff", DONE, DONE, "--db-b", "")], ids=ids)
def test_an_empty_db_url_is_refused_not_taken_for_the_default(ledger_file: LedgerFile,
                                                              args: tuple[str, ...]) -> None:
    """``--db ""`` (say ``--db "$URL"`` with URL unset) names no ledger: it is bad usage, not
    the default ledger of the current folder silently read instead; nor is an empty --db-b
    the ledger of EXP_A."""
    result = run_cli(*args, cwd=ledger_file.path.parent)
    assert_one_line_error(result, says="empty")
    assert run_cli("list", cwd=ledger_file.path.parent, env={"LEDGER_URL": ""}).returncode == 0


@pytest.mark.parametrize("args", [("replay", DONE, "--no-record", "--data-dir", ""),
                                  ("report", DONE, "--no-record", "--data-dir", ""),
                                  ("replay", DONE, "--json", "--data-dir", ""),
                                  ("demo", "--epochs", "1", "--data-dir", "")], ids=ids)
def test_an_empty_data_dir_is_refused_not_taken_for_the_default(ledger_file: LedgerFile,
                                                                args: tuple[str, ...]) -> None:
    """``--data-dir "$DIR"`` with DIR unset was taken for no option: replay certified from
    ``ledger-data/`` beside the ledger, the demo wrote its dataset there. Refused, as an empty
    ``--db`` is, before anything is read or written; an empty LEDGER_DATA_DIR stays unset."""
    folder = ledger_file.path.parent
    before = (files_in(folder), sorted(folder.rglob("*")))
    result = run_cli("--db", ledger_file.url, *args, cwd=folder)
    assert_one_line_error(result, says="got an empty --data-dir")
    assert (files_in(folder), sorted(folder.rglob("*"))) == before


def test_ledger_url_is_one_url_even_with_spaces(ledger_file: LedgerFile, tmp_path: Path
                                                ) -> None:
    """``--db`` takes every occurrence (to refuse two ledgers); LEDGER_URL stays one URL, not
    split at the spaces a folder name may hold."""
    spaced = tmp_path / "my ledgers"
    spaced.mkdir()
    shutil.copy(ledger_file.path, spaced / "ledger.db")
    listed = run_cli("list", "--json", env={"LEDGER_URL": f"sqlite:///{spaced / 'ledger.db'}"})
    assert listed.returncode == 0, listed.stderr
    assert DONE in [row["exp"] for row in one_json_document(listed)["experiments"]]


@pytest.mark.parametrize("args", [("--bogus", "list"), ("list", "--bogus"), ("show",),
                                  ("verify", "--jobs", "0"), ("no-such-command",)], ids=ids)
def test_bad_usage(ledger_file: LedgerFile, args: tuple[str, ...]) -> None:
    before = files_in(ledger_file.path.parent)
    assert_one_line_error(ledger_file.cli(*args))
    assert files_in(ledger_file.path.parent) == before


def test_no_command_prints_the_help_not_a_squashed_error(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Commands:" in result.stdout.splitlines()
    assert any(line.strip().startswith("list") for line in result.stdout.splitlines())
    assert list(tmp_path.iterdir()) == []


def test_version(tmp_path: Path) -> None:
    from ledger import __version__

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and __version__ in result.stdout


# -- the same commands on PostgreSQL -----------------------------------------------------------

def test_list_show_verify_on_postgres(postgres_url: str) -> None:
    done, _running = build_ledger(postgres_url)
    listed = one_json_document(run_cli("--db", postgres_url, "list", "--json"))
    assert [e["exp"] for e in listed["experiments"]] == [OPEN, DONE]
    shown = one_json_document(run_cli("--db", postgres_url, "show", DONE, "--json"))
    assert shown["head"] == done.head.hex()
    verified = run_cli("--db", postgres_url, "verify", "--json")
    assert verified.returncode == 0 and one_json_document(verified)["ok"] is True
    with Store.open(postgres_url) as store:
        drop_append_only_triggers(store)
        execute(store, "DELETE FROM ledger_events WHERE exp = :exp AND stream = 'worker-1' "
                "AND seq = 1", exp=DONE)
    failed = run_cli("--db", postgres_url, "verify", "--json")
    assert failed.returncode == 1
    finding = one_json_document(failed)["findings"][0]
    assert (finding["exp"], finding["stream"], finding["seq"]) == (DONE, "worker-1", 1)
    assert_one_line_error(run_cli("--db", postgres_url, "show", "exp-ffffffffffff"),
                          says="unknown experiment")


def test_a_reader_that_goes_away_is_exit_141_not_a_failed_check(tmp_path: Path) -> None:
    """`ledger show --json | head -c 10`: the pipe closes early; exit 141 (128 + SIGPIPE),
    never 1 (a failed check), and nothing on stderr."""
    import os
    import sys

    from ledger.experiment import ExperimentManager

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("wide", seed=1,
                                       hyperparams={"notes": "x" * 1_000_000}) as exp:
            pass
    script = (f'set -o pipefail; "{sys.executable}" -m cli --db "{url}" show {exp.id} --json '
              f'| head -c 10 >/dev/null; echo "exit=${{PIPESTATUS[0]}}"')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.stdout.strip() == "exit=141", done.stdout + done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_output_the_pipe_takes_whole_ends_0_however_soon_the_reader_leaves(
        tmp_path: Path, unbuffered: str) -> None:
    """`ledger show EXP | head -1`: show printed line by line, so the reader's exit after the
    first line made a later line's write fail — exit 141 in 16 runs of 20, 0 in the others.
    Output that fits in the pipe is now written at once: always 0."""
    import os
    import sys

    from ledger.experiment import ExperimentManager

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("short", seed=1, hyperparams={"lr": 0.1}) as exp:
            pass
    command = f'"{sys.executable}" -m cli --db "{url}"'
    script = "; ".join(f'{command} {args} | head -1 >/dev/null; echo "exit=${{PIPESTATUS[0]}}"'
                       for args in [f"show {exp.id}"] * 8 + [f"verify {exp.id}"] * 2)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                               "PYTHONUNBUFFERED": unbuffered})
    assert done.stdout.split() == ["exit=0"] * 10, done.stdout + done.stderr
    assert done.stderr == ""


def test_stdout_and_stderr_keep_their_order_and_the_demo_streams_its_progress(
        tmp_path: Path) -> None:
    """Held output is written before anything goes to stderr, so `2>&1` keeps the order the
    command wrote in (here replay's DIVERGED lines, then its error line); and the demo's
    progress still comes epoch by epoch, not at its end."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    demo = subprocess.Popen([sys.executable, "-m", "cli", "--db", url, "demo", "--epochs", "3",
                             "--workers", "0", "--inject-nondeterminism"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert demo.stdout is not None
    try:
        assert demo.stdout.readline().startswith("training fraud-detection-v3 twice")
        assert demo.stdout.readline().startswith("run 1/2  epoch 1/3")
        assert demo.poll() is None  # the second run has not even started
    finally:
        demo.communicate(timeout=300)
    assert demo.returncode == 1
    with Store.open(url) as store:
        first = store.experiments()[0].exp
    diverged = subprocess.run([sys.executable, "-m", "cli", "--db", url, "replay", first,
                                "--no-record", "--data-dir", str(tmp_path / "ledger-data")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, timeout=300)
    lines = diverged.stdout.splitlines()
    assert diverged.returncode == 1, diverged.stdout  # the augmenter ignored its seed
    assert lines[0] == f"DIVERGED: {first}"
    assert lines[-1].startswith("ledger: replay diverged: ")
    assert sum(line.startswith("ledger:") for line in lines) == 1


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_report_on_stdout_whose_reader_goes_away_is_exit_141_and_not_recorded(
        tmp_path: Path, unbuffered: str) -> None:
    """The report went to stdout around the guard the other commands write through: exit 1 (a
    failed check, to a script) or, unbuffered, 0 with the output cut — and its export was
    recorded in the audit stream though nobody received it."""
    import os
    import sys

    from ledger.experiment import ExperimentManager
    from ledger.store import Store

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("wide", seed=1,
                                       hyperparams={f"h{i}": i for i in range(20_000)}) as exp:
            pass
    script = (f'"{sys.executable}" -m cli --db "{url}" report {exp.id} '
              f'| head -c 10 >/dev/null; echo "exit=${{PIPESTATUS[0]}}"')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                               "PYTHONUNBUFFERED": unbuffered})
    assert done.stdout.strip() == "exit=141", done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    with Store.open(url) as store:
        assert "report_exported" not in store.counts_by_kind(exp.id)


def _run_with_closed(descriptor: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with standard descriptor ``descriptor`` closed (``ledger … 2>&-``), the
    other one captured."""
    kept = {"stdout": subprocess.PIPE} if descriptor == 2 else {"stderr": subprocess.PIPE}
    return subprocess.run([sys.executable, "-m", "cli", *args], **kept, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: os.close(descriptor))


def test_a_closed_stdout_or_stderr_keeps_the_commands_own_exit_code(
        ledger_file: LedgerFile) -> None:
    """``ledger verify 2>&-``, as a job started without a stderr runs it: Python makes the
    stream None and verify, whose check passed, exited 2 (its progress line asked None whether
    it is a terminal); with stdout closed every command ended in a traceback and exit 120.
    Now the output to the closed descriptor is lost, and the exit code is the command's."""
    verified = _run_with_closed(2, "--db", ledger_file.url, "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("OK: ")
    quiet = _run_with_closed(1, "--db", ledger_file.url, "verify", "--json")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    unknown = _run_with_closed(1, "--db", ledger_file.url, "show", "exp-000000000000")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == ["ledger: error: unknown experiment exp-000000000000 "
                                           f"in {ledger_file.url}"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("command", [VERIFY, VERIFY_JSON, SHOW, LIST], ids=ids)
def test_a_stdout_that_refuses_writes_is_one_error_line_not_an_internal_error(
        ledger_file: LedgerFile, command: tuple[str, ...]) -> None:
    """``ledger verify > /dev/full``: the write's OSError reached the catch-all, shown as
    ``internal error: OSError: [Errno 28] …`` — a bug of ours, by its words. It is the
    machine's: one error line naming it, exit 2."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cli", "--db", ledger_file.url, *command],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["ledger: error: cannot write the output: No space left "
                                        "on device"], done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_command_that_failed_keeps_its_one_error_line_when_stdout_refuses_writes(
        ledger_file: LedgerFile) -> None:
    """``ledger show bogus --json > /dev/full``: the error document could not be written
    either, and stderr got a second line ("cannot write the output"); the one line is the
    command's own error, with its exit code."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cli", "--db", ledger_file.url, "show",
                               "exp-000000000000", "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["ledger: error: unknown experiment exp-000000000000 "
                                        f"in {ledger_file.url}"]


LONG_NAME = "a" * 5000
"""A file name far past any file system's limit (255 bytes on most)."""


@pytest.mark.parametrize("where", ["--db", "-o", "--bundle", "--appendix", "keygen"])
def test_a_path_too_long_for_the_file_system_is_one_short_error_line(
        ledger_file: LedgerFile, tmp_path: Path, where: str) -> None:
    """The OSError of a name too long (ENAMETOOLONG, from the first ``exists()`` on the path)
    reached the catch-all: ``internal error: OSError: [Errno 36] File name too long: '…'``, a
    bug by its words, its line 5,000 characters long. Now one short error line, exit 2, and
    nothing written."""
    folder = tmp_path / "out"
    folder.mkdir()
    arguments = {"--db": ("--db", f"sqlite:///{folder / LONG_NAME}", "list", "--json"),
                 "-o": ("--db", ledger_file.url, "report", DONE, "-o", str(folder / LONG_NAME)),
                 "--bundle": ("--db", ledger_file.url, "report", DONE, "--bundle",
                              str(folder / LONG_NAME)),
                 "--appendix": ("--db", ledger_file.url, "report", DONE, "-o",
                                str(folder / "r.json"), "--appendix", str(folder / LONG_NAME)),
                 "keygen": ("keygen", "--out", str(folder / LONG_NAME))}[where]
    line = assert_one_line_error(run_cli(*arguments, cwd=tmp_path), says="File name too long")
    assert "internal error" not in line
    assert list(folder.iterdir()) == []


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130() -> None:
    """Ctrl-C in the first half second — while numpy and SQLAlchemy load — printed a
    KeyboardInterrupt traceback through the imports. The interrupt is sent here right after the
    package loads, as the `ledger` script's process; a program importing the package keeps
    Python's own Ctrl-C."""
    import os
    import sys

    # as started from a terminal: with Python's own handler (a test runner started in the
    # background of a script has SIGINT ignored, and its children inherit that)
    script = ("import os, signal, sys, time\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "sys.argv[0] = 'ledger'\nimport cli\n"
              "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(10)\nprint('not stopped')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "ledger: aborted\n", "")
    kept = ("import signal, sys\nsignal.signal(signal.SIGINT, {handler})\n"
            "before = signal.getsignal(signal.SIGINT)\nsys.argv[0] = {name!r}\nimport cli\n"
            "print(signal.getsignal(signal.SIGINT) is before)")
    for handler, name in [("signal.default_int_handler", "python"),  # a program importing it
                          ("signal.SIG_IGN", "ledger")]:  # `ledger … &` in a script
        done = subprocess.run([sys.executable, "-c", kept.format(handler=handler, name=name)],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.stdout == "True\n", (handler, done.stderr)


def test_once_started_ctrl_c_is_pythons_own_unless_the_command_was_started_ignoring_it() -> None:
    """While the command works, Ctrl-C is Python's KeyboardInterrupt (click's Abort: cleanup
    runs, exit 130), not the start-up handler's immediate exit; and `ledger … &` in a script,
    started with SIGINT ignored, keeps ignoring it."""
    import os

    script = ("import signal, sys\nsignal.signal(signal.SIGINT, {handler})\n"
              "sys.argv[0] = 'ledger'\nimport cli.main\n"
              "def report(*_args, **_kwargs):\n"
              "    print(signal.getsignal(signal.SIGINT) is {expected})\n"
              "cli.main.cli.main = report\ncli.main.main(['list'])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for handler, expected in [("signal.default_int_handler", "signal.default_int_handler"),
                              ("signal.SIG_IGN", "signal.SIG_IGN")]:
        done = subprocess.run([sys.executable, "-c", script.format(handler=handler,
                                                                   expected=expected)],
                              capture_output=True, text=True, env=env, timeout=60)
        assert (done.returncode, done.stdout) == (0, "True\n"), (handler, done.stderr)


INTERRUPTED_COMMAND = textwrap.dedent("""
    import cli.main

    @cli.main.cli.command("interrupted")
    def interrupted():
        raise KeyboardInterrupt  # Ctrl-C while the command works

    cli.main.main(["interrupted"])
""")


def test_ctrl_c_while_a_command_works_is_one_line_on_a_stderr_that_is_no_terminal() -> None:
    """click writes a blank line before its Abort (to close a terminal's ``^C`` echo): stderr
    captured in a log or a pipe read an empty line, then ``ledger: aborted``. Now the one
    line; on a terminal the line break that ends ``^C`` is kept."""
    import os
    import pty

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_COMMAND], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "ledger: aborted\n")
    terminal, its_side = pty.openpty()
    on_terminal = subprocess.run([sys.executable, "-c", INTERRUPTED_COMMAND], stderr=its_side,
                                 stdout=subprocess.PIPE, cwd=ROOT, timeout=60)
    os.close(its_side)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert (on_terminal.returncode, shown) == (130, b"\r\nledger: aborted\r\n")


def test_driver_log_lines_stay_off_stderr_behind_the_one_error_line() -> None:
    """psycopg logs a warning when a server does not cancel a query on Ctrl-C; with no handler
    Python printed it above `ledger: aborted` (the PG review froze the server mid-verify)."""
    script = textwrap.dedent("""
        import logging, click, cli.main
        def interrupted(*_args, **_kwargs):
            logging.getLogger("psycopg").warning("query not terminated after cancellation")
            raise click.exceptions.Abort()
        cli.main.cli.main = interrupted
        cli.main.main(["verify"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines() == ["ledger: aborted"], done.stderr


def test_an_unexpected_error_is_one_line_and_exit_2_and_ledger_debug_shows_its_traceback(
) -> None:
    """A bug is not a failed check (exit 1): exit 2 and one line naming the exception, its
    control characters escaped, the traceback only when asked for with LEDGER_DEBUG."""
    import os

    script = textwrap.dedent("""
        import cli.main
        def broken(*_args, **_kwargs):
            raise RuntimeError("disk on fire\\n  second line\\x1b[2J")
        cli.main.cli.main = broken
        cli.main.main(["list"])
    """)
    env = {key: value for key, value in os.environ.items() if key != "LEDGER_DEBUG"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines() == [  # on one line, the terminal's clear-screen escaped
        "ledger: internal error: RuntimeError: disk on fire second line\\x1b[2J "
        "(set LEDGER_DEBUG=1 for a traceback)"]
    debug = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           cwd=ROOT, env={**env, "LEDGER_DEBUG": "1"}, timeout=60)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "RuntimeError: disk on fire" in debug.stderr


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_ctrl_c_during_a_replay_with_workers_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group: a replay worker interrupted with
    the main process printed a KeyboardInterrupt traceback, or died first, so that the replay
    ended "a replay worker process died" (exit 3). The workers leave Ctrl-C to the main
    process, which stops them: one line, exit 130, every time."""
    import signal
    import time

    from replay_helpers import record_run, sample_data

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    features, labels = sample_data()
    exp = record_run(url, tmp_path / "data", epochs=4, batch_size=4,
                     data=(np.tile(features, (8, 1)), np.tile(labels, 8)))
    for _attempt in range(3):
        command = subprocess.Popen([*LEDGER_COMMAND, "--db", url, "replay", "--no-record",
                                    "--jobs", "2", "--data-dir", str(tmp_path / "data"), exp],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        while command.poll() is None and not _children(command.pid):
            time.sleep(0.005)  # until the replay's worker runs
        assert command.poll() is None, "the replay ended before its worker started"
        os.killpg(command.pid, signal.SIGINT)
        out, err = command.communicate(timeout=120)
        assert (command.returncode, out, err) == (130, "", "ledger: aborted\n")
