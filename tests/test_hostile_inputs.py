"""Hostile inputs: damaged databases, forged rows, malformed bodies and ids, fed to the CLI and
the library. Every case ends in one clear line on stderr and its documented exit code — never a
traceback, never a write to the ledger."""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from ledger.canonical import canonical
from ledger.digests import EVENT_TAG
from ledger.errors import BadInputError, EncodingError, InvalidIdError
from ledger.events import check_experiment_id, decode_body, path_bytes
from ledger.store import Store
from ledger.verify import verify
from ledger_builders import Recorded, drop_append_only_triggers, forged_row, insert_row, \
    record_experiment, rows


def _clean_failure(result: subprocess.CompletedProcess[str], codes: set[int]) -> None:
    assert result.returncode in codes, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    if result.returncode != 0:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _snapshot(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorded]:
    """A small, complete, closed ledger file to damage (copied per test)."""
    folder = tmp_path_factory.mktemp("pristine")
    store = Store.open(f"sqlite:///{folder / 'ledger.db'}", create=True)
    recorded = record_experiment(store, epochs=3, batches=4)
    store.close()
    return folder / "ledger.db", recorded


@pytest.fixture
def ledger_copy(pristine: tuple[Path, Recorded], tmp_path: Path) -> Iterator[tuple[Path, Recorded]]:
    source, recorded = pristine
    target = tmp_path / "ledger.db"
    shutil.copyfile(source, target)
    yield target, recorded


# -- damaged database files --------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0, 100, 0.1, 0.5, 0.9])
def test_a_truncated_database_is_refused_cleanly(ledger_copy: tuple[Path, Recorded],
                                                 keep: float) -> None:
    path, recorded = ledger_copy
    data = path.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    path.write_bytes(data[:size])
    before = _snapshot(path.parent)
    for command in (["list"], ["show", recorded.exp], ["verify"], ["replay", recorded.exp]):
        result = run_cli("--db", f"sqlite:///{path}", *command)
        _clean_failure(result, {1, 2, 3})
    assert _snapshot(path.parent) == before


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_ledger_path_that_is_no_regular_file_is_refused_not_waited_on(
        tmp_path: Path, kind: str) -> None:
    """A FIFO as the ledger (``--db``, or a ``ledger.db`` FIFO in the current folder) made every
    command wait in open() for a writer, forever: refused before it is opened, exit 2."""
    import os

    if kind == "fifo":
        path = tmp_path / "ledger.db"
        os.mkfifo(path)
    else:
        path = Path("/dev/null")
    for command in (["list"], ["verify"], ["demo", "--epochs", "1", "--workers", "0"]):
        result = run_cli("--db", f"sqlite:///{path}", *command, cwd=tmp_path, timeout=60)
        _clean_failure(result, {2})
        assert result.stderr == (f"ledger: error: {path} is not a regular file (a pipe, device "
                                 f"or socket), not a ledger database\n")
    if kind == "fifo":  # the default ledger, ./ledger.db
        result = run_cli("list", cwd=tmp_path, timeout=60)
        _clean_failure(result, {2})
        assert "ledger.db is not a regular file" in result.stderr


def test_a_ledger_path_with_trailing_blanks_is_named_quoted(ledger_copy: tuple[Path, Recorded]
                                                             ) -> None:
    """``--db 'sqlite:////srv/ledger.db '`` was refused as "no ledger at /srv/ledger.db",
    naming a file that exists: the path is quoted when it would not read as itself."""
    path, _recorded = ledger_copy
    for suffix in (" ", "\n"):
        result = run_cli("--db", f"sqlite:///{path}{suffix}", "list")
        _clean_failure(result, {2})
        assert result.stderr == f"ledger: error: no ledger at {str(path) + suffix!r}\n"


def test_bit_flips_anywhere_in_the_file_never_crash_the_cli(
        ledger_copy: tuple[Path, Recorded]) -> None:
    path, recorded = ledger_copy
    original = path.read_bytes()
    chooser = random.Random(20261128)  # fixed: any failure reproduces
    for _trial in range(12):
        position = chooser.randrange(len(original))
        damaged = bytearray(original)
        damaged[position] ^= 1 << chooser.randrange(8)
        path.write_bytes(bytes(damaged))
        before = _snapshot(path.parent)
        result = run_cli("--db", f"sqlite:///{path}", "verify", recorded.exp)
        _clean_failure(result, {0, 1, 2})
        if result.returncode == 0:
            assert result.stdout.startswith("OK")
        assert _snapshot(path.parent) == before, f"verify wrote to a damaged file (byte {position})"


@pytest.mark.parametrize("table,column,value", [
    ("ledger_events", "seq", "'abc'"), ("ledger_events", "seq", "9223372036854775807"),
    ("ledger_experiments", "created_t", "'x'"), ("ledger_experiments", "created_t", "0"),
    ("ledger_experiments", "name", "x'ff00'"),
    ("ledger_events", "body", "CAST(body AS TEXT)"),
    ("ledger_events", "body", "CAST(substr(body, 1, 10) || x'ff' || substr(body, 12) AS TEXT)"),
    ("ledger_events", "kind", "CAST(x'ff61' AS TEXT)"),
    ("ledger_experiments", "name", "CAST(x'ff61' AS TEXT)")],
    ids=["seq-text", "seq-largest", "created_t-text", "created_t-zero", "name-blob", "body-text",
         "body-text-not-utf8", "kind-not-utf8", "name-not-utf8"])
