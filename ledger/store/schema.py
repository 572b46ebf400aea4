"""The ledger's tables, its schema version, and the triggers that make it append-only.

Three tables, all insert-only: ``ledger_meta`` (format marker and schema version),
``ledger_experiments`` (one row per experiment, for listing) and ``ledger_events`` (the chains).
The event columns repeat fields of the stored body for queries; the body is the truth and
verification checks that both agree.
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

APPEND_ONLY_TABLES = ("ledger_meta", "ledger_experiments", "ledger_events")

_UNIQUE_KEYS = {"ledger_meta": [("key",)], "ledger_experiments": [("exp",)],
                "ledger_events": [("exp", "stream", "seq"), ("id",)]}
"""Each table's unique keys: an insert that collides with one would, as REPLACE, delete a row."""

_SQLITE_TRIGGERS = [
    *[f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action} BEFORE {action.upper()} ON {table} "
      f"BEGIN SELECT RAISE(ABORT, 'ledger is append-only: {action.upper()} of {table} refused'); "
      f"END" for table in APPEND_ONLY_TABLES for action in ("update", "delete")],
    # SQLite's INSERT OR REPLACE deletes the colliding row without firing DELETE triggers, so an
    # insert over an existing row is refused before it happens.
    *[f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} WHEN "
      + " OR ".join(f"EXISTS (SELECT 1 FROM {table} WHERE "
                    + " AND ".join(f"{column} = NEW.{column}" for column in key) + ")"
                    for key in _UNIQUE_KEYS[table])
      + f" BEGIN SELECT RAISE(ABORT, 'ledger is append-only: INSERT over an existing row of "
        f"{table} refused'); END" for table in APPEND_ONLY_TABLES],
]

# psycopg reads % as a placeholder marker, hence %% for a literal % in the function body.
_POSTGRES_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'ledger is append-only: %% of %% refused', TG_OP, TG_TABLE_NAME; END
       $$ LANGUAGE plpgsql""",
    *[f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
      f"FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()" for table in APPEND_ONLY_TABLES],
    *[f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
      f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()" for table in APPEND_ONLY_TABLES],
]


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
    statements = _POSTGRES_TRIGGERS if connection.dialect.name == "postgresql" else _SQLITE_TRIGGERS
    for statement in statements:
        connection.exec_driver_sql(statement)
    connection.execute(meta_table.insert(), [
        {"key": "format", "value": FORMAT_MARKER},
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
    ])
