"""Hostile targets and hostile bundles for `ledger report` and `ledger verify-report`.

Each case was found by a sweep: `-o ledger.db` replaced the ledger with a report, `-o link`
replaced a symlink, a refused output left the appendix behind, a named pipe as a signature hung
verify-report, /dev/zero exhausted memory, a file added to SHA256SUMS showed as `ok` beside
signed ones, a tampered R9 crashed `--against-ledger`, and text from a report drove the
terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from ledger.store import Store
from replay_helpers import record_run
from report.html import e


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("hostile-report")
    exp = record_run(f"sqlite:///{folder / 'ledger.db'}", folder / "ledger-data", epochs=1)
    return folder, exp


@pytest.fixture(scope="module")
def signed(run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed bundle of the run, and its public key beside it as ``key.pub``."""
    folder, exp = run
    keys = tmp_path_factory.mktemp("keys")
    assert run_cli("keygen", "--out", str(keys / "key")).returncode == 0
    bundle = keys / "bundle"
    done = _ledger(folder, "report", exp, "--bundle", str(bundle), "--sign-key",
                   str(keys / "key.key"), "--no-record")
    assert done.returncode == 0, done.stderr
    return bundle


def _ledger(folder: Path, *args: str, cwd: Path | None = None):  # noqa: ANN202
    return run_cli("--db", f"sqlite:///{folder / 'ledger.db'}", *args, cwd=cwd or folder)


def _one_error(done, code: int, text: str) -> None:  # noqa: ANN001
    assert done.returncode == code, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_report_never_replaces_the_ledger(run: tuple[Path, str]) -> None:
    folder, exp = run
    before = (folder / "ledger.db").read_bytes()[:16]
    for target in ("ledger.db", "ledger.db-wal"):
        _one_error(_ledger(folder, "report", exp, "-o", target, "--no-record"), 2,
                   "it is the ledger's own database")
    assert (folder / "ledger.db").read_bytes()[:16] == before == b"SQLite format 3\x00"
    assert _ledger(folder, "list").returncode == 0



def test_a_signature_never_replaces_the_ledger(run: tuple[Path, str], tmp_path: Path) -> None:
    """The signature goes beside the report as REPORT.sig: when that name is the ledger's, the
    export is refused as for -o, and the ledger is left as it was."""
    folder, exp = run
    shutil.copy(folder / "ledger.db", tmp_path / "report.json.sig")
    assert run_cli("keygen", "--out", str(tmp_path / "key")).returncode == 0
    before = (tmp_path / "report.json.sig").read_bytes()
    done = run_cli("--db", f"sqlite:///{tmp_path / 'report.json.sig'}", "report", exp, "-o",
                   str(tmp_path / "report.json"), "--sign-key", str(tmp_path / "key.key"),
                   "--no-record", cwd=tmp_path)
    _one_error(done, 2, "it is the ledger's own database")
    assert (tmp_path / "report.json.sig").read_bytes() == before
    assert not (tmp_path / "report.json").exists()

def test_a_report_writes_through_a_symlink(run: tuple[Path, str], tmp_path: Path) -> None:
    folder, exp = run
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "current.json").write_text("old")
    (tmp_path / "latest.json").symlink_to("reports/current.json")
    done = _ledger(folder, "report", exp, "-o", str(tmp_path / "latest.json"), "--no-record")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "latest.json").is_symlink()
    assert json.loads((tmp_path / "reports" / "current.json").read_text())["R1"]["exp"] == exp


def test_a_signed_report_through_a_symlink_verifies_by_the_name_given(
        run: tuple[Path, str], tmp_path: Path) -> None:
    """-o latest.json (a link to reports/current.json) --sign-key wrote the signature beside
    the target, as current.json.sig, and named that in R9: verify-report latest.json looked
    for latest.json.sig and stopped (exit 2, no signature). It goes beside the name given."""
    folder, exp = run
    (tmp_path / "reports").mkdir()
    (tmp_path / "latest.json").symlink_to("reports/current.json")
    assert run_cli("keygen", "--out", str(tmp_path / "key")).returncode == 0
    done = _ledger(folder, "report", exp, "-o", str(tmp_path / "latest.json"), "--sign-key",
                   str(tmp_path / "key.key"), "--no-record")
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == ["current.json"]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["R9"]["signature"]["signature_file"] == "latest.json.sig"
    checked = run_cli("verify-report", str(tmp_path / "latest.json"), "--public-key",
                      str(tmp_path / "key.pub"))
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("target", ["/dev/stdout", "/proc/self/fd/1"])
def test_device_and_process_paths_are_no_report_files(run: tuple[Path, str], target: str) -> None:
    folder, exp = run
    _one_error(_ledger(folder, "report", exp, "-o", target, "--no-record"), 2,
               "not a path for a file")


