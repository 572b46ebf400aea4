"""The stream writer: the only way events enter a ledger.

A writer owns one (experiment, stream) chain. It keeps the chain head in memory, hashes each
event as it is appended, and writes buffered events in batched transactions — when the buffer
holds ``batch_size`` events, when ``flush_interval`` seconds have passed since the oldest
unwritten event, on :meth:`flush`, on :meth:`close` and on leaving a ``with`` block.

With ``write_behind=True`` (what experiments use) full batches and interval flushes are written
by a background thread while appends go on: the database work of a batch (most of its cost, run
by the driver without the GIL) then overlaps the training loop instead of stalling it. At most
``MAX_QUEUED_BATCHES`` full batches wait to be written; an append beyond that waits for the
thread. :meth:`flush` and :meth:`close` still return only once everything is written.

Durability promise: an event is durable once :meth:`flush` has returned (or
``durable_seq >= event.seq``). Events appended but not yet flushed are lost if the process is
killed; the chain in the database then simply ends earlier, and still verifies.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ledger.canonical import pack_normalised
from ledger.digests import ZERO_DIGEST, event_hash_of_bytes
from ledger.errors import BadInputError, LedgerError, StoreError
from ledger.events import (Event, check_experiment_id, check_names, check_stream,
                           encode_normalised_body, make_event)
from ledger.processes import forks_so_far, pause_for_forks
from ledger.seeds import Label
from ledger.store.claims import claim_stream, release_stream
from ledger.store.store import Store, event_row

DEFAULT_BATCH_SIZE = 2000
DEFAULT_FLUSH_INTERVAL = 1.0
MAX_QUEUED_BATCHES = 2
"""Write-behind: full batches that may wait for the background thread before appends block."""

_open_writers: weakref.WeakSet[StreamWriter] = weakref.WeakSet()
"""Writers opened in this process and not yet closed: closed at interpreter exit."""


def _close_open_writers_at_exit() -> None:
    """Write what open writers still buffer and release their streams when Python exits: a
    script that never closes its experiment (no ``with``, no ``close()``) lost up to the last
    second of events, the flush interval. Its run stays incomplete — nothing says how it
    ended — but holds every event it appended. A writer that cannot write (a server gone) is
    one line on stderr; a forked child's copies are left alone."""
    for writer in list(_open_writers):
        try:
            writer.close()
        except Exception as error:  # noqa: BLE001 - at exit: one line, never a traceback
            print(f"ledger: at exit, could not write the last events of {writer.exp}/"
                  f"{writer.stream}: {error}", file=sys.stderr)


atexit.register(_close_open_writers_at_exit)


