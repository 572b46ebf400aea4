"""The store: one SQLAlchemy Core code path over SQLite and PostgreSQL (DESIGN §4).

:class:`Store` reads the ledger (experiments, chains, heads, counts) and offers the two
insert-only writes everything else is built on: an experiment's first row together with its first
event, and a batch of events in one transaction. It has no method that updates or deletes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import and_, bindparam, distinct, func, inspect, not_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ledger.canonical import canonical
from ledger.digests import ZERO_DIGEST
from ledger.errors import (AppendOnlyError, BadInputError, CheckFailedError, ConcurrentWriteError,
                           StoreError, UnknownExperimentError)
from ledger.events import (AUDIT_STREAM, COMPLETION_STATUSES, EXPERIMENT_CREATED, MAIN_STREAM,
                           RUN_COMPLETED, Event, check_experiment_id, decode_body, path_bytes)
from ledger.store.connect import (BOUNDED_WRITE, POSTGRES_LOCK_TIMEOUT, WRITE_OPTION,
                                  describe_url, open_engine, resolve_url, sqlite_file_path,
                                  sqlite_uri_read_only)
from ledger.store.schema import (TRIGGER_NAMES, claims_table, events_table, experiments_table,
                                 meta_table, postgres_refusal_source)
from ledger.text import is_sendable_text

EVENT_COLUMNS = ("exp", "stream", "seq", "kind", "path", "seed", "input", "output", "prev", "hash",
                 "t", "body")
"""Columns of a stored event in the order :meth:`Store.iter_event_rows` yields them."""
ROW_COLUMNS = EVENT_COLUMNS
"""Order of the values in a row given to :meth:`Store.append_rows`."""
_cursor_numbers = itertools.count()
"""Names server-side cursors apart."""


@dataclass(frozen=True, slots=True)
class ExperimentRow:
    """An experiment as listed: id, name, creation time and whether its run completed."""

    exp: str
    name: str
    created_t: int
    status: str
    """``ok`` or ``failed`` when ``run_completed`` was recorded with that status, else
    ``incomplete`` — or, for a damaged ``run_completed`` (verify names it), ``unreadable`` when
    its body does not decode and ``malformed`` when its status is neither."""


@dataclass(frozen=True, slots=True)
class StreamHead:
    """Where one stream of an experiment ends: its event count and the hash of its last event."""

    stream: str
    count: int
    head: bytes


def _translate(error: SQLAlchemyError, what: str) -> StoreError:
    """The StoreError for a database error: the driver's first line, or, for an error of
    SQLAlchemy's own (its connection pool timing out, say), its message."""
    text = str(getattr(error, "orig", error)).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    if "append-only" in reason:
        return AppendOnlyError(reason)
    if "lock timeout" in reason:
        reason += (f" (another session held a lock on a ledger table for over "
                   f"{POSTGRES_LOCK_TIMEOUT} s: LOCK TABLE, ALTER TABLE or VACUUM FULL?)")
    return StoreError(f"{what}: {reason}")


