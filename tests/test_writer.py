"""The stream writer (DESIGN §4), on every backend: head in memory, batched flushes, durability,
continuation of an existing chain, and no fork under concurrent writers."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import sqlalchemy
from sqlalchemy import select

from conftest import ROOT
from ledger import background_threads_paused, processes
from ledger.digests import ZERO_DIGEST
from ledger.errors import (BadInputError, ConcurrentWriteError, EncodingError, InvalidIdError,
                           StoreError, StreamClaimedError)
from ledger.events import make_event
from ledger.experiment import ExperimentManager
from ledger.store import Store, StreamWriter
import ledger.store.claims as claims_module
from ledger.store.claims import host_identity, live_holder
from ledger.store.schema import claims_table
from ledger.store.writer import MAX_QUEUED_BATCHES
from ledger.verify import verify
from ledger_builders import drop_append_only_triggers, execute, record_experiment, rows

EXP = "exp-0123456789ab"
_streams = itertools.count()


def stored_seqs(store: Store, stream: str, exp: str = EXP) -> list[int]:
    return [row["seq"] for row in rows(store, exp, stream)]


def wait_for(condition, what: str) -> None:  # noqa: ANN001
    """Poll until ``condition()`` holds. The bound only keeps a broken build from hanging."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.01)


def writer(store: Store, stream: str = "main", **options: object) -> StreamWriter:
    options.setdefault("flush_interval", None)
    return StreamWriter(store, EXP, stream, **options)


def test_the_head_is_kept_in_memory_until_a_flush(store: Store) -> None:
    with writer(store, batch_size=100) as w:
        assert (w.next_seq, w.head, w.durable_seq) == (0, ZERO_DIGEST, -1)
        first = w.append("metric", params={"n": 0})
        second = w.append("metric", params={"n": 1})
        assert (first.seq, first.prev) == (0, ZERO_DIGEST)
        assert (second.seq, second.prev) == (1, first.hash)
        assert (w.next_seq, w.head, w.durable_seq) == (2, second.hash, -1)
        assert stored_seqs(store, "main") == []
        assert w.flush() == 1
        assert w.durable_seq == 1
        assert [row["hash"] for row in rows(store, EXP, "main")] == [first.hash, second.hash]
        assert w.flush() == 1  # nothing new: still durable up to 1


def test_a_full_batch_is_flushed(store: Store) -> None:
    with writer(store, batch_size=3) as w:
        for n in range(2):
            w.append("metric", params={"n": n})
        assert stored_seqs(store, "main") == []
        w.append("metric", params={"n": 2})
        assert stored_seqs(store, "main") == [0, 1, 2]
        assert w.durable_seq == 2
        for n in range(3, 8):
            w.append("metric", params={"n": n})
        assert stored_seqs(store, "main") == [0, 1, 2, 3, 4, 5]
        assert w.durable_seq == 5


def test_close_flushes_and_then_refuses(store: Store) -> None:
    w = writer(store, batch_size=100)
    w.append("metric")
    w.close()
    assert stored_seqs(store, "main") == [0]
    assert w.durable_seq == 0
    with pytest.raises(StoreError, match="closed"):
        w.append("metric")
    w.close()  # twice is fine
    assert stored_seqs(store, "main") == [0]


def test_leaving_a_with_block_flushes_even_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError, match="training crashed"):
        with writer(store, batch_size=100) as w:
            w.append("metric")
            w.append("metric")
            raise RuntimeError("training crashed")
    assert stored_seqs(store, "main") == [0, 1]


def test_the_interval_flushes_an_idle_writer(store: Store) -> None:
    w = writer(store, batch_size=1000, flush_interval=0.05)
    try:
        event = w.append("metric")
        wait_for(lambda: stored_seqs(store, "main") == [0], "the interval flush")
        wait_for(lambda: w.durable_seq == event.seq, "durable_seq to follow the interval flush")
    finally:
        w.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_size=st.integers(min_value=1, max_value=5),
       steps=st.lists(st.one_of(st.integers(min_value=1, max_value=6), st.just("flush")),
                      max_size=8))
def test_durable_seq_never_claims_an_unwritten_event(store: Store, batch_size: int,
                                                     steps: list) -> None:
    stream = f"s{next(_streams)}"
    with writer(store, stream, batch_size=batch_size) as w:
        appended: list[bytes] = []
        for step in steps:
            if step == "flush":
                assert w.flush() == len(appended) - 1
            else:
                appended += [w.append("metric", params={"n": n}).hash for n in range(step)]
            stored = rows(store, EXP, stream)
            assert [row["seq"] for row in stored] == list(range(len(stored)))
            assert w.durable_seq == len(stored) - 1  # everything up to durable_seq is stored
            assert len(appended) - len(stored) < batch_size  # a full batch is never held back
            assert [row["hash"] for row in stored] == appended[:len(stored)]
    assert len(rows(store, EXP, stream)) == len(appended)


