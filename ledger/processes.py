"""Choosing how many helper processes to start, and how (verification segments, replay chunks);
how much memory the machine has, to bound what untrusted records may ask for; whether this
process is a fork of the one that made a recording object (:func:`forks_so_far`); forking
with the library's own background threads stopped (:func:`background_threads_paused`); and
helpers that end with their parent (:func:`exit_with_parent`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Protocol


_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def forks_so_far() -> int:
    """How many forks lie between the process that imported the library and this one.

    An object that records only in the process that made it keeps this value and compares: a
    differing value means it is a forked copy. An int comparison, where ``os.getpid()`` is a
    system call on every recorded batch.
    """
    return _forks


class PausableThread(Protocol):
    """An object running a background thread it can stop and start again (a ledger writer)."""

    def pause_thread(self) -> bool:
        """Stop the thread once its queued work is done; False when there was none running."""

    def resume_thread(self) -> None:
        """Start the thread again after a :meth:`pause_thread` that returned True."""


_pausable: weakref.WeakSet[PausableThread] = weakref.WeakSet()


def pause_for_forks(owner: PausableThread) -> None:
    """Have :func:`background_threads_paused` stop ``owner``'s thread (``owner`` is held weakly)."""
    _pausable.add(owner)


class _PauseState:
    """Who is inside :func:`background_threads_paused` and which threads it stopped.

    The first block to enter stops the threads and the last to leave starts them again, so a
    thread forking inside its block never forks beside a thread another block's end restarted.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.paused: list[PausableThread] = []


_pause_state = _PauseState()


def _reset_pause_state() -> None:
    # The child has only the forking thread: a lock another thread held at the fork, and blocks
    # other threads were in, do not exist there.
    global _pause_state
    _pause_state = _PauseState()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pause_state)


@contextlib.contextmanager
def background_threads_paused() -> Iterator[None]:
    """The library's background threads (ledger writers' flush threads) stopped, their queued
    work written, until the block ends; wrap the start of ``fork`` processes in it.

    A fork copies only the forking thread: a lock another thread holds at that moment stays
    held for ever in the child — why Python 3.12+ warns ("This process is multi-threaded, use of
    fork() may lead to deadlocks in the child"). A recording run always has a writer thread, so
    its fork workers would be forked from a multi-threaded process; with it stopped they are
    forked from a single-threaded one, unless the program runs threads of its own. The library
    wraps its own fork workers in it; wrap a ``fork`` pool or ``os.fork`` of your own in it
    too. Recording goes on meanwhile (appends are buffered and written once the block ends).
    Blocks may overlap, in one thread or several: the threads run again when the last ends.
    """
    state = _pause_state
    with state.lock:
        if state.holders == 0:
            try:
                for owner in list(_pausable):
                    if owner.pause_thread():
                        state.paused.append(owner)
            except BaseException:  # Ctrl-C while a thread finishes its batch: none stays stopped
                _resume_all(state)
                raise
        state.holders += 1
    try:
        yield
    finally:
        with state.lock:
            state.holders -= 1
            if state.holders == 0:
                _resume_all(state)


def _resume_all(state: _PauseState) -> None:
    paused, state.paused = state.paused, []
    for owner in paused:
        owner.resume_thread()


def exit_with_parent() -> None:
    """In a helper process: exit at once when the process that started it is gone.

    A helper blocked on a queue or a pipe never sees its parent killed (SIGTERM, SIGKILL): a
    forked helper holds the parent's end of that pipe itself, so no EOF comes. It stayed
    forever, holding the database and the caller's stdout open, so that a caller waiting for
    the output's end (``$(ledger verify)``) hung too. A daemon thread waits on the parent's
    sentinel, which the operating system closes when the parent exits, and ends the process.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)  # nothing of a helper's is worth finishing for a parent that is gone

    threading.Thread(target=watch, name="ledger-parent-watch", daemon=True).start()


def pool_start_method() -> str:
    """``fork`` when it is safe, else ``spawn``.

    fork starts workers instantly and shares what the parent already loaded; with other threads
    alive it could copy a lock one of them holds, so then (and off POSIX) spawn is used.
    """
    return "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the platform tells, else the count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not every platform has affinity
        return os.cpu_count() or 1


def process_count(jobs: int, work_units: int) -> int:
    """How many processes to use when ``jobs`` are asked for ``work_units`` pieces of work.

    Never more than the usable cores nor the pieces of work, never fewer than one: the work is
    CPU-bound, so each process beyond that only costs memory and start-up — and a mistyped
    ``--jobs 100000`` must not fork a hundred thousand processes.
    """
    return max(1, min(jobs, usable_cores(), work_units))


def physical_memory() -> int:
    """Bytes of physical memory of this machine (a generous bound when the platform won't say):
    what no single allocation asked for by an untrusted record may exceed."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**40
