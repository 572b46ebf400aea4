"""The store under concurrency and failure, as an operator meets it: processes that open a new
ledger together, a ledger file deleted or replaced under a writer, a full disk, a PostgreSQL
backend terminated mid-run, a stream taken over from a live process, two processes resuming one
run, Ctrl-C during flushes, readers while a write is in progress. Each ends in one clear error
(or none), no partial batch, a ledger that verifies, and a run that can go on."""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlalchemy

import ledger.processes
import ledger.resume
import ledger.store.connect
from conftest import ROOT, run_cli
from ledger.audit import record_audit
from ledger.errors import (BadInputError, ConcurrentWriteError, StoreError,
                           StreamClaimedError)
from ledger.events import decode_body
from ledger.experiment import ExperimentManager
from ledger.store import Store, StreamWriter
from ledger.verify import verify
from ledger_builders import record_experiment

TIMEOUT = 120
"""Seconds after which a child process counts as hung: turns a hang into a failure."""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter with the project importable, pipes on stdio."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str], stdin: str = "") -> tuple[str, str]:
    """Send ``stdin``, wait for the process and return its stdout and stderr."""
    try:
        return process.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def _status(store: Store, exp: str) -> str:
    return store.experiment(exp).status


# -- creating a ledger ---------------------------------------------------------------------------

CREATOR = """
    import sys
    from ledger.experiment import ExperimentManager
    print("ready", flush=True)
    sys.stdin.readline()  # released together with the others
    try:
        with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
            with manager.create_experiment("launched-together", seed=1) as exp:
                exp.log_metric("loss", 1.0)
        print("ok")
    except Exception as error:
        print(f"{type(error).__name__}: {error}")
"""


def test_a_new_ledger_waits_for_another_process_holding_its_write_lock(tmp_path: Path) -> None:
    """SQLite refuses the switch to WAL at once ('database is locked', no busy wait) while
    another connection holds the write lock of the new file — as a job opening the same new
    ledger at that moment does. The open used to fail with a raw OperationalError (a
    traceback in the CLI); it now waits for the lock and creates the ledger."""
    path = tmp_path / "ledger.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.5, lambda: (holder.execute("COMMIT"), holder.close()))
    released.start()
    try:
        with Store.open(f"sqlite:///{path}", create=True) as store:
            assert store.experiments() == []
    finally:
        released.join()
    assert verify(f"sqlite:///{path}").ok


def test_processes_opening_a_new_ledger_together_all_create_it_once(store_url: str,
                                                                    tmp_path: Path) -> None:
    """Jobs launched together on a ledger that does not exist yet: each used to race to create
    the schema, and the losers failed ('database is locked', 'trigger ... already exists')."""
    urls = ([f"sqlite:///{tmp_path / f'ledger-{n}.db'}" for n in range(3)]
            if store_url.startswith("sqlite") else [store_url])
    for url in urls:
        processes = [_python(CREATOR, url, str(tmp_path / "data")) for _ in range(3)]
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = [_finish(process)[0].strip() for process in processes]
        assert outcomes == ["ok"] * 3
        with Store.open(url) as store:
            assert len(store.experiments()) == 3 and verify(store).ok


# -- the SQLite file under a writer ---------------------------------------------------------------

def _writer_with_durable_events(url: str) -> tuple[Store, StreamWriter]:
    store = Store.open(url, create=True)
    recorded = record_experiment(store, complete=False)
    writer = StreamWriter(store, recorded.exp, "extra", flush_interval=None)
    writer.append("metric", params={"n": 0})
    writer.flush()
    return store, writer


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_writer_refuses_to_acknowledge_events_for_a_ledger_file_that_is_gone(
        tmp_path: Path, how: str) -> None:
    """The open connection kept committing into the unlinked file: flush() returned as if the
    events were durable while every later reader found nothing (or another ledger)."""
    path = tmp_path / "ledger.db"
    store, writer = _writer_with_durable_events(f"sqlite:///{path}")
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        if how == "replaced":
            with Store.open(f"sqlite:///{tmp_path / 'other.db'}", create=True):
                pass
            os.replace(tmp_path / "other.db", path)
        writer.append("metric", params={"n": 1})
        with pytest.raises(StoreError, match=f"{path} was deleted or replaced while open"):
            writer.flush()
        assert writer.durable_seq == 0
    finally:
        writer.close()  # its failure was already raised
        store.close()


