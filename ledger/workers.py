"""Worker processes that make batches in parallel and hand them back in order.

:class:`WorkerPool` starts N processes with any start method (fork, spawn, forkserver). The
dataset is copied once into shared memory; each worker owns ``prefetch`` batch slots, also in
shared memory. Batch i of an epoch pass goes to worker ``i % N`` and slot ``(i // N) % prefetch``;
the main process waits for the batches strictly in order, copies each out of its slot into fresh
arrays (so a batch the caller keeps can never be overwritten) and gives the slot its next task.
Only a few dozen bytes of msgpack cross the pipes per batch.

A worker that dies or fails raises :class:`WorkerError` naming the worker and the batch; the
main process waits on the worker's pipe and its process sentinel together, and asks for the
worker's exit status after each second of silence (a process the worker forked may hold the pipe
and the sentinel open after its death), so it never hangs on a dead worker (``timeout`` also
bounds a live worker that stops answering).

Nothing but asking for a batch waits for a worker: a pass left early (``break``, an exception in
the training loop) leaves its batches in flight, and the next pass collects them before reusing
their slots; closing the pool stops workers still busy at once; an interrupt (Ctrl-C) while
waiting stops the workers, and the next pass starts new ones.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import select
import time
import weakref
from collections import deque
from collections.abc import Generator
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any, overload

import numpy as np

from ledger.augment import DataAugmenter
from ledger.batches import BatchDigests
from ledger.errors import BadInputError, LedgerError, ResourceError
from ledger.processes import background_threads_paused, forks_so_far
from ledger.shm import SharedArray
from ledger.worker_process import STOP, TASK, pack, unpack, worker_main

START_METHODS = ("fork", "spawn", "forkserver")
START_TIMEOUT = 300.0
"""Seconds a worker may take to start (import, attach, seed) before it is reported as hung."""
_STOP_GRACE = 5.0
_DEATH_CHECK = 1.0
"""Seconds of silence from a worker between checks of its exit status (see _readable)."""


class WorkerError(LedgerError):
    """A worker process died, failed or stopped answering while making a batch."""

    exit_code = 2
    worker_traceback: str | None  # set when the pool raises it for a worker's reported failure


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A started worker: its index, pid, and the digest of its seeded RNG states."""

    worker: int
    pid: int
    states: bytes
    seeded: tuple[str, ...]


def check_start_method(method: str | None) -> str:
    """The start method to use: ``method``, or multiprocessing's default on this platform.

    The default is the one the program set, else the platform's (listed first by
    ``get_all_start_methods``); asking never fixes the global default as a side effect.
    """
    available = multiprocessing.get_all_start_methods()
    if method is None:
        return multiprocessing.get_start_method(allow_none=True) or available[0]
    if method not in available:
        raise BadInputError(f"got start method {method!r}, but must be one of {available}")
    return method


Task = tuple[int, int, int, int]
"""A batch asked of a worker and not yet answered: (epoch, batch, worker, slot)."""


@dataclass(eq=False)
class _Resources:
    """What a pool must release; kept apart so a finalizer can release it without the pool.

    Belongs to the process that started the workers: in a process forked from it (``os.fork``
    in user code) the copy releases nothing — the workers, their pipes and the shared memory
    are the parent's, which a child's exit handlers would otherwise stop and unlink.
    """

    processes: list[Any]
    connections: list[Connection]
    shared: list[SharedArray]
    pending: deque[Task] = field(default_factory=deque)
    forks: int = field(default_factory=forks_so_far)

    def __post_init__(self) -> None:
        _live_resources.add(self)

    def release(self, grace: float = _STOP_GRACE) -> None:
        """Ask every worker to stop, terminate those still alive after ``grace`` seconds (at
        once when batches are still in flight: a busy worker reads STOP only after them), kill
        any that outlive SIGTERM, then close the pipes and the shared memory. Nothing in a
        forked copy."""
        if forks_so_far() != self.forks:
            return
        for connection in self.connections:
            try:
                connection.send_bytes(pack([STOP]))
            except (OSError, ValueError):
                pass
        _join_all(self.processes, 0.0 if self.pending else grace)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        _join_all(self.processes, _STOP_GRACE)
        for process in self.processes:
            if process.is_alive():  # a user op that catches SIGTERM
                process.kill()
        _join_all(self.processes, _STOP_GRACE)
        for connection in self.connections:
            connection.close()
        for shared in self.shared:
            shared.close()
        self.processes, self.connections, self.shared = [], [], []
        self.pending.clear()