class Store:
    """An open ledger database. Create with :meth:`open`; use as a context manager or close()."""

    _claims_ready: bool  # set by claims.ensure_claims_table once the table is known to exist

    def __init__(self, engine: Engine, shown_url: str, url_with_secrets: str | None = None
                 ) -> None:
        self.engine = engine
        self.url = shown_url
        self.url_with_secrets = url_with_secrets or shown_url
        self._insert_sql, self._positional = _compile_event_insert(engine)
        self._streamed_sql: dict[tuple[str, ...], tuple[str, list[str] | None]] = {}
        self._file = _sqlite_file_identity(engine)
        """SQLite: the ledger file's absolute path, device and inode when opened (else None)."""
        self.bounded_writes = False
        """True: a PostgreSQL write waits at most POSTGRES_LOCK_TIMEOUT for another session's
        lock, as reads do, and then fails — for commands (an audit record should not hang
        silently); False (training): it waits the lock out, its events buffered meanwhile."""

    @classmethod
    def open(cls, url: str | None = None, *, create: bool = False) -> "Store":
        """Open the ledger at ``url`` (default: ``$LEDGER_URL`` or ``sqlite:///ledger.db``).

        ``create=True`` initialises a missing SQLite file or an empty database; read-only users
        leave it False so that a mistyped path is reported instead of silently created.
        """
        engine, parsed = open_engine(url, create=create)
        return cls(engine, describe_url(parsed, resolve_url(url)),
                   parsed.render_as_string(hide_password=False))

    @property
    def shareable(self) -> bool:
        """True when other processes can open the same database (not in-memory SQLite)."""
        return self.backend != "sqlite" or self.sqlite_file is not None

    @property
    def sqlite_file(self) -> Path | None:
        """The file of an SQLite ledger (also when named by a ``file:`` URI); None for an
        in-memory database and for PostgreSQL."""
        return sqlite_file_path(self.engine.url)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def schema_version(self) -> int:
        """The schema version this ledger was written with."""
        with self.engine.connect() as connection:
            value: str = connection.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar_one()
        return int(value)

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writes (insert only) ------------------------------------------------------------------

    def write_connection(self):  # noqa: ANN201 - a SQLAlchemy Connection
        """A connection whose transactions take the write lock at BEGIN (SQLite IMMEDIATE).

        Refused (StoreError) once an SQLite ledger file was deleted or replaced since it was
        opened: see :meth:`check_file`."""
        self.check_file()
        return self.engine.connect().execution_options(
            **{WRITE_OPTION: BOUNDED_WRITE if self.bounded_writes else True})

    def check_file(self) -> None:
        """Raise StoreError when the SQLite file this store opened is no longer at its path.

        Open connections keep writing into a deleted or replaced file (Linux keeps its inode
        alive), so a commit would be acknowledged as durable while nothing reaches the ledger
        that every later reader opens. Writes check before they begin and after they commit.
        """
        if self._file is None:
            return
        path, identity = self._file
        try:
            stat = os.stat(path)
        except OSError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != identity:
            raise StoreError(f"ledger file {path} was deleted or replaced while open: nothing "
                             f"more is written to it (events not yet flushed are not durable)")

    def append_refusal(self) -> str | None:
        """Why this connection could not append events, or None when it can, asked before
        long work that records at its end (a replay's certificate, a report's export).

        A read-only PostgreSQL role or server, or an SQLite file or folder this user may not
        write, would otherwise let a replay run for an hour and then lose its verdict, or a
        report write its files and then fail to record them. Checked by privileges, not by a
        trial write: nothing is written here.
        """
        if self.backend == "postgresql":
            return self._postgres_append_refusal()
        return _sqlite_append_refusal(self.engine)

    def _postgres_append_refusal(self) -> str | None:
        """A writer inserts into the events and claims tables, and takes each row's id from
        the table's sequence (``nextval`` needs USAGE on it, also under COPY)."""
        tables = (events_table.name, claims_table.name)
        with self._reading() as connection:
            role, read_only, *rights = connection.execute(text(
                "SELECT current_user, current_setting('transaction_read_only'), "
                "has_table_privilege(:events, 'INSERT'), has_table_privilege(:claims, 'INSERT'), "
                "pg_get_serial_sequence(:events, 'id'), pg_get_serial_sequence(:claims, 'id')"),
                dict(zip(("events", "claims"), tables))).one()
            sequences = [name for name in rights[2:] if name is not None]
            usable = [connection.execute(text("SELECT has_sequence_privilege(:name, 'USAGE')"),
                                         {"name": name}).scalar_one() for name in sequences]
        if read_only == "on":
            return "the server accepts only read-only transactions"
        lacking = [f"{right} on {', '.join(names)}" for right, names in (
            ("INSERT", [table for table, ok in zip(tables, rights[:2]) if not ok]),
            ("USAGE", [name for name, ok in zip(sequences, usable) if not ok])) if names]
        return f"role {role} lacks {' and '.join(lacking)}" if lacking else None

    def insert_experiment(self, exp: str, name: str, first_event: Event) -> None:
        """Record a new experiment: its row and its first event, in one transaction.

        ``first_event`` must be this experiment's ``experiment_created`` at main seq 0, recording
        the same name as the row (verification checks both).
        """
        check_experiment_id(exp)
        if (first_event.exp, first_event.stream, first_event.seq, first_event.kind,
                first_event.prev) != (exp, MAIN_STREAM, 0, EXPERIMENT_CREATED, ZERO_DIGEST):
            raise BadInputError(f"the first event of experiment {exp} must be its "
                                f"{EXPERIMENT_CREATED} at {MAIN_STREAM} seq 0, got "
                                f"{first_event.kind} of {first_event.exp} {first_event.stream} "
                                f"seq {first_event.seq}")
        if first_event.params.get("name") != name:
            raise BadInputError(f"experiment {exp}: row name {name!r} differs from the name "
                                f"recorded by {EXPERIMENT_CREATED}")
        try:
            with self.write_connection() as connection, connection.begin():
                connection.execute(experiments_table.insert(),
                                   {"exp": exp, "name": name, "created_t": first_event.t})
                self._insert_rows(connection, [event_row(first_event)])
        except IntegrityError:
            raise ConcurrentWriteError(f"experiment {exp} already exists") from None
        except SQLAlchemyError as error:
            raise _translate(error, f"cannot record experiment {exp}") from None
        self.check_file()  # committed into the file still at the path, not a replaced one

    def append_rows(self, rows: Sequence[tuple[Any, ...]], *, claim_attempt: int | None = None,
                    guard: Callable[[Any], None] | None = None,
                    last: Callable[[Any], tuple[Any, ...]] | None = None) -> None:
        """Insert event rows (tuples in ROW_COLUMNS order) in one transaction: all or none.

        ``claim_attempt``: the attempt number of the writer's claim on the rows' stream (see
        :mod:`ledger.store.claims`). The batch is then refused with ConcurrentWriteError, in the
        same transaction, once another writer took the stream over: a writer believed gone
        cannot slip its buffered events in before the one that replaced it.

        ``guard(connection)`` runs first in the transaction, and may refuse the batch by raising
        a LedgerError; ``last(connection)`` returns one more row to insert after ``rows`` —
        built from what the transaction reads (see :meth:`lock_experiment`).
        """
        if not rows and last is None:
            return
        try:
            with self.write_connection() as connection, connection.begin():
                if guard is not None:
                    guard(connection)
                if last is not None:
                    rows = [*rows, last(connection)]
                if claim_attempt is not None:
                    self.lock_stream(connection, rows[0][0], rows[0][1], shared=True)
                    self._check_still_claimed(connection, rows[0][0], rows[0][1], claim_attempt)
                self._insert_rows(connection, rows)
        except IntegrityError:
            exp, stream, seq = rows[0][:3]
            raise ConcurrentWriteError(
                f"another writer appended to stream {stream} of {exp} (seq {seq} is taken): "
                f"refused rather than fork the chain") from None
        except SQLAlchemyError as error:  # a pool timing out is no driver error, but as fatal
            raise _translate(error, "cannot append events") from None
        self.check_file()  # committed into the file still at the path, not a replaced one

    @staticmethod
    def _check_still_claimed(connection, exp: str, stream: str,  # noqa: ANN001
                             attempt: int) -> None:
        """Refuse a batch of a writer whose claim was released: it closed, or (what matters
        here) another writer opened the stream with ``take_over=True``."""
        released = connection.execute(
            select(claims_table.c.writer).where(
                claims_table.c.exp == exp, claims_table.c.stream == stream,
                claims_table.c.attempt == attempt, claims_table.c.action == "release")).first()
        if released is not None:
            raise ConcurrentWriteError(
                f"stream {stream} of {exp} was taken over by writer {released.writer}: this "
                f"writer's events are refused rather than fork the chain")

    def _insert_rows(self, connection, rows: Sequence[tuple[Any, ...]]) -> None:  # noqa: ANN001
        # The driver-level executemany skips SQLAlchemy's per-row parameter processing, which
        # cost more than the insert itself; the SQL is still compiled by SQLAlchemy per dialect.
        if self.backend == "postgresql":
            self._copy_rows(connection, rows)
        elif self._positional:
            connection.exec_driver_sql(self._insert_sql, list(rows))
        else:
            connection.exec_driver_sql(self._insert_sql,
                                       [dict(zip(ROW_COLUMNS, row)) for row in rows])

    def _copy_rows(self, connection, rows: Sequence[tuple[Any, ...]]) -> None:  # noqa: ANN001
        """PostgreSQL: ``COPY ... FROM STDIN`` in the caller's transaction — several times
        faster than executemany; the unique (exp, stream, seq) key holds for COPY as for INSERT.
        Driver errors are raised as SQLAlchemy's, like every other statement's."""
        dbapi = self.engine.dialect.dbapi
        assert dbapi is not None  # the engine was created from a URL naming its driver
        sql = f"COPY {events_table.name} ({', '.join(ROW_COLUMNS)}) FROM STDIN"
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as error:
            raise DBAPIError.instance(sql, None, error, dbapi.Error,
                                      dialect=self.engine.dialect) from None
        finally:
            cursor.close()

    # -- reads ---------------------------------------------------------------------------------

    def experiments(self) -> list[ExperimentRow]:
        """Every experiment, newest first, with its completion status."""
        statuses = self._completion_statuses()
        query = select(experiments_table).order_by(experiments_table.c.created_t.desc(),
                                                   experiments_table.c.exp)
        with self._reading() as connection:
            rows = connection.execute(query).all()
        return [ExperimentRow(row.exp, row.name, row.created_t, statuses.get(row.exp, "incomplete"))
                for row in rows]

    def experiment(self, exp: str) -> ExperimentRow:
        """One experiment's row; raises UnknownExperimentError when the ledger has none, and
        CheckFailedError when it has none but holds events of ``exp`` (the row was deleted)."""
        row = self._experiment_row(exp)
        return ExperimentRow(row.exp, row.name, row.created_t,
                             self._completion_statuses(exp).get(exp, "incomplete"))

    def require_experiment(self, exp: str) -> None:
        """Raise UnknownExperimentError unless the ledger has an experiment row for ``exp``:
        :meth:`experiment` without the completion status (which reads the run's events)."""
        self._experiment_row(exp)

    def _experiment_row(self, exp: str) -> Any:
        check_experiment_id(exp)
        with self._reading() as connection:
            row = connection.execute(
                select(experiments_table).where(experiments_table.c.exp == exp)).first()
            orphaned = row is None and connection.execute(
                select(events_table.c.seq).where(events_table.c.exp == exp).limit(1)
            ).first() is not None
        if orphaned:  # its row deleted: not "unknown", which would hide the tampering
            raise CheckFailedError(f"{exp} has events in {self.url} but no experiment row: the "
                                   f"ledger fails verification (ledger verify {exp} names it)")
        if row is None:
            raise UnknownExperimentError(f"unknown experiment {exp} in {self.url}")
        return row

    def _completion_statuses(self, exp: str | None = None) -> dict[str, str]:
        query = select(events_table.c.exp, events_table.c.body).where(
            events_table.c.kind == RUN_COMPLETED)
        if exp is not None:
            query = query.where(events_table.c.exp == exp)
        statuses: dict[str, str] = {}
        with self._reading() as connection:
            for row_exp, body in connection.execute(query):
                try:
                    status = decode_body(body)["params"].get("status")
                except Exception:  # a damaged body is verify's to report, not list's
                    status = "unreadable"
                statuses[row_exp] = status if status in COMPLETION_STATUSES + (
                    "unreadable",) else "malformed"
        return statuses

    @staticmethod
    def _experiment_names(connection) -> dict[str, tuple[str, int]]:  # noqa: ANN001
        """Each experiment row's id, name and created_t: what verification checks against,
        without the completion statuses :meth:`experiments` finds by reading every event."""
        return {exp: (name, created_t) for exp, name, created_t in connection.execute(
            select(experiments_table.c.exp, experiments_table.c.name,
                   experiments_table.c.created_t)).all()}

    def experiment_ids(self) -> list[str]:
        """Every experiment id in the events table, including ids with no experiment row."""
        with self._reading() as connection:
            return list(connection.execute(select(events_table.c.exp).distinct()
                                           .order_by(events_table.c.exp)).scalars())

    def stream_heads(self, exp: str) -> dict[str, StreamHead]:
        """Each stream of ``exp``: how many events it holds and the hash of its last one.

        A stream whose name is not text (its column edited to bytes or invalid UTF-8) is left
        out: no writer makes one, queries cannot name it, and verification reports it."""
        with self._reading() as connection:
            return self.stream_heads_in(connection, exp)

    @staticmethod
    def stream_heads_in(connection, exp: str) -> dict[str, StreamHead]:  # noqa: ANN001
        """:meth:`stream_heads` read through ``connection`` (inside its transaction)."""
        last = (select(events_table.c.stream, func.max(events_table.c.seq).label("seq"),
                       func.count().label("count"))
                .where(events_table.c.exp == exp).group_by(events_table.c.stream).subquery())
        query = (select(last.c.stream, last.c.count, events_table.c.hash)
                 .join(events_table, (events_table.c.exp == exp)
                       & (events_table.c.stream == last.c.stream)
                       & (events_table.c.seq == last.c.seq)))
        return {stream: StreamHead(stream, count, head)
                for stream, count, head in connection.execute(query) if is_sendable_text(stream)}

    def lock_experiment(self, connection, exp: str, *, shared: bool) -> None:  # noqa: ANN001
        """Serialise, within write transactions on ``connection``, what completes a run
        (``shared=False``: reads every stream's head, then records run_completed) with every
        other stream's batch (``shared=True``: checks the run is not completed, then inserts).

        On PostgreSQL a transaction-scoped advisory lock on the experiment (no table privilege
        needed, released at commit or rollback); on SQLite nothing: a write transaction there
        (BEGIN IMMEDIATE) already excludes every other writer.
        """
        self._advisory_lock(connection, b"ledger/run-lock\x00" + exp.encode(), shared=shared)

    def lock_stream(self, connection, exp: str, stream: str, *,  # noqa: ANN001
                    shared: bool) -> None:
        """Serialise, within write transactions on ``connection``, taking a stream over
        (``shared=False``: :func:`ledger.store.claims.claim_stream`) with the batches of the
        writer that held it (``shared=True``: each checks its claim, then inserts).

        On PostgreSQL a batch that checked its claim just before a take-over could otherwise
        commit just after it, when the new writer has already read the head: the new writer
        would start at a seq that batch takes, and be the one refused. Under this lock the
        take-over waits for that batch, and a later batch sees the release. On SQLite nothing:
        a write transaction there already excludes every other writer.
        """
        self._advisory_lock(connection, b"ledger/stream-lock\x00" + canonical([exp, stream]),
                            shared=shared)

    def _advisory_lock(self, connection, name: bytes, *, shared: bool) -> None:  # noqa: ANN001
        """PostgreSQL: a transaction-scoped advisory lock keyed by SHA-256 of ``name``."""
        if self.backend != "postgresql":
            return
        key = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock_shared(:key)") if shared
                           else text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def counts_by_kind(self, exp: str) -> dict[str, int]:
        """How many events of each kind ``exp`` holds."""
        query = (select(events_table.c.kind, func.count()).where(events_table.c.exp == exp)
                 .group_by(events_table.c.kind).order_by(events_table.c.kind))
        with self._reading() as connection:
            return {kind: count for kind, count in connection.execute(query)}

    def first_event_body(self, exp: str, kind: str) -> dict[str, Any] | None:
        """The decoded body of the first event of ``kind`` in ``exp`` (by insertion), if any."""
        query = (select(events_table.c.body).where(events_table.c.exp == exp,
                                                   events_table.c.kind == kind)
                 .order_by(events_table.c.id).limit(1))
        with self._reading() as connection:
            body = connection.execute(query).scalar()
        return None if body is None else decode_body(body)

    def first_event_hash(self, exp: str, kind: str) -> bytes | None:
        """The stored hash of the first event of ``kind`` in ``exp``: e.g. the run's head."""
        query = (select(events_table.c.hash).where(events_table.c.exp == exp,
                                                   events_table.c.kind == kind)
                 .order_by(events_table.c.id).limit(1))
        with self._reading() as connection:
            return connection.execute(query).scalar()

    def repeated_draw(self, exp: str, not_draws: Sequence[str], per_stream: Sequence[str] = ()
                      ) -> list[tuple[str, int, bytes]]:
        """``(stream, seq, body)`` of the first two events of the earliest (kind, path) that
        ``exp`` records more than once outside the audit stream, kinds in ``not_draws`` aside;
        ``[]`` when each is recorded once, as a draw must be (DESIGN §3). A kind in
        ``per_stream`` may be recorded once in each of several streams with the same seed, input
        and output: one draw that several ranks made (each seeding its model, say)."""
        events = events_table.c
        copies = func.count()
        same_in_each_stream = and_(
            events.kind.in_(list(per_stream)), func.count(distinct(events.stream)) == copies,
            *(func.count(distinct(func.coalesce(column, b""))) == 1
              for column in (events.seed, events.input, events.output)))
        repeated = (select(events.kind, events.path)
                    .where(events.exp == exp, events.stream != AUDIT_STREAM,
                           events.kind.not_in(list(not_draws)))
                    .group_by(events.kind, events.path)
                    .having(and_(copies > 1, not_(same_in_each_stream)))
                    .order_by(func.min(events.id)).limit(1).subquery())
        query = (select(events.stream, events.seq, events.body)
                 .join(repeated, (events.kind == repeated.c.kind)
                       & (events.path == repeated.c.path))
                 .where(events.exp == exp, events.stream != AUDIT_STREAM)
                 .order_by(events.id).limit(2))
        with self._reading() as connection:
            return [tuple(row) for row in connection.execute(query)]

    def latest_time_before(self, exp: str, stream: str, seq: int) -> int | None:
        """The latest recorded time (``t``) of the events of ``exp`` outside the audit stream
        that were appended before the event ``(stream, seq)``; None when there are none, or no
        such event. A run resumed at that event was suspended from then on: what a report
        counts as time not spent running."""
        events = events_table.c
        appended_at = (select(events.id).where(events.exp == exp, events.stream == stream,
                                               events.seq == seq).scalar_subquery())
        query = select(func.max(events.t)).where(events.exp == exp,
                                                 events.stream != AUDIT_STREAM,
                                                 events.id < appended_at)
        with self._reading() as connection:
            return connection.execute(query).scalar()

    def last_event(self, exp: str, stream: str) -> tuple[int, bytes] | None:
        """``(seq, hash)`` of the last event of a stream, or None for an empty stream."""
        query = (select(events_table.c.seq, events_table.c.hash)
                 .where(events_table.c.exp == exp, events_table.c.stream == stream)
                 .order_by(events_table.c.seq.desc()).limit(1))
        with self._reading() as connection:
            row = connection.execute(query).first()
        return None if row is None else (row.seq, row.hash)

    def last_kind(self, exp: str, stream: str) -> str | None:
        """The kind of the last event of a stream (one index seek), or None for an empty one."""
        with self._reading() as connection:
            return self.last_kind_in(connection, exp, stream)

    @staticmethod
    def last_kind_in(connection, exp: str, stream: str) -> str | None:  # noqa: ANN001
        """:meth:`last_kind` read through ``connection`` (inside its transaction)."""
        query = (select(events_table.c.kind)
                 .where(events_table.c.exp == exp, events_table.c.stream == stream)
                 .order_by(events_table.c.seq.desc()).limit(1))
        return connection.execute(query).scalar()

    def iter_event_rows(self, exp: str | None = None, *, batch_size: int = 5000
                        ) -> Iterator[tuple[Any, ...]]:
        """Stream stored events ordered by (exp, stream, seq) as tuples of EVENT_COLUMNS.

        Rows are fetched ``batch_size`` at a time, so memory does not grow with the ledger.
        """
        columns = [events_table.c[name] for name in EVENT_COLUMNS]
        query = select(*columns).order_by(events_table.c.exp, events_table.c.stream,
                                          events_table.c.seq)
        if exp is not None:
            query = query.where(events_table.c.exp == exp)
        with self._reading() as connection:
            result = connection.execution_options(stream_results=True, yield_per=batch_size
                                                  ).execute(query)
            for partition in result.partitions():
                yield from partition

    def chain_sizes(self, exp: str | None = None) -> list[tuple[str, str, int, int]]:
        """``(exp, stream, count, max_seq)`` of every chain (of ``exp``), ordered by exp, stream."""
        with self._reading() as connection:
            return self._chain_sizes(connection, exp)

    @staticmethod
    def _chain_sizes(connection, exp: str | None  # noqa: ANN001
                     ) -> list[tuple[str, str, int, int]]:
        query = (select(events_table.c.exp, events_table.c.stream, func.count(),
                        func.max(events_table.c.seq))
                 .group_by(events_table.c.exp, events_table.c.stream)
                 .order_by(events_table.c.exp, events_table.c.stream))
        if exp is not None:
            query = query.where(events_table.c.exp == exp)
        return [tuple(row) for row in connection.execute(query)]

    def chains_and_experiments(self, exp: str | None = None
                               ) -> tuple[list[tuple[str, str, int, int]],
                                          dict[str, tuple[str, int]]]:
        """:meth:`chain_sizes` and each experiment row's id, name and created_t, read in one
        snapshot.

        Read apart, an experiment created between the two reads (its row and first event are
        one transaction) would look like a row without events, or events without a row: a
        false finding for whoever verifies while other machines record.
        """
        with self._reading() as connection:
            if self.backend == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                return self._chain_sizes(connection, exp), self._experiment_names(connection)

    def iter_segment_rows(self, exp: str, stream: str, lo: int, hi: int,
                          columns: Sequence[str], *, batch_size: int = 5000
                          ) -> Iterator[tuple[Any, ...]]:
        """Stream the given columns of events of one chain with lo <= seq < hi, in seq order."""
        for batch in self.iter_segment_batches(exp, stream, lo, hi, columns,
                                               batch_size=batch_size):
            yield from batch

    def iter_segment_batches(self, exp: str, stream: str, lo: int, hi: int,
                             columns: Sequence[str], *, batch_size: int = 5000
                             ) -> Iterator[Sequence[tuple[Any, ...]]]:
        """The rows of :meth:`iter_segment_rows`, in lists of at most ``batch_size``.

        This is verification's hot loop, so rows come through the driver cursor (plain tuples,
        bytes as bytes) with SQL that SQLAlchemy compiled for this database, and a batch at a
        time (a generator step per row costs as much as a column).
        """
        def build():  # noqa: ANN202
            return (select(*[events_table.c[name] for name in columns])
                    .where(events_table.c.exp == bindparam("exp"),
                           events_table.c.stream == bindparam("stream"),
                           events_table.c.seq >= bindparam("lo"),
                           events_table.c.seq < bindparam("hi"))
                    .order_by(events_table.c.seq))

        yield from self._stream_batches(("segment", *columns), build,
                                        {"exp": exp, "stream": stream, "lo": lo, "hi": hi},
                                        batch_size)

    def iter_run_bodies(self, exp: str, *, batch_size: int = 5000
                        ) -> Iterator[tuple[str, int, str, bytes]]:
        """Stream ``(stream, seq, kind, body)`` of every event of ``exp`` in recording order."""
        def build():  # noqa: ANN202
            return (select(events_table.c.stream, events_table.c.seq, events_table.c.kind,
                           events_table.c.body)
                    .where(events_table.c.exp == bindparam("exp")).order_by(events_table.c.id))

        yield from self._stream(("run_bodies",), build, {"exp": exp}, batch_size)

    def iter_kind_bodies(self, exp: str, kinds: Sequence[str], *, batch_size: int = 5000
                         ) -> Iterator[tuple[str, int, str, bytes]]:
        """Stream ``(stream, seq, kind, body)`` of the events of ``exp`` whose kind is one of
        ``kinds``, in recording order: e.g. a run's metrics without reading its other events."""
        names = [f"kind{index}" for index in range(len(kinds))]
        if not names:
            return

        def build():  # noqa: ANN202
            return (select(events_table.c.stream, events_table.c.seq, events_table.c.kind,
                           events_table.c.body)
                    .where(events_table.c.exp == bindparam("exp"),
                           events_table.c.kind.in_([bindparam(name) for name in names]))
                    .order_by(events_table.c.id))

        yield from self._stream(("kind_bodies", str(len(names))), build,
                                {"exp": exp, **dict(zip(names, kinds))}, batch_size)

    def append_only_triggers(self) -> dict[str, bool]:
        """Each trigger the schema installs to refuse changes (TRIGGER_NAMES of this backend) on
        a table this database has, and whether it is still there: what a compliance report
        states as in force."""
        with self._reading() as connection:
            if self.backend == "sqlite":  # their definitions are checked when the file opens
                installed = set(connection.execute(text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
            else:  # enabled, and still calling the ledger's refusal (not a neutered one)
                source = postgres_refusal_source()
                installed = {name for name, enabled, body in connection.execute(text(
                    "SELECT t.tgname, t.tgenabled, p.prosrc FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
                    "WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid)"))
                    if enabled != "D" and " ".join(body.split()) == source}
            tables = inspect(connection).get_table_names()
        return {name: name in installed for name in TRIGGER_NAMES.get(self.backend, ())
                if any(name.startswith(table + "_") for table in tables)}

    def _stream(self, key: tuple[str, ...], build, values: dict[str, Any],  # noqa: ANN001
                batch_size: int) -> Iterator[tuple[Any, ...]]:
        for batch in self._stream_batches(key, build, values, batch_size):
            yield from batch

    def _stream_batches(self, key: tuple[str, ...], build, values: dict[str, Any],  # noqa: ANN001
                        batch_size: int) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Run the query ``build()`` makes (compiled once per ``key``) with ``values`` and yield
        its rows in lists of at most ``batch_size``, never holding more."""
        compiled_sql = self._streamed_sql.get(key)
        if compiled_sql is None:
            compiled = build().compile(dialect=self.engine.dialect)
            order = list(compiled.positiontup or []) if compiled.positional else None
            compiled_sql = self._streamed_sql[key] = (str(compiled), order)
        text, order = compiled_sql
        parameters = tuple(values[name] for name in order) if order is not None else values
        with self._reading() as connection:
            dbapi_connection = connection.connection.dbapi_connection
            if self.backend == "sqlite":  # sqlite3 cursors stream by themselves
                cursor = dbapi_connection.cursor()
            else:  # a named cursor is server-side: PostgreSQL sends a batch per round trip
                cursor = dbapi_connection.cursor(name=f"ledger_stream_{next(_cursor_numbers)}")
            yield from self._fetch_batches(cursor, text, parameters, batch_size)

    def _fetch_batches(self, cursor, text: str, parameters: Any,  # noqa: ANN001
                       batch_size: int) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Run ``text`` on a driver cursor and yield its rows ``batch_size`` at a time, as the
        driver's plain tuples (building SQLAlchemy Rows cost more than fetching them). Driver
        errors are raised as SQLAlchemy's, so that reading turns them into StoreError."""
        dbapi = self.engine.dialect.dbapi
        assert dbapi is not None  # the engine was created from a URL naming its driver
        try:
            cursor.execute(text, parameters)
            while rows := cursor.fetchmany(batch_size):
                yield rows
        except dbapi.Error as error:
            raise DBAPIError.instance(text, parameters, error, dbapi.Error,
                                      dialect=self.engine.dialect) from None
        finally:
            cursor.close()

    def _reading(self):  # noqa: ANN202 - a SQLAlchemy Connection context
        try:
            return _ReadGuard(self.engine.connect(), self.url)
        except SQLAlchemyError as error:  # a driver's, or the pool's timing out
            raise _translate(error, f"cannot read {self.url}") from None


class _ReadGuard:
    """A connection context that turns driver errors during reads into StoreError."""

    def __init__(self, connection, shown_url: str) -> None:  # noqa: ANN001
        self.connection = connection
        self.shown_url = shown_url

    def __enter__(self):  # noqa: ANN204
        return self.connection

    def __exit__(self, exc_type, exc, _tb) -> Literal[False]:  # noqa: ANN001
        try:
            self.connection.close()
        except SQLAlchemyError as closing:  # a connection the server dropped, say
            exc = closing if exc is None else exc  # an error already on its way goes on
        if isinstance(exc, DBAPIError):
            raise _translate(exc, f"cannot read {self.shown_url}") from None
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"cannot read {self.shown_url}: {exc}") from None
        return False


def event_row(event: Event) -> tuple[Any, ...]:
    """The row stored for an event (ROW_COLUMNS order): columns repeating the body, and the body."""
    return (event.exp, event.stream, event.seq, event.kind, path_bytes(event.path), event.seed,
            event.input, event.output, event.prev, event.hash, event.t, event.body)


def _sqlite_file_identity(engine: Engine) -> tuple[str, tuple[int, int]] | None:
    """An SQLite ledger file's absolute path with its (device, inode); None for in-memory
    databases and PostgreSQL."""
    database = sqlite_file_path(engine.url)
    if database is None:
        return None
    path = os.path.abspath(database)
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return path, (stat.st_dev, stat.st_ino)


def _sqlite_append_refusal(engine: Engine) -> str | None:
    """:meth:`Store.append_refusal` of an SQLite ledger: its file and folder (where SQLite
    creates the write-ahead log) must be writable by this user, and a ``file:`` URI must not
    open it read-only."""
    if sqlite_uri_read_only(engine.url):
        return "the ledger is opened read-only (mode=ro or immutable=1 in its URI)"
    database = sqlite_file_path(engine.url)
    if database is None:
        return None
    path = os.path.abspath(database)
    for what, name in (("file", path), ("folder", os.path.dirname(path))):
        if not os.access(name, os.W_OK):
            return f"this user may not write the ledger's {what} {name}"
    return None


def _compile_event_insert(engine: Engine) -> tuple[str, bool]:
    statement = events_table.insert().values({name: bindparam(name) for name in ROW_COLUMNS})
    compiled = statement.compile(dialect=engine.dialect)
    if compiled.positional and list(compiled.positiontup or []) != list(ROW_COLUMNS):
        raise StoreError("internal error: unexpected parameter order for event inserts")
    return str(compiled), bool(compiled.positional)