def test_a_full_disk_stops_the_run_with_one_error_and_it_resumes_in_the_same_process(
        tmp_path: Path) -> None:
    """A file-size limit (as a full disk) fails a batch: one StoreError, no partial batch, the
    run incomplete and verifying, its main stream released, so resuming in the same process
    (once the limit is lifted) completes it."""
    code = """
        import resource, sys
        from ledger.errors import StoreError
        from ledger.experiment import ExperimentManager
        with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
            exp = manager.create_experiment("filling", seed=3)
            print("durable", exp.flush(), flush=True)
            limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limits[1]))
            try:
                with exp:
                    for n in range(1_000_000):
                        exp.record("metric", params={"n": n, "pad": "x" * 200})
                        if n % 100 == 0:
                            print("durable", exp.flush(), flush=True)
            except StoreError as error:
                print("error", error, flush=True)
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            with manager.resume_experiment(exp.id) as resumed:
                resumed.log_metric("after", 1.0)
            print("resumed", exp.id, flush=True)
    """
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out, err = _finish(_python(code, url, str(tmp_path / "data")))
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("error")] == [
        "error cannot append events: disk I/O error"], err
    assert lines[-1].startswith("resumed"), err
    last_durable = max(int(line.split()[1]) for line in lines if line.startswith("durable"))
    exp = lines[-1].split()[1]
    with Store.open(url) as store:
        assert verify(store).ok and _status(store, exp) == "ok"
        resumed_at = next(decode_body(body)["params"]["after_seq"]
                          for _stream, _seq, kind, body in store.iter_run_bodies(exp)
                          if kind == "run_resumed")
    assert resumed_at >= last_durable  # nothing acknowledged was lost, nothing half-written


# -- PostgreSQL: a backend terminated mid-run --------------------------------------------------

def test_a_terminated_postgres_connection_is_one_error_and_the_run_resumes(
        postgres_url: str, tmp_path: Path) -> None:
    """``pg_terminate_backend`` on the writer's connection: the with block ends in one
    StoreError, nothing half-written, and the same process resumes and completes the run (its
    main stream used to stay claimed by itself: StreamClaimedError naming its own pid)."""
    url = f"{postgres_url}&application_name=ledger_victim"
    admin = sqlalchemy.create_engine(postgres_url)
    try:
        with ExperimentManager(url, data_dir=tmp_path) as manager:
            exp = manager.create_experiment("terminated", seed=4)
            exp.log_metric("loss", 1.0)
            exp.flush()
            with admin.begin() as connection:
                killed = connection.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'ledger_victim'").scalar()
            assert killed >= 1
            with pytest.raises(StoreError, match="cannot append events: .*connection"):
                with exp:
                    exp.log_metric("loss", 0.5)
                    exp.flush()
            assert _status(manager.store, exp.id) == "incomplete"
            assert verify(manager.store, exp.id).ok
            with manager.resume_experiment(exp.id) as resumed:
                resumed.log_metric("after", 0.5)
            assert _status(manager.store, exp.id) == "ok"
            assert verify(manager.store, exp.id).ok
    finally:
        admin.dispose()


