"""The store contract (DESIGN §4), written once and run on every backend (the ``store`` fixture).

Opening and refusing databases, the schema version, append-only enforced by the database itself,
(exp, stream, seq) uniqueness, all-or-nothing batches, and every read.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from ledger.digests import ZERO_DIGEST
from ledger.errors import (BadInputError, ConcurrentWriteError, InvalidIdError, StoreError,
                           UnknownExperimentError)
from ledger.events import make_event
from ledger.store import SCHEMA_VERSION, ExperimentRow, Store, StreamHead, StreamWriter
from ledger.store.store import EVENT_COLUMNS, event_row
from ledger_builders import (drop_append_only_triggers, execute, record_experiment, rows,
                             table_names)

TABLES = ("ledger_events", "ledger_experiments", "ledger_meta", "ledger_stream_claims")
CHANGES = {
    "ledger_events": ("UPDATE ledger_events SET kind = 'forged' WHERE seq = 1",
                      "DELETE FROM ledger_events WHERE seq = 1"),
    "ledger_experiments": ("UPDATE ledger_experiments SET name = 'forged'",
                           "DELETE FROM ledger_experiments"),
    "ledger_meta": ("UPDATE ledger_meta SET value = '99' WHERE key = 'schema_version'",
                    "DELETE FROM ledger_meta"),
    "ledger_stream_claims": ("UPDATE ledger_stream_claims SET action = 'release'",
                             "DELETE FROM ledger_stream_claims WHERE action = 'release'"),
}


def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every ledger table, to show that nothing changed."""
    with store.engine.connect() as connection:
        return {table: sorted(tuple(row) for row in connection.execute(text(
            f"SELECT * FROM {table}"))) for table in TABLES}


# -- opening -----------------------------------------------------------------------------------

def test_a_new_ledger_carries_its_schema_version(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
    with store.engine.connect() as connection:
        meta = dict(connection.execute(text("SELECT key, value FROM ledger_meta")).all())
    assert meta == {"format": "reproducibility-ledger", "schema_version": str(SCHEMA_VERSION)}
    assert store.experiments() == []


def test_reopening_finds_what_was_written(store: Store, store_url: str) -> None:
    recorded = record_experiment(store)
    with Store.open(store_url) as reopened:
        assert [row.exp for row in reopened.experiments()] == [recorded.exp]
    with Store.open(store_url, create=True) as again:  # create on an existing ledger: no re-init
        assert again.schema_version == SCHEMA_VERSION
        assert len(snapshot(again)["ledger_meta"]) == 2


def test_a_newer_schema_version_is_refused(store: Store, store_url: str) -> None:
    drop_append_only_triggers(store)
    execute(store, "UPDATE ledger_meta SET value = '99' WHERE key = 'schema_version'")
    for create in (False, True):
        with pytest.raises(StoreError, match="99.*newer"):
            Store.open(store_url, create=create)


@pytest.mark.parametrize("value", ["", "one", "0", "-3",
                                   # int() reads these as 1, but the ledger never writes them
                                   " 1", "1 ", "1\n", "01", "+1", "\u0661", "1_0"])
def test_an_unreadable_schema_version_is_refused(store: Store, store_url: str, value: str) -> None:
    drop_append_only_triggers(store)
    execute(store, "UPDATE ledger_meta SET value = :value WHERE key = 'schema_version'",
            value=value)
    with pytest.raises(StoreError, match="schema version"):
        Store.open(store_url)


def test_a_database_without_the_format_marker_is_refused(store: Store, store_url: str) -> None:
    """Refused as a ledger whose marker is gone, saying what to do — not 'not a ledger (format
    marker missing)', which left an auditor to guess whether it was the wrong file."""
    drop_append_only_triggers(store)
    execute(store, "DELETE FROM ledger_meta WHERE key = 'format'")
    with pytest.raises(StoreError, match=r"is a ledger whose format marker is gone \(its row in "
                                         r"ledger_meta was removed outside this program\), so it "
                                         r"is not read: restore the ledger from a copy"):
        Store.open(store_url)


def test_a_database_whose_marker_names_another_format_says_which(store: Store,
                                                                 store_url: str) -> None:
    drop_append_only_triggers(store)
    execute(store, "UPDATE ledger_meta SET value = 'other-tool' WHERE key = 'format'")
    with pytest.raises(StoreError, match="is not a ledger: an? .* database whose format marker "
                                         "is 'other-tool', not 'reproducibility-ledger'"):
        Store.open(store_url)


def test_an_sqlite_ledger_without_its_meta_table_is_a_ledger_whose_marker_is_gone(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        record_experiment(store, "exp-000000000001", workers=0)
        drop_append_only_triggers(store)
        execute(store, "DROP TABLE ledger_meta")
    with pytest.raises(StoreError, match=r"is a ledger whose format marker is gone \(the "
                                         r"ledger_meta table that holds it was removed"):
        Store.open(url)


def test_an_sqlite_ledger_is_in_wal_mode(sqlite_url: str) -> None:
    with Store.open(sqlite_url, create=True) as store:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no ledger"):
        Store.open(f"sqlite:///{path}")
    assert not path.exists()
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(f"sqlite:///{tmp_path / 'no-such-folder' / 'ledger.db'}", create=True)
    assert not (tmp_path / "no-such-folder").exists()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"just some text, not a database\n" * 10)
    for create in (False, True):
        with pytest.raises(StoreError, match="not an SQLite database"):
            Store.open(f"sqlite:///{path}", create=create)
    assert path.read_bytes() == b"just some text, not a database\n" * 10
    with pytest.raises(StoreError, match="folder"):
        Store.open(f"sqlite:///{tmp_path}")


def test_an_empty_file_is_a_ledger_never_written_or_cut_short(tmp_path: Path) -> None:
    """A 0-byte file was refused as 'not an SQLite database'; it is what a ledger truncated,
    or never written, leaves. Opened to create, it becomes a ledger."""
    path = tmp_path / "ledger.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match=r"is an empty file \(0 bytes\), not a ledger: no ledger "
                                         r"was ever written to it, or it was cut short"):
        Store.open(f"sqlite:///{path}")
    assert path.read_bytes() == b""
    with Store.open(f"sqlite:///{path}", create=True) as store:
        assert store.schema_version == SCHEMA_VERSION


