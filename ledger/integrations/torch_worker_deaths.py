"""Naming the DataLoader worker that died, whenever torch notices it.

torch notices a dead worker in two places: while the main process waits for a batch (its status
check), and in its SIGCHLD handler, which raises ``RuntimeError("DataLoader worker (pid N) exited
unexpectedly")`` wherever the main thread happens to be when the worker exits. Both name only the
pid. :func:`death_error` turns that error into a :class:`WorkerError` naming the worker and the
batch it was making; :func:`worker_deaths_held` keeps the handler's error out of the loader's own
recording — where it escaped as torch's bare error, and could cut an event's append in half — so
that the loader raises it, named, where it next waits for a batch.

Reads torch's private ``_workers`` and ``_task_info`` of its worker iterator (torch==2.13.0).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ledger.text import error_text
from ledger.workers import WorkerError


def dead_worker(batches: Any) -> tuple[int, int, int | None] | None:
    """(worker id, pid, the first batch of the pass it was given and did not deliver) of a
    worker of torch's iterator ``batches`` that exited with an error, or None. Reads torch's
    ``_workers`` (its processes, by worker id) and ``_task_info`` (batch index of the pass →
    ``(worker id,)`` until the batch arrives), private to torch==2.13.0."""
    processes = getattr(batches, "_workers", None)
    tasks = getattr(batches, "_task_info", None)
    if not isinstance(processes, list) or not isinstance(tasks, dict):
        return None
    for worker, process in enumerate(processes):
        if process.exitcode not in (None, 0):
            given = sorted(index for index, info in tasks.items()
                           if len(info) == 1 and info[0] == worker)
            return worker, process.pid, given[0] if given else None
    return None


def death_error(error: RuntimeError, batches: Any, epoch: int) -> WorkerError | None:
    """The WorkerError naming the worker of torch's iterator ``batches`` that died (torch's
    ``error`` to be kept as its cause), or None when none did — then ``error`` is a live
    worker's error or a timeout, and torch's message says it."""
    died = dead_worker(batches)
    if died is None:
        return None
    worker, pid, batch = died
    making = f"making batch {batch} of" if batch is not None else "in"
    return WorkerError(f"DataLoader worker {worker} (pid {pid}) died {making} epoch {epoch}: "
                       f"{error_text(error, 200)}")


@contextlib.contextmanager
def worker_deaths_held(batches: Any) -> Iterator[list[RuntimeError]]:
    """Run the block with torch's SIGCHLD handler held back; yield a list that receives the
    error that handler raised, if a child exited meanwhile: the caller raises it (through
    :func:`death_error`) where it next waits for a batch, after handing out what it recorded.

    The handler itself runs as soon as the block ends, so another SIGCHLD handler it chains to
    (the user's, for a process of their own) is not kept waiting. Without workers (``batches``
    None), outside the main thread (where no signal handler runs) or without a Python SIGCHLD
    handler, the block runs as it is. Two ``sigaction`` calls: cheap beside the events a block
    records."""
    raised: list[RuntimeError] = []
    handler = signal.getsignal(signal.SIGCHLD) if batches is not None else None
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        yield raised
        return
    arrived: list[int] = []
    signal.signal(signal.SIGCHLD, lambda signum, _frame: arrived.append(signum))
    try:
        yield raised
    finally:
        signal.signal(signal.SIGCHLD, handler)
        if arrived:
            try:
                handler(signal.SIGCHLD, None)  # torch's: raises if a worker died
            except RuntimeError as error:
                raised.append(error)
