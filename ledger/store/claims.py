"""Stream claims: one writer per stream, refused at open rather than forked at flush.

A :class:`~ledger.store.StreamWriter` claims its (experiment, stream) when it opens and releases
the claim when it closes, by inserting rows into ``ledger_stream_claims`` (insert-only like every
ledger table). The n-th claim of a stream is attempt n; a unique key on
(exp, stream, attempt, action) lets only one of two writers racing to open the same stream
insert its claim, and a writer that finds a claim without a release is refused at once with
:class:`~ledger.errors.StreamClaimedError`, naming the holder (writer id, host, pid, time).

A holder that died without closing leaves its claim behind. A claim held by a process of this
host that no longer exists (or has ended, a zombie not yet reaped) is taken over automatically;
for a holder on another machine, open with ``take_over=True`` once you know it is gone. Should
it still be alive, its next batch is refused (:meth:`~ledger.store.Store.append_rows` checks in
the batch's transaction that the writer's claim was not released), and the unique
(exp, stream, seq) key still refuses a second event at a taken position: the chain cannot fork.
A batch already past that check when the stream is taken over commits first
(:meth:`~ledger.store.Store.lock_stream`), so the new writer starts after it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ledger.errors import StoreError, StreamClaimedError
from ledger.store.schema import claims_table, create_claims_table, events_table
from ledger.store.store import Store, _translate
from ledger.text import quoted
from ledger.times import utc_text

CLAIM = "claim"
RELEASE = "release"
CLAIM_TRIES = 3
"""How many times claiming a stream tries: another writer's claim or release committed between
a try's reading the claims and its inserting its own makes it read them anew."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A writer's hold on one stream: attempt n of that stream, by writer ``writer``."""

    exp: str
    stream: str
    attempt: int
    writer: str


@dataclass(frozen=True, slots=True)
class _Holder:
    attempt: int
    writer: str
    host: str
    pid: int
    t: int

    def describe(self) -> str:
        """Who holds the claim and since when, for error messages."""
        since = utc_text(self.t, "seconds")
        return f"writer {self.writer} (host {self.host}, pid {self.pid}, since {since})"

    def gone(self) -> bool:
        """True when the holder ran on this host, in this PID namespace, and its process no
        longer exists or has ended (a zombie its parent has not reaped yet: a supervisor that
        kills a trainer and starts the resumed one before it waits for the killed one). (A
        container sharing the host's name has pids of its own: a pid not seen from here may be
        alive there.) A claim written before namespaces were recorded names the host alone."""
        if self.host not in (host_identity(), socket.gethostname()) or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OverflowError:  # a pid beyond any this system gives: no writer here wrote it
            return False
        except OSError:  # exists, owned by someone else
            pass
        return _ended(self.pid)


def _ended(pid: int) -> bool:
    """True when process ``pid`` has ended but is not reaped yet: every one of its threads is a
    zombie (a leader thread that exited before the others shows as one too, its process alive).
    Read from Linux's /proc; False where that cannot tell (another system, /proc unreadable)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    states = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat", encoding="ascii",
                      errors="replace") as stat:
                # "tid (command) state ...": the command may hold spaces and parentheses
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return bool(states) and all(state in ("Z", "X") for state in states)


