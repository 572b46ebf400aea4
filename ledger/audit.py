"""The audit trail of an experiment: replays and report exports, recorded after the run.

They go to the experiment's ``audit`` stream — a hash chain like any other, verified and
append-only, but outside the run itself (``run_completed`` does not list it, replay and diff
ignore it). Compliance reports list them as the experiment's history.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from ledger.errors import ConcurrentWriteError, LedgerError, StoreError
from ledger.events import AUDIT_STREAM, Event, decode_body
from ledger.store.claims import live_holder
from ledger.store.store import Store
from ledger.store.writer import StreamWriter

_ATTEMPTS = 20


def record_audit(store: Store, exp: str, kind: str, params: Mapping[str, Any], *,
                 output: bytes | None = None, meta: Mapping[str, Any] | None = None,
                 take_over: bool = False) -> Event:
    """Append one audit event to ``exp``'s audit stream and make it durable before returning.

    Two auditors finishing at the same moment contend for the stream's claim for a few
    milliseconds; the later one waits and retries rather than failing its replay.
    ``take_over`` takes the audit stream from a writer known to be gone (a replay killed on
    another machine holds it for ever: its process cannot be checked from here).
    """
    store.experiment(exp)
    for attempt in range(_ATTEMPTS):
        try:
            writer = StreamWriter(store, exp, AUDIT_STREAM, flush_interval=None,
                                  take_over=take_over)
            try:
                event = writer.append(kind, params=params, output=output, meta=meta)
                writer.flush()
            except BaseException:
                with contextlib.suppress(LedgerError):  # the error to raise is the write's
                    writer.close()
                raise
            # The event is durable: a claim that cannot be released now (the disk filled, the
            # connection dropped) is one a later writer takes over, not a lost record.
            with contextlib.suppress(StoreError):
                writer.close()
            return event
        except ConcurrentWriteError:  # includes StreamClaimedError
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def require_audit_append(store: Store, what: str, exp: str | None = None, *,
                         take_over: bool = False) -> None:
    """Raise StoreError, before the work begins, when ``store`` could not record ``what`` (a
    replay certificate, a report export) in the audit stream: see :meth:`Store.append_refusal`
    — or, given ``exp``, when another writer holds that experiment's audit stream (a failure
    found only after a long replay, or after the report's files were written, loses the work).
    With ``take_over`` the holder is not asked about: it will be taken over.
    """
    refusal = store.append_refusal()
    if refusal is None and exp is not None:
        holder = live_holder(store, exp, AUDIT_STREAM)  # read even to take over: may it read?
        if holder is not None and not take_over:
            refusal = (f"the audit stream of {exp} is open by {holder}; wait until it is "
                       f"released, or, if that process is gone (killed on another machine, "
                       f"where this one cannot check it), give --take-over")
    if refusal is not None:
        raise StoreError(f"cannot record {what} in {store.url}: {refusal}; give --no-record to "
                         f"go ahead without recording it")


def audit_trail(store: Store, exp: str) -> list[dict[str, Any]]:
    """The decoded audit events of ``exp``, oldest first."""
    return [decode_body(body) for stream, _seq, _kind, body in store.iter_run_bodies(exp)
            if stream == AUDIT_STREAM]
