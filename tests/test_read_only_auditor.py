"""An auditor whose connection may only read: replay and report refuse to record before they
start, instead of replaying for hours and then losing the verdict, or writing the report's files
and then failing to record the export (a partial write). ``--no-record`` goes ahead."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy

import ledger.store.store
from conftest import run_cli
from ledger.audit import audit_trail
from ledger.augment import DataAugmenter
from ledger.errors import StoreError
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store


def _record_run(url: str, data_dir: Path) -> str:
    """A small complete run with a stored dataset, so that replay certifies it."""
    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("read-only-audit", seed=7) as exp:
            features = np.arange(200, dtype=np.float32).reshape(50, 4)
            data = exp.register_dataset("d", features, np.zeros(50, dtype=np.int8))
            for _batch in TrainingDataIterator(data, 16, augmenter=DataAugmenter(noise_std=0.1),
                                               experiment=exp):
                pass
    return exp.id


def _role_url(postgres_url: str, role: str) -> str:
    return sqlalchemy.make_url(postgres_url).set(username=role).render_as_string(
        hide_password=False)


@pytest.fixture
def reader_role(postgres_url: str) -> Iterator[tuple[str, sqlalchemy.Engine]]:
    """A login role that may read the test schema's ledger tables and nothing else, and an
    admin engine to change its rights."""
    role = f"ledger_reader_{os.getpid()}"
    schema = sqlalchemy.make_url(postgres_url).query["options"].split("%3D")[-1].split("=")[-1]
    admin = sqlalchemy.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        yield role, admin
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def _grant(admin: sqlalchemy.Engine, role: str, *statements: str) -> None:
    """Run each statement as the admin, ``{schema}`` (the test's) and ``{role}`` filled in."""
    with admin.begin() as connection:
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
        for statement in statements:
            connection.exec_driver_sql(statement.format(schema=schema, role=role))


def _audit_kinds(url: str, exp: str) -> list[str]:
    with Store.open(url) as store:
        return [body["kind"] for body in audit_trail(store, exp)]


def test_a_role_that_may_only_read_is_refused_before_replay_and_report(
        postgres_url: str, reader_role: tuple[str, sqlalchemy.Engine], tmp_path: Path) -> None:
    """Before: replay re-executed every draw, then failed with 'permission denied for table
    ledger_stream_claims' and printed no verdict; report wrote its file, then failed."""
    role, admin = reader_role
    exp = _record_run(postgres_url, tmp_path / "data")
    _grant(admin, role, "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    url = _role_url(postgres_url, role)

    replay = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"))
    report = run_cli("--db", url, "report", exp, "-o", str(tmp_path / "report.json"))
    bundle = run_cli("--db", url, "report", exp, "--bundle", str(tmp_path / "bundle"))

    for result in (replay, report, bundle):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert (f"role {role} lacks INSERT on ledger_events, ledger_stream_claims and USAGE "
                f"on ") in result.stderr
        assert "--no-record" in result.stderr
    assert replay.stdout == "" and "replaying" not in replay.stderr
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "bundle").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # no temporaries either

    replay = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"),
                     "--no-record")
    report = run_cli("--db", url, "report", exp, "--no-record", "-o",
                     str(tmp_path / "report.json"))
    assert replay.returncode == 0 and replay.stdout.startswith("CERTIFIED"), replay.stderr
    assert report.returncode == 0 and (tmp_path / "report.json").is_file(), report.stderr
    assert _audit_kinds(postgres_url, exp) == []


INSERT_RIGHTS = "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {schema} TO {role}"


SEQUENCE_RIGHTS = "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"


@pytest.mark.parametrize("grants,refusal", [
    ((SEQUENCE_RIGHTS, "ALTER ROLE {role} SET default_transaction_read_only = on"),
     "the server accepts only read-only transactions"),
    ((), "lacks USAGE on {schema}.ledger_events_id_seq, {schema}.ledger_stream_claims_id_seq"),
    ((SEQUENCE_RIGHTS,), None),
], ids=["read-only sessions", "no sequence rights", "a writer's rights"])
def test_a_role_that_may_insert_is_refused_when_it_still_cannot_append(
        postgres_url: str, reader_role: tuple[str, sqlalchemy.Engine], tmp_path: Path,
        grants: tuple[str, ...], refusal: str | None) -> None:
    """Rights to insert do not help when the session may only read (a standby, or
    default_transaction_read_only), nor without USAGE on the tables' id sequences (each
    insert takes a nextval): that is named instead. And no false refusal: a role with the
    rights a writer uses records its replay."""
    role, admin = reader_role
    exp = _record_run(postgres_url, tmp_path / "data")
    _grant(admin, role, INSERT_RIGHTS, *grants)
    url = _role_url(postgres_url, role)
    with admin.connect() as connection:
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
    with Store.open(url) as store:
        found = store.append_refusal()
    assert (found is None) == (refusal is None)
    if refusal is not None:
        assert refusal.format(schema=schema) in str(found)
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"))
    if refusal is not None:
        assert result.returncode == 2 and refusal.format(schema=schema) in result.stderr
        assert _audit_kinds(postgres_url, exp) == []
    else:
        assert result.returncode == 0, result.stderr
        assert _audit_kinds(postgres_url, exp) == ["replay_recorded"]