def test_mistyped_or_extreme_columns_are_findings_not_crashes(
        ledger_copy: tuple[Path, Recorded], table: str, column: str, value: str) -> None:
    # SQLite keeps whatever a tamperer writes, whatever the column's declared type.
    path, recorded = ledger_copy
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        drop_append_only_triggers(store)
    connection = sqlite3.connect(path)
    where = "seq = 3" if table == "ledger_events" else "1 = 1"
    connection.execute(f"UPDATE {table} SET {column} = {value} WHERE {where}")
    connection.commit()
    connection.close()
    for command in (["list"], ["list", "--json"], ["show", recorded.exp]):
        result = run_cli("--db", url, *command)
        _clean_failure(result, {0})
    for command in (["verify"], ["diff", recorded.exp, recorded.exp], ["replay", recorded.exp]):
        result = run_cli("--db", url, *command)
        _clean_failure(result, {1})
        assert "verification" in result.stderr


# -- malformed bodies written by hand ----------------------------------------------------------

def _deeply_nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x00"


MALFORMED_BODIES = {
    "random bytes": bytes(random.Random(1).randrange(256) for _ in range(300)),
    "truncated msgpack": canonical({"v": 1, "exp": "x"})[:-2],
    "deeply nested": _deeply_nested(100_000),
    "a list, not a map": canonical([1, 2, 3]),
    "huge": canonical({"blob": b"\x00" * (17 * 1024 * 1024)}),
}


def _wrong_body(row: dict, **changes: object) -> bytes:
    body = decode_body(row["body"])
    body.update(changes)
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("case", [*MALFORMED_BODIES, "wrong types", "unknown version",
                                  "extra field"])
def test_malformed_bodies_are_findings_not_crashes(ledger_copy: tuple[Path, Recorded],
                                                    case: str) -> None:
    path, recorded = ledger_copy
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        last = rows(store, recorded.exp, "worker-0")[-1]
        body = MALFORMED_BODIES.get(case)
        if case == "wrong types":
            body = _wrong_body(last, seq="one", path={"a": 1}, params=[1, 2])
        elif case == "unknown version":
            body = _wrong_body(last, v=2)
        elif case == "extra field":
            body = _wrong_body(last, extra=True)
        row = dict(last, seq=last["seq"] + 1, prev=last["hash"], body=body,
                   hash=hashlib.sha256(EVENT_TAG + body).digest(), path=path_bytes([]))
        insert_row(store, row)
        report = verify(store, recorded.exp)
    assert not report.ok
    assert report.findings[0].stream == "worker-0"
    before = _snapshot(path.parent)
    _clean_failure(run_cli("--db", url, "verify", recorded.exp), {1})
    _clean_failure(run_cli("--db", url, "replay", recorded.exp), {1})
    _clean_failure(run_cli("--db", url, "show", recorded.exp), {0})
    assert _snapshot(path.parent) == before


def test_rows_edited_and_rehashed_without_the_chain_are_caught(
        ledger_copy: tuple[Path, Recorded]) -> None:
    path, recorded = ledger_copy
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        drop_append_only_triggers(store)
        target = rows(store, recorded.exp, "main")[3]
        forged = forged_row(target, params={"epoch": 0, "length": 64, "shuffle": False})
        with store.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM ledger_events WHERE exp = ? AND stream = ? "
                                       "AND seq = ?", (recorded.exp, "main", target["seq"]))
        insert_row(store, forged)
    result = run_cli("--db", url, "verify", recorded.exp)
    _clean_failure(result, {1})
    assert "main seq 4" in result.stdout + result.stderr  # the event after the forged one


# -- ids and values ----------------------------------------------------------------------------

BAD_IDS = ["../../etc/passwd", "exp/1", "x'; DROP TABLE ledger_events; --", "A" * 10_240, "",
           " exp-1", "exp-1\n", "-exp", "exp-\u00e9t\u00e9", "%s%s%n"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_malformed_ids_are_refused_before_touching_the_ledger(
        ledger_copy: tuple[Path, Recorded], bad: str) -> None:
    path, recorded = ledger_copy
    url = f"sqlite:///{path}"
    before = _snapshot(path.parent)
    for command in (["show", bad], ["diff", recorded.exp, bad]):
        result = run_cli("--db", url, *command)
        _clean_failure(result, {2})
        assert any(reason in result.stderr for reason in (
            "malformed experiment id", "No such option", "Missing argument")), result.stderr
    assert _snapshot(path.parent) == before


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_experiment_ids_are_accepted_or_refused_never_crash(candidate: str) -> None:
    try:
        assert check_experiment_id(candidate) == candidate
    except InvalidIdError as error:
        assert "malformed experiment id" in str(error)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_to_a_body_or_bad_input(data: bytes) -> None:
    try:
        body = decode_body(data)
    except BadInputError:
        return
    assert isinstance(body, dict) and body["v"] == 1


_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.binary(max_size=8), st.complex_numbers(), st.sets(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.recursive(_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), children, max_size=3)),
    max_leaves=12))
def test_any_value_encodes_canonically_or_is_refused(value: object) -> None:
    try:
        encoded = canonical(value)
    except EncodingError:
        return
    assert canonical(msgpack.unpackb(encoded, raw=False, strict_map_key=False)) == encoded


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_forged_bodies_with_consistent_hashes_never_crash_verify(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        with Store.open(url, create=True) as store:
            recorded = record_experiment(store, workers=0, epochs=1, batches=1)
            last = rows(store, recorded.exp, "main")[-1]
            insert_row(store, dict(last, seq=last["seq"] + 1, prev=last["hash"], body=body,
                                   hash=hashlib.sha256(EVENT_TAG + body).digest()))
            report = verify(store, recorded.exp)
    assert not report.ok