def test_a_killed_writer_keeps_every_event_it_acknowledged(store: Store, store_url: str) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    script = f"""
import os
from ledger.store import Store, StreamWriter
from ledger.store.writer import MAX_QUEUED_BATCHES
store = Store.open({store_url!r})
writer = StreamWriter(store, {recorded.exp!r}, "main", batch_size=1000, flush_interval=None)
for n in range(5):
    writer.append("metric", params={{"n": n}})
print(writer.flush(), flush=True)
for n in range(5, 8):
    writer.append("metric", params={{"n": n}})
os._exit(9)  # killed: no close, no flush, no exit handlers
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 9, result.stderr
    durable = int(result.stdout)
    assert durable == len(recorded.main) + 4
    assert stored_seqs(store, "main", recorded.exp) == list(range(durable + 1))
    assert verify(store).ok  # the chain simply ends earlier
    with StreamWriter(store, recorded.exp, "main", flush_interval=None) as again:
        assert again.next_seq == durable + 1


def test_a_reopened_stream_continues_its_chain(store: Store) -> None:
    with writer(store) as w:
        for n in range(3):
            last = w.append("metric", params={"n": n})
    with writer(store) as again:
        assert (again.next_seq, again.head, again.durable_seq) == (3, last.hash, 2)
        continued = again.append("metric", params={"n": 3})
    assert (continued.seq, continued.prev) == (3, last.hash)
    assert stored_seqs(store, "main") == [0, 1, 2, 3]


def test_a_recorded_experiment_continued_by_another_writer_still_verifies(store: Store) -> None:
    recorded = record_experiment(store, complete=False)
    with StreamWriter(store, recorded.exp, "worker-0", flush_interval=None) as w:
        assert w.head == recorded.streams["worker-0"][-1].hash
        w.append("user_draw", path=("dropout", "layer3"))
    assert verify(store).ok


def test_a_second_writer_on_an_open_stream_is_refused_at_open(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    with StreamWriter(store, recorded.exp, "main", flush_interval=None) as first:
        first.append("metric", params={"who": "first"})
        first.flush()  # wherever the head has moved, the stream stays held
        with pytest.raises(StreamClaimedError, match=r"already open by writer .*pid \d+"):
            StreamWriter(store, recorded.exp, "main", flush_interval=None)
        first.append("metric", params={"who": "first again"})
    with StreamWriter(store, recorded.exp, "main", flush_interval=None) as after_close:
        assert after_close.next_seq == len(recorded.main) + 2
    assert verify(store).ok


def insert_claim(store: Store, exp: str, stream: str, *, action: str = "claim",
                 host: str = "elsewhere", pid: int = 1) -> None:
    """Attempt 0's claims row of a stream, as a writer of ``host`` and ``pid`` makes it (with
    another ``action``, as none does)."""
    execute(store, "INSERT INTO ledger_stream_claims (exp, stream, attempt, action, start_seq, "
                   "writer, host, pid, t) VALUES (:exp, :stream, 0, :action, 0, 'ab', :host, "
                   ":pid, 1)", exp=exp, stream=stream, action=action, host=host, pid=pid)


@pytest.mark.parametrize("namespace,taken_over", [
    ("this one", True), ("none recorded (older claims)", True), ("another one", False)])
def test_a_claim_whose_process_is_gone_is_taken_over_only_from_its_pid_namespace(
        store: Store, namespace: str, taken_over: bool) -> None:
    """A claim records the PID namespace with the host name; a pid is judged gone only from
    the namespace that can see it (or for a claim written before namespaces were recorded)."""
    recorded = record_experiment(store, workers=0, complete=False)
    host = {"this one": host_identity(), "none recorded (older claims)": socket.gethostname(),
            "another one": f"{socket.gethostname()}/pid:[1]"}[namespace]
    unused_pid = 2**22 + 17  # above Linux's largest pid: no process has it here
    insert_claim(store, recorded.exp, "rank-3", host=host, pid=unused_pid)
    if taken_over:
        StreamWriter(store, recorded.exp, "rank-3", flush_interval=None).close()
    else:
        with pytest.raises(StreamClaimedError, match=f"pid {unused_pid}"):
            StreamWriter(store, recorded.exp, "rank-3", flush_interval=None)


HOLD_IN_ANOTHER_NAMESPACE = (
    # pid 77778 in the new namespace: a pid that no process has out here
    "echo 77777 > /proc/sys/kernel/ns_last_pid && \"$0\" -c \"$1\" \"$2\" \"$3\"")
HOLDER = ("import os, sys, time\nfrom ledger.store import Store, StreamWriter\n"
          "writer = StreamWriter(Store.open(sys.argv[1]), sys.argv[2], 'rank-5')\n"
          "print(os.getpid(), flush=True)\ntime.sleep(60)\n")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="needs root on Linux to start a process in a new PID namespace")
def test_a_live_writer_in_another_pid_namespace_is_not_taken_over(tmp_path) -> None:  # noqa: ANN001
    """The PG review ran training in a container sharing the host's name but not its pids:
    from the host, the trainer's pid did not exist, so a resume there took the live run over
    (and the trainer died with ConcurrentWriteError)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=0, complete=False)
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
         HOLD_IN_ANOTHER_NAMESPACE, sys.executable, HOLDER, url, recorded.exp],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None
        pid = int(holder.stdout.readline())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the holder's pid means nothing out here
        with Store.open(url) as store:
            with pytest.raises(StreamClaimedError, match=f"already open by writer .*pid {pid}"):
                StreamWriter(store, recorded.exp, "rank-5", flush_interval=None)
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_a_last_event_written_with_its_own_reads_is_refused_to_a_writer_taken_over(
        store: Store) -> None:
    """close_with (how run_completed is written) checks the claim like every batch does, even
    when nothing else is buffered."""
    recorded = record_experiment(store, workers=0, complete=False)
    first = StreamWriter(store, recorded.exp, "main", flush_interval=None)
    second = StreamWriter(store, recorded.exp, "main", flush_interval=None, take_over=True)
    try:
        with pytest.raises(ConcurrentWriteError, match="taken over"):
            first.close_with("run_completed", lambda _connection: {"status": "ok"})
    finally:
        first.close()
        second.close()
    assert len(stored_seqs(store, "main", recorded.exp)) == len(recorded.main)