def test_a_role_that_cannot_read_the_claims_gets_store_errors_and_records_nothing(
        postgres_url: str, reader_role: tuple[str, sqlalchemy.Engine], tmp_path: Path) -> None:
    """INSERT everywhere, SELECT everywhere but the claims table: asking who holds the audit
    stream failed with an internal error quoting SQL (the PG review)."""
    role, admin = reader_role
    exp = _record_run(postgres_url, tmp_path / "data")
    _grant(admin, role, INSERT_RIGHTS, SEQUENCE_RIGHTS,
           "REVOKE SELECT ON {schema}.ledger_stream_claims FROM {role}")
    result = run_cli("--db", _role_url(postgres_url, role), "replay", exp, "--json",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["error"]["kind"] == "store", document
    assert "permission denied for table ledger_stream_claims" in result.stderr
    assert "[SQL:" not in result.stderr and "internal error" not in result.stderr
    taking_over = run_cli("--db", _role_url(postgres_url, role), "replay", exp, "--take-over",
                          "--data-dir", str(tmp_path / "data"))
    assert taking_over.returncode == 2 and taking_over.stdout == ""  # refused before the work
    assert "permission denied for table ledger_stream_claims" in taking_over.stderr
    assert "draws compared" not in taking_over.stderr
    with pytest.raises(StoreError, match="permission denied for table ledger_stream_claims"):
        with ExperimentManager(_role_url(postgres_url, role), data_dir=tmp_path) as manager:
            manager.create_experiment("refused", seed=1)
    with Store.open(postgres_url) as store:  # the refused creation recorded nothing
        assert [row.name for row in store.experiments()] == ["read-only-audit"]


def test_an_sqlite_ledger_opened_read_only_is_refused_before_replay(tmp_path: Path) -> None:
    """``file:…?mode=ro`` opens the ledger read-only: the refusal comes before the replay."""
    database = tmp_path / "ledger.db"
    exp = _record_run(f"sqlite:///{database}", tmp_path / "data")
    url = f"sqlite:///file:{database}?mode=ro&uri=true"
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2 and result.stdout == ""
    assert "opened read-only" in result.stderr and "--no-record" in result.stderr
    result = run_cli("--db", url, "replay", exp, "--data-dir", str(tmp_path / "data"),
                     "--no-record")
    assert result.returncode == 0, result.stderr


def test_an_sqlite_ledger_this_user_may_not_write_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file, or its folder (where SQLite puts its write-ahead log), not writable: denied
    as the kernel would deny another user (the tests run as root, whom access() lets write)."""
    database = tmp_path / "ledger.db"
    _record_run(f"sqlite:///{database}", tmp_path / "data")
    real_access = os.access
    with Store.open(f"sqlite:///{database}") as store:
        assert store.append_refusal() is None
        for denied, what in ((str(database), "file"), (str(tmp_path), "folder")):
            monkeypatch.setattr(ledger.store.store.os, "access", lambda path, mode, denied=denied:
                                False if path == denied and mode == os.W_OK
                                else real_access(path, mode))
            assert store.append_refusal() == (f"this user may not write the ledger's {what} "
                                              f"{denied}")


@pytest.mark.parametrize("url,path", [
    ("sqlite:///ledger.db", "ledger.db"),
    ("sqlite:////srv/runs/ledger.db", "/srv/runs/ledger.db"),
    ("sqlite:///file:/srv/runs/ledger.db?mode=ro&uri=true", "/srv/runs/ledger.db"),
    ("sqlite:///file:/srv/my%20runs/ledger.db?immutable=1&uri=true", "/srv/my runs/ledger.db"),
    ("sqlite:///file:ledger.db?uri=true", "ledger.db"),
    ("sqlite:///file:ledger.db", "file:ledger.db"),  # no uri=true: SQLite takes it literally
    ("sqlite:///file:shared?mode=memory&uri=true", None),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("postgresql+psycopg://postgres@127.0.0.1/test", None),
])
def test_the_file_an_sqlite_url_names(url: str, path: str | None) -> None:
    from ledger.store.connect import sqlite_file_path

    found = sqlite_file_path(sqlalchemy.make_url(url))
    assert found == (None if path is None else Path(path))


def test_the_uri_flag_is_read_as_the_driver_reads_it(tmp_path: Path) -> None:
    """The driver takes ``uri=TRUE`` or ``uri=1`` for ``uri=true`` and opens the ``file:`` URI:
    so must the ledger, which instead looked for a file named ``file:…`` ("no ledger at
    file:…", beside a ledger the driver could open) and so could not see ``mode=ro`` either."""
    database = tmp_path / "ledger.db"
    Store.open(f"sqlite:///{database}", create=True).close()
    for flag in ("TRUE", "1"):
        with Store.open(f"sqlite:///file:{database}?mode=ro&uri={flag}") as store:
            assert store.sqlite_file == database
            assert "read-only" in (store.append_refusal() or "")


def test_an_auditor_reads_a_finished_ledger_through_an_immutable_uri(tmp_path: Path) -> None:
    """``immutable=1`` reads without the write-ahead log files another user could not create
    (README: The store). Replay finds the data folder beside the file as for a plain path,
    a report may not be written over the ledger file, and nothing is written beside it."""
    database = tmp_path / "ledger.db"
    exp = _record_run(f"sqlite:///{database}", tmp_path / "ledger-data")
    before = sorted(path.name for path in tmp_path.iterdir())
    url = f"sqlite:///file:{database}?immutable=1&uri=true"
    assert run_cli("--db", url, "verify", exp).returncode == 0
    replay = run_cli("--db", url, "replay", exp, "--no-record")
    assert replay.returncode == 0 and replay.stdout.startswith("CERTIFIED"), replay.stderr
    report = run_cli("--db", url, "report", exp, "--no-record", "-o", str(database))
    assert report.returncode == 2 and "the ledger's own database" in report.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    missing = run_cli("--db", f"sqlite:///file:{tmp_path / 'none.db'}?mode=ro&uri=true", "list")
    assert missing.returncode == 2 and "no ledger at" in missing.stderr
