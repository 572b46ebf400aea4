"""The ledger's tables, its schema version, and the triggers that make it append-only.

Four tables, all insert-only: ``ledger_meta`` (format marker and schema version),
``ledger_experiments`` (one row per experiment, for listing), ``ledger_events`` (the chains) and
``ledger_stream_claims`` (which writer holds which stream open, see :mod:`ledger.store.claims`).
The event columns repeat fields of the stored body for queries; the body is the truth and
verification checks that both agree.

The claims table came after schema version 1 and is additive: a version-1 ledger without it is
still version 1, and gets the table (with its triggers) the first time a writer opens it.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Integer, LargeBinary, MetaData, String, Table,
                        Text, UniqueConstraint)
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 1
FORMAT_MARKER = "reproducibility-ledger"
"""Value of the ``format`` meta key: what tells a ledger from any other database."""

metadata = MetaData()
_id_type = BigInteger().with_variant(Integer, "sqlite")

meta_table = Table(
    "ledger_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

experiments_table = Table(
    "ledger_experiments", metadata,
    Column("exp", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_t", BigInteger, nullable=False),
)

events_table = Table(
    "ledger_events", metadata,
    Column("id", _id_type, primary_key=True, autoincrement=True),
    Column("exp", String(64), nullable=False),
    Column("stream", String(260), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("path", LargeBinary, nullable=False),
    Column("seed", LargeBinary(16)),
    Column("input", LargeBinary(32)),
    Column("output", LargeBinary(32)),
    Column("prev", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("t", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    UniqueConstraint("exp", "stream", "seq", name="ledger_events_chain_position"),
)

claims_table = Table(
    "ledger_stream_claims", metadata,
    Column("id", _id_type, primary_key=True, autoincrement=True),
    Column("exp", String(64), nullable=False),
    Column("stream", String(260), nullable=False),
    Column("attempt", BigInteger, nullable=False),
    Column("action", String(16), nullable=False),
    Column("start_seq", BigInteger, nullable=False),
    Column("writer", String(64), nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", BigInteger, nullable=False),
    Column("t", BigInteger, nullable=False),
    UniqueConstraint("exp", "stream", "attempt", "action", name="ledger_stream_claims_attempt"),
)

APPEND_ONLY_TABLES = ("ledger_meta", "ledger_experiments", "ledger_events",
                      "ledger_stream_claims")

UNIQUE_KEYS: dict[str, list[tuple[str, ...]]] = {
    "ledger_meta": [("key",)], "ledger_experiments": [("exp",)],
    "ledger_events": [("exp", "stream", "seq"), ("id",)],
    "ledger_stream_claims": [("exp", "stream", "attempt", "action"), ("id",)]}
"""Each table's unique keys: an insert that collides with one would, as REPLACE, delete a row."""


def _sqlite_triggers(tables: tuple[str, ...]) -> list[str]:
    return [
        *[f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action.upper()} ON {table} "
          f"BEGIN SELECT RAISE(ABORT, 'ledger is append-only: {action.upper()} of {table} "
          f"refused'); END" for table in tables for action in ("update", "delete")],
        # SQLite's INSERT OR REPLACE deletes the colliding row without firing DELETE triggers,
        # so an insert over an existing row is refused before it happens.
        *[f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} WHEN "
          + " OR ".join(f"EXISTS (SELECT 1 FROM {table} WHERE "
                        + " AND ".join(f"{column} = NEW.{column}" for column in key) + ")"
                        for key in UNIQUE_KEYS[table])
          + f" BEGIN SELECT RAISE(ABORT, 'ledger is append-only: INSERT over an existing row of "
            f"{table} refused'); END" for table in tables],
    ]


def sqlite_trigger_sql() -> dict[str, str]:
    """Each SQLite trigger of the ledger by name, as ``sqlite_master`` stores its definition."""
    triggers = {}
    for statement in _sqlite_triggers(APPEND_ONLY_TABLES):
        text = statement.replace("CREATE TRIGGER IF NOT EXISTS ", "CREATE TRIGGER ", 1)
        triggers[text.split()[2]] = text
    return triggers


def postgres_refusal_source() -> str:
    """The body of the PostgreSQL function the append-only triggers call, whitespace folded:
    what a trigger must still run to count as in force."""
    statement = _postgres_triggers(())[0]
    return " ".join(statement.split("$$")[1].replace("%%", "%").split())


def _postgres_triggers(tables: tuple[str, ...]) -> list[str]:
    # psycopg reads % as a placeholder marker, hence %% for a literal % in the function body.
    return [
        """CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
           BEGIN RAISE EXCEPTION 'ledger is append-only: %% of %% refused', TG_OP, TG_TABLE_NAME;
           END $$ LANGUAGE plpgsql""",
        *[f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
          f"FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()" for table in tables],
        *[f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
          f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()" for table in tables],
    ]


def _create_triggers(connection: Connection, tables: tuple[str, ...]) -> None:
    postgres = connection.dialect.name == "postgresql"
    for statement in (_postgres_triggers if postgres else _sqlite_triggers)(tables):
        connection.exec_driver_sql(statement)


TRIGGER_NAMES = {
    "sqlite": tuple(f"{table}_no_{action}" for table in APPEND_ONLY_TABLES
                    for action in ("update", "delete", "replace")),
    "postgresql": tuple(f"{table}_{what}" for table in APPEND_ONLY_TABLES
                        for what in ("append_only", "no_truncate")),
}
"""The triggers each backend installs to keep the ledger append-only (by name)."""


def create_schema(connection: Connection) -> None:
    """Create tables, triggers and the meta rows in one transaction of ``connection``."""
    metadata.create_all(connection)
    _create_triggers(connection, APPEND_ONLY_TABLES)
    connection.execute(meta_table.insert(), [
        {"key": "format", "value": FORMAT_MARKER},
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
    ])


def create_claims_table(connection: Connection) -> None:
    """Add the claims table and its triggers to a version-1 ledger made before it existed."""
    claims_table.create(connection)
    _create_triggers(connection, (claims_table.name,))