def test_a_writer_that_takes_over_a_live_one_still_cannot_fork(store: Store) -> None:
    """The writer taken over is refused from its next flush on — even when it flushes before
    the one that replaced it — so it cannot knock out the writer meant to go on."""
    recorded = record_experiment(store, workers=0, complete=False)
    first = StreamWriter(store, recorded.exp, "main", flush_interval=None)
    second = StreamWriter(store, recorded.exp, "main", flush_interval=None, take_over=True)
    start = first.next_seq
    try:
        first.append("metric", params={"who": "first"})
        with pytest.raises(ConcurrentWriteError, match="taken over .*refused rather than fork"):
            first.flush()
        with pytest.raises(ConcurrentWriteError):  # and it stays refused
            first.append("metric")
        assert first.durable_seq == start - 1  # nothing of its own was acknowledged
        winner = [second.append("metric", params={"who": "second"}) for _ in range(2)][-1]
        assert second.flush() == start + 1
        assert rows(store, recorded.exp, "main")[-1]["hash"] == winner.hash
    finally:
        first.close()  # its failure was already raised to its owner
        second.close()
    assert stored_seqs(store, "main", recorded.exp)[start:] == [start, start + 1]
    assert verify(store).ok


def test_a_writer_taking_over_one_whose_batch_is_in_flight_continues_after_that_batch(
        postgres_url: str) -> None:
    """PostgreSQL: a batch of the old writer that checked its claim just before the take-over
    and commits just after it is in the chain, so the new writer must start after it. Before,
    the new writer read the head while that batch was uncommitted, started at a taken seq, and
    was the one refused at its first flush: the writer taken over knocked out its successor."""
    with Store.open(postgres_url, create=True) as store, Store.open(postgres_url) as old_store:
        recorded = record_experiment(store, workers=0, complete=False)
        old = StreamWriter(old_store, recorded.exp, "main", flush_interval=None)
        inside, go = threading.Event(), threading.Event()
        insert_rows = old_store._insert_rows

        def slow_insert(connection, rows) -> None:  # noqa: ANN001
            inside.set()  # its claim is checked: the batch is in flight
            go.wait()
            insert_rows(connection, rows)

        old_store._insert_rows = slow_insert  # type: ignore[method-assign]
        old.append("metric", params={"who": "old"})
        flushing = threading.Thread(target=old.flush)
        flushing.start()
        inside.wait()
        opened: list[StreamWriter] = []
        taking = threading.Thread(target=lambda: opened.append(StreamWriter(
            store, recorded.exp, "main", flush_interval=None, take_over=True)))
        taking.start()
        lock_waits = sqlalchemy.create_engine(postgres_url)
        try:  # let the batch commit once the take-over is done, or waits for it
            while taking.is_alive() and not _waiting_for_a_lock(lock_waits):
                time.sleep(0.005)
        finally:
            lock_waits.dispose()
            go.set()
        flushing.join()
        taking.join()
        new = opened[0]
        old_store._insert_rows = insert_rows  # type: ignore[method-assign]
        try:
            assert new.next_seq == len(rows(store, recorded.exp, "main"))
            new.append("metric", params={"who": "new"})
            assert new.flush() == new.next_seq - 1  # the writer meant to go on goes on
        finally:
            new.close()
            with contextlib.suppress(ConcurrentWriteError):
                old.close()
        assert verify(store).ok


def _waiting_for_a_lock(engine: sqlalchemy.Engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())


def test_writers_racing_to_open_a_stream_leave_exactly_one_open(store: Store) -> None:
    barrier = threading.Barrier(4)
    outcome: dict[int, object] = {}

    def race(index: int) -> None:
        barrier.wait()
        try:
            outcome[index] = writer(store)
        except StreamClaimedError as error:
            outcome[index] = error

    threads = [threading.Thread(target=race, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    opened = [value for value in outcome.values() if isinstance(value, StreamWriter)]
    assert len(opened) == 1 and len(outcome) == 4
    opened[0].close()


def test_racing_writers_leave_exactly_one_chain(store: Store) -> None:
    # take_over lets them all open (as if each thought the others gone): the flush still decides
    writers = [writer(store, batch_size=1000, take_over=True) for _ in range(4)]
    barrier = threading.Barrier(len(writers))
    outcome: dict[int, object] = {}

    def race(index: int) -> None:
        w = writers[index]
        hashes = [w.append("metric", params={"writer": index, "n": n}).hash for n in range(20)]
        barrier.wait()
        try:
            w.flush()
            outcome[index] = hashes
        except ConcurrentWriteError as error:
            outcome[index] = error

    threads = [threading.Thread(target=race, args=(index,)) for index in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for w in writers:
        w.close()
    winners = [value for value in outcome.values() if isinstance(value, list)]
    losers = [value for value in outcome.values() if isinstance(value, ConcurrentWriteError)]
    assert len(winners) == 1 and len(losers) == len(writers) - 1
    assert [row["hash"] for row in rows(store, EXP, "main")] == winners[0]


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_failed_interval_flush_reaches_the_owner_at_close(store: Store, write_behind: bool) -> None:
    late = writer(store, batch_size=1000, flush_interval=0.02, write_behind=write_behind)
    with writer(store, take_over=True) as early:
        early.append("metric", params={"who": "early"})
    late.append("metric", params={"who": "late"})
    wait_for(lambda: late._failure is not None, "the interval flush to fail")
    with pytest.raises(ConcurrentWriteError):
        late.close()
    assert stored_seqs(store, "main") == [0]
    late.close()


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_failed_interval_flush_reaches_the_owner_at_its_next_append(store: Store, write_behind: bool) -> None:
    late = writer(store, batch_size=1000, flush_interval=0.02, write_behind=write_behind)
    with writer(store, take_over=True) as early:
        early.append("metric")
    late.append("metric")
    wait_for(lambda: late._failure is not None, "the interval flush to fail")
    with pytest.raises(ConcurrentWriteError):
        late.append("metric")
    late.close()  # already reported: close does not raise it again


def test_a_refused_append_leaves_the_writer_usable(store: Store) -> None:
    with writer(store) as w:
        first = w.append("metric")
        for bad in ({"kind": "Not A Kind"}, {"params": {1: "non-str key"}},
                    {"path": ("worker", -1)}, {"seed": b"short"}, {"t": 1.5}):
            fields = {"kind": "metric", **bad}
            with pytest.raises(BadInputError):
                w.append(fields.pop("kind"), **fields)
            assert (w.next_seq, w.head) == (1, first.hash)
        second = w.append("metric")
    assert second.prev == first.hash
    assert stored_seqs(store, "main") == [0, 1]


def test_append_event_takes_only_the_next_link(store: Store) -> None:
    with writer(store) as w:
        good = make_event(EXP, "main", 0, "metric", prev=ZERO_DIGEST, t=1)
        assert w.append_event(good) is good
        for bad in (make_event(EXP, "main", 0, "metric", prev=ZERO_DIGEST, t=2),
                    make_event(EXP, "main", 1, "metric", prev=ZERO_DIGEST, t=2),
                    make_event(EXP, "main", 2, "metric", prev=good.hash, t=2),
                    make_event(EXP, "other", 1, "metric", prev=good.hash, t=2),
                    make_event("exp-ffffffffffff", "main", 1, "metric", prev=good.hash, t=2)):
            with pytest.raises(StoreError, match="not the next link"):
                w.append_event(bad)
        assert w.append_event(make_event(EXP, "main", 1, "metric", prev=good.hash, t=2)).seq == 1
    assert stored_seqs(store, "main") == [0, 1]


def test_time_comes_from_the_clock_unless_given(store: Store) -> None:
    ticks = iter(range(100, 200))
    with StreamWriter(store, EXP, "main", flush_interval=None, clock=lambda: next(ticks)) as w:
        assert w.append("metric").t == 100
        assert w.append("metric", t=5).t == 5
        assert w.append("metric").t == 101


def test_unencodable_params_are_refused_before_anything_is_buffered(store: Store) -> None:
    with writer(store) as w:
        with pytest.raises(EncodingError):
            w.append("metric", params={"value": object()})
        assert w.next_seq == 0
    assert stored_seqs(store, "main") == []


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"flush_interval": 0},
                                     {"flush_interval": -1.0}])
