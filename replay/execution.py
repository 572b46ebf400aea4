"""Re-executing a run's draws: in the main process, with ``jobs - 1`` worker processes beside it.

:class:`DrawExecution` starts its workers first — forked, they inherit the re-loaded datasets and
the event bodies, so nothing large is sent to them — and the main process then does its own
share (after verifying the chains and starting the dataset digests: see :mod:`replay.engine`).
Draws are shared out in chunks by :class:`replay.claims.Claims`. Each process decodes the bodies
it claimed, re-executes them and compares digests itself with :func:`first_difference`; a worker
sends back only the few that did not match (index and re-executed digests, as msgpack: nothing is
unpickled), so the main process decodes and classifies just those, in recorded order. (Where
fork is unsafe, workers are spawned and multiprocessing hands them their job — this process's
own context and the event bodies — as it hands any process its arguments.)

A failure (a draw that cannot be replayed) is reported for the earliest draw in recorded order
that failed, as a serial replay would: every draw before it is still re-executed.
"""

from __future__ import annotations

import builtins
import gc
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any

import msgpack
import numpy as np

import ledger.errors
from ledger.errors import BadInputError, CannotReplayError, LedgerError
from ledger.events import decode_body
from ledger.processes import exit_with_parent, pool_start_method
from ledger.text import error_summary
from replay.claims import Claims
from replay.compare import first_difference
from replay.context import ReplayContext
from replay.registry import TRUSTED_CODE_ERRORS, Redraw, hint, load_plugins, replayer_for

Mismatch = tuple[int, bool, bool, "bytes | None", "bytes | None"]
"""(draw index, seed re-derives, a redraw was made, its input, its output) of a mismatch."""

JOIN_SECONDS = 5.0
"""How long a worker that sent its outcome may take to exit before it is terminated."""


def redraw_event(context: ReplayContext, body: dict[str, Any]) -> tuple[Redraw | None, bool]:
    """Re-execute one event: (what it produced, whether its recorded seed re-derives)."""
    seed_ok = True
    if body["seed"] is not None:
        seed_ok = context.seed(body["path"]) == body["seed"]
    replayer = replayer_for(body["kind"])
    if replayer is None:
        raise CannotReplayError(f"no replayer for events of kind {body['kind']!r} "
                                f"({body['stream']}#{body['seq']}): {hint()}")
    redraw = replayer(context, body)
    if not isinstance(redraw, Redraw):  # a plug-in's: nothing to compare is no proof
        raise CannotReplayError(f"the replayer of {body['kind']!r} returned "
                                f"{type(redraw).__name__} for {body['stream']}#{body['seq']}, "
                                f"not a Redraw: the draw cannot be compared, so the run "
                                f"cannot be certified")
    return redraw, seed_ok


Failure = tuple[int, Exception]
"""(draw index, what it raised) of the first draw of a share that could not be re-executed."""


def run_share(context: ReplayContext, bodies: Sequence[bytes], claim: Callable[[], range | None],
              claims: Claims, on_chunk: Callable[[], None] | None = None
              ) -> tuple[list[Mismatch], Failure | None]:
    """Re-execute every chunk ``claim`` hands out; return the draws that did not match.

    A draw that raises ends this share: the claims' limit is lowered to it, and it is returned
    as the failure (with what was found before it).
    """
    mismatches: list[Mismatch] = []
    with np.errstate(all="ignore"):  # the recorded run met the same overflows: no warnings
        while (span := claim()) is not None:
            for index in span:
                try:
                    body = decode_body(bodies[index])
                    redraw, seed_ok = redraw_event(context, body)
                except TRUSTED_CODE_ERRORS as error:  # an op or draw calling sys.exit too
                    claims.stop_at(index)
                    return mismatches, (index, as_ledger_error(error, bodies[index]))
                if first_difference(body, redraw, seed_ok) is not None:
                    mismatches.append((index, seed_ok, redraw is not None,
                                       None if redraw is None else redraw.input,
                                       None if redraw is None else redraw.output))
            if on_chunk is not None:
                on_chunk()
    return mismatches, None


def as_ledger_error(error: BaseException, body_bytes: bytes) -> Exception:
    """``error`` when it is a LedgerError other than BadInputError; else a CannotReplayError
    naming the event whose re-execution raised it — params of the wrong type, sizes no memory
    holds (a MemoryError), a custom op's own exception or ``sys.exit``, an op or draw that
    breaks its contract (a BadInputError: exit 2 would read as bad usage) — so that the auditor
    gets exit 3."""
    if isinstance(error, LedgerError) and not isinstance(error, BadInputError):
        return error
    try:
        body = decode_body(body_bytes)
        event = f"{body['kind']} {body['stream']}#{body['seq']}"
    except LedgerError:
        event = "an event"
    notes = getattr(error, "__notes__", None)  # the code that raised it, where it says
    if notes:
        return CannotReplayError(f"{event} cannot be re-executed: {error_summary(error)}, "
                                 f"{notes[-1]}")
    return CannotReplayError(f"{event} cannot be re-executed from its recorded params "
                             f"({error_summary(error)})")


@dataclass(slots=True)
class _Job:
    """What a worker needs: inherited when forked, sent (pickled by multiprocessing) if spawned."""

    context: ReplayContext
    bodies: Sequence[bytes]
    claims: Claims
    trusted: tuple[str, ...]
    spawned: bool


_inherited_job: _Job | None = None