def test_a_verify_worker_that_cannot_connect_is_one_store_error(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A role at its connection limit: the parent's connection is the one allowed, so each
    verify worker's open fails. That failure, raised in the pool's initializer, printed a
    traceback per worker and ended as an internal BrokenProcessPool; now one StoreError."""
    verify_module = importlib.import_module("ledger.verify")  # `ledger.verify` is the function
    url = sqlalchemy.make_url(postgres_url)
    role = f"ledger_limited_{os.getpid()}"
    schema = url.query["options"].split("%3D")[-1].split("=")[-1]
    admin = sqlalchemy.create_engine(postgres_url)
    with Store.open(postgres_url, create=True) as store:
        record_experiment(store)
        record_experiment(store)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
            connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            connection.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        monkeypatch.setattr(verify_module, "usable_cores", lambda: 2)
        monkeypatch.setattr(ledger.processes, "usable_cores", lambda: 2)
        limited = url.set(username=role).render_as_string(hide_password=False)
        with Store.open(limited) as store:
            with pytest.raises(StoreError, match="too many connections"):
                verify(store, jobs=2)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_a_lock_held_on_a_ledger_table_is_one_error_not_a_hang(postgres_url: str) -> None:
    """Another session holding a lock on ledger_events (a LOCK TABLE, an ALTER TABLE, a VACUUM
    FULL): `ledger list` waited for as long as the lock was held. Now it gives up after
    POSTGRES_LOCK_TIMEOUT seconds with one line, exit 2."""
    with Store.open(postgres_url, create=True) as store:
        record_experiment(store)
    admin = sqlalchemy.create_engine(postgres_url)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql("LOCK TABLE ledger_events IN ACCESS EXCLUSIVE MODE")
            result = run_cli("--db", postgres_url, "list", timeout=TIMEOUT)
    finally:
        admin.dispose()
    assert result.returncode == 2
    assert "lock timeout" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_writer_waits_for_a_lock_a_read_gives_up_on(postgres_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run's writer outlasts a maintenance lock (its events buffered meanwhile)
    instead of stopping the run after the readers' lock timeout."""
    monkeypatch.setattr(ledger.store.connect, "POSTGRES_LOCK_TIMEOUT", 1)
    admin = sqlalchemy.create_engine(postgres_url)
    with Store.open(postgres_url, create=True) as store:
        recorded = record_experiment(store, workers=0, complete=False)
        writer = StreamWriter(store, recorded.exp, "rank-7", flush_interval=None)
        writer.append("metric", params={"after": "the lock"})
        locked, release = threading.Event(), threading.Event()

        def maintenance() -> None:
            with admin.begin() as connection:
                connection.exec_driver_sql("LOCK TABLE ledger_events IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(TIMEOUT)

        holder = threading.Thread(target=maintenance)
        holder.start()
        try:
            assert locked.wait(TIMEOUT)
            with pytest.raises(StoreError, match="lock timeout"):
                store.counts_by_kind(recorded.exp)  # a read gives up after 1 s
            threading.Timer(2.0, release.set).start()  # the lock outlasts the read timeout
            assert writer.flush() == 0  # and the writer waited for it
        finally:
            release.set()
            holder.join()
            admin.dispose()
        writer.close()
        assert store.last_event(recorded.exp, "rank-7")[0] == 0


# -- stream claims between live processes -------------------------------------------------------

STALE_WRITER = """
    import sys
    from ledger.errors import ConcurrentWriteError
    from ledger.store import Store, StreamWriter
    with Store.open(sys.argv[1]) as store:
        writer = StreamWriter(store, sys.argv[2], "rank-1", flush_interval=None)
        writer.append("metric", params={"who": "stale"})
        print("open", flush=True)
        sys.stdin.readline()  # taken over meanwhile
        try:
            writer.flush()
            print("flushed")
        except ConcurrentWriteError as error:
            print(f"refused: {error}")
        writer.close()
"""


def test_a_live_writer_taken_over_is_refused_even_when_it_flushes_first(
        store: Store, store_url: str) -> None:
    """take_over=True against a live process: its buffered events used to go in when it flushed
    first, and the writer meant to go on was the one refused. Now the stale one is refused."""
    recorded = record_experiment(store, workers=0, complete=False)
    stale = _python(STALE_WRITER, store_url, recorded.exp)
    try:
        assert stale.stdout.readline().strip() == "open"
        with pytest.raises(StreamClaimedError, match=rf"pid {stale.pid}\b"):
            StreamWriter(store, recorded.exp, "rank-1")
        taker = StreamWriter(store, recorded.exp, "rank-1", flush_interval=None, take_over=True)
    finally:
        out, err = _finish(stale, "flush\n")
    assert out.strip().startswith("refused: stream rank-1 of") and "taken over" in out, err
    with taker:
        taker.append("metric", params={"who": "taker"})
    assert store.stream_heads(recorded.exp)["rank-1"].count == 1
    assert verify(store, recorded.exp).ok


# -- resuming one run twice ---------------------------------------------------------------------

HOLDING_RESUMER = """
    import sys
    from ledger.experiment import ExperimentManager
    with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
        with manager.resume_experiment(sys.argv[3]) as exp:
            exp.log_metric("loss", 1.0)
            print("resumed", flush=True)
            sys.stdin.readline()
    print("completed", flush=True)
"""


def _suspended_run(manager: ExperimentManager) -> str:
    exp = manager.create_experiment("preemptible", seed=5)
    exp.log_metric("loss", 1.0)
    exp.suspend()
    return exp.id


def test_a_second_resume_is_refused_while_the_first_runs_and_after_it_completed(
        store_url: str, tmp_path: Path) -> None:
    """Two processes resuming one run (a scheduler retrying): the second is refused naming the
    first while it runs, and refused as completed once it has completed."""
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = _suspended_run(manager)
        first = _python(HOLDING_RESUMER, store_url, str(tmp_path), exp)
        try:
            assert first.stdout.readline().strip() == "resumed"
            with pytest.raises(StreamClaimedError, match=rf"pid {first.pid}\b"):
                manager.resume_experiment(exp)
        finally:
            out, err = _finish(first, "\n")
        assert out.strip() == "completed", err
        with pytest.raises(BadInputError, match="only an incomplete run can be resumed"):
            manager.resume_experiment(exp)
        assert verify(manager.store, exp).ok


def test_a_resume_that_raced_a_completing_resume_appends_nothing(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second resumer checked 'incomplete' and verified, then the first completed the run
    before the second claimed main: its run_resumed went after run_completed and the completed
    run no longer verified. The completion is now checked again once main is claimed."""
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = _suspended_run(manager)
        checked = ledger.resume.verify

        def verify_then_let_another_process_complete(store: Store, exp_id: str):  # noqa: ANN202
            result = checked(store, exp_id)
            monkeypatch.setattr(ledger.resume, "verify", checked)
            out, err = _finish(_python(HOLDING_RESUMER, store_url, str(tmp_path), exp_id), "\n")
            assert out.split() == ["resumed", "completed"], err
            return result

        monkeypatch.setattr(ledger.resume, "verify", verify_then_let_another_process_complete)
        with pytest.raises(BadInputError, match="another process completed"):
            manager.resume_experiment(exp)
        assert verify(manager.store, exp).ok and _status(manager.store, exp) == "ok"


# -- interrupts and readers ---------------------------------------------------------------------

FLUSHING_RUN = """
    import signal, sys
    # as started from a terminal (a test runner in the background of a script ignores SIGINT,
    # and its children inherit that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ledger.experiment import ExperimentManager
    with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
        with manager.create_experiment("interrupted", seed=6) as exp:
            print("exp", exp.id, flush=True)
            for n in range(10**8):
                exp.record("metric", params={"n": n})
                if n % 2000 == 0:
                    print("durable", exp.flush(), flush=True)
"""


def test_ctrl_c_during_flushes_leaves_a_failed_run_that_verifies(tmp_path: Path) -> None:
    """SIGINT while the run flushes batch after batch: KeyboardInterrupt leaves the with block,
    which records run_completed (failed); every acknowledged event is there."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run = _python(FLUSHING_RUN, url, str(tmp_path / "data"))
    exp = run.stdout.readline().split()[1]
    durable = [int(run.stdout.readline().split()[1]) for _ in range(5)]
    run.send_signal(signal.SIGINT)
    _out, err = _finish(run)
    assert run.returncode != 0 and err.strip().endswith("KeyboardInterrupt")
    with Store.open(url) as store:
        assert verify(store).ok and _status(store, exp) == "failed"
        assert store.stream_heads(exp)["main"].count > durable[-1] + 1
    assert run_cli("--db", url, "verify", exp).returncode == 0


def test_readers_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    """WAL: `ledger verify/list/show` run while another connection holds the write lock with an
    uncommitted batch, and see only what is committed."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
    holder = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO ledger_experiments VALUES ('exp-uncommitted', 'x', 1)")
        for command in (["verify"], ["list", "--json"], ["show", recorded.exp]):
            result = run_cli("--db", url, *command, timeout=TIMEOUT)
            assert result.returncode == 0, result.stderr
            assert "exp-uncommitted" not in result.stdout
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_failed_write_releases_main_when_the_with_block_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever stops the writer, leaving the block stops its thread and releases main: it used
    to stay claimed by this very process, so resume_experiment here was refused."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        exp = manager.create_experiment("stopped", seed=7)
        exp.flush()

        def failing(_rows: object, **_options: object) -> None:
            raise StoreError("cannot append events: database or disk is full")

        monkeypatch.setattr(manager.store, "append_rows", failing)
        with pytest.raises(StoreError, match="disk is full"):
            with exp:
                exp.log_metric("loss", 1.0)
                exp.flush()
        assert exp._writer._timer is None or not exp._writer._timer.is_alive()
        monkeypatch.undo()
        with manager.resume_experiment(exp.id) as resumed:
            resumed.log_metric("loss", 1.0)
        assert verify(manager.store).ok and _status(manager.store, exp.id) == "ok"


def test_a_concurrent_write_error_names_the_stream(store: Store) -> None:
    """The one line a refused batch reads as: which stream, which experiment, why."""
    recorded = record_experiment(store, workers=0, complete=False)
    first = StreamWriter(store, recorded.exp, "main", flush_interval=None)
    with StreamWriter(store, recorded.exp, "main", flush_interval=None, take_over=True):
        pass
    first.append("metric")
    with pytest.raises(ConcurrentWriteError, match=rf"^stream main of {recorded.exp} was taken "
                                                   rf"over by writer [0-9a-f]{{32}}: "):
        first.flush()
    first.close()


def test_a_final_flush_that_fails_leaves_the_experiment_incomplete_not_ok(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() buffers run_completed and then flushes; when that flush fails, the object must
    not claim status 'ok' and a head the ledger does not hold: it says 'incomplete', and the
    run resumes in the same process."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("final-flush", seed=5)
        exp.log_metric("loss", 0.5, epoch=0)

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise StoreError("disk full (simulated)")

        monkeypatch.setattr(manager.store, "append_rows", refuse)
        with pytest.raises(StoreError, match="simulated"):
            exp.close()
        monkeypatch.undo()
        assert exp.status == "incomplete" and exp.head is None and exp.closed
        assert manager.store.experiment(exp.id).status == "incomplete"
        with manager.resume_experiment(exp.id) as resumed:
            resumed.log_metric("loss", 0.4, epoch=1)
        assert manager.store.experiment(exp.id).status == "ok"
        assert verify(manager.store, exp.id).ok


def test_a_command_s_record_gives_up_on_a_lock_a_training_writer_waits_out(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ledger replay` and `ledger report` record in the audit stream: under another session's
    `LOCK TABLE ... IN EXCLUSIVE MODE` (reads still allowed) their record waited, silently and
    deaf to Ctrl-C, for as long as the lock was held. A store with bounded_writes gives up
    after POSTGRES_LOCK_TIMEOUT, as a read does, with one StoreError naming the lock."""
    monkeypatch.setattr(ledger.store.connect, "POSTGRES_LOCK_TIMEOUT", 1)
    admin = sqlalchemy.create_engine(postgres_url)
    with Store.open(postgres_url, create=True) as store:
        recorded = record_experiment(store, workers=0)
        store.bounded_writes = True
        try:
            with admin.begin() as connection:
                connection.exec_driver_sql("LOCK TABLE ledger_events IN EXCLUSIVE MODE")
                assert store.counts_by_kind(recorded.exp)  # reads are not blocked
                with pytest.raises(StoreError, match="lock timeout .*another session held a "
                                                     "lock on a ledger table"):
                    record_audit(store, recorded.exp, "replay_recorded", {"verdict": "x"})
        finally:
            admin.dispose()
        assert "audit" not in store.stream_heads(recorded.exp)