def test_bad_writer_options_are_refused(store: Store, options: dict) -> None:
    with pytest.raises(ValueError):
        StreamWriter(store, EXP, "main", **options)


@pytest.mark.parametrize(("exp", "stream"), [("../x", "main"), (EXP, "/main"), ("", "main"),
                                             (EXP, "a b")])
def test_malformed_ids_are_refused_by_the_writer(store: Store, exp: str, stream: str) -> None:
    with pytest.raises(InvalidIdError):
        StreamWriter(store, exp, stream, flush_interval=None)


# -- write-behind: full batches written by a background thread -----------------------------------

@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_size=st.integers(min_value=1, max_value=5),
       steps=st.lists(st.one_of(st.integers(min_value=1, max_value=12), st.just("flush")),
                      max_size=8))
def test_write_behind_never_claims_an_unwritten_event_and_flush_writes_all(
        store: Store, batch_size: int, steps: list) -> None:
    stream = f"wb{next(_streams)}"
    with writer(store, stream, batch_size=batch_size, write_behind=True) as w:
        appended: list[bytes] = []
        for step in steps:
            if step == "flush":
                assert w.flush() == len(appended) - 1
                assert [row["hash"] for row in rows(store, EXP, stream)] == appended
            else:
                appended += [w.append("metric", params={"n": n}).hash for n in range(step)]
            durable = w.durable_seq
            stored = rows(store, EXP, stream)
            assert [row["seq"] for row in stored] == list(range(len(stored)))
            assert durable <= len(stored) - 1  # durable_seq never runs ahead of the database
            assert [row["hash"] for row in stored] == appended[:len(stored)]
            # at most the buffer and MAX_QUEUED_BATCHES full batches (+1 being written) wait
            assert len(appended) - len(stored) < batch_size * (MAX_QUEUED_BATCHES + 2)
    assert [row["hash"] for row in rows(store, EXP, stream)] == appended


def test_write_behind_writes_full_batches_without_a_flush(store: Store) -> None:
    with writer(store, batch_size=3, write_behind=True) as w:
        for n in range(7):
            w.append("metric", params={"n": n})
        wait_for(lambda: w.durable_seq == 5, "the background thread to write two batches")
        assert stored_seqs(store, "main") == [0, 1, 2, 3, 4, 5]  # the 7th waits in the buffer
    assert stored_seqs(store, "main") == list(range(7))


def test_write_behind_flushes_an_idle_writer_at_the_interval(store: Store) -> None:
    w = writer(store, batch_size=1000, flush_interval=0.05, write_behind=True)
    try:
        event = w.append("metric")
        wait_for(lambda: w.durable_seq == event.seq, "the interval flush")
        assert stored_seqs(store, "main") == [0]
    finally:
        w.close()


def test_a_writer_paused_for_a_fork_writes_what_was_appended_meanwhile_once_resumed(
        store: Store) -> None:
    with writer(store, batch_size=2, write_behind=True) as w:
        w.append("metric", params={"n": 0})
        w.append("metric", params={"n": 1})  # a full batch, queued for the thread
        assert w.pause_thread()  # returns once the thread has written it and stopped
        assert stored_seqs(store, "main") == [0, 1]
        assert not w.pause_thread()  # no thread running
        for n in range(2, 6):
            w.append("metric", params={"n": n})  # two full batches wait for the thread
        assert stored_seqs(store, "main") == [0, 1]
        w.resume_thread()
        wait_for(lambda: w.durable_seq == 5, "the resumed thread to write both batches")
        assert stored_seqs(store, "main") == list(range(6))