def test_an_sqlite_database_without_tables_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.execute("DROP TABLE t")  # an SQLite file with its header, and no table
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="is not a ledger: an SQLite database with no tables, "
                                         "in which nothing was ever recorded"):
        Store.open(f"sqlite:///{path}")


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    connection.execute("INSERT INTO customers VALUES (1, 'Ada')")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    for create in (False, True):
        with pytest.raises(StoreError, match="is not a ledger: an SQLite database, but without "
                                             "the ledger's tables"):
            Store.open(f"sqlite:///{path}", create=create)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_an_empty_postgres_schema_is_not_a_ledger_unless_created(postgres_url: str) -> None:
    with pytest.raises(StoreError, match="not a ledger"):
        Store.open(postgres_url)
    assert table_names(postgres_url) == []
    with Store.open(postgres_url, create=True) as store:
        assert store.backend == "postgresql" and store.schema_version == SCHEMA_VERSION


def test_a_foreign_postgres_schema_is_refused(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE customers (id int primary key)")
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="not a ledger"):
        Store.open(postgres_url, create=True)


@pytest.mark.parametrize("statements", [
    ["ALTER TABLE ledger_events DROP CONSTRAINT ledger_events_chain_position"],
    ["ALTER TABLE ledger_meta RENAME TO old_meta",
     "CREATE MATERIALIZED VIEW ledger_meta AS SELECT key, value FROM old_meta",
     "CREATE UNIQUE INDEX ON ledger_meta (key)"],
    ["ALTER TABLE ledger_experiments DROP COLUMN created_t",
     "ALTER TABLE ledger_experiments ADD COLUMN created_t bigint GENERATED ALWAYS AS (0) STORED"],
    ["ALTER TABLE ledger_events ALTER COLUMN t TYPE numeric"],
], ids=["events-without-their-unique-key", "materialized-view-with-the-key",
        "generated-column-under-its-name", "column-of-another-type"])
def test_a_postgres_ledger_table_that_is_not_the_plain_keyed_table_is_refused(
        postgres_url: str, statements: list[str]) -> None:
    """Without the unique (exp, stream, seq) key a second writer forks a chain; a
    materialized view (same columns, types and unique key) shows rows that are not the table's;
    a generated column computes what it shows; a column of another type reads back otherwise:
    each is refused at open, by its own check."""
    Store.open(postgres_url, create=True).close()
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="is not the ledger's plain table"):
        Store.open(postgres_url)


