"""A model-based test of the stream writer and the store (README *The store*, StreamWriter).

A hypothesis state machine drives StreamWriters over the streams of one or two experiments in
one ledger — appends (checked and normalised), flushes, closes and reopens, a second writer
refused at open, a writer taken over while still alive (even mid-batch), a run completed while
other streams' writers are open (guarded as attached streams are) — with small batches, with and
without write-behind and interval flushes, through two Store handles. It keeps a model of every
chain: what each writer has appended and what must be durable. After every step it reads the
ledger back through a third handle and checks, against the model, that

- every stored chain is a prefix of the model's, byte for byte (columns, hash, prev, body);
- everything acknowledged by a flush (``durable_seq``) is stored, and a writer that writes only
  on a flush or a full batch has stored exactly its full batches;
- ``ledger.verify`` accepts the ledger;
- the chain never forks, whoever was taken over, and a writer taken over or of a completed run
  is refused from its next batch on and acknowledges nothing more.

A crash check runs a child process that appends planned events and flushes at planned points,
kills it with SIGKILL at a random moment, and checks what it left.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from conftest import POSTGRES_ENV, ROOT, _postgres_schema_url
from event_strategies import digests32, labels, maps
from ledger.canonical import canonical, normalise
from ledger.digests import EVENT_TAG, ZERO_DIGEST
from ledger.errors import (BadInputError, ConcurrentWriteError, EncodingError, InvalidIdError,
                           StoreError, StreamClaimedError)
from ledger.events import AUDIT_STREAM, LIBRARY_KINDS, body_map, make_event, path_bytes
from ledger.store import Store, StreamWriter
from ledger.store.claims import live_holder
from ledger.store.store import EVENT_COLUMNS, event_row
from ledger.verify import verify
from writer_crash_driver import STREAMS as CHILD_STREAMS
from writer_crash_driver import planned_events

EXPS = ("exp-00000000a1b2", "Run_2.b")
STREAMS = ("main", "worker-0", "rank-1/worker-0")
KINDS = ("metric", "checkpoint", "user_draw", "epoch_reset", "augmentation_batch",
         "worker_spawned", "dataset_registered")
CREATED_T = 1_700_000_000 * 10**9

custom_kinds = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda kind: kind not in LIBRARY_KINDS)
kinds = st.sampled_from(KINDS) | custom_kinds
paths = st.lists(labels, max_size=4)
seeds = st.none() | st.binary(min_size=16, max_size=16)
times = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
fields = st.fixed_dictionaries({"kind": kinds, "path": paths, "seed": seeds, "params": maps,
                                "input": digests32, "output": digests32, "meta": maps})
writer_options = st.fixed_dictionaries({
    "batch_size": st.integers(min_value=1, max_value=5),
    "write_behind": st.booleans(),
    "flush_interval": st.sampled_from([None, None, 0.002, 0.02]),
})
picks = st.integers(min_value=0, max_value=2**16)

Row = tuple[Any, ...]
"""A stored event as EVENT_COLUMNS: exp, stream, seq, kind, path, seed, input, output, prev,
hash, t, body."""


def expected_row(exp: str, stream: str, seq: int, prev: bytes, t: int,
                 event_fields: dict[str, Any]) -> Row:
    """The row the ledger must hold for an event: its body built here, from the body map and
    ``canonical`` (not the writer's code path), hashed as DESIGN §3 says."""
    f = event_fields
    body = canonical(body_map(exp, stream, seq, f["kind"], f["path"], f["seed"], f["params"],
                              f["input"], f["output"], f["meta"], prev, t))
    digest = hashlib.sha256(EVENT_TAG + body).digest()
    return (exp, stream, seq, f["kind"], path_bytes(f["path"]), f["seed"], f["input"],
            f["output"], prev, digest, t, body)


def plain_row(row: tuple[Any, ...]) -> Row:
    """A row as read back, with buffers as bytes (PostgreSQL's driver returns memoryview)."""
    return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


def completion_guard(store: Store, exp: str) -> Callable[[Any], None]:
    """A guard as an attached stream's (README *Distributed ranks*): under the experiment's
    lock, refuse a batch once the run is completed, so that it is counted or refused."""
    def guard(connection: Any) -> None:
        store.lock_experiment(connection, exp, shared=True)
        if Store.last_kind_in(connection, exp, "main") == "run_completed":
            raise StoreError(f"the run of {exp} is already completed")
    return guard


class Clock:
    """A writer's clock: distinct, increasing nanoseconds, and the last one it gave."""

    def __init__(self, start: int) -> None:
        self._next = itertools.count(start).__next__
        self.last = start - 1

    def __call__(self) -> int:
        self.last = self._next()
        return self.last


@dataclass
class Chain:
    """The model of one (experiment, stream) chain."""

    events: list[Row] = field(default_factory=list)
    """Every event that is stored or will be once its writer flushes, in seq order."""
    durable: int = 0
    """How many events a flush (or close) has acknowledged: these must be stored."""
    written: int | None = 0
    """Exactly how many are stored, when that is known (a writer that writes only on a flush,
    a full batch or a close); None while a background thread may write at any moment."""
    holder: "Handle | None" = None

    @property
    def head(self) -> bytes:
        return self.events[-1][9] if self.events else ZERO_DIGEST


@dataclass
class Handle:
    """A live StreamWriter and what the model knows about it."""

    writer: StreamWriter
    exp: str
    stream: str
    options: dict[str, Any]
    clock: Clock
    stopped: type[StoreError] | None = None
    """What refuses its batches once another writer took its stream over while it was alive
    (ConcurrentWriteError), or once the run completed (StoreError, from its guard)."""
    unwritten: int = 0
    """Stopped: events it holds that are not (and can never be) in the ledger."""
    refused: bool = False
    """Stopped: it has raised that error to its owner."""
    stored_when_stopped: int = 0
    """Stopped: how many events its stream held then (all it can ever claim durable)."""

    @property
    def exact(self) -> bool:
        """Whether it writes only on flush, close and full batches (in the owner's thread)."""
        return not self.options["write_behind"] and self.options["flush_interval"] is None


class WriterMachine(RuleBasedStateMachine):
    """StreamWriters on one ledger against a model of its chains."""

    def __init__(self) -> None:
        super().__init__()
        self.url = self.new_ledger_url()
        self.stores = [Store.open(self.url, create=True), Store.open(self.url)]
        self.reader = Store.open(self.url)
        self.chains: dict[tuple[str, str], Chain] = {}
        self.handles: list[Handle] = []
        self.completed: set[str] = set()
        self.clock_starts = itertools.count(CREATED_T + 1, 10**12)

    # -- the ledger under test (PostgreSQL subclasses replace these) -----------------------

    def new_ledger_url(self) -> str:
        self.folder = tempfile.mkdtemp(prefix="ledger-stateful-")
        return f"sqlite:///{Path(self.folder) / 'ledger.db'}"

    def drop_ledger(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def teardown(self) -> None:
        try:
            for handle in self.handles:
                try:
                    handle.writer.close()
                except StoreError as error:
                    assert handle.stopped is not None and isinstance(error, handle.stopped)
        finally:
            for store in (*self.stores, self.reader):
                store.close()
            self.drop_ledger()

    # -- set-up -----------------------------------------------------------------------------

    @initialize(count=st.integers(min_value=1, max_value=2))
    def create_experiments(self, count: int) -> None:
        for exp in EXPS[:count]:
            created = make_event(exp, "main", 0, "experiment_created",
                                 params={"name": f"stateful {exp}"}, prev=ZERO_DIGEST,
                                 t=CREATED_T)
            self.stores[0].insert_experiment(exp, f"stateful {exp}", created)
            for stream in STREAMS:
                self.chains[exp, stream] = Chain()
            main = self.chains[exp, "main"]
            main.events.append(event_row(created))
            main.durable = main.written = 1

    # -- helpers ----------------------------------------------------------------------------

    def open_streams(self) -> list[tuple[str, str]]:
        return [key for key, chain in sorted(self.chains.items())
                if chain.holder is None and key[0] not in self.completed]

    def held_streams(self) -> list[tuple[str, str]]:
        return [key for key, chain in sorted(self.chains.items()) if chain.holder is not None]

    def holders(self) -> list[Handle]:
        return [handle for handle in self.handles if handle.stopped is None]

    def stopped(self) -> list[Handle]:
        return [handle for handle in self.handles if handle.stopped is not None]

    def stored(self, store: Store, exp: str, stream: str) -> list[Row]:
        return [plain_row(row) for row in store.iter_segment_rows(
            exp, stream, 0, 2**62, EVENT_COLUMNS)]

    def open_writer(self, key: tuple[str, str], options: dict[str, Any], store_index: int,
                    take_over: bool = False) -> Handle:
        clock = Clock(next(self.clock_starts))
        store = self.stores[store_index]
        guard = None if key[1] == "main" else completion_guard(store, key[0])
        writer = StreamWriter(store, *key, clock=clock, take_over=take_over, guard=guard,
                              **options)
        handle = Handle(writer, *key, options, clock)
        self.handles.append(handle)
        return handle

    def check_continues(self, handle: Handle, chain: Chain) -> None:
        """A writer opened on a stream continues its chain from the stored head."""
        writer = handle.writer
        assert (writer.next_seq, writer.head, writer.durable_seq) == (
            len(chain.events), chain.head, len(chain.events) - 1)

    def accepted(self, handle: Handle, row: Row) -> None:
        """The model of a holder's append that the writer took."""
        chain = self.chains[handle.exp, handle.stream]
        chain.events.append(row)
        if handle.exact and chain.written is not None:
            if len(chain.events) - chain.written >= handle.options["batch_size"]:
                chain.written = chain.durable = len(chain.events)  # a full batch is written
        else:
            chain.written = None

    def stop(self, handle: Handle, error: type[StoreError], stored: int) -> None:
        """The model of a writer whose batches are refused from now on, its stream holding
        ``stored`` events: what it holds beyond them is never written."""
        chain = self.chains[handle.exp, handle.stream]
        handle.stopped, handle.unwritten = error, len(chain.events) - stored
        handle.stored_when_stopped = stored
        del chain.events[stored:]
        self.all_written(chain)
        chain.holder = None

    def all_written(self, chain: Chain) -> None:
        chain.durable = chain.written = len(chain.events)

    # -- rules: opening ---------------------------------------------------------------------

    @precondition(lambda self: self.open_streams())
    @rule(pick=picks, options=writer_options, store_index=st.integers(0, 1))
    def open_a_writer(self, pick: int, options: dict[str, Any], store_index: int) -> None:
        key = self.open_streams()[pick % len(self.open_streams())]
        chain = self.chains[key]
        handle = self.open_writer(key, options, store_index)
        self.check_continues(handle, chain)
        chain.holder = handle
        chain.written = len(chain.events)  # its opening read the stored head

    @precondition(lambda self: self.held_streams())
    @rule(pick=picks, store_index=st.integers(0, 1))
    def a_second_writer_is_refused(self, pick: int, store_index: int) -> None:
        key = self.held_streams()[pick % len(self.held_streams())]
        holder = self.chains[key].holder
        assert holder is not None
        with pytest.raises(StreamClaimedError) as refused:
            StreamWriter(self.stores[store_index], *key, flush_interval=None)
        message = str(refused.value)
        assert f"writer {holder.writer._claim.writer} " in message, message  # the holder
        assert f"pid {os.getpid()}," in message, message
        assert f"writer {holder.writer._claim.writer} " in (live_holder(self.reader, *key) or "")

    @precondition(lambda self: self.held_streams())
    @rule(pick=picks, options=writer_options, store_index=st.integers(0, 1))
    def take_over_a_live_writer(self, pick: int, options: dict[str, Any],
                                store_index: int) -> None:
        key = self.held_streams()[pick % len(self.held_streams())]
        chain = self.chains[key]
        old = chain.holder
        assert old is not None
        handle = self.open_writer(key, options, store_index, take_over=True)
        # From here on the old writer can write nothing: what is stored now is the chain.
        stored = self.stored(self.reader, *key)
        assert stored == chain.events[:len(stored)], "the stored chain is not the model's"
        assert len(stored) >= chain.durable, "an acknowledged event is missing"
        if chain.written is not None:
            assert len(stored) == chain.written
        self.stop(old, ConcurrentWriteError, len(stored))
        self.check_continues(handle, chain)
        chain.holder = handle

    @precondition(lambda self: any(handle.options["write_behind"] for handle in self.holders()))
    @rule(pick=picks, event=fields, options=writer_options, store_index=st.integers(0, 1))
    def take_over_while_a_batch_is_written(self, pick: int, event: dict[str, Any],
                                           options: dict[str, Any], store_index: int) -> None:
        """Fill a batch of a write-behind writer and take its stream over at once, while its
        background thread may be writing that batch."""
        behind = [handle for handle in self.holders() if handle.options["write_behind"]]
        handle = behind[pick % len(behind)]
        for _ in range(handle.options["batch_size"]):
            self.append_normalised(self.holders().index(handle), event)
        key = (handle.exp, handle.stream)
        self.take_over_a_live_writer(self.held_streams().index(key), options, store_index)

    # -- rules: appending -------------------------------------------------------------------

    @precondition(lambda self: self.holders())
    @rule(pick=picks, event=fields, t=times)
    def append(self, pick: int, event: dict[str, Any], t: int | None) -> None:
        handle = self.holders()[pick % len(self.holders())]
        chain = self.chains[handle.exp, handle.stream]
        appended = handle.writer.append(**event, t=t)
        row = expected_row(handle.exp, handle.stream, len(chain.events), chain.head,
                           handle.clock.last if t is None else t, event)
        assert event_row(appended) == row
        self.accepted(handle, row)
        assert handle.writer.head == row[9]

    @precondition(lambda self: self.holders())
    @rule(pick=picks, events=st.lists(st.tuples(st.booleans(), fields), min_size=2, max_size=9))
    def append_several(self, pick: int, events: list[tuple[bool, dict[str, Any]]]) -> None:
        """A run of appends to one writer, through both paths: batches fill up."""
        for normalised, event in events:
            if normalised:
                self.append_normalised(pick, event)
            else:
                self.append(pick, event, None)

    @precondition(lambda self: self.holders())
    @rule(pick=picks, event=fields)
    def append_normalised(self, pick: int, event: dict[str, Any]) -> None:
        handle = self.holders()[pick % len(self.holders())]
        chain = self.chains[handle.exp, handle.stream]
        seq = handle.writer.append_normalised(
            event["kind"], list(event["path"]), seed=event["seed"],
            params=normalise(event["params"], depth=1), input=event["input"],
            output=event["output"], meta=normalise(event["meta"], depth=1) or None)
        assert seq == len(chain.events)
        row = expected_row(handle.exp, handle.stream, seq, chain.head, handle.clock.last, event)
        self.accepted(handle, row)
        assert handle.writer.head == row[9]  # the same bytes append would write

    @precondition(lambda self: self.holders())
    @rule(pick=picks, event=fields)
    def append_an_event_built_elsewhere(self, pick: int, event: dict[str, Any]) -> None:
        handle = self.holders()[pick % len(self.holders())]
        chain = self.chains[handle.exp, handle.stream]
        t = CREATED_T - 1
        built = make_event(handle.exp, handle.stream, len(chain.events), prev=chain.head, t=t,
                           **event)
        with pytest.raises(StoreError, match="not the next link"):
            handle.writer.append_event(built._replace(seq=built.seq + 1))
        assert handle.writer.append_event(built) == built
        self.accepted(handle, expected_row(handle.exp, handle.stream, built.seq, chain.head, t,
                                           event))

    @precondition(lambda self: self.holders())
    @rule(pick=picks, bad=st.sampled_from([
        {"kind": "Not-A-Kind"}, {"kind": "metric", "seed": b"x" * 15},
        {"kind": "metric", "output": b"y" * 31}, {"kind": "metric", "params": {1: "a"}},
        {"kind": "metric", "path": [-1]}, {"kind": "metric", "t": 2**63},
        {"kind": "metric", "meta": {"x": object()}}]))
    def a_refused_append_changes_nothing(self, pick: int, bad: dict[str, Any]) -> None:
        handle = self.holders()[pick % len(self.holders())]
        before = (handle.writer.next_seq, handle.writer.head)
        with pytest.raises((BadInputError, EncodingError, InvalidIdError)):
            handle.writer.append(**bad)
        assert (handle.writer.next_seq, handle.writer.head) == before

    # -- rules: flushing and closing --------------------------------------------------------

    @precondition(lambda self: self.holders())
    @rule(pick=picks)
    def flush(self, pick: int) -> None:
        handle = self.holders()[pick % len(self.holders())]
        chain = self.chains[handle.exp, handle.stream]
        assert handle.writer.flush() == len(chain.events) - 1
        assert handle.writer.durable_seq == len(chain.events) - 1
        self.all_written(chain)
        assert self.stored(self.reader, handle.exp, handle.stream) == chain.events

    @precondition(lambda self: self.holders())
    @rule(pick=picks)
    def close(self, pick: int) -> None:
        handle = self.holders()[pick % len(self.holders())]
        chain = self.chains[handle.exp, handle.stream]
        handle.writer.close()
        self.handles.remove(handle)
        chain.holder = None
        self.all_written(chain)
        assert handle.writer.durable_seq == len(chain.events) - 1
        with pytest.raises(StoreError, match="closed"):
            handle.writer.append("metric")

    @precondition(lambda self: any(handle.stream == "main" for handle in self.holders()))
    @rule(pick=picks, status=st.sampled_from(["ok", "failed"]))
    def complete_the_run(self, pick: int, status: str) -> None:
        """run_completed, as an experiment writes it: every stream's count and head read in
        the transaction that writes it, under the experiment's lock. The other streams'
        writers may still be open, their background threads writing: each batch of theirs is
        counted or refused (by their guard), never written after it."""
        candidates = [handle for handle in self.holders() if handle.stream == "main"]
        handle = candidates[pick % len(candidates)]
        writer = handle.writer
        store = writer.store

        def params_of(connection: Any) -> dict[str, Any]:
            store.lock_experiment(connection, handle.exp, shared=False)
            streams = {head.stream: {"count": head.count, "head": head.head}
                       for head in Store.stream_heads_in(connection, handle.exp).values()
                       if head.stream != AUDIT_STREAM}
            streams["main"] = {"count": writer.next_seq, "head": writer.head}
            return {"status": status, "streams": streams}

        event = writer.close_with("run_completed", params_of)
        chain = self.chains[handle.exp, "main"]
        assert (event.seq, event.prev) == (len(chain.events), chain.head)
        chain.events.append(event_row(event))
        self.all_written(chain)
        chain.holder = None
        self.handles.remove(handle)
        self.completed.add(handle.exp)
        assert self.reader.experiment(handle.exp).status == status
        for stopped in self.stopped():  # its guard, first in each batch, now refuses too
            if stopped.exp == handle.exp and stopped.stream != "main":
                stopped.stopped = StoreError
        counted = event.params["streams"]
        for other in self.holders():
            if other.exp == handle.exp:
                count = counted.get(other.stream, {"count": 0})["count"]
                chain = self.chains[other.exp, other.stream]
                assert chain.durable <= count <= len(chain.events)
                if chain.written is not None:
                    assert count == chain.written
                self.stop(other, StoreError, count)

    # -- rules: a writer taken over while alive, or whose run completed ---------------------

    @precondition(lambda self: self.stopped())
    @rule(pick=picks, event=fields)
    def a_stopped_writer_appends(self, pick: int, event: dict[str, Any]) -> None:
        handle = self.stopped()[pick % len(self.stopped())]
        assert handle.stopped is not None
        if handle.refused:
            with pytest.raises(handle.stopped):  # it refuses further appends
                handle.writer.append(**event)
            return
        try:
            handle.writer.append(**event)
        except handle.stopped:  # a full batch (or a background write) was refused
            assert not handle.exact or handle.unwritten + 1 >= handle.options["batch_size"]
            handle.refused = True
            return
        handle.unwritten += 1
        if handle.exact:  # a full batch would have been written, and refused
            assert handle.unwritten < handle.options["batch_size"]

    @precondition(lambda self: self.stopped())
    @rule(pick=picks)
    def a_stopped_writer_flushes(self, pick: int) -> None:
        handle = self.stopped()[pick % len(self.stopped())]
        assert handle.stopped is not None
        if handle.refused or handle.unwritten:
            with pytest.raises(handle.stopped):
                handle.writer.flush()
            handle.refused = True
        else:
            # Nothing of its own to write: no batch, so no transaction that could refuse it.
            assert handle.writer.flush() == handle.writer.durable_seq

    @precondition(lambda self: self.stopped())
    @rule(pick=picks)
    def a_stopped_writer_closes(self, pick: int) -> None:
        handle = self.stopped()[pick % len(self.stopped())]
        assert handle.stopped is not None
        self.handles.remove(handle)
        if handle.unwritten and not handle.refused:  # a failure its owner has not yet seen
            with pytest.raises(handle.stopped):
                handle.writer.close()
        else:
            handle.writer.close()

    @precondition(lambda self: any(handle.options["flush_interval"] for handle in self.handles))
    @rule(seconds=st.sampled_from([0.003, 0.03]))
    def time_passes(self, seconds: float) -> None:
        """Interval flushes and background writes happen meanwhile."""
        time.sleep(seconds)

    @rule()
    def a_new_store_handle_reads_the_same(self) -> None:
        """A handle opened now (as another process opens the ledger) reads what the model says;
        ``verify`` given the URL, as the CLI calls it, accepts it."""
        with Store.open(self.url) as fresh:
            self.check_stored(fresh)
        assert verify(self.url).ok

    # -- what must hold after every step ----------------------------------------------------

    @invariant()
    def the_ledger_holds_the_model_s_chains(self) -> None:
        if self.chains:
            for store in (self.reader, self.stores[1]):  # another handle, and a writer's
                self.check_stored(store)

    def check_stored(self, store: Store) -> None:
        """The stored chains, read through ``store``, against the model."""
        # Read before the rows: a background write may land in between.
        durable = {key: chain.holder.writer.durable_seq
                   for key, chain in self.chains.items() if chain.holder is not None}
        by_stream: dict[tuple[str, str], list[Row]] = {key: [] for key in self.chains}
        for row in store.iter_event_rows():
            by_stream[row[0], row[1]].append(plain_row(row))
        for key, chain in self.chains.items():
            stored = by_stream[key]
            assert stored == chain.events[:len(stored)], f"{key}: not the model's chain"
            assert len(stored) >= chain.durable, f"{key}: an acknowledged event is missing"
            if chain.written is not None:
                assert len(stored) == chain.written, f"{key}: {len(stored)} stored"
            holder = chain.holder
            if holder is not None:
                assert durable[key] <= len(stored) - 1, f"{key}: durable_seq not stored"
                if holder.exact:
                    assert len(chain.events) - len(stored) < holder.options["batch_size"]
            for handle in self.stopped():  # acknowledges nothing the ledger does not hold
                if (handle.exp, handle.stream) == key:
                    assert handle.writer.durable_seq < handle.stored_when_stopped
            # Read after the rows, each of these may see a background write land meanwhile.
            last = store.last_event(*key)
            if last is not None:
                assert chain.events[last[0]][9] == last[1] and last[0] >= len(stored) - 1
            head = store.stream_heads(key[0]).get(key[1])
            if head is not None:
                assert len(stored) <= head.count <= len(chain.events)
                assert head.head == chain.events[head.count - 1][9]
        for exp, stream, count, max_seq in store.chain_sizes():
            assert count == max_seq + 1 <= len(self.chains[exp, stream].events)

    @invariant()
    def verify_accepts_the_ledger(self) -> None:
        if not self.chains:
            return
        report = verify(self.reader)
        assert report.ok, [finding.describe() for finding in report.findings]
        assert set(report.incomplete) == {exp for exp, _ in self.chains} - self.completed


STATEFUL_SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
TestWriterMachine = WriterMachine.TestCase
TestWriterMachine.settings = STATEFUL_SETTINGS


class PostgresWriterMachine(WriterMachine):
    """The same machine on a fresh schema of the test PostgreSQL server."""

    def new_ledger_url(self) -> str:
        import sqlalchemy

        base = os.environ[POSTGRES_ENV]
        url, self.schema = _postgres_schema_url(base)
        self.admin = sqlalchemy.create_engine(base)
        with self.admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {self.schema}")
        return url

    def drop_ledger(self) -> None:
        with self.admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {self.schema} CASCADE")
        self.admin.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV),
                    reason=f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against")
def test_the_writer_machine_on_postgres() -> None:
    run_state_machine_as_test(PostgresWriterMachine,
                              settings=settings(STATEFUL_SETTINGS, max_examples=10))


# -- a writer killed at a random moment --------------------------------------------------------

CRASH_TRIALS = 6
CRASH_SEED = 20261130
CHILD = Path(__file__).with_name("writer_crash_driver.py")


def _run_until_killed(command: list[str], acknowledgements: int, pause: float) -> list[str]:
    """Run ``command``; once it has printed ``acknowledgements`` lines starting ``durable``,
    wait ``pause`` seconds and SIGKILL its process group. Return every line it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CHILD.parent)])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if sum(seen.startswith("durable ") for seen in lines) >= acknowledgements:
            break
    time.sleep(pause)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished first
        pass
    lines += [line.strip() for line in process.stdout]
    process.stdout.close()
    process.wait()
    return lines


@pytest.mark.slow
def test_a_writer_killed_at_a_random_moment_leaves_a_prefix_of_its_chain(tmp_path: Path
                                                                          ) -> None:
    chooser = random.Random(CRASH_SEED)  # fixed: any failing trial reproduces
    for trial in range(CRASH_TRIALS):
        url = f"sqlite:///{tmp_path / f'ledger-{trial}.db'}"
        exp, seed = f"exp-crash-{trial}", CRASH_SEED + trial
        created = make_event(exp, "main", 0, "experiment_created", params={"name": "crash"},
                             prev=ZERO_DIGEST, t=CREATED_T)
        with Store.open(url, create=True) as store:
            store.insert_experiment(exp, "crash", created)
        lines = _run_until_killed([sys.executable, str(CHILD), url, exp, str(seed)],
                                  chooser.randint(1, 40), chooser.uniform(0, 0.02))
        heads = {stream: (0, ZERO_DIGEST) for stream in CHILD_STREAMS}
        heads["main"] = (1, created.hash)
        plan = planned_events(exp, seed, heads)
        acknowledged = {stream: -1 for stream in CHILD_STREAMS}
        for line in lines:
            if line.startswith("durable "):
                _, stream, seq = line.split()
                acknowledged[stream] = max(acknowledged[stream], int(seq))
        with Store.open(url) as store:
            report = verify(store)
            assert report.ok, f"trial {trial}: {[f.describe() for f in report.findings]}"
            assert report.incomplete == [exp]
            for stream in CHILD_STREAMS:
                planned = [created] * (stream == "main") + plan.events(stream)
                stored = [plain_row(row) for row in store.iter_segment_rows(
                    exp, stream, 0, 2**62, EVENT_COLUMNS)]
                assert stored == [event_row(event) for event in planned[:len(stored)]], (
                    f"trial {trial}: {stream} is not a prefix of what the child appended")
                assert len(stored) > acknowledged[stream], (
                    f"trial {trial}: {stream} seq {acknowledged[stream]} was acknowledged, "
                    f"{len(stored)} events are stored")
                if "done" in lines:
                    assert len(stored) == len(planned), f"trial {trial}: {stream} cut short"
                # The dead writer's claim is taken over; its successor continues the chain.
                with StreamWriter(store, exp, stream, flush_interval=None) as successor:
                    assert successor.next_seq == len(stored)