def test_a_writer_closed_while_paused_writes_what_was_queued_and_stays_stopped(
        store: Store) -> None:
    w = writer(store, batch_size=2, write_behind=True)
    assert w.pause_thread()
    for n in range(3):
        w.append("metric", params={"n": n})  # one batch queued for the thread, one buffered
    w.close()
    assert stored_seqs(store, "main") == [0, 1, 2]
    assert w.durable_seq == 2
    w.resume_thread()  # the fork is over, but the writer is closed: no thread again
    assert w._timer is not None and not w._timer.is_alive()


def flush_thread_running(w: StreamWriter) -> bool:
    return w._timer is not None and w._timer.is_alive()


def test_overlapping_pauses_in_two_threads_restart_the_writer_only_when_the_last_ends(
        store: Store) -> None:
    """Two threads starting fork workers at once: the one that finishes first must not restart
    the writer's thread while the other may still be forking."""
    with writer(store, batch_size=100, write_behind=True) as w:
        first_inside, first_done, second_inside, second_may_leave = (
            threading.Event(), threading.Event(), threading.Event(), threading.Event())
        running_after_first_left: list[bool] = []

        def first() -> None:
            with background_threads_paused():
                first_inside.set()
                second_inside.wait()
            first_done.set()

        def second() -> None:
            first_inside.wait()
            with background_threads_paused():
                second_inside.set()
                first_done.wait()
                running_after_first_left.append(flush_thread_running(w))
                second_may_leave.wait()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        first_done.wait()
        while not running_after_first_left:
            time.sleep(0.001)
        second_may_leave.set()
        for thread in threads:
            thread.join()
        assert running_after_first_left == [False]
        assert flush_thread_running(w)  # the last block's end started it again
        w.append("metric")
        w.flush()
        assert stored_seqs(store, "main") == [0]


def test_a_pause_nested_in_one_thread_keeps_the_writer_stopped_until_the_outer_block_ends(
        store: Store) -> None:
    with writer(store, batch_size=100, write_behind=True) as w:
        with background_threads_paused():
            with background_threads_paused():
                assert not flush_thread_running(w)
            assert not flush_thread_running(w)
            w.append("metric")  # recording goes on: buffered until the thread runs again
        assert flush_thread_running(w)
        w.flush()
        assert stored_seqs(store, "main") == [0]


def test_a_pause_interrupted_while_stopping_threads_leaves_none_stopped() -> None:
    """Ctrl-C while one writer's thread is being stopped: those already stopped run again (a
    stopped write-behind thread would leave its writer's appends waiting for ever)."""

    class Pausable:
        calls: list[str] = []

        def __init__(self, name: str) -> None:
            self.name = name

        def pause_thread(self) -> bool:
            if "interrupted" in self.calls:
                return False  # later blocks: as a writer with no thread running
            if any(call.startswith("pause") for call in self.calls):
                self.calls.append("interrupted")  # the second of the two, once
                raise KeyboardInterrupt
            self.calls.append(f"pause {self.name}")
            return True

        def resume_thread(self) -> None:
            self.calls.append(f"resume {self.name}")

    owners = [Pausable("a"), Pausable("b")]
    for owner in owners:
        processes.pause_for_forks(owner)
    with pytest.raises(KeyboardInterrupt):
        with background_threads_paused():
            pytest.fail("the block ran although pausing was interrupted")
    [paused] = [call.split()[1] for call in Pausable.calls if call.startswith("pause")]
    assert Pausable.calls == [f"pause {paused}", "interrupted", f"resume {paused}"]
    with background_threads_paused():  # nothing left half-paused: the next block works
        pass


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread until the block ends (when a fork in it copies the lock
    held, by a thread the child does not have)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        yield
    finally:
        release.set()
        holder.join()


def wait_for_child(pid: int, what: str) -> int:
    """The exit code of forked child ``pid``; the test fails (and the child is killed) when it
    has not ended within a minute."""
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(what)
        time.sleep(0.01)
    return os.waitstatus_to_exitcode(done[1])


def test_a_child_forked_while_another_thread_enters_a_pause_can_pause_too() -> None:
    """The bookkeeping of overlapping pauses is guarded by a lock that another thread may hold
    at the fork; the child starts with its own."""
    with held_by_another_thread(processes._pause_state.lock):
        pid = os.fork()
        if pid == 0:
            with background_threads_paused():
                os._exit(0)
    assert wait_for_child(pid, "the child hung on the lock of overlapping pauses") == 0


def test_a_forked_copy_of_a_writer_pauses_nothing_even_with_its_lock_held_at_the_fork(
        store: Store) -> None:
    """Fork workers started in a forked process ask every writer copy to pause: a copy answers
    without taking its lock, which a thread the fork did not copy may have held."""
    with writer(store, batch_size=100, write_behind=True) as w:
        # as the writer's own thread holds it while it writes a batch
        with held_by_another_thread(w._lock):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if w.pause_thread() is False else 1)
        assert wait_for_child(pid, "the forked copy hung on the writer's lock") == 0


def test_a_failed_background_batch_stops_the_writer_and_reaches_its_owner(store: Store) -> None:
    late = writer(store, batch_size=2, write_behind=True)
    with writer(store, take_over=True) as early:
        early.append("metric", params={"who": "early"})
    late.append("metric", params={"who": "late"})
    late.append("metric", params={"who": "late"})  # a full batch: written in the background
    wait_for(lambda: late._failure is not None, "the background write to fail")
    with pytest.raises(ConcurrentWriteError, match="refused rather than fork"):
        late.append("metric")
    with pytest.raises(ConcurrentWriteError):
        late.flush()
    late.close()  # already reported
    assert stored_seqs(store, "main") == [0]
    assert late.durable_seq == -1