_live_resources: weakref.WeakSet[_Resources] = weakref.WeakSet()


def _forget_inherited_workers() -> None:
    """In a forked child: drop the parent's workers from multiprocessing's registry of child
    processes. A child ending normally runs multiprocessing's exit handler, which terminates
    every daemon process in that registry — the parent's workers, which are not the child's."""
    children = getattr(multiprocessing.process, "_children", None)  # private; stable since 2.6
    if children is None:
        return
    for resources in list(_live_resources):
        for process in resources.processes:
            children.discard(process)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_workers)


def _join_all(processes: list[Any], seconds: float) -> None:
    """Join every process, waiting at most ``seconds`` in all (not per process)."""
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))


class WorkerPool:
    """N worker processes making the batches of one dataset under one root seed."""

    def __init__(self, features: np.ndarray, labels: np.ndarray | None, *, root: int,
                 augment_root: int, batch_size: int, shuffle: bool, drop_last: bool,
                 augmenter: DataAugmenter | None, record: bool, num_workers: int,
                 start_method: str | None = None, prefetch: int = 2,
                 timeout: float | None = None) -> None:
        self.num_workers = num_workers
        self.start_method = check_start_method(start_method)
        length = int(features.shape[0])
        # Slots no larger than the data: a batch never holds more rows than the dataset, and no
        # worker is ever more batches ahead than a pass has (a huge batch_size or prefetch
        # would otherwise ask for exabytes of shared memory).
        self.prefetch = max(1, min(prefetch, -(-length // batch_size)))
        self.slot_rows = min(batch_size, length)
        self.timeout = timeout
        self.batch_size = batch_size
        self.feature_shape = features.shape[1:]
        self.label_shape = None if labels is None else labels.shape[1:]
        self.infos: list[WorkerInfo] = []
        self._resources = _Resources([], [], [])
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._slots_x: list[np.ndarray] = []
        self._slots_y: list[np.ndarray | None] = []
        self._pollers: list[Any] | None = [] if hasattr(select, "poll") else None
        self.broken = False
        try:
            self._start(features, labels, (root, augment_root), shuffle, drop_last, augmenter,
                        record)
        except BaseException:
            self.close()
            raise

    @overload
    def _share(self, array: np.ndarray, copy: bool = True) -> SharedArray: ...
    @overload
    def _share(self, array: None, copy: bool = True) -> None: ...
    @overload
    def _share(self, array: np.ndarray | None, copy: bool = True) -> SharedArray | None: ...

    def _share(self, array: np.ndarray | None, copy: bool = True) -> SharedArray | None:
        if array is None:
            return None
        shared = SharedArray.copy_of(array) if copy else SharedArray.create(array.shape,
                                                                             array.dtype)
        self._resources.shared.append(shared)
        return shared

    def _start(self, features: np.ndarray, labels: np.ndarray | None, roots: tuple[int, int],
               shuffle: bool,
               drop_last: bool, augmenter: DataAugmenter | None, record: bool) -> None:
        context = multiprocessing.get_context(self.start_method)
        shared_features = self._share(features)
        shared_labels = self._share(labels)
        base = {"root": roots[0].to_bytes(16, "big"), "augment_root": roots[1].to_bytes(16, "big"),
                "batch_size": self.batch_size,
                "shuffle": shuffle, "drop_last": drop_last, "record": record,
                "augmenter": None if augmenter is None else augmenter.spec,
                "modules": [] if augmenter is None else augmenter.custom_modules,
                "features": shared_features.descriptor(),
                "labels": None if shared_labels is None else shared_labels.descriptor()}
        # fork workers are forked with the library's background threads stopped (see
        # background_threads_paused); spawn and forkserver do not fork this process
        with background_threads_paused() if self.start_method == "fork" else nullcontext():
            for worker in range(self.num_workers):
                self._start_worker(context, worker, base, features, labels)
        for worker in range(self.num_workers):
            message = self._receive(worker, None, None, "starting")
            if not isinstance(message, dict) or "ready" not in message:
                raise WorkerError(f"worker {worker} sent {message!r} instead of its ready message")
            self.infos.append(WorkerInfo(worker, message["pid"], message["states"],
                                         tuple(message["seeded"])))
        for shared in self._resources.shared:  # every worker has attached: drop the names
            shared.unlink()

    def _start_worker(self, context: BaseContext, worker: int, base: dict[str, Any],
                      features: np.ndarray, labels: np.ndarray | None) -> None:
        try:
            self._start_process(context, worker, base, features, labels)
        except OSError as error:  # out of file descriptors or processes (ulimit)
            raise ResourceError(f"cannot start worker {worker}: {error.strerror or error} "
                                f"({_start_remedy(error)}, or use fewer workers or "
                                f"num_workers=0)") from None

    def _start_process(self, context: BaseContext, worker: int, base: dict[str, Any],
                       features: np.ndarray, labels: np.ndarray | None) -> None:
        slots_x = self._share(np.empty((self.prefetch, self.slot_rows) + self.feature_shape,
                                       features.dtype), copy=False)
        slots_y = self._share(None if labels is None else np.empty(
            (self.prefetch, self.slot_rows) + labels.shape[1:], labels.dtype), copy=False)
        assert slots_x.array is not None  # a new block's array: None only once closed
        self._slots_x.append(slots_x.array)
        self._slots_y.append(None if slots_y is None else slots_y.array)
        config = {**base, "worker": worker, "slots_x": slots_x.descriptor(),
                  "slots_y": None if slots_y is None else slots_y.descriptor()}
        ours, theirs = context.Pipe(duplex=True)
        # typeshed's BaseContext has no Process, but every context get_context returns has.
        process = context.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(theirs, pack(config)), name=f"ledger-worker-{worker}",
            daemon=True)
        process.start()
        theirs.close()
        self._resources.processes.append(process)
        self._resources.connections.append(ours)
        if self._pollers is not None:
            poller = select.poll()
            poller.register(ours.fileno(), select.POLLIN)
            poller.register(process.sentinel, select.POLLIN)
            self._pollers.append(poller)

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers, in worker order."""
        return [process.pid for process in self._resources.processes]

    def _readable(self, worker: int, timeout: float | None) -> bool:
        """Wait until worker's pipe has data (True) or the worker is dead (False).

        The pipe and the sentinel both stay silent after the worker's death while a process it
        forked holds their other ends: every ``_DEATH_CHECK`` seconds of silence, the worker's
        exit status is asked of the kernel too."""
        process = self._resources.processes[worker]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _DEATH_CHECK if deadline is None else deadline - time.monotonic()
            readable = self._wait(worker, max(0.0, min(_DEATH_CHECK, left)))
            if readable is not None:
                return readable
            if process.exitcode is not None:  # dead: what it sent before, else nothing
                return bool(self._wait(worker, 0.0))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def _wait(self, worker: int, seconds: float) -> bool | None:
        """Wait at most ``seconds`` for worker's pipe or sentinel: None when neither stirred,
        else whether the pipe has data."""
        connection = self._resources.connections[worker]
        if self._pollers is None:  # no select.poll here: the portable, slower wait
            ready = wait([connection, self._resources.processes[worker].sentinel], seconds)
            return (connection in ready) if ready else None
        events = self._pollers[worker].poll(math.ceil(seconds * 1000))
        if not events:
            return None
        return any(fd == connection.fileno() for fd, _mask in events)

    def _receive(self, worker: int, epoch: int | None, batch: int | None, doing: str) -> Any:
        """The next message of ``worker``; a WorkerError if it died, failed or timed out.

        Interrupted while waiting (Ctrl-C, an exception from a signal handler), the pool stops
        its workers before the interruption propagates: the pipe may hold half a message, and
        a worker stuck in an op must not be waited for again by whatever runs next.
        """
        try:
            return self._receive_now(worker, epoch, batch, doing)
        except WorkerError:
            raise
        except BaseException:
            self._abandon()
            raise

    def _receive_now(self, worker: int, epoch: int | None, batch: int | None, doing: str
                     ) -> Any:
        connection = self._resources.connections[worker]
        process = self._resources.processes[worker]
        where = doing if batch is None else f"making batch {batch} of epoch {epoch}"
        # ``timeout`` bounds a batch; start-up (imports, seeding) gets its own, generous bound
        timeout = self.timeout if batch is not None else START_TIMEOUT
        try:
            alive = self._readable(worker, timeout)
        except TimeoutError:
            self._fail(f"worker {worker} (pid {process.pid}) sent nothing for "
                       f"{timeout} s while {where}")
        message = None
        if alive:
            try:
                message = unpack(connection.recv_bytes())
            except (EOFError, OSError):
                alive = False
        if not alive:
            process.join(_STOP_GRACE)  # the exit code, once the kernel has reaped it
            self._fail(f"worker {worker} (pid {process.pid}) died with exit code "
                       f"{process.exitcode} while {where}{self._start_hint(batch)}")
        if isinstance(message, dict) and "error" in message:
            failed_batch = message.get("batch")
            if failed_batch is not None:
                where = f"making batch {failed_batch} of epoch {message.get('epoch')}"
            self._fail(f"worker {worker} (pid {process.pid}) failed while {where}: "
                       f"{message['error']}", message.get("traceback"))
        return message

    def _start_hint(self, batch: int | None) -> str:
        """Why a spawn or forkserver worker most often dies as it starts: it imports the main
        module again, and a script without a ``__main__`` guard starts a pool there again."""
        if batch is not None or self.start_method == "fork":
            return ""
        return (f" (a {self.start_method} worker imports your main module again: keep the "
                f"script's training code under if __name__ == \"__main__\"; the worker's "
                f"stderr says more)")

    def _abandon(self) -> None:
        """Stop the workers without waiting for their batches; the pool is unusable after."""
        self.broken = True
        self._slots_x, self._slots_y = [], []
        self._resources.release(grace=0.1)  # a broken pool is not waited for
        self._finalizer.detach()

    def _fail(self, text: str, worker_traceback: str | None = None) -> None:
        self._abandon()
        error = WorkerError(text)
        error.worker_traceback = worker_traceback
        raise error

    @property
    def inherited(self) -> bool:
        """True in a process forked from the one that started the workers: they, their pipes
        and their shared memory are that process's, and this copy must not use them."""
        return forks_so_far() != self._resources.forks

    def run(self, epoch: int, start: int, stop: int
            ) -> Generator[tuple[np.ndarray, np.ndarray | None, BatchDigests], None, None]:
        """Yield batches ``start``..``stop - 1`` of ``epoch`` in order, as fresh arrays.

        Leaving the generator early (break, exception, close) waits for nothing: the batches
        already asked for stay in flight, and the next pass collects them before reusing their
        slots (:meth:`close` stops the workers instead).
        """
        if self.broken or self._finalizer.alive is False:
            raise WorkerError("the worker pool is closed")
        self._drain()
        connections = self._resources.connections
        workers, depth = self.num_workers, self.prefetch
        pending = self._resources.pending
        next_batch = start

        def ask(batch: int) -> None:
            index = batch - start
            worker, slot = index % workers, (index // workers) % depth
            try:
                connections[worker].send_bytes(pack([TASK, epoch, batch, slot]))
            except OSError:
                pass  # the worker is gone: waiting for this batch reports why, in batch order
            pending.append((epoch, batch, worker, slot))

        while next_batch < stop and next_batch - start < workers * depth:
            ask(next_batch)
            next_batch += 1
        while pending:
            _epoch, batch, worker, slot = pending[0]
            if self.inherited:  # a pass begun before os.fork, continued in the child
                raise WorkerError("this pass's worker processes belong to the process that "
                                  "started them, not to this forked child: start a new pass "
                                  "(iter(batches)), which starts the child's own workers")
            message = self._receive(worker, epoch, batch, "")
            pending.popleft()  # only once answered: an interrupted wait leaves it in flight
            got_epoch, got_batch, got_slot, rows, indices, output, seed = message
            if (got_epoch, got_batch, got_slot) != (epoch, batch, slot):
                self._fail(f"worker {worker} answered batch {got_batch} of epoch {got_epoch} "
                           f"when batch {batch} of epoch {epoch} was due")
            x = self._slots_x[worker][slot, :rows].copy()
            slots_y = self._slots_y[worker]
            y = None if slots_y is None else slots_y[slot, :rows].copy()
            if next_batch < stop:
                ask(next_batch)
                next_batch += 1
            yield x, y, BatchDigests(rows, indices, output, seed)

    def _drain(self) -> None:
        """Collect the answers of a pass left early: their slots are about to be reused."""
        pending = self._resources.pending
        while pending and not self.broken:
            epoch, batch, worker, _slot = pending[0]
            self._receive(worker, epoch, batch, "")
            pending.popleft()

    def close(self) -> None:
        """Stop the workers and release the shared memory. Safe to call twice."""
        self._slots_x, self._slots_y = [], []
        self._finalizer()


def _start_remedy(error: OSError) -> str:
    """What to raise when a worker cannot be started: the limit its error names — open files
    (``ulimit -n``) or processes (``ulimit -u``, fork's EAGAIN) — where it names one."""
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return "raise the limit on open files (ulimit -n)"
    if error.errno == errno.EAGAIN:
        return "raise the limit on processes (ulimit -u)"
    return "raise the limit"