def test_a_refused_output_leaves_no_appendix(run: tuple[Path, str], tmp_path: Path) -> None:
    folder, exp = run
    appendix = tmp_path / "events.ndjson"
    _one_error(_ledger(folder, "report", exp, "--format", "html", "-o", "/proc/report.html",
                       "--appendix", str(appendix), "--no-record"), 2, "cannot write")
    assert not appendix.exists() and list(tmp_path.iterdir()) == []


def test_a_refused_pipe_target_leaves_no_appendix(run: tuple[Path, str], tmp_path: Path
                                                   ) -> None:
    folder, exp = run
    os.mkfifo(tmp_path / "pipe.html")
    appendix = tmp_path / "events.ndjson"
    _one_error(_ledger(folder, "report", exp, "--format", "html", "-o",
                       str(tmp_path / "pipe.html"), "--appendix", str(appendix), "--no-record"),
               2, "not a regular file")
    assert not appendix.exists()


def test_output_and_appendix_must_differ(run: tuple[Path, str], tmp_path: Path) -> None:
    folder, exp = run
    _one_error(_ledger(folder, "report", exp, "-o", str(tmp_path / "out.json"), "--appendix",
                       str(tmp_path / "out.json"), "--no-record"), 2, "three different files")
    assert list(tmp_path.iterdir()) == []


def _verify_report(bundle: Path, *extra: str, report: str = "report.json"):  # noqa: ANN202
    return run_cli("verify-report", str(bundle / report), "--public-key",
                   str(bundle.parent / "key.pub"), *extra, cwd=bundle, timeout=120)


@pytest.mark.parametrize("what", ["signature", "public-key"])
def test_a_named_pipe_is_refused_not_waited_on(signed: Path, tmp_path: Path, what: str) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    outcome: list = []
    arguments = ["--signature", str(pipe)] if what == "signature" else []
    thread = threading.Thread(target=lambda: outcome.append(
        _verify_report(signed, *arguments) if what == "signature" else run_cli(
            "verify-report", str(signed / "report.json"), "--public-key", str(pipe),
            timeout=120)), daemon=True)
    thread.start()
    thread.join(120)  # a safeguard against the hang this test is about, not a timing assertion
    assert outcome, "verify-report blocked on a named pipe"
    _one_error(outcome[0], 2, "not a regular file")


def test_an_endless_signature_file_is_refused(signed: Path, tmp_path: Path) -> None:
    (tmp_path / "zero.sig").symlink_to("/dev/zero")
    _one_error(_verify_report(signed, "--signature", str(tmp_path / "zero.sig")), 2,
               "not a regular file")


def test_a_file_only_sha256sums_lists_is_not_shown_as_signed(signed: Path, tmp_path: Path
                                                             ) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(signed, bundle)
    (bundle / "extra.html").write_text("<p>not in the report</p>")
    digest = hashlib.sha256((bundle / "extra.html").read_bytes()).hexdigest()
    with (bundle / "SHA256SUMS").open("a") as sums:
        sums.write(f"{digest}  extra.html\n")
    done = run_cli("verify-report", str(bundle / "report.json"), "--public-key",
                   str(signed.parent / "key.pub"), "--json")
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["files"]
    assert files["extra.html"] == "unsigned (listed only in SHA256SUMS)"
    assert files["report.html"] == files["report.json.sig"] == "ok"


def test_a_tampered_r9_fails_against_the_ledger_without_crashing(run: tuple[Path, str],
                                                                 signed: Path,
                                                                 tmp_path: Path) -> None:
    folder, _exp = run
    report = json.loads((signed / "report.json").read_text())
    for streams in (5, [{"stream": ["main"]}]):
        report["R9"]["streams"] = streams
        (tmp_path / "report.json").write_text(json.dumps(report))
        done = run_cli("--db", f"sqlite:///{folder / 'ledger.db'}", "verify-report",
                       str(tmp_path / "report.json"), "--public-key",
                       str(signed.parent / "key.pub"), "--signature",
                       str(signed / "report.json.sig"), "--against-ledger")
        _one_error(done, 1, "R9")