def test_ctrl_c_during_a_write_is_not_followed_by_a_second_write_at_close(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix review: Ctrl-C while `ledger replay` waited on a lock cancelled the write, then
    the writer's close wrote again — another 10 s — and its lock timeout replaced the interrupt.
    An interrupted write stops the writer; close only releases the stream."""
    recorded = record_experiment(store, workers=0, complete=False)
    attempts: list[int] = []

    def interrupted(self: Store, connection, rows) -> None:  # noqa: ANN001
        attempts.append(len(rows))
        raise KeyboardInterrupt

    writer = StreamWriter(store, recorded.exp, "rank-2", flush_interval=None)
    writer.append("metric", params={"n": 1})
    monkeypatch.setattr(Store, "_insert_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    with pytest.raises(StoreError, match="interrupted while writing"):
        writer.append("metric")
    writer.close()
    assert attempts == [1]
    monkeypatch.undo()
    StreamWriter(store, recorded.exp, "rank-2", flush_interval=None).close()  # released


def test_an_audit_record_that_is_durable_is_not_reported_lost_when_its_release_fails(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix review: a connection dropped right after the record committed made the command
    fail (exit 2) although the record was in the ledger."""
    import ledger.store.writer as writer_module
    from ledger.audit import audit_trail, record_audit

    recorded = record_experiment(store, workers=0)

    def release_fails(*_args: Any) -> None:
        raise StoreError("cannot release stream audit: server closed the connection")

    monkeypatch.setattr(writer_module, "release_stream", release_fails)
    event = record_audit(store, recorded.exp, "replay_recorded", {"verdict": "certified"})
    monkeypatch.undo()
    assert [body["seq"] for body in audit_trail(store, recorded.exp)] == [event.seq]


def test_a_run_completed_that_is_durable_is_not_reported_failed_when_its_release_fails(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix review: the connection killed right after run_completed committed made the
    trainer's `with` block raise, though the run was recorded ok."""
    import ledger.store.writer as writer_module

    recorded = record_experiment(store, workers=0, complete=False)
    writer = StreamWriter(store, recorded.exp, "rank-4", flush_interval=None)

    def release_fails(*_args: Any) -> None:
        raise StoreError("cannot release stream rank-4: server closed the connection")

    monkeypatch.setattr(writer_module, "release_stream", release_fails)
    event = writer.close_with("metric", lambda _connection: {"last": True})
    monkeypatch.undo()
    assert rows(store, recorded.exp, "rank-4")[-1]["hash"] == event.hash


# -- claims on record, failed opens, in-memory ledgers (mutation sweep F) ------------------------

def claim_records(store: Store, stream: str, exp: str = EXP) -> list[tuple[int, str, int]]:
    """``(attempt, action, start_seq)`` of every claims row of one stream, by attempt, each
    claim before its release."""
    query = (select(claims_table.c.attempt, claims_table.c.action, claims_table.c.start_seq)
             .where(claims_table.c.exp == exp, claims_table.c.stream == stream)
             .order_by(claims_table.c.attempt, claims_table.c.action))
    with store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def test_the_claims_record_where_each_writer_started_and_stopped(store: Store) -> None:
    """A claim records the seq its writer starts at and its release the seq after the last
    event it made durable: which writer wrote which part of a chain stays on record."""
    with writer(store) as first:
        for _ in range(3):
            first.append("metric")
    with writer(store) as second:
        second.append("metric")
    assert claim_records(store, "main") == [
        (0, "claim", 0), (0, "release", 3), (1, "claim", 3), (1, "release", 4)]


def test_an_experiment_s_main_writer_claims_main_from_the_seq_after_its_first_event(
        store_url: str, tmp_path: Path) -> None:
    """The main writer is opened before experiment_created is inserted (given the head, not
    reading it): its claim must still say it starts at seq 1, where its first append goes."""
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = manager.create_experiment("claimed", seed=7)
        assert claim_records(manager.store, "main", exp.id) == [(0, "claim", 1)]
        exp.close()


def test_a_writer_whose_head_cannot_be_read_leaves_its_stream_unclaimed(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening claims the stream, then reads its head: should that read fail (a dropped
    connection), the claim is released again — else this very process could never reopen the
    stream (its own pid is alive) without a take-over."""
    def read_fails(*_args: Any) -> None:
        raise StoreError("cannot read: server closed the connection")

    with monkeypatch.context() as patched:
        patched.setattr(store, "last_event", read_fails)
        with pytest.raises(StoreError, match="server closed the connection"):
            writer(store)
    with writer(store) as reopened:
        reopened.append("metric")
    assert stored_seqs(store, "main") == [0]


@pytest.mark.parametrize("options", [{"write_behind": True, "batch_size": 2},
                                     {"flush_interval": 0.01}])
def test_an_in_memory_ledger_is_written_in_the_owner_s_thread(options: dict) -> None:
    """In-memory SQLite gives each thread a database of its own: a background thread (write
    behind, interval flushes) would write where nobody reads, or fail on a database without
    tables. Whatever the options, every batch lands in the owner's database."""
    with Store.open("sqlite://", create=True) as memory:
        with StreamWriter(memory, EXP, "main", **options) as w:
            for _ in range(3):
                w.append("metric")
                time.sleep(0.05)  # lets an interval pass between appends
            assert w.flush() == 2
        assert stored_seqs(memory, "main") == [0, 1, 2]


def test_close_with_writes_the_batches_queued_for_the_background_thread_first(
        store: Store) -> None:
    """run_completed reads every stream's count in its own transaction: a write-behind writer
    must have written the batches queued for its thread by then, or the count it records for
    its own stream is short and its last event lands before earlier ones. (The thread's write
    is held back until close_with waits for it, or, had it not waited, until its last event's
    params are read: the interleaving that loses the batch.)"""
    stream = f"wb{next(_streams)}"
    owner, go = threading.get_ident(), threading.Event()

    def hold_back_the_thread(_connection: Any) -> None:
        if threading.get_ident() != owner:
            go.wait(120)  # the bound only keeps a broken build from hanging

    def params_of(connection: Any) -> dict[str, int]:
        go.set()
        return {"stored": Store.stream_heads_in(connection, EXP)[stream].count}

    w = writer(store, stream, batch_size=2, write_behind=True, guard=hold_back_the_thread)
    waiting = w._wait_until_written

    def wait_until_written() -> None:
        go.set()
        waiting()

    w._wait_until_written = wait_until_written  # type: ignore[method-assign]
    for _ in range(2):
        w.append("metric")
    last = w.close_with("metric", params_of)
    assert (last.seq, last.params["stored"], w.durable_seq) == (2, 2, 2)
    assert [seq for seq_stream, seq, _kind, _body in store.iter_run_bodies(EXP)
            if seq_stream == stream] == [0, 1, 2]
    assert claim_records(store, stream)[-1] == (0, "release", 3)


def test_closing_a_forked_copy_of_a_writer_leaves_the_stream_to_the_writing_process(
        store: Store) -> None:
    """A forked process inherits a copy of the writer whose close does nothing: were it to
    flush and release, the child would write the parent's buffer and free a stream that a live
    writer still holds."""
    with writer(store) as w:
        w.append("metric")
        pid = os.fork()
        if pid == 0:
            try:
                w.close()
            finally:
                os._exit(0)
        assert wait_for_child(pid, "the forked copy hung closing") == 0
        with pytest.raises(StreamClaimedError):
            writer(store)
        assert stored_seqs(store, "main") == []
    assert stored_seqs(store, "main") == [0]


def test_the_interval_counts_from_the_oldest_unwritten_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer appending steadily, each append sooner than ``flush_interval`` after the one
    before, still writes once the oldest buffered event is ``flush_interval`` old: the interval
    bounds how long an event stays unwritten, not how long the writer is idle. (In memory: no
    thread, every interval flush happens in an append, at the clock the test sets.)"""
    import ledger.store.writer as writer_module

    now = [100.0]
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: now[0])
    with Store.open("sqlite://", create=True) as memory:
        with StreamWriter(memory, EXP, "main", flush_interval=1.0) as w:
            durable = []
            for _ in range(3):  # at 100.0, 100.6 and 101.2: the third is 1.2 s after the first
                w.append("metric")
                durable.append(w.durable_seq)
                now[0] += 0.6
            assert (durable, stored_seqs(memory, "main")) == ([-1, -1, 2], [0, 1, 2])


def test_the_fast_path_refuses_a_malformed_kind_before_buffering(store: Store) -> None:
    """append_normalised skips per-field checks, not the names: a kind no reader accepts would
    otherwise be hashed into the chain."""
    with writer(store) as w:
        with pytest.raises(BadInputError, match="malformed event kind"):
            w.append_normalised("Not-A-Kind", [], seed=None, params={})
        assert w.append_normalised("metric", [], seed=None, params={}) == 0
    assert stored_seqs(store, "main") == [0]


def test_a_claims_row_of_an_action_no_writer_records_keeps_every_writer_out(
        store: Store) -> None:
    """A claims row whose action is neither claim nor release was written outside the library:
    who holds the stream cannot be told from it, so no writer opens the stream, even taking it
    over, and asking who holds it is one StoreError — not a guess that may fork the chain."""
    insert_claim(store, EXP, "main", action="steal")
    for attempt in (lambda: writer(store), lambda: writer(store, take_over=True),
                    lambda: live_holder(store, EXP, "main")):
        with pytest.raises(StoreError, match="hold a row no writer made"):
            attempt()


def test_a_ledger_made_before_claims_existed_has_no_holder(store: Store) -> None:
    """Recording commands ask who holds the audit stream before they start: a ledger made
    before the claims table existed has no holder, rather than failing to read that table."""
    drop_append_only_triggers(store)
    execute(store, "DROP TABLE ledger_stream_claims")
    assert live_holder(store, EXP, "audit") is None


def test_a_healthy_writer_whose_release_fails_says_so_at_close(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its events are written, but its stream stays claimed (the next writer must take it
    over): the owner is told. Only a writer already stopped by a failure releases best effort,
    so that the failure it reports is the first one."""
    import ledger.store.writer as writer_module

    def release_fails(*_args: Any) -> None:
        raise StoreError("cannot release stream main: server closed the connection")

    w = writer(store)
    w.append("metric")
    monkeypatch.setattr(writer_module, "release_stream", release_fails)
    with pytest.raises(StoreError, match="cannot release stream main"):
        w.close()
    monkeypatch.undo()
    assert stored_seqs(store, "main") == [0]


def test_a_claim_of_this_host_naming_a_pid_no_process_can_have_is_one_clear_refusal(
        store: Store) -> None:
    """A claims row of this host with a pid beyond what the system gives (edited, or copied
    from elsewhere) cannot be judged gone: the stream is refused naming it, as for a live
    holder, and can be taken over — where asking the system about that pid was a traceback
    (OverflowError) for every writer and recording command."""
    insert_claim(store, EXP, "main", host=host_identity(), pid=2**40)
    with pytest.raises(StreamClaimedError, match=f"pid {2**40}"):
        writer(store)
    assert f"pid {2**40}" in (live_holder(store, EXP, "main") or "")
    writer(store, take_over=True).close()


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_connection_pool_that_times_out_stops_the_writer_with_one_store_error(
        store: Store, monkeypatch: pytest.MonkeyPatch, write_behind: bool) -> None:
    """More writers of one process waiting out a lock than the connection pool holds make the
    next batch wait 30 s for a connection and fail with SQLAlchemy's pool TimeoutError, which
    is no driver error: it reached the owner as a traceback, and killed a write-behind thread
    mid-batch so that the owner's flush waited for ever. It stops the writer as a failed
    write does, one StoreError."""
    def pool_exhausted() -> None:
        raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached, "
                                          "connection timed out, timeout 30.00")

    w = writer(store, batch_size=2, write_behind=write_behind)
    monkeypatch.setattr(store, "write_connection", pool_exhausted)
    w.append("metric")
    with pytest.raises(StoreError, match="cannot append events: QueuePool limit"):
        w.append("metric")  # a full batch: written at once, or queued for the thread
        w.flush()
    monkeypatch.undo()
    for call in (w.flush, lambda: w.append("metric")):  # stopped, though the pool is back
        with pytest.raises(StoreError, match="QueuePool limit"):
            call()
    w.close()
    assert stored_seqs(store, "main") == []


def test_a_writer_that_loses_the_race_to_claim_a_stream_is_refused_as_a_second_writer(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers opening one stream at the same moment both find it free; the unique key on
    the claim's attempt lets one insert its claim, and the other is refused with
    StreamClaimedError — not a database error — rather than fork the chain."""
    import ledger.store.claims as claims_module

    first = writer(store)
    monkeypatch.setattr(claims_module, "_claims_of", lambda *_args: ({}, []))  # saw it free
    with pytest.raises(StreamClaimedError, match="opened by another writer at the same moment"):
        writer(store)
    monkeypatch.undo()
    first.close()


def failing_first_write(release: threading.Event) -> tuple[Any, list[int]]:
    """A guard whose first call waits for ``release`` and then fails as a dropped connection
    does; later calls pass. Also returns the list of its calls."""
    calls: list[int] = []

    def guard(_connection: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            release.wait(120)  # the bound only keeps a broken build from hanging
            raise StoreError("cannot append events: server closed the connection")

    return guard, calls


def test_a_write_behind_thread_writes_no_batch_after_one_failed(store: Store) -> None:
    """The batches queued behind a failed one are dropped with it: written, they would leave
    the chain with a gap where the failed batch belonged."""
    release = threading.Event()
    guard, _calls = failing_first_write(release)
    w = writer(store, batch_size=2, write_behind=True, guard=guard)
    for _ in range(4):  # the second batch is queued while the first is being written
        w.append("metric")
    release.set()
    with pytest.raises(StoreError, match="server closed the connection"):
        w.flush()
    w.close()
    assert stored_seqs(store, "main") == []


def test_an_interval_flusher_does_not_retry_a_batch_whose_write_failed(store: Store) -> None:
    """A failed interval flush stops the writer: its batch is not written behind the owner's
    back later (a dropped connection may have landed it; the owner is told it stopped)."""
    release = threading.Event()
    release.set()
    guard, calls = failing_first_write(release)
    w = writer(store, flush_interval=0.02, guard=guard)
    w.append("metric")
    wait_for(lambda: calls, "the interval flush")
    time.sleep(0.2)  # several more intervals, in which the flusher must not write it again
    with pytest.raises(StoreError, match="server closed the connection"):
        w.close()
    assert (calls, stored_seqs(store, "main")) == ([0], [])


def _with_a_commit_after_reading_claims(monkeypatch: pytest.MonkeyPatch,
                                        commit: Any) -> None:
    """Make the next claim's first read of the claims be followed by ``commit()`` — another
    writer's claim or release committing between that read and the claim's insert, the race
    PostgreSQL's transactions allow (SQLite's write lock excludes it)."""
    read_claims = claims_module._claims_of
    pending = [commit]

    def read_then_commit(connection: Any, exp: str, stream: str) -> Any:
        found = read_claims(connection, exp, stream)
        if pending:
            pending.pop()()
        return found

    monkeypatch.setattr(claims_module, "_claims_of", read_then_commit)


def test_a_take_over_racing_the_holders_own_close_still_opens(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder closing (its release committed) while a take-over reads the claims: both
    release the same attempt. The take-over used to be refused, "opened by another writer at
    the same moment", though nobody else had opened the stream; it now reads the claims again
    and opens."""
    with Store.open(postgres_url, create=True) as store, Store.open(postgres_url) as old_store:
        recorded = record_experiment(store, workers=0, complete=False)
        old = StreamWriter(old_store, recorded.exp, "main", flush_interval=None)
        _with_a_commit_after_reading_claims(monkeypatch, old.close)
        new = StreamWriter(store, recorded.exp, "main", flush_interval=None, take_over=True)
        try:
            new.append("metric", params={"who": "new"})
            assert new.flush() == new.next_seq - 1
        finally:
            new.close()
        assert verify(store).ok


def test_a_writer_opening_at_the_same_moment_as_another_is_told_who_holds_the_stream(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers claiming a free stream at once: the one whose insert collides reads the
    claims again and names the holder (it used to say only "opened by another writer at the
    same moment")."""
    with Store.open(postgres_url, create=True) as store, Store.open(postgres_url) as other:
        recorded = record_experiment(store, workers=0, complete=False)
        opened: list[StreamWriter] = []
        _with_a_commit_after_reading_claims(monkeypatch, lambda: opened.append(
            StreamWriter(other, recorded.exp, "main", flush_interval=None)))
        try:
            with pytest.raises(StreamClaimedError, match=r"already open by .*pid"):
                StreamWriter(store, recorded.exp, "main", flush_interval=None)
            assert len(opened) == 1
        finally:
            for first in opened:
                first.close()