def test_an_unreachable_server_is_a_store_error() -> None:
    """A StoreError, password masked: "cannot open" with the 'postgres' extra, "no driver"
    (naming the extra) without it."""
    has_driver = importlib.util.find_spec("psycopg") is not None
    with pytest.raises(StoreError, match="cannot open" if has_driver else "no driver"):
        Store.open("postgresql+psycopg://postgres:secret@127.0.0.1:1/test")
    try:
        Store.open("postgresql+psycopg://postgres:secret@127.0.0.1:1/test")
    except StoreError as error:
        assert "secret" not in str(error)  # passwords are never shown


@pytest.mark.parametrize("url", ["mysql://localhost/db", "not a url", "://"])
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError):
        Store.open(url)


@pytest.mark.parametrize("url", ["postgresql://alice:s3cret@localhost:notaport/db",
                                 "postgresql://alice:s3cret@[::1/db",
                                 "postgresql://alice:s3cret@localhost/db\x00"])
def test_a_malformed_url_is_refused_with_its_password_masked(url: str) -> None:
    """A URL that does not parse is shown back, to say what was refused — but never with its
    password, which every other error about a URL masks too (a mistyped port printed it)."""
    with pytest.raises(StoreError, match="not a database URL") as refused:
        Store.open(url)
    assert "s3cret" not in str(refused.value) and "alice:***@" in str(refused.value)


# -- append-only, enforced by the database ---------------------------------------------------

@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("action", ["update", "delete"])
def test_the_database_refuses_updates_and_deletes(store: Store, table: str, action: str) -> None:
    record_experiment(store)
    before = snapshot(store)
    statement = CHANGES[table][action == "delete"]
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
        execute(store, statement)
    assert snapshot(store) == before


def raw_driver_connection(store: Store):  # noqa: ANN201 - a DBAPI connection
    """A connection of the bare driver, opened without SQLAlchemy or the library."""
    url = store.engine.url
    if store.backend == "sqlite":
        return sqlite3.connect(url.database, isolation_level=None)
    import psycopg

    return psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True)


@pytest.mark.parametrize("table", ["ledger_events", "ledger_experiments", "ledger_meta"])
def test_a_bare_driver_connection_is_refused_too(store: Store, table: str) -> None:
    record_experiment(store)
    before = snapshot(store)
    connection = raw_driver_connection(store)
    try:
        for statement in CHANGES[table]:
            with pytest.raises(Exception, match="append-only") as raised:
                connection.execute(statement)
            assert type(raised.value).__module__.split(".")[0] in ("sqlite3", "psycopg")
    finally:
        connection.close()
    assert snapshot(store) == before


