"""Columns edited to what no writer stores, and an audit stream another writer holds.

Found by a sweep with the sqlite3 shell: a stream, kind or experiment name edited to bytes that
are not UTF-8 (``CAST(X'6d61ff6e' AS TEXT)``) or to a blob made ``verify``, ``replay``, ``diff``,
``show`` and ``report`` end in an internal error (exit 2, "unreadable database") instead of the
finding (exit 1) or the report that says so; a malformed claims row did the same to every command
that records; and with the audit stream held by another writer, ``report`` wrote its files and
``replay`` ran to its end before failing to record.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ledger.audit import audit_trail
from ledger.store import Store
from ledger.verify import verify
from ledger_builders import drop_append_only_triggers, execute
from replay_helpers import record_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A clean recorded run: (its ledger file, its id)."""
    folder = tmp_path_factory.mktemp("tampered-text")
    exp = record_run(f"sqlite:///{folder / 'ledger.db'}", folder / "ledger-data", epochs=1)
    return folder / "ledger.db", exp


def _tampered(recorded: tuple[Path, str], folder: Path, sql: str) -> tuple[str, str]:
    """A copy of the ledger with ``sql`` run on it (triggers dropped): (URL, exp)."""
    source, exp = recorded
    copy = folder / "tampered.db"
    shutil.copyfile(source, copy)
    shutil.copytree(source.parent / "ledger-data", folder / "ledger-data", dirs_exist_ok=True)
    url = f"sqlite:///{copy}"
    with Store.open(url) as store:
        drop_append_only_triggers(store)
        execute(store, sql.replace("EXP", exp))
    return url, exp


def _no_internal_error(done: subprocess.CompletedProcess) -> None:
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 1, done.stderr


EDITS = {
    "stream-not-utf8": ("UPDATE ledger_events SET stream = CAST(X'6d61ff6e' AS TEXT) "
                        "WHERE exp = 'EXP' AND seq >= 3", r"b'ma\xffn'"),
    "stream-blob": ("UPDATE ledger_events SET stream = X'ff' WHERE exp = 'EXP' AND seq >= 3",
                    r"b'\xff'"),
    "kind-not-utf8": ("UPDATE ledger_events SET kind = CAST(X'6d61ff6e' AS TEXT) "
                      "WHERE exp = 'EXP' AND stream = 'main' AND seq = 5", "column kind"),
    "name-not-utf8": ("UPDATE ledger_experiments SET name = CAST(X'66ff6f' AS TEXT) "
                      "WHERE exp = 'EXP'", "experiment row name"),
    "name-blob": ("UPDATE ledger_experiments SET name = X'66ff6f' WHERE exp = 'EXP'",
                  "experiment row name"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_text_column_is_a_finding_and_still_gets_its_report(
        recorded: tuple[Path, str], tmp_path: Path, edit: str) -> None:
    sql, named = EDITS[edit]
    url, exp = _tampered(recorded, tmp_path, sql)
    for command in (["verify", exp], ["verify"], ["replay", exp, "--no-record"],
                    ["diff", exp, exp]):
        done = run_cli("--db", url, *command, cwd=tmp_path)
        _no_internal_error(done)
        assert done.returncode == 1, (command, done.stderr)
        assert named in done.stderr + done.stdout, (command, done.stderr)
    done = run_cli("--db", url, "verify", exp, "--json", cwd=tmp_path)
    assert json.loads(done.stdout)["ok"] is False
    done = run_cli("--db", url, "show", exp, cwd=tmp_path)
    _no_internal_error(done)
    assert done.returncode == 0
    done = run_cli("--db", url, "report", exp, "--no-record", "--bundle",
                   str(tmp_path / "bundle"), cwd=tmp_path)
    _no_internal_error(done)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "bundle" / "report.json").read_bytes().decode("utf-8"))
    assert any(named in finding["problem"] or named in str(finding["stream"])
               for finding in report["R9"]["verification"]["findings"]), report["R9"]
    for line in (tmp_path / "bundle" / "events.ndjson").read_bytes().decode("utf-8").splitlines():
        json.loads(line)


def test_a_claims_row_no_writer_made_is_one_error_for_recording_commands(
        recorded: tuple[Path, str], tmp_path: Path) -> None:
    url, exp = _tampered(recorded, tmp_path, "SELECT 1")
    with Store.open(url) as store:
        execute(store, "INSERT INTO ledger_stream_claims VALUES (100, :exp, 'audit', 'x', "
                       "'claim', 'y', 'w', X'ff', 'p', 't')", exp=exp)
    for command in (["replay", exp], ["report", exp, "-o", str(tmp_path / "r.json")]):
        done = run_cli("--db", url, *command, cwd=tmp_path)
        _no_internal_error(done)
        assert done.returncode == 2 and "hold a row no writer made" in done.stderr, done.stderr
    assert not (tmp_path / "r.json").exists()
    done = run_cli("--db", url, "replay", exp, "--no-record", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_an_audit_stream_held_by_another_writer_refuses_before_any_work(
        recorded: tuple[Path, str], tmp_path: Path) -> None:
    url, exp = _tampered(recorded, tmp_path, "SELECT 1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ledger.store import Store, StreamWriter\n"
         "store = Store.open(sys.argv[1])\nwriter = StreamWriter(store, sys.argv[2], 'audit')\n"
         "print('holding', flush=True)\ntime.sleep(120)\n", url, exp],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for command in (["report", exp, "--bundle", str(tmp_path / "bundle")],
                        ["report", exp, "-o", str(tmp_path / "r.json")], ["replay", exp]):
            done = run_cli("--db", url, *command, cwd=tmp_path)
            _no_internal_error(done)
            assert done.returncode == 2, done.stderr
            assert f"the audit stream of {exp} is open by writer" in done.stderr
            assert "--no-record" in done.stderr and "take_over" not in done.stderr
            assert "give --take-over" in done.stderr
            assert "CERTIFIED" not in done.stdout  # refused before the replay ran
        assert not (tmp_path / "bundle").exists() and not (tmp_path / "r.json").exists()
    finally:
        holder.kill()
        holder.communicate()
    # the holder is gone (killed on this host): its claim no longer stands in the way
    done = run_cli("--db", url, "replay", exp, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_an_audit_stream_left_open_on_another_machine_is_taken_over_when_asked(
        recorded: tuple[Path, str], tmp_path: Path) -> None:
    """A replay killed on another machine holds the audit stream for ever (its process cannot
    be checked from here): every later replay or report was refused, with no way out but the
    library. --take-over takes the stream."""
    url, exp = _tampered(recorded, tmp_path, "SELECT 1")
    with Store.open(url) as store:
        execute(store, "INSERT INTO ledger_stream_claims (exp, stream, attempt, action, "
                       "start_seq, writer, host, pid, t) VALUES (:exp, 'audit', 0, 'claim', 0, "
                       "'0f0f', 'node-b', 4242, 1)", exp=exp)
    refused = run_cli("--db", url, "replay", exp, cwd=tmp_path)
    assert refused.returncode == 2 and "host node-b, pid 4242" in refused.stderr
    assert "give --take-over" in refused.stderr
    done = run_cli("--db", url, "replay", exp, "--take-over", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("CERTIFIED"), done.stderr
    done = run_cli("--db", url, "report", exp, "-o", str(tmp_path / "r.json"), "--take-over",
                   cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "r.json").is_file(), done.stderr
    with Store.open(url) as store:
        assert [body["kind"] for body in audit_trail(store, exp)] == ["replay_recorded",
                                                                      "report_exported"]
        assert verify(store, exp).ok
