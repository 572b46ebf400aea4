"""A received SQLite ledger whose schema runs the sender's code is refused at open.

A view in place of a ledger table (e.g. over an endless recursive query) made every command
hang; a generated column, a trigger or an expression index of the sender's would run on every
read or write. The hash chain cannot see any of this — it covers rows, not the schema — so
opening checks that each ledger table is the plain table we create.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli
from ledger.errors import StoreError
from ledger.store import Store
from ledger_builders import record_experiment

ENDLESS = "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("pristine")
    with Store.open(f"sqlite:///{folder / 'ledger.db'}", create=True) as store:
        recorded = record_experiment(store, epochs=1, batches=2)
    return folder / "ledger.db", recorded.exp


def _damaged(pristine: tuple[Path, str], tmp_path: Path, *statements: str) -> Path:
    target = tmp_path / "ledger.db"
    shutil.copyfile(pristine[0], target)
    connection = sqlite3.connect(target)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()
    return target


CASES = {
    "view-over-endless-query": [
        "DROP TABLE ledger_meta",
        "CREATE VIEW ledger_meta(key, value) AS SELECT 'format', 'reproducibility-ledger' "
        f"UNION ALL SELECT 'schema_version', '1' UNION ALL SELECT * FROM ({ENDLESS} "
        "SELECT 'k', 'v' FROM c WHERE n < 0)"],
    "generated-column": [
        "ALTER TABLE ledger_experiments RENAME TO old_experiments",
        "CREATE TABLE ledger_experiments (exp VARCHAR(64) NOT NULL, name TEXT NOT NULL, "
        "created_t BIGINT NOT NULL, heavy TEXT GENERATED ALWAYS AS (printf('%.*c', 100, 'x')), "
        "PRIMARY KEY (exp))",
        "INSERT INTO ledger_experiments (exp, name, created_t) SELECT * FROM old_experiments"],
    "generated-column-under-a-ledger-name": [  # the same column names, one computed per read
        "ALTER TABLE ledger_experiments RENAME TO old_experiments",
        "CREATE TABLE ledger_experiments (exp VARCHAR(64) NOT NULL, name TEXT NOT NULL, "
        "created_t BIGINT GENERATED ALWAYS AS (length(printf('%.*c', 100, 'x'))), "
        "PRIMARY KEY (exp))",
        "INSERT INTO ledger_experiments (exp, name) SELECT exp, name FROM old_experiments"],
    "virtual-table-of-the-ledger-s-columns": [  # a module's code runs on every read
        "DROP TABLE ledger_experiments",
        "CREATE VIRTUAL TABLE ledger_experiments USING rtree(exp, name, created_t)"],
    "extra-column": ["ALTER TABLE ledger_meta ADD COLUMN note TEXT"],
    "foreign-trigger": [
        "CREATE TRIGGER ledger_events_audit AFTER INSERT ON ledger_events BEGIN "
        f"SELECT count(*) FROM ({ENDLESS} SELECT n FROM c); END"],
    "rewritten-trigger": [
        "DROP TRIGGER ledger_events_no_update",
        "CREATE TRIGGER ledger_events_no_update BEFORE UPDATE ON ledger_events BEGIN "
        "SELECT 1; END"],
    "expression-index": ["CREATE INDEX ledger_events_heavy ON ledger_events (length(body) * 2)"],
    "partial-index": ["CREATE INDEX ledger_events_some ON ledger_events (kind) WHERE seq > 0"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_schema_that_runs_the_senders_code_is_refused(pristine: tuple[Path, str],
                                                        tmp_path: Path, case: str) -> None:
    database = _damaged(pristine, tmp_path, *CASES[case])
    with pytest.raises(StoreError, match="is not a ledger"):
        Store.open(f"sqlite:///{database}")
    for command in (["list"], ["verify", pristine[1]]):
        result = run_cli("--db", f"sqlite:///{database}", *command, timeout=120)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.startswith("ledger: error:") and "is not a ledger" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_an_index_of_plain_columns_is_a_users_own_business(pristine: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    database = _damaged(pristine, tmp_path,
                        "CREATE INDEX ledger_events_by_kind ON ledger_events (exp, kind)")
    with Store.open(f"sqlite:///{database}") as store:
        assert [row.exp for row in store.experiments()] == [pristine[1]]


def test_a_users_own_table_with_its_triggers_and_indexes_is_their_business(
        pristine: tuple[Path, str], tmp_path: Path) -> None:
    """Only the ledger's tables are checked: a table of the user's in the same file, with a
    trigger and an expression index of theirs, runs only when they use it."""
    database = _damaged(pristine, tmp_path, "CREATE TABLE notes (text TEXT)",
                        "CREATE INDEX notes_length ON notes (length(text))",
                        "CREATE TRIGGER notes_stamp AFTER INSERT ON notes BEGIN SELECT 1; END")
    with Store.open(f"sqlite:///{database}") as store:
        assert [row.exp for row in store.experiments()] == [pristine[1]]
