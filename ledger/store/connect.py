"""Opening a ledger database: resolve the URL, refuse what is not a ledger, create on request.

Read commands open with ``create=False`` and never create a file; a path that does not exist, a
file that is not SQLite (or is empty), an SQLite file without our tables or format marker, a
ledger of a newer schema version, and an unreachable server each raise
:class:`~ledger.errors.StoreError` with one clear line.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from ledger.errors import StoreError
from ledger.text import quoted
from ledger.store.schema import (APPEND_ONLY_TABLES, FORMAT_MARKER, SCHEMA_VERSION, UNIQUE_KEYS,
                                 create_schema, meta_table, metadata, sqlite_trigger_sql)

DEFAULT_URL = "sqlite:///ledger.db"
URL_ENV = "LEDGER_URL"
SQLITE_SYNCHRONOUS = "FULL"
SQLITE_BUSY_SECONDS = 30
"""How long an SQLite statement waits for another process's lock before it fails."""
"""SQLite ``synchronous`` level: FULL makes every committed batch survive power loss in WAL mode."""
_SQLITE_HEADER = b"SQLite format 3\x00"
POSTGRES_CONNECT_TIMEOUT = 10
"""Seconds to wait for a PostgreSQL server to accept a connection (a silent one would hang)."""
POSTGRES_LOCK_TIMEOUT = 10
"""Seconds a PostgreSQL read waits for a lock on a ledger table (another session's ``LOCK
TABLE``, ``ALTER TABLE``, ``VACUUM FULL``) before it fails: without a bound, commands hung.
Writes wait without a bound (see :func:`_configure_postgres`)."""
POSTGRES_KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
"""TCP keepalive on both ends of a PostgreSQL connection (seconds idle, seconds between probes,
unanswered probes): a peer that vanished — its machine lost, the network cut — is noticed within
about a minute instead of the operating system's default of over two hours. On the server this
ends the backend of a writer whose machine was lost mid-batch, which releases the locks a
``take_over=True`` waits for; on the client, a command stops instead of hanging on a vanished
server. A stopped (Ctrl-Z) or busy process still answers: its kernel does. Settings named in
the URL win (``?keepalives_idle=…`` for the client, ``?options=-c tcp_keepalives_idle=…`` for
the server)."""
_POSTGRES_CREATE_LOCK = 0x6C6564676572  # "ledger"
"""Key of the transaction-level advisory lock under which a PostgreSQL ledger is created."""
WRITE_OPTION = "ledger_write"
"""Execution option of connections that will write: SQLite then takes its write lock at BEGIN."""
BOUNDED_WRITE = "bounded"
"""WRITE_OPTION's value for a write whose lock waits stay bounded as reads' are (commands)."""


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the one given, else ``$LEDGER_URL``, else ``sqlite:///ledger.db``.

    An empty one given names no ledger (``ExperimentManager(os.environ.get("URL", ""))`` with
    the variable unset) and is refused, rather than silently taken for another ledger. An
    empty ``$LEDGER_URL`` is unset, as shells treat it."""
    if url is not None and not url:
        raise StoreError("got an empty database URL: give one, e.g. sqlite:///ledger.db, or "
                         "None for $LEDGER_URL or the default")
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def describe_url(url: URL, given: str | None = None) -> str:
    """The URL as shown to users: as they gave it (``given``, the text ``url`` was parsed
    from), never with its password — one in the URL's credentials or a ``password=`` argument
    is shown as ``***``. Without ``given``, SQLAlchemy's rendering, which percent-encodes what
    the user typed (``sqlite:///:memory:`` as ``sqlite:///%3Amemory%3A``)."""
    if given is None:
        return _query_passwords_masked(url.render_as_string(hide_password=True))
    shown = given
    if url.password is not None:
        # the credentials as SQLAlchemy's own pattern splits them: the user name runs to the
        # first ':' or '/', the password from there to the first '@'
        shown = re.sub(r"^([\w+]+://[^:/]*:)[^@]*@", r"\1***@", shown, count=1)
    return _query_passwords_masked(shown)


def _query_passwords_masked(text: str) -> str:
    """``text`` with the value of every ``password=`` URL argument shown as ``***``."""
    return re.sub(r"([?&]password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def parse_url(url: str | None = None) -> URL:
    """The ledger URL ``url`` names (see :func:`resolve_url`), parsed and checked to be SQLite
    or PostgreSQL, without opening it; StoreError when it is not a database URL."""
    return _parse(resolve_url(url))


def _masked(url: str) -> str:
    """A URL that does not parse, as errors show it: what stands between ``user:`` and the
    last ``@`` masked, as :func:`describe_url` masks the password of one that does."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (separator and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _parse(url: str) -> URL:
    if not isinstance(url, str) or "\x00" in url:
        shown = _masked(url) if isinstance(url, str) else url
        raise StoreError(f"not a database URL: {shown!r} (e.g. sqlite:///ledger.db)")
    if not _is_unicode(url):
        raise StoreError(f"not a database URL: {_masked(url)!r} holds bytes that are not UTF-8")
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - parsed lazily: "sqlite://:memory:" fails only here
    except (ArgumentError, ValueError):
        raise StoreError(f"not a database URL: {_masked(url)!r} (e.g. sqlite:///ledger.db)"
                         ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or "
                         f"postgresql")
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: bytes that are not UTF-8 in an argument or in
    ``LEDGER_URL`` reach Python as lone surrogates, which no driver (nor SQLAlchemy, showing
    the URL) can encode — an internal error, not a clear refusal, before this check."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sqlite_file_path(url: URL) -> Path | None:
    """The file of an SQLite ledger URL, or None for an in-memory database (and PostgreSQL).

    A ``file:`` URI (``sqlite:///file:/path/ledger.db?mode=ro&uri=true``, which SQLite reads as
    a URI only with ``uri=true``) names its path after ``file:``, percent-escapes decoded.
    """
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:") and _uri_flag(url):
        if url.query.get("mode") == "memory":
            return None
        database = unquote(urlsplit(database).path)
    if database in ("", ":memory:"):
        return None
    return Path(database)


_TRUE_WORDS = frozenset({"true", "yes", "on", "y", "t", "1"})
"""What SQLAlchemy's SQLite driver reads as true in a URL argument (in any case)."""


def _uri_flag(url: URL) -> bool:
    """True when an SQLite URL's ``uri`` argument makes the driver read its database as a
    ``file:`` URI: ``uri=true``, or any other spelling the driver reads as true (``TRUE``,
    ``1``); the ledger must then find the file, and ``mode=ro``, where the driver does."""
    return str(url.query.get("uri", "")).strip().lower() in _TRUE_WORDS


def sqlite_uri_read_only(url: URL) -> bool:
    """True when an SQLite ``file:`` URI opens the ledger read-only (``mode=ro`` or
    ``immutable=1``)."""
    return (url.get_backend_name() == "sqlite" and _uri_flag(url)
            and (url.query.get("mode") == "ro" or url.query.get("immutable") == "1"))


def _check_sqlite_file(path: Path, create: bool, defaulted: bool) -> None:
    """Refuse a path that holds no SQLite database (or, unless ``create``, none at all).

    ``defaulted``: the path is the default ledger, named by nobody, so a missing one is told
    how to name another; a URL someone gave (``--db``, ``--db-b``, ``$LEDGER_URL``) is not.
    A path that is no regular file — a FIFO, where opening it waited for a writer forever, a
    device — is refused before it is opened.
    """
    shown = shown_path(path)
    if not path.exists():
        if create:
            if not path.parent.exists():
                raise StoreError(f"cannot create ledger {shown}: folder "
                                 f"{shown_path(path.parent)} does not exist")
            return
        hint = f" (give --db or set {URL_ENV})" if defaulted else ""
        raise StoreError(f"no ledger at {shown}{hint}")
    if path.is_dir():
        raise StoreError(f"{shown} is a folder, not a ledger database")
    if not path.is_file():
        raise StoreError(f"{shown} is not a regular file (a pipe, device or socket), not a "
                         f"ledger database")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"cannot read {shown}: {error.strerror}") from None
    if header == b"":
        if create:
            return
        raise StoreError(f"{shown} is an empty file (0 bytes), not a ledger: no ledger was ever "
                         f"written to it, or it was cut short (if it held one, restore it from "
                         f"a copy)")
    if header != _SQLITE_HEADER:
        raise StoreError(f"{shown} is not an SQLite database")


def shown_path(path: Path | str) -> str:
    """A path as messages name it: as it is, or quoted when it would not read as itself — a
    trailing space or newline (``--db 'sqlite:////srv/ledger.db '`` was refused as "no ledger
    at /srv/ledger.db", naming a file that exists), a control character."""
    text = str(path)
    if text and text.strip() == text and text.isprintable():
        return text
    return quoted(text, 200)


_TOLERANT_TEXT = functools.partial(str, encoding="utf-8", errors="surrogateescape")
"""How SQLite TEXT values are read. SQLite stores whatever a tamperer writes — a body cast to
TEXT, bytes that are not UTF-8 in a kind — and the strict default decoder then fails the whole
query; read tolerantly, such a value reaches verification, which names its event (a body that
is not bytes, a column that differs from its body). About 0.2 µs per TEXT value read."""


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001 - driver objects
        dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself
        dbapi_connection.text_factory = _TOLERANT_TEXT
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        # Schema code (views, triggers) may not call functions with side effects.
        cursor.execute("PRAGMA trusted_schema=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # noqa: ANN001
        writing = connection.get_execution_options().get(WRITE_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def postgres_connect_args(url: URL) -> dict[str, Any]:
    """The driver's connection arguments for a PostgreSQL ledger: the connect timeout and the
    client's side of ``POSTGRES_KEEPALIVE``, each unless the URL sets it."""
    arguments: dict[str, Any] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT, "keepalives": 1}
    arguments.update({f"keepalives_{name}": value for name, value in POSTGRES_KEEPALIVE.items()})
    return {name: value for name, value in arguments.items() if name not in url.query}


def postgres_session_settings(url: URL) -> list[str]:
    """The ``SET`` statements every PostgreSQL session of a ledger starts with: the read lock
    timeout and the server's side of ``POSTGRES_KEEPALIVE``, each keepalive setting unless the
    URL's ``options`` name it."""
    options = url.query.get("options", "")
    named = " ".join(options) if isinstance(options, tuple) else options
    settings = [f"SET lock_timeout = {POSTGRES_LOCK_TIMEOUT * 1000}"]
    settings += [f"SET tcp_keepalives_{name} = {value}"
                 for name, value in POSTGRES_KEEPALIVE.items()
                 if f"tcp_keepalives_{name}" not in named]
    return settings


def _configure_postgres(engine: Engine) -> None:
    """Start every session with :func:`postgres_session_settings`.

    Reads' lock waits are bounded by ``POSTGRES_LOCK_TIMEOUT``: a session holding a lock on a
    ledger table then makes a command fail with one StoreError instead of hanging. Writes wait
    as long as the lock is held — a training run outlasts a maintenance ``VACUUM FULL``, its
    events buffered meanwhile, rather than stopping for it — except a command's
    (``Store.bounded_writes``), bounded as reads are. The server's keepalive ends the backend of
    a client that vanished (``POSTGRES_KEEPALIVE``)."""
    settings = postgres_session_settings(engine.url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001 - driver objects
        with dbapi_connection.cursor() as cursor:
            for statement in settings:
                cursor.execute(statement)
        dbapi_connection.commit()  # a SET in a transaction rolled back would be undone

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # noqa: ANN001
        writing = connection.get_execution_options().get(WRITE_OPTION)
        if writing and writing != BOUNDED_WRITE:
            connection.exec_driver_sql("SET LOCAL lock_timeout = 0")  # this transaction only


def _check_sqlite_schema(engine: Engine, shown: str) -> None:
    """Refuse an SQLite file whose ledger tables are not the plain tables we create.

    A received ledger is untrusted: a view (say, over an endless recursive query) or a virtual
    table in place of a ledger table would run the sender's code on every read, a generated
    column on every row, and a trigger or expression index of theirs on every write. So each
    ledger table must be a plain table with exactly our columns, its triggers exactly ours, and
    its indexes (beside SQLite's own) on plain columns only.
    """
    with engine.connect() as connection:
        objects: Sequence[tuple[Any, ...]] = connection.exec_driver_sql(
            "SELECT type, name, tbl_name, sql FROM sqlite_master").all()
        ours = set(APPEND_ONLY_TABLES)
        triggers = sqlite_trigger_sql()
        for kind, name, table, sql in objects:
            if name in ours and (kind != "table" or not (sql or "").startswith("CREATE TABLE")):
                raise StoreError(f"{shown} is not a ledger: {name} is not a plain table "
                                 f"({_first_words(sql)} …)")
            if table not in ours:
                continue
            if kind == "trigger" and triggers.get(name) != _without_if_not_exists(sql):
                raise StoreError(f"{shown} is not a ledger: trigger {name} on {table} is not "
                                 f"one of the ledger's")
            if kind == "index" and sql is not None and _expression_index(connection, name, sql):
                raise StoreError(f"{shown} is not a ledger: index {name} on {table} holds "
                                 f"expressions or conditions")
        present = {name for kind, name, _table, _sql in objects if kind == "table"}
        for table in ours & present:
            columns = connection.exec_driver_sql(f"PRAGMA table_xinfo({table})").all()
            expected = [column.name for column in metadata.tables[table].columns]
            if [row[1] for row in columns] != expected or any(row[6] for row in columns):
                raise StoreError(f"{shown} is not a ledger: table {table} does not have the "
                                 f"ledger's columns")


def _check_postgres_tables(engine: Engine, shown: str) -> None:
    """Refuse a PostgreSQL database whose ledger tables (as the search path finds them) are
    views, foreign tables or tables of other columns: a view over ``pg_sleep`` made every
    command hang. Triggers there are checked by the compliance report (in force or not)."""
    with engine.connect() as connection:
        rows: Sequence[tuple[Any, ...]] = connection.exec_driver_sql(
            "SELECT c.relname, c.relkind, array_agg(a.attname::text ORDER BY a.attnum), "
            "array_agg(t.typname::text ORDER BY a.attnum), bool_or(a.attgenerated <> '') "
            "FROM pg_class c JOIN pg_attribute a "
            "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE c.relname = ANY(%(names)s) AND pg_table_is_visible(c.oid) GROUP BY c.oid",
            {"names": list(APPEND_ONLY_TABLES)}).all()
        keys: Sequence[tuple[Any, ...]] = connection.exec_driver_sql(
            "SELECT c.relname, array_agg(a.attname::text) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
            "AND c.relname = ANY(%(names)s) AND pg_table_is_visible(c.oid) "
            "GROUP BY c.relname, i.indexrelid", {"names": list(APPEND_ONLY_TABLES)}).all()
    unique: dict[str, set[frozenset[str]]] = {}
    for name, columns in keys:
        unique.setdefault(name, set()).add(frozenset(columns))
    for name, kind, columns, types, generated in rows:
        table = metadata.tables[name]
        expected = [column.name for column in table.columns]
        expected_types = [_POSTGRES_TYPES[type(column.type).__name__]
                          for column in table.columns]
        missing_keys = {frozenset(key) for key in UNIQUE_KEYS[name]} - unique.get(name, set())
        if (kind not in ("r", "p") or list(columns) != expected or generated
                or list(types) != expected_types or missing_keys):
            raise StoreError(f"{shown} is not a ledger: {name} is not the ledger's plain table"
                             f" (its columns, their types or its unique keys differ)")


_POSTGRES_TYPES = {"String": "varchar", "Text": "text", "BigInteger": "int8",
                   "Integer": "int4", "LargeBinary": "bytea"}
"""The PostgreSQL type each column type of the schema is created as."""


def _without_if_not_exists(sql: str | None) -> str | None:
    return None if sql is None else sql.replace("CREATE TRIGGER IF NOT EXISTS ",
                                                "CREATE TRIGGER ", 1)


def _expression_index(connection, name: str, sql: str) -> bool:  # noqa: ANN001
    if " WHERE " in sql.upper():
        return True
    keys = connection.exec_driver_sql("SELECT * FROM pragma_index_xinfo(?)", (name,)).all()
    return any(row[1] == -2 for row in keys)  # cid -2: an expression


def _first_words(sql: str | None) -> str:
    return " ".join((sql or "no definition").split()[:2])


def _stored_format(engine: Engine) -> dict[str, str] | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table(meta_table.name):
            return None
        rows: Sequence[tuple[str, str]] = connection.execute(
            select(meta_table.c.key, meta_table.c.value)).all()
    return {key: value for key, value in rows}


def _has_tables(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(inspect(connection).get_table_names())


_DRIVER_ARGUMENTS = frozenset({"timeout", "check_same_thread", "isolation_level", "detect_types",
                               "cached_statements", "factory"})
"""pysqlite connection arguments SQLAlchemy would take from a SQLite URL's query: the ledger sets
the ones it needs (the busy timeout) and a wrong one would change how it writes."""


def _check_sqlite_query(parsed: URL, shown: str, given: str) -> None:
    """Refuse SQLite URL query arguments other than SQLite's own URI parameters with
    ``uri=true`` (``sqlite:///file:ledger.db?mode=ro&uri=true``): without it the driver ignores
    ``mode=ro`` with a warning and opens the file read-write, and ``timeout=abc`` fails inside
    the driver. ``uri=true`` itself needs a ``file:`` name, or SQLite creates a file named
    ``ledger.db?mode=ro``."""
    # SQLAlchemy drops an argument with no value (?mode, ?mode=) without a word
    written = given.partition("?")[2].split("&") if "?" in given else []
    valueless = sorted({part.partition("=")[0] for part in written
                        if part and not part.partition("=")[2]})
    if valueless:
        raise StoreError(f"cannot open {shown}: URL argument(s) {', '.join(valueless)} have no "
                         f"value")
    query = dict(parsed.query)
    uri = _uri_flag(parsed)
    query.pop("uri", None)
    driver = sorted(set(query) & _DRIVER_ARGUMENTS)
    if driver:
        raise StoreError(f"cannot open {shown}: URL argument(s) {', '.join(driver)} are set by "
                         f"the ledger itself")
    if query and not uri:
        raise StoreError(f"cannot open {shown}: SQLite URL arguments ({', '.join(sorted(query))}) "
                         f"need uri=true, as in sqlite:///file:ledger.db?mode=ro&uri=true")
    if uri and not (parsed.database or "").startswith("file:"):
        # SQLite reads only a name that starts with file: as a URI: it would open (and create)
        # a file named with the arguments, "ledger.db?mode=ro", and ignore them
        raise StoreError(f"cannot open {shown}: uri=true needs the database named as a file: "
                         f"URI, as in sqlite:///file:ledger.db?mode=ro&uri=true")


def open_engine(url: str | None = None, *, create: bool = False) -> tuple[Engine, URL]:
    """Open the ledger at ``url`` and return its engine, checked to be a ledger we can read.

    With ``create=True`` a missing SQLite file or an empty database is initialised (WAL mode,
    tables, triggers, schema version); otherwise only an existing ledger is accepted.
    """
    given = resolve_url(url)
    parsed = _parse(given)
    shown = describe_url(parsed, given)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_query(parsed, shown, given)
    if is_sqlite and (path := sqlite_file_path(parsed)) is not None:
        _check_sqlite_file(path, create, defaulted=not url and not os.environ.get(URL_ENV))
    try:
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS} if is_sqlite
                               else postgres_connect_args(parsed))
    except (NoSuchModuleError, ImportError) as error:
        raise StoreError(f"no driver for {shown}: {error} (install the 'postgres' extra)") from None
    except (ValueError, TypeError) as error:  # a URL argument of the wrong type
        raise StoreError(f"cannot open {shown}: bad URL argument ({error})") from None
    if is_sqlite:
        _configure_sqlite(engine)
    else:
        _configure_postgres(engine)
    try:
        if is_sqlite:
            _check_sqlite_schema(engine, shown)
        else:
            _check_postgres_tables(engine, shown)
        stored = _stored_format(engine)
        if stored is None:
            if not create:
                raise _not_a_ledger(engine, shown, is_sqlite, stored)
            if not _has_tables(engine):
                _initialise(engine, is_sqlite, shown)
            stored = _stored_format(engine)  # None: tables, but not a ledger's
            if stored is None:
                raise _not_a_ledger(engine, shown, is_sqlite, stored)
        if stored.get("format") != FORMAT_MARKER:
            raise _not_a_ledger(engine, shown, is_sqlite, stored)
        _check_format(stored, shown)
    except DBAPIError as error:
        engine.dispose()
        raise StoreError(f"cannot open {shown}: {_first_line(error)}") from None
    except SQLAlchemyError as error:
        engine.dispose()
        raise StoreError(f"cannot open {shown}: {_first_line(error)}") from None
    except StoreError:
        engine.dispose()
        raise
    return engine, parsed


def _initialise(engine: Engine, is_sqlite: bool, shown: str) -> None:
    """Create the schema in an empty database — once, even when several processes open it with
    ``create=True`` at the same moment (jobs launched together on a new ledger): the schema is
    created under SQLite's write lock (BEGIN IMMEDIATE) or a PostgreSQL advisory lock, and
    whoever gets the lock second finds the ledger made and leaves it as it is."""
    if is_sqlite:
        _enable_wal(engine, shown)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection, \
            connection.begin():
        if not is_sqlite:
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)",
                                       {"key": _POSTGRES_CREATE_LOCK})
        tables = set(inspect(connection).get_table_names())
        if meta_table.name in tables:
            return  # another process created the ledger meanwhile
        if tables:
            raise _not_a_ledger(engine, shown, is_sqlite, None, tables)
        create_schema(connection)