def _worker_main(connection: Connection, job: _Job | None) -> None:
    """A worker process: re-execute chunks from the back; send its mismatches and failure."""
    # Ctrl-C is the main process's: it stops the workers and ends the command as "ledger:
    # aborted" (a worker interrupted with it printed a KeyboardInterrupt traceback, or died
    # first, so that the replay read "a replay worker process died", exit 3); and a replay
    # killed outright leaves its workers' shares to nobody.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by __enter__ until ignored here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    exit_with_parent()
    job = job or _inherited_job
    assert job is not None
    if not job.spawned:
        gc.freeze()  # a collection would touch, and so copy, every page of inherited objects
    try:
        if job.spawned:
            load_plugins(job.trusted)
        mismatches, failure = run_share(job.context, job.bodies, job.claims.from_back,
                                        job.claims)
    except Exception as error:  # setting up failed: before any draw
        mismatches, failure = [], (-1, error)
    sent = None if failure is None else [failure[0], type(failure[1]).__name__, str(failure[1])]
    connection.send_bytes(msgpack.packb({"mismatches": mismatches, "failure": sent},
                                        use_bin_type=True))
    connection.close()
    # Its outcome is sent and it holds nothing else: skip interpreter teardown, which the
    # main process would otherwise wait out in join (milliseconds of a replay's wall time).
    os._exit(0)


def _reap_later(process: multiprocessing.process.BaseProcess) -> None:
    """Reap a worker that sent its outcome if it has exited, else leave it to multiprocessing
    (which reaps finished children whenever it starts another, and at exit): its exit — the
    kernel freeing a forked copy of this process's memory — takes milliseconds the replay need
    not wait for. No thread waits for it: a live thread would make later forks unsafe."""
    process.join(0)


def _rebuilt(name: str, message: str) -> Exception:
    """The exception a worker reported, of the same class when it is a ledger error or a
    built-in exception (as a serial replay would raise it), else a CannotReplayError."""
    for namespace, base in ((ledger.errors, LedgerError), (builtins, Exception)):
        cls = getattr(namespace, name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            try:
                return cls(message)
            except Exception:  # a built-in that needs other arguments
                break
    return CannotReplayError(f"a replay worker failed: {name}: {message}")


class DrawExecution:
    """Re-executes ``bodies`` with the calling process and ``jobs - 1`` workers (see module doc).

    Use as a context manager: entering starts the workers (before the caller starts any thread,
    so that they can be forked); leaving stops and reaps them, whatever happened — except a
    worker that sent its outcome, which exits on its own and is not waited for.
    """

    def __init__(self, context: ReplayContext, bodies: Sequence[bytes], jobs: int,
                 trusted: Sequence[str]) -> None:
        self.context = context
        self.bodies = bodies
        method = pool_start_method()
        self._mp: BaseContext = multiprocessing.get_context(method)
        self.claims = Claims(self._mp, len(bodies))
        workers = max(0, min(jobs - 1, (len(bodies) - 1) // self.claims.chunk))
        self._job = _Job(context, bodies, self.claims, tuple(trusted), method != "fork")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self._answered: set[int] = set()
        """Workers whose outcome :meth:`run` received (in worker order)."""
        self._count = workers

    def __enter__(self) -> "DrawExecution":
        global _inherited_job
        _inherited_job = self._job
        # A worker starts with Ctrl-C blocked, so that one landing before it ignores it cannot
        # interrupt it (the main process's mask is put back at once: Ctrl-C stays its own)
        blocked = (signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                   if hasattr(signal, "pthread_sigmask") and self._count else None)
        try:
            for _ in range(self._count):
                receiver, sender = self._mp.Pipe(duplex=False)
                # typeshed's BaseContext has no Process; every context get_context returns has.
                process = self._mp.Process(  # type: ignore[attr-defined]
                    target=_worker_main, daemon=True,
                    args=(sender, self._job if self._job.spawned else None))
                process.start()
                sender.close()
                self._workers.append((process, receiver))
        finally:
            _inherited_job = None
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.claims.stop_at(0)
        for index, (process, receiver) in enumerate(self._workers):
            receiver.close()
            if exc_type is None and index in self._answered:
                _reap_later(process)  # it sent its outcome and exits on its own
                continue
            if exc_type is not None:  # its outcome is not wanted: it may be blocked sending it
                process.terminate()
            process.join(JOIN_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join()
        self._workers.clear()
        self._answered.clear()

    def stop(self) -> None:
        """Hand out no more draws (the outcome is already decided, e.g. a dataset changed)."""
        self.claims.stop_at(0)

    def run(self, on_chunk: Callable[[], None] | None = None) -> list[Mismatch]:
        """Do the calling process's share, then gather the workers'; return every mismatch in
        recorded order, or raise the failure of the earliest draw that failed."""
        mismatches, failure = run_share(self.context, self.bodies, self.claims.from_front,
                                        self.claims, on_chunk)
        failures: list[Failure] = [] if failure is None else [failure]
        for index, (process, receiver) in enumerate(self._workers):
            try:
                message = msgpack.unpackb(receiver.recv_bytes(), raw=False)
            except EOFError:
                process.join(JOIN_SECONDS)
                raise CannotReplayError(f"a replay worker process died (exit code "
                                        f"{process.exitcode})") from None
            self._answered.add(index)
            mismatches.extend(tuple(row) for row in message["mismatches"])
            if message["failure"] is not None:
                draw, name, text = message["failure"]
                failures.append((draw, _rebuilt(name, text)))
        if failures:
            raise min(failures, key=lambda failure: failure[0])[1]
        mismatches.sort()
        return mismatches