def host_identity() -> str:
    """This host's name and, where Linux shows it, the PID namespace of this process: what a
    claim records so that only a process that can see the holder's pid judges it gone."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace}"


_CLAIM_ROW_TYPES = (int, str, str, str, int, int)
"""(attempt, action, writer, host, pid, t): what every writer stores."""


def _check_claim_row(exp: str, stream: str, row: tuple[Any, ...]) -> None:
    """Refuse a claims row no writer made (SQLite keeps what a tamperer writes): deciding who
    holds the stream from it would be a guess, and a wrong guess forks the chain."""
    if (any(type(value) is not kind for value, kind in zip(row, _CLAIM_ROW_TYPES))
            or row[1] not in (CLAIM, RELEASE)):
        raise StoreError(f"the claims of stream {quoted(stream)} of {quoted(exp)} hold a row no "
                         f"writer made ({quoted(row)}): the ledger was edited outside the "
                         f"library, and no writer can open this stream (reading still works)")


def _claims_of(connection: Any, exp: str, stream: str
               ) -> tuple[dict[int, _Holder], list[_Holder]]:
    """Every claim of the stream by attempt, and those not released (oldest first)."""
    rows = connection.execute(
        select(claims_table.c.attempt, claims_table.c.action, claims_table.c.writer,
               claims_table.c.host, claims_table.c.pid, claims_table.c.t)
        .where(claims_table.c.exp == exp, claims_table.c.stream == stream)).all()
    for row in rows:
        _check_claim_row(exp, stream, tuple(row))
    claims = {attempt: _Holder(attempt, writer_id, holder_host, holder_pid, t)
              for attempt, action, writer_id, holder_host, holder_pid, t in rows
              if action == CLAIM}
    released = {attempt for attempt, action, *_ in rows if action == RELEASE}
    return claims, [holder for attempt, holder in sorted(claims.items())
                    if attempt not in released]


def live_holder(store: Store, exp: str, stream: str) -> str | None:
    """Who holds the stream now (a writer whose process may be alive), or None: for refusing
    work that would end by appending to it before the work starts, not after. A ledger whose
    claims table does not exist yet has no holder. Raises StoreError for a malformed claim."""
    with store._reading() as connection:  # a failed read is one StoreError, not the driver's
        if not inspect(connection).has_table(claims_table.name):
            return None
        _claims, held = _claims_of(connection, exp, stream)
    alive = [holder for holder in held if not holder.gone()]
    return alive[0].describe() if alive else None


def ensure_claims_table(store: Store) -> None:
    """Create the claims table in a ledger written before it existed (once per Store)."""
    if getattr(store, "_claims_ready", False):
        return
    with store._reading() as connection:
        present = inspect(connection).has_table(claims_table.name)
    if not present:
        try:
            with store.write_connection() as connection, connection.begin():
                if not inspect(connection).has_table(claims_table.name):
                    create_claims_table(connection)
        except DBAPIError as error:  # another process created it meanwhile
            with store._reading() as connection:
                if not inspect(connection).has_table(claims_table.name):
                    raise _translate(error, f"cannot add the claims table to {store.url}") from None
    store._claims_ready = True


def claim_stream(store: Store, exp: str, stream: str, start_seq: int | None, *,
                 take_over: bool = False) -> Claim:
    """Claim (exp, stream) for a new writer, or raise StreamClaimedError naming the holder.

    ``start_seq`` is recorded for the record (where the writer starts; None: read the head).
    """
    ensure_claims_table(store)
    writer = uuid.uuid4().hex
    host, pid = host_identity(), os.getpid()
    for tries_left in reversed(range(CLAIM_TRIES)):
        try:
            attempt = _insert_claim(store, exp, stream, start_seq, take_over=take_over,
                                    writer=writer, host=host, pid=pid)
            return Claim(exp, stream, attempt, writer)
        except IntegrityError:
            # Another claim or release of this stream committed between our read and our
            # insert (PostgreSQL; SQLite's write lock excludes it): read the claims again.
            if not tries_left:
                raise StreamClaimedError(
                    f"stream {stream} of {exp} was opened by another writer at the same "
                    f"moment: a second writer is refused rather than fork the chain") from None
        except SQLAlchemyError as error:
            raise _translate(error, f"cannot open stream {stream} of {exp}") from None
    raise AssertionError("unreachable: the last try returns or raises")


def _insert_claim(store: Store, exp: str, stream: str, start_seq: int | None, *,
                  take_over: bool, writer: str, host: str, pid: int) -> int:
    """One try of :func:`claim_stream`: read the stream's claims, refuse a live holder (unless
    taking over), release those taken over and insert the new claim; return its attempt."""
    with store.write_connection() as connection, connection.begin():
        claims, held = _claims_of(connection, exp, stream)
        now = time.time_ns()
        for holder in held:
            if not (take_over or holder.gone()):
                raise StreamClaimedError(
                    f"stream {stream} of {exp} is already open by {holder.describe()}: a "
                    f"second writer is refused rather than fork the chain (if that process "
                    f"is gone, take the stream over: take_over=True, or --take-over for "
                    f"ledger replay and report)")
        if held:  # taken over: after any batch of theirs already past its claim check
            store.lock_stream(connection, exp, stream, shared=False)
        attempt = max(claims, default=-1) + 1
        if start_seq is None:
            start_seq = _next_seq(connection, exp, stream)
        connection.execute(claims_table.insert(), [
            *[{"exp": exp, "stream": stream, "attempt": holder.attempt, "action": RELEASE,
               "start_seq": start_seq, "writer": writer, "host": host, "pid": pid, "t": now}
              for holder in held],
            {"exp": exp, "stream": stream, "attempt": attempt, "action": CLAIM,
             "start_seq": start_seq, "writer": writer, "host": host, "pid": pid, "t": now}])
    return attempt


def _next_seq(connection, exp: str, stream: str) -> int:  # noqa: ANN001
    last = connection.execute(select(events_table.c.seq)
                              .where(events_table.c.exp == exp, events_table.c.stream == stream)
                              .order_by(events_table.c.seq.desc()).limit(1)).scalar()
    return 0 if last is None else last + 1


def release_stream(store: Store, claim: Claim, next_seq: int) -> None:
    """Release a claim (a writer closing); a claim already taken over stays released."""
    try:
        with store.write_connection() as connection, connection.begin():
            connection.execute(claims_table.insert(), {
                "exp": claim.exp, "stream": claim.stream, "attempt": claim.attempt,
                "action": RELEASE, "start_seq": next_seq, "writer": claim.writer,
                "host": host_identity(), "pid": os.getpid(), "t": time.time_ns()})
    except IntegrityError:
        return
    except SQLAlchemyError as error:
        raise _translate(error, f"cannot release stream {claim.stream} of {claim.exp}") from None


__all__ = ["Claim", "claim_stream", "ensure_claims_table", "release_stream"]