def _enable_wal(engine: Engine, shown: str) -> None:
    """Put a new SQLite ledger in WAL mode, waiting for other processes doing the same.

    SQLite answers the switch with 'database is locked' at once, without its busy wait, while
    another connection holds the file's write lock — as another job opening the same new
    ledger at that moment does (measured: 24 of 600 processes launched six at a time failed).
    The switch is retried for up to SQLITE_BUSY_SECONDS, then refused as one StoreError."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA journal_mode=WAL")
            return
        except engine.dialect.loaded_dbapi.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise StoreError(f"cannot open {shown}: {error}") from None
        finally:
            raw.close()
        time.sleep(0.01)


def _not_a_ledger(engine: Engine, shown: str, is_sqlite: bool, stored: dict[str, str] | None,
                  tables: set[str] | None = None) -> StoreError:
    """Why a database without the ledger's format marker (``stored``: its ``ledger_meta`` rows,
    None without that table) is not read, in the words an auditor acts on: a database with no
    tables, another program's database (check the path or URL), one whose marker names another
    format, or a ledger whose marker is gone — altered outside this program: restore a copy.
    ``tables``: the database's tables when the caller has read them (else read here)."""
    what = "an SQLite database" if is_sqlite else "a PostgreSQL database"
    if stored is not None and "format" in stored:
        return StoreError(f"{shown} is not a ledger: {what} whose format marker is "
                          f"{quoted(stored['format'])}, not {FORMAT_MARKER!r}")
    if tables is None:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
    if not tables:
        return StoreError(f"{shown} is not a ledger: {what} with no tables, in which nothing "
                          f"was ever recorded (check the path or URL)")
    if not tables & set(APPEND_ONLY_TABLES):
        return StoreError(f"{shown} is not a ledger: {what}, but without the ledger's tables "
                          f"(check the path or URL)")
    gone = (f"the {meta_table.name} table that holds it" if stored is None
            else f"its row in {meta_table.name}")
    return StoreError(f"{shown} is a ledger whose format marker is gone ({gone} was removed "
                      f"outside this program), so it is not read: restore the ledger from a "
                      f"copy")


def _check_format(stored: dict[str, str], shown: str) -> None:
    text = stored.get("schema_version", "")
    # Only the digits the ledger writes (str of an int): int() would also read " 1", "01", "+1"
    # or non-ASCII digits as 1, and take a database this program never wrote for a ledger.
    if not (text.isascii() and text.isdigit()) or text != str(int(text)):
        raise StoreError(f"{shown} has an unreadable schema version")
    version = int(text)
    if version > SCHEMA_VERSION:
        raise StoreError(f"{shown} has ledger schema version {version}, newer than this program's "
                         f"{SCHEMA_VERSION}: upgrade reproducibility-ledger to read it")
    if version < 1:
        raise StoreError(f"{shown} has an invalid schema version {version}")


def _first_line(error: Exception) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__