def test_text_from_a_report_cannot_drive_the_terminal(signed: Path, tmp_path: Path) -> None:
    report = json.loads((signed / "report.json").read_text())
    report["R9"]["signature"]["public_key_sha256"] = "x\n\x1b[1A\x1b[2KOK: forged"
    report["R1"]["exp"] = "exp-\x1b[32m"
    (tmp_path / "report.json").write_text(json.dumps(report))
    done = run_cli("verify-report", str(tmp_path / "report.json"), "--public-key",
                   str(signed.parent / "key.pub"), "--signature",
                   str(signed / "report.json.sig"))
    assert done.returncode == 1
    assert "\x1b" not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1



def test_file_names_a_report_lists_cannot_drive_the_terminal(signed: Path, tmp_path: Path
                                                             ) -> None:
    """R0's file names are printed with their state and in notes: shown escaped."""
    report = json.loads((signed / "report.json").read_text())
    report["R0"]["files"].append({"name": "x\x1b[2Jy", "sha256": "0" * 64})
    (tmp_path / "report.json").write_text(json.dumps(report))
    done = run_cli("verify-report", str(tmp_path / "report.json"), "--public-key",
                   str(signed.parent / "key.pub"), "--signature",
                   str(signed / "report.json.sig"))
    assert done.returncode == 1
    assert "x\\x1b[2Jy: absent" in done.stdout and "note: x\\x1b[2Jy is listed" in done.stdout
    assert "\x1b" not in done.stdout + done.stderr

@pytest.mark.parametrize("to_stdout", [False, True], ids=["file", "stdout"])
def test_the_wrote_lines_show_the_file_name_escaped(run: tuple[Path, str], tmp_path: Path,
                                                    to_stdout: bool) -> None:
    """A name with a newline forged a line of output, and one with an escape sequence was
    shown without it (click strips those off a terminal): not the name of the file written."""
    folder, exp = run
    name = "r\nREPORT forged\x1b[31m.json"
    args = ["--appendix", str(tmp_path / name)] if to_stdout else ["-o", str(tmp_path / name)]
    done = _ledger(folder, "report", exp, "--no-record", *args)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / name).is_file()
    shown = done.stderr if to_stdout else done.stdout
    assert f"wrote {tmp_path}/r\\nREPORT forged\\x1b[31m.json" in shown
    assert not [line for line in shown.splitlines() if line.startswith("REPORT forged")]


def test_html_shows_bidi_controls_as_text() -> None:
    assert e("model \u202e gnp.exe") == "model \\u202e gnp.exe"
    assert e("<b>\x1b[2J") == "&lt;b&gt;\\x1b[2J"


def test_postgres_tables_that_are_views_are_refused(postgres_url: str) -> None:
    import sqlalchemy

    from ledger.errors import StoreError

    with Store.open(postgres_url, create=True):
        pass
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE ledger_meta")
        connection.exec_driver_sql("CREATE VIEW ledger_meta AS SELECT 'format'::varchar AS key, "
                                   "'reproducibility-ledger'::text AS value")
    engine.dispose()
    with pytest.raises(StoreError, match="is not a ledger"):
        Store.open(postgres_url)


@pytest.mark.parametrize("sql", [
    "ALTER TABLE ledger_events ALTER COLUMN seq TYPE text",
    "ALTER TABLE ledger_experiments ALTER COLUMN created_t TYPE text",
    "ALTER TABLE ledger_events DROP CONSTRAINT ledger_events_chain_position",
], ids=["seq as text", "created_t as text", "no unique chain position"])
def test_postgres_tables_of_other_types_or_keys_are_refused(postgres_url: str, sql: str) -> None:
    """The PG review made the tables by hand with text where integers belong: a whole run was
    written into them, then verify and replay failed with 'operator does not exist: text >=
    bigint'. Without the unique (exp, stream, seq) key a chain could fork."""
    import sqlalchemy

    from ledger.errors import StoreError

    with Store.open(postgres_url, create=True):
        pass
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(sql)
    engine.dispose()
    with pytest.raises(StoreError, match="is not a ledger: .* their types or its unique keys"):
        Store.open(postgres_url)


def test_postgres_triggers_count_only_while_they_refuse(postgres_url: str) -> None:
    import sqlalchemy

    with Store.open(postgres_url, create=True) as store:
        assert all(store.append_only_triggers().values())
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE ledger_events DISABLE TRIGGER "
                                   "ledger_events_append_only")
    engine.dispose()
    with Store.open(postgres_url) as store:
        controls = store.append_only_triggers()
    assert controls["ledger_events_append_only"] is False
    assert controls["ledger_meta_append_only"] is True