class StreamWriter:
    """Appends hash-chained events to one stream of one experiment.

    Opening a writer claims its stream until :meth:`close` (see :mod:`ledger.store.claims`): a
    second writer that opens the same stream meanwhile — in this process or any other, on any
    machine sharing the database — is refused at once with StreamClaimedError, naming the
    holder. Opening a writer on a stream that already holds events continues its chain from the
    stored head. ``take_over=True`` takes the claim of a holder you know is gone; should it still
    be alive, its next flush of buffered events fails with ConcurrentWriteError (its claim is
    checked in each batch's transaction, behind it the unique (exp, stream, seq) key) — even a
    flush before the new writer's first — and it refuses further appends: the chain never
    forks. (A flush with nothing buffered writes nothing and checks nothing.) On PostgreSQL a
    take-over waits for a batch of the old writer already past its claim check, and starts
    after it (:meth:`Store.lock_stream`).

    ``write_behind=True`` writes full batches (and interval flushes) on a background thread; see
    the module docstring. ``guard(connection)`` is called first in the transaction of each batch
    (in whichever thread writes it): a LedgerError it raises stops the writer as a failed write
    would, with the batch unwritten. On in-memory SQLite, where each thread would see its own
    database, every write happens in the owner's thread (no background thread, whatever the
    options). A process forked from the writer's (``os.fork``, a ``fork`` multiprocessing pool)
    inherits a copy of it that refuses to append or flush, and whose close does nothing: the
    stream, its buffer and its claim stay the writing process's.
    """

    def __init__(self, store: Store, exp: str, stream: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
                 clock: Callable[[], int] = time.time_ns, take_over: bool = False,
                 write_behind: bool = False, guard: Callable[[Any], None] | None = None,
                 _head: tuple[int, bytes] | None = None) -> None:
        if batch_size < 1:
            raise BadInputError(f"got batch_size {batch_size}, but it must be >= 1")
        if flush_interval is not None and flush_interval <= 0:
            raise BadInputError(f"got flush_interval {flush_interval}, but it must be > 0 "
                                f"seconds or None")
        self.store = store
        self.exp = check_experiment_id(exp)
        self.stream = check_stream(stream)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.clock = clock
        self.guard = guard
        self._pid = os.getpid()
        self._forks = forks_so_far()
        self._claim = claim_stream(store, self.exp, self.stream,
                                   None if _head is None else _head[0] + 1, take_over=take_over)
        try:
            last = _head if _head is not None else store.last_event(exp, stream)
        except BaseException:
            release_stream(store, self._claim, 0)
            raise
        self._next_seq, self._head = (0, ZERO_DIGEST) if last is None else (last[0] + 1, last[1])
        self.durable_seq = self._next_seq - 1
        self._pending: list[tuple[Any, ...]] = []
        self._oldest_pending = 0.0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        """Signalled when batches are queued, written or the writer stops (write-behind)."""
        self._queued: deque[list[tuple[Any, ...]]] = deque()
        self._writing = False
        # In-memory SQLite gives each thread its own database: only the owner's thread may write.
        threads_share_database = store.shareable
        self.write_behind = write_behind and threads_share_database
        self._failure: LedgerError | None = None
        self._failure_unreported = False
        """True while a failure of the background thread has not yet been raised to the owner."""
        self._closed = False
        self._closing = False
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        if threads_share_database and (self.write_behind or flush_interval is not None):
            self._start_thread()
            pause_for_forks(self)
        _open_writers.add(self)

    def _start_thread(self) -> None:
        target = self._write_behind if self.write_behind else self._flush_periodically
        self._timer = threading.Thread(target=target, daemon=True,
                                       name=f"ledger-flush-{self.exp}-{self.stream}")
        self._timer.start()

    def pause_thread(self) -> bool:
        """Stop the background thread once it has written the batches queued for it (appends
        go on into the buffer); False when none was running. For forks: see
        :func:`ledger.processes.background_threads_paused`."""
        if self.forked:  # a copy: its lock may be held by a thread the fork did not copy
            return False
        with self._lock:
            timer = self._timer
            if timer is None or not timer.is_alive() or self._stop.is_set():
                return False
            self._stop.set()
            self._changed.notify_all()
        timer.join()
        return True

    def resume_thread(self) -> None:
        """Start the background thread again after :meth:`pause_thread` (not once closing)."""
        with self._lock:
            if not self._closing:
                self._stop.clear()
                self._start_thread()

    @property
    def head(self) -> bytes:
        """Hash of the last appended event (durable or not): the ``prev`` of the next one."""
        return self._head

    @property
    def next_seq(self) -> int:
        """The seq the next appended event will get."""
        return self._next_seq

    def append(self, kind: str, *, path: Sequence[Label] = (), seed: bytes | None = None,
               params: Mapping[str, Any] | None = None, input: bytes | None = None,
               output: bytes | None = None, meta: Mapping[str, Any] | None = None,
               t: int | None = None) -> Event:
        """Hash and buffer one event at the head of the chain; return it. Not yet durable."""
        self._check_process()
        with self._lock:
            self._check_usable()
            event = make_event(self.exp, self.stream, self._next_seq, kind, path=path,
                               seed=seed, params=params, input=input, output=output, meta=meta,
                               prev=self._head, t=self.clock() if t is None else t)
            self._accept(event)
            return event

    def append_event(self, event: Event) -> Event:
        """Buffer an event built elsewhere; it must be the next link of this chain."""
        self._check_process()
        with self._lock:
            self._check_usable()
            if (event.exp, event.stream, event.seq, event.prev) != (
                    self.exp, self.stream, self._next_seq, self._head):
                raise StoreError(f"event {event.stream}#{event.seq} is not the next link of "
                                 f"{self.exp}/{self.stream} (expected seq {self._next_seq})")
            self._accept(event)
            return event

    def append_normalised(self, kind: str, path: list[Label], *, seed: bytes | None,
                          params: dict[str, Any], input: bytes | None = None,
                          output: bytes | None = None, meta: dict[str, Any] | None = None
                          ) -> int:
        """Hash and buffer one event whose fields are already valid and normalised; return its
        seq. Not yet durable.

        The fast path of the library's per-batch recording: no per-field validation and no
        :class:`Event` object, about a quarter of :meth:`append`'s cost, and the same bytes.
        ``path`` must be a list of valid labels, digests of the right sizes, ``params`` and
        ``meta`` normalised (see :func:`ledger.events.encode_normalised_body`). Values from
        users go through :meth:`append`, which checks everything.
        """
        self._check_process()
        with self._lock:
            self._check_usable()
            check_names(self.exp, self.stream, kind)
            seq, prev, t = self._next_seq, self._head, self.clock()
            body = encode_normalised_body(self.exp, self.stream, seq, kind, path, seed, params,
                                          input, output, meta or {}, prev, t)
            digest = event_hash_of_bytes(body)
            self._buffer((self.exp, self.stream, seq, kind, pack_normalised(path), seed, input,
                          output, prev, digest, t, body), digest)
            return seq

    def _accept(self, event: Event) -> None:
        self._buffer(event_row(event), event.hash)

    def _buffer(self, row: tuple[Any, ...], digest: bytes) -> None:
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending.append(row)
        self._next_seq += 1
        self._head = digest
        if self.write_behind:
            if len(self._pending) >= self.batch_size:
                self._queue_pending()
                while len(self._queued) > MAX_QUEUED_BATCHES and self._failure is None:
                    self._changed.wait()
        elif len(self._pending) >= self.batch_size or self._interval_elapsed():
            self._flush_locked()

    def _queue_pending(self) -> None:
        """Write-behind: hand the buffered events to the background thread (lock held)."""
        if self._pending:
            self._queued.append(self._pending)
            self._pending = []
            self._changed.notify_all()

    def _interval_elapsed(self) -> bool:
        return (self.flush_interval is not None and bool(self._pending)
                and time.monotonic() - self._oldest_pending >= self.flush_interval)

    def flush(self) -> int:
        """Write every buffered event; return the seq now durable."""
        self._check_process()
        with self._lock:
            self._raise_failure()
            if self.write_behind:
                self._write_queued()
            else:
                self._flush_locked()
            return self.durable_seq

    def _write_queued(self) -> None:
        """Write-behind: hand the buffer to the background thread and wait until everything
        queued is written; raise what stopped it (lock held)."""
        self._queue_pending()
        self._wait_until_written()
        self._raise_failure()

    def _wait_until_written(self) -> None:
        """Write-behind: wait until the background thread has written every queued batch (or
        failed). Lock held."""
        while (self._queued or self._writing) and self._failure is None:
            self._changed.wait()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows = self._pending
        self._write_or_stop(rows)
        self._pending = []
        self.durable_seq = rows[-1][2]

    def _flush_periodically(self) -> None:
        interval = self.flush_interval or DEFAULT_FLUSH_INTERVAL
        while not self._stop.wait(interval / 2):
            with self._lock:
                if self._failure is None and self._interval_elapsed():
                    try:
                        self._flush_locked()
                    except LedgerError:  # kept in self._failure, raised on the owner's next call
                        self._failure_unreported = True

    def _write_behind(self) -> None:
        """The background thread of a write-behind writer: writes queued batches in order, and
        the buffer when ``flush_interval`` has passed, until the writer is closed."""
        interval = self.flush_interval
        while True:
            with self._lock:
                while not self._queued and not self._stop.is_set():
                    if self._interval_elapsed():
                        self._queue_pending()
                        break
                    self._changed.wait(None if interval is None else interval / 2)
                if not self._queued or self._failure is not None:
                    self._queued.clear()
                    self._changed.notify_all()
                    return
                rows = self._queued.popleft()
                self._writing = True
            failure = None
            try:
                self._write(rows)  # outside the lock: appends go on meanwhile
            except LedgerError as error:
                failure = error
            with self._lock:
                self._writing = False
                if failure is None:
                    self.durable_seq = rows[-1][2]
                else:
                    self._failure, self._failure_unreported = failure, True
                self._changed.notify_all()

    def _write(self, rows: list[tuple[Any, ...]],
               last: Callable[[Any], tuple[Any, ...]] | None = None) -> None:
        self.store.append_rows(rows, claim_attempt=self._claim.attempt, guard=self.guard,
                               last=last)

    def _write_or_stop(self, rows: list[tuple[Any, ...]],
                       last: Callable[[Any], tuple[Any, ...]] | None = None) -> None:
        """:meth:`_write` in the owner's thread (lock held); a failure stops the writer."""
        try:
            self._write(rows, last)
        except LedgerError as error:
            self._failure = error
            raise
        except BaseException:  # Ctrl-C mid-write: whether the batch landed is not known here
            self._failure = StoreError(f"writer for {self.exp}/{self.stream} was interrupted "
                                       f"while writing: reopen the stream to go on")
            raise

    def close_with(self, kind: str, params_of: Callable[[Any], dict[str, Any]]) -> Event:
        """Write what is buffered and one last event whose params are read in the same
        transaction (``params_of(connection)``), then close; return that event.

        For ``run_completed``: the stream counts and heads it records are read where it is
        written, after :meth:`Store.lock_experiment`, so no other stream's batch can commit
        between the reading and the writing.
        """
        self._check_process()
        with self._lock:
            self._check_usable()
            if self.write_behind:
                self._write_queued()
            rows, seq, prev, t = self._pending, self._next_seq, self._head, self.clock()
            built: list[Event] = []

            def last(connection: Any) -> tuple[Any, ...]:
                event = make_event(self.exp, self.stream, seq, kind, params=params_of(connection),
                                   prev=prev, t=t)
                built.append(event)
                return event_row(event)

            self._write_or_stop(rows, last)
            event = built[-1]
            self._pending = []
            self._next_seq, self._head, self.durable_seq = seq + 1, event.hash, seq
        try:
            self.close()
        except StoreError:  # the last event is durable: a claim left held is taken over later
            pass
        return event

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"writer for {self.exp}/{self.stream} is closed")
        self._raise_failure()

    @property
    def forked(self) -> bool:
        """True in a process forked from the one that opened this writer (see the class)."""
        return forks_so_far() != self._forks

    def _check_process(self) -> None:
        """Refuse a forked process (checked before taking the lock, which another thread of the
        writing process may have held when it forked)."""
        if self.forked:
            raise StoreError(f"the writer of {self.exp}/{self.stream} belongs to process "
                             f"{self._pid}, not to process {os.getpid()} forked from it: record "
                             f"in process {self._pid}")

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._failure_unreported = False
            raise self._failure

    def close(self) -> None:
        """Flush what is buffered, stop the interval flusher, release the stream. Safe to call
        twice.

        Raises the error that stopped the writer if its owner has not seen it yet (a failed
        interval flush): buffered events were then not written. Does nothing in a forked process.
        """
        if self._closed or self.forked:
            return
        with self._lock:
            self._closing = True
            if self.write_behind and self._failure is None:
                self._queue_pending()  # the thread writes it before it stops
            self._stop.set()
            self._changed.notify_all()
            timer = self._timer
        if timer is not None:
            timer.join()
        try:
            with self._lock:
                if self._failure is None:
                    # What was queued while the thread was paused for a fork (then it is not
                    # restarted): written here, before the buffer.
                    self._pending[:0] = [row for rows in self._queued for row in rows]
                    self._queued.clear()
                    self._flush_locked()
                elif self._failure_unreported:
                    self._raise_failure()
        finally:
            self._closed = True
            _open_writers.discard(self)
            self._release()

    def _release(self) -> None:
        """Release the stream. For a writer already stopped by a failure this is best effort:
        the database may be what failed, and that failure is the one its owner gets."""
        try:
            release_stream(self.store, self._claim, self.durable_seq + 1)
        except LedgerError:
            if self._failure is None:
                raise

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