def test_postgres_refuses_truncate_and_upsert(postgres_url: str) -> None:
    with Store.open(postgres_url, create=True) as store:
        record_experiment(store)
        before = snapshot(store)
        for table in TABLES:
            with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
                execute(store, f"TRUNCATE {table}")
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            execute(store, "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '99') "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        assert snapshot(store) == before


@pytest.mark.parametrize("statement", [
    "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('schema_version', '99')",
    "REPLACE INTO ledger_experiments (exp, name, created_t) SELECT exp, 'forged', 0 "
    "FROM ledger_experiments",
    "INSERT OR REPLACE INTO ledger_events (exp, stream, seq, kind, path, prev, hash, t, body) "
    "SELECT exp, stream, seq, 'forged', path, prev, hash, t, body FROM ledger_events WHERE seq = 1",
    "INSERT OR REPLACE INTO ledger_events (id, exp, stream, seq, kind, path, prev, hash, t, body) "
    "SELECT id, exp, 'other', seq, kind, path, prev, hash, t, body FROM ledger_events "
    "WHERE seq = 1",
])
def test_sqlite_refuses_replace_which_deletes_without_delete_triggers(sqlite_url: str,
                                                                      statement: str) -> None:
    with Store.open(sqlite_url, create=True) as store:
        record_experiment(store)
        before = snapshot(store)
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            execute(store, statement)
        assert snapshot(store) == before


def test_the_store_has_no_method_that_updates_or_deletes() -> None:
    names = [name for name in dir(Store) if not name.startswith("__")]
    assert not [name for name in names if any(word in name for word in (
        "update", "delete", "remove", "truncate", "replace", "set_"))]


# -- uniqueness of (exp, stream, seq) and all-or-nothing batches ------------------------------

def test_recording_an_experiment_twice_is_refused(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    with pytest.raises(ConcurrentWriteError, match="already exists"):
        store.insert_experiment(recorded.exp, recorded.name, recorded.main[0])
    assert len(rows(store, recorded.exp, "main")) == len(recorded.main)


@pytest.mark.parametrize("change", [
    {"exp": "exp-000000000000"}, {"stream": "worker-0"}, {"seq": 1}, {"kind": "metric"},
    {"prev": b"\x01" * 32}, {"params": {"name": "another name"}},
])
def test_an_experiment_starts_with_its_own_experiment_created(store: Store, change: dict) -> None:
    fields = {"exp": "exp-0123456789ab", "stream": "main", "seq": 0, "kind": "experiment_created",
              "params": {"name": "run"}, "prev": ZERO_DIGEST, "t": 5, **change}
    first = make_event(fields.pop("exp"), fields.pop("stream"), fields.pop("seq"),
                       fields.pop("kind"), **fields)
    with pytest.raises(BadInputError):
        store.insert_experiment("exp-0123456789ab", "run", first)
    assert store.experiments() == [] and store.chain_sizes() == []


def test_a_taken_position_is_a_concurrent_write_error(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    taken = recorded.main[1]
    rival = make_event(taken.exp, taken.stream, taken.seq, "metric", params={"forged": True},
                       prev=taken.prev, t=taken.t)
    with pytest.raises(ConcurrentWriteError, match="seq 1"):
        store.append_rows([event_row(rival)])
    assert rows(store, recorded.exp, "main")[1]["hash"] == taken.hash


def test_a_batch_is_all_or_nothing(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    before = snapshot(store)
    last = recorded.main[-1]
    fresh = []
    prev = last.hash
    for seq in range(last.seq + 1, last.seq + 4):
        event = make_event(recorded.exp, "main", seq, "metric", params={"n": seq}, prev=prev, t=seq)
        fresh.append(event)
        prev = event.hash
    duplicate = make_event(recorded.exp, "main", 1, "metric", prev=recorded.main[0].hash, t=1)
    with pytest.raises(ConcurrentWriteError):
        store.append_rows([event_row(event) for event in fresh] + [event_row(duplicate)])
    assert snapshot(store) == before
    store.append_rows([event_row(event) for event in fresh])
    assert store.last_event(recorded.exp, "main") == (fresh[-1].seq, fresh[-1].hash)


def test_an_empty_batch_writes_nothing(store: Store) -> None:
    store.append_rows([])
    assert store.chain_sizes() == []


# -- reads -------------------------------------------------------------------------------------

@pytest.fixture
def three(store: Store) -> dict[str, object]:
    """Three experiments: old and complete, newest and failed, middle and incomplete."""
    old = record_experiment(store, "old-run", name="old", created_t=1_000)
    new = record_experiment(store, "new-run", name="new", created_t=3_000, status="failed",
                            workers=1)
    middle = record_experiment(store, "middle-run", name="middle", created_t=2_000,
                               complete=False, workers=3)
    return {"old": old, "new": new, "middle": middle}


def test_experiments_are_listed_newest_first_with_status(store: Store, three: dict) -> None:
    assert store.experiments() == [
        ExperimentRow("new-run", "new", 3_000, "failed"),
        ExperimentRow("middle-run", "middle", 2_000, "incomplete"),
        ExperimentRow("old-run", "old", 1_000, "ok"),
    ]


def test_experiments_created_at_the_same_time_are_ordered_by_id(store: Store) -> None:
    for exp in ("b-run", "c-run", "a-run"):
        record_experiment(store, exp, created_t=10, workers=0)
    assert [row.exp for row in store.experiments()] == ["a-run", "b-run", "c-run"]


def test_one_experiment_by_id(store: Store, three: dict) -> None:
    assert store.experiment("middle-run") == ExperimentRow("middle-run", "middle", 2_000,
                                                           "incomplete")
    assert store.experiment("old-run").status == "ok"
    with pytest.raises(UnknownExperimentError, match="unknown experiment"):
        store.experiment("exp-ffffffffffff")
    for malformed in ("../old-run", "old-run; DROP TABLE ledger_events", "x" * 10_240, ""):
        with pytest.raises(InvalidIdError):
            store.experiment(malformed)


def test_stream_heads(store: Store, three: dict) -> None:
    for recorded in three.values():
        expected = {name: StreamHead(name, len(events), events[-1].hash)
                    for name, events in recorded.streams.items() if events}
        assert store.stream_heads(recorded.exp) == expected
    assert store.stream_heads("exp-ffffffffffff") == {}


def test_counts_by_kind(store: Store, three: dict) -> None:
    for recorded in three.values():
        assert store.counts_by_kind(recorded.exp) == recorded.counts_by_kind()
    assert store.counts_by_kind("middle-run").get("run_completed") is None


def test_chain_sizes(store: Store, three: dict) -> None:
    expected = sorted((recorded.exp, name, len(events), len(events) - 1)
                      for recorded in three.values()
                      for name, events in recorded.streams.items() if events)
    assert store.chain_sizes() == expected
    assert store.chain_sizes("new-run") == [row for row in expected if row[0] == "new-run"]
    assert store.chain_sizes("exp-ffffffffffff") == []


def test_last_and_first_events(store: Store, three: dict) -> None:
    old = three["old"]
    assert store.last_event(old.exp, "worker-1") == (old.streams["worker-1"][-1].seq,
                                                     old.streams["worker-1"][-1].hash)
    assert store.last_event(old.exp, "worker-9") is None
    assert store.first_event_body(old.exp, "experiment_created")["params"]["name"] == "old"
    assert store.first_event_body(old.exp, "checkpoint") is None
    assert store.first_event_hash(old.exp, "run_completed") == old.head
    assert store.first_event_hash("middle-run", "run_completed") is None
    # the first of several, by insertion; the last of a stream, by seq
    assert store.first_event_body(old.exp, "metric")["params"]["epoch"] == 0
    assert store.first_event_hash(old.exp, "metric") == next(
        event.hash for event in old.main if event.kind == "metric")
    assert (store.last_kind(old.exp, "main"), store.last_kind(old.exp, "worker-9")) == (
        "run_completed", None)


def test_a_stream_head_is_its_highest_seq_whatever_order_a_batch_came_in(store: Store) -> None:
    """append_rows takes a batch's rows in any order: a stream's head is the hash of its
    highest seq, not of whichever row was stored last."""
    recorded = record_experiment(store, workers=0, complete=False)
    fresh = [recorded.main[-1]]
    for step in (1, 2):
        fresh.append(make_event(recorded.exp, "main", fresh[-1].seq + 1, "metric",
                                prev=fresh[-1].hash, t=step))
    store.append_rows([event_row(event) for event in reversed(fresh[1:])])
    assert store.stream_heads(recorded.exp)["main"] == StreamHead(
        "main", len(recorded.main) + 2, fresh[-1].hash)


def test_stored_rows_are_exactly_what_was_hashed(store: Store, three: dict) -> None:
    expected = sorted((event_row(event) for recorded in three.values()
                       for events in recorded.streams.values() for event in events),
                      key=lambda row: row[:3])
    stored = list(store.iter_event_rows(batch_size=3))
    assert [tuple(row) for row in stored] == expected
    assert all(type(row[EVENT_COLUMNS.index("body")]) is bytes for row in stored)
    only_old = [tuple(row) for row in store.iter_event_rows("old-run")]
    assert only_old == [row for row in expected if row[0] == "old-run"]


def test_segment_rows(store: Store, three: dict) -> None:
    main = three["old"].main
    columns = ("seq", "hash", "body")
    got = list(store.iter_segment_rows("old-run", "main", 2, 5, columns, batch_size=2))
    assert [tuple(row) for row in got] == [(e.seq, e.hash, e.body) for e in main[2:5]]
    assert list(store.iter_segment_rows("old-run", "main", 100, 200, columns)) == []


def test_experiment_ids_include_events_without_a_row(store: Store, three: dict) -> None:
    assert store.experiment_ids() == ["middle-run", "new-run", "old-run"]
    orphan = make_event("orphan-run", "main", 0, "metric", prev=ZERO_DIGEST, t=1)
    store.append_rows([event_row(orphan)])
    assert store.experiment_ids() == ["middle-run", "new-run", "old-run", "orphan-run"]
    assert [row.exp for row in store.experiments()] == ["new-run", "middle-run", "old-run"]


def test_a_damaged_run_completed_body_does_not_break_listing(store: Store) -> None:
    recorded = record_experiment(store, workers=0)
    drop_append_only_triggers(store)
    execute(store, "UPDATE ledger_events SET body = :body WHERE kind = 'run_completed'",
            body=b"\xc1 not msgpack")
    assert store.experiments()[0].exp == recorded.exp
    assert store.experiments()[0].status == "unreadable"


def test_writers_of_every_backend_produce_the_same_hashes(store: Store, tmp_path: Path) -> None:
    """The chain does not depend on the database: same inputs, same events, same head."""
    recorded = record_experiment(store, "same-run")
    with Store.open(f"sqlite:///{tmp_path / 'other.db'}", create=True) as other:
        again = record_experiment(other, "same-run")
    assert again.head == recorded.head


def test_a_writer_continues_a_stream_opened_through_another_store(store: Store,
                                                                  store_url: str) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    with Store.open(store_url) as second:
        with StreamWriter(second, recorded.exp, "main", flush_interval=None) as writer:
            assert writer.next_seq == len(recorded.main)
            assert writer.head == recorded.main[-1].hash
            event = writer.append("metric", params={"late": True})
    assert store.last_event(recorded.exp, "main") == (event.seq, event.hash)


def test_a_draw_recorded_twice_is_found_behind_alike_audit_records(store: Store) -> None:
    """The audit stream records events alike in kind and path (one per replay or report):
    they are not draws, and an earlier pair of them must not hide a draw recorded twice."""
    exp = "exp-0123456789ab"
    with StreamWriter(store, exp, "audit", flush_interval=None) as audit:
        for _ in range(2):
            audit.append("note")
    with StreamWriter(store, exp, "main", flush_interval=None) as main:
        for _ in range(2):
            main.append("user_draw", path=("model", "init"))
    found = store.repeated_draw(exp, ["metric"])
    assert [(stream, seq) for stream, seq, _body in found] == [("main", 0), ("main", 1)]


def test_the_triggers_in_force_are_those_of_the_tables_the_ledger_has(store: Store) -> None:
    """A ledger made before the claims table existed has no claims triggers to report: only
    the triggers of its own tables are listed (a compliance report states them in force)."""
    drop_append_only_triggers(store)
    execute(store, "DROP TABLE ledger_stream_claims")
    triggers = store.append_only_triggers()
    assert triggers and not any(name.startswith("ledger_stream_claims_") for name in triggers)


def test_a_read_that_gets_no_connection_from_the_pool_is_one_store_error(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of the pool in use for 30 s fails a read with SQLAlchemy's own
    TimeoutError, no driver error: a read turns it into one StoreError as it does a driver's
    (it was a traceback)."""
    def pool_exhausted() -> None:
        raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached, "
                                          "connection timed out, timeout 30.00")

    monkeypatch.setattr(store.engine, "connect", pool_exhausted)
    with pytest.raises(StoreError, match="cannot read .*QueuePool limit"):
        store.experiments()


def test_a_postgres_trigger_that_no_longer_calls_the_ledger_s_refusal_is_not_in_force(
        postgres_url: str) -> None:
    """A trigger kept under its name but pointed at a function that lets changes through
    refuses nothing: the compliance report must not state it in force."""
    with Store.open(postgres_url, create=True) as store:
        execute(store, "CREATE FUNCTION let_through() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RETURN OLD; END $$")
        execute(store, "DROP TRIGGER ledger_events_append_only ON ledger_events")
        execute(store, "CREATE TRIGGER ledger_events_append_only BEFORE UPDATE OR DELETE ON "
                       "ledger_events FOR EACH ROW EXECUTE FUNCTION let_through()")
        triggers = store.append_only_triggers()
    assert triggers["ledger_events_append_only"] is False
    assert triggers["ledger_experiments_append_only"] is True