def _commits_fail_after_an_audit_insert(store: Store, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """Make ``store``'s commits fail, as SQLite's does on a full disk, once a transaction has
    inserted into the audit stream."""
    from sqlalchemy import event

    wrote_audit: list[bool] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _note(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if "ledger_events" in statement and "'audit'" in repr(parameters):
            wrote_audit.append(True)

    commit = store.engine.dialect.do_commit

    def do_commit(dbapi_connection) -> None:  # noqa: ANN001
        if wrote_audit:
            wrote_audit.clear()
            raise sqlite3.OperationalError("database or disk is full")
        commit(dbapi_connection)

    monkeypatch.setattr(store.engine.dialect, "do_commit", do_commit)


@pytest.mark.parametrize("target", ["output", "bundle"])
def test_an_export_whose_record_cannot_be_written_leaves_no_file(
        run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        target: str) -> None:
    """The crash review filled the ledger's disk: the record failed (exit 2), but the report's
    files were already in place, exported and unrecorded. They are now renamed into place in
    the record's own transaction, just before it commits."""
    from ledger.errors import StoreError
    from report.export import export_report
    from report.model import ReportOptions

    folder, exp = run
    insert_rows = Store._insert_rows

    def disk_full(self: Store, connection, rows) -> None:  # noqa: ANN001
        if any(row[1] == "audit" for row in rows):
            raise StoreError(f"cannot append events to {self.url}: database or disk is full")
        insert_rows(self, connection, rows)

    if target == "output":  # the insert fails
        monkeypatch.setattr(Store, "_insert_rows", disk_full)
    places = ({"output": tmp_path / "report.json"} if target == "output"
              else {"bundle": tmp_path / "bundle"})
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        audit_before = store.stream_heads(exp).get("audit")
        if target == "bundle":  # SQLite finds a full disk at the commit, after the insert
            _commits_fail_after_an_audit_insert(store, monkeypatch)
        with pytest.raises(StoreError, match="disk is full"):
            export_report(store, exp, ReportOptions(data_dir=str(folder / "ledger-data")),
                          fmt="json", appendix=tmp_path / "events.ndjson"
                          if target == "output" else None, **places)
        assert store.stream_heads(exp).get("audit") == audit_before
    left = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    assert left == ([] if target == "output" else [Path("bundle")])  # an empty folder at most


def _export_refused(run: tuple[Path, str], message: str, **places: Any) -> None:
    """``export_report`` with ``places`` fails with ``message`` and records nothing."""
    from ledger.errors import BadInputError
    from report.export import export_report
    from report.model import ReportOptions

    folder, exp = run
    with Store.open(f"sqlite:///{folder / 'ledger.db'}") as store:
        audit_before = store.stream_heads(exp).get("audit")
        with pytest.raises(BadInputError, match=message):
            export_report(store, exp, ReportOptions(), **places)
        assert store.stream_heads(exp).get("audit") == audit_before


def test_targets_that_are_no_files_are_refused_before_anything_is_written(
        run: tuple[Path, str], tmp_path: Path) -> None:
    """A folder, a file in a missing folder, an unknown format, a bundle that is a file or in
    a missing folder: each is refused up front, with what is wrong, and nothing is written."""
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "folder").mkdir()
    _export_refused(run, "is a folder", output=tmp_path / "folder")
    _export_refused(run, "folder .*missing does not exist", output=tmp_path / "missing" / "r.json")
    _export_refused(run, "unknown report format 'pdf'", fmt="pdf", output=tmp_path / "r.pdf")
    _export_refused(run, "bundle folder .*taken is a file", bundle=tmp_path / "taken")
    _export_refused(run, "cannot create bundle folder .*: folder .*missing does not exist",
                    bundle=tmp_path / "missing" / "bundle")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["folder", "taken"]


def test_an_appendix_never_replaces_the_ledger(run: tuple[Path, str]) -> None:
    folder, _exp = run
    before = (folder / "ledger.db").read_bytes()
    _export_refused(run, "cannot write appendix .*it is the ledger's own database",
                    output=folder / "unused.json", appendix=folder / "ledger.db")
    assert (folder / "ledger.db").read_bytes() == before and not (folder / "unused.json").exists()


def test_a_signature_target_that_is_a_folder_is_refused(run: tuple[Path, str],
                                                        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (tmp_path / "r.json.sig").mkdir()
    _export_refused(run, "signature .*r.json.sig is a folder", output=tmp_path / "r.json",
                    key=Ed25519PrivateKey.generate())
    _export_refused(run, "signing needs the JSON report in a file", fmt="html",
                    output=tmp_path / "r.html", key=Ed25519PrivateKey.generate())
    assert [path.name for path in tmp_path.iterdir()] == ["r.json.sig"]
