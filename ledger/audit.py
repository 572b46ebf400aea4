"""The audit trail of an experiment: replays and report exports, recorded after the run.

They go to the experiment's ``audit`` stream — a hash chain like any other, verified and
append-only, but outside the run itself (``run_completed`` does not list it, replay and diff
ignore it). Compliance reports list them as the experiment's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.events import AUDIT_STREAM, Event, decode_body
from ledger.store.store import Store
from ledger.store.writer import StreamWriter


def record_audit(store: Store, exp: str, kind: str, params: Mapping[str, Any], *,
                 output: bytes | None = None, meta: Mapping[str, Any] | None = None) -> Event:
    """Append one audit event to ``exp``'s audit stream and make it durable before returning."""
    store.experiment(exp)
    with StreamWriter(store, exp, AUDIT_STREAM, flush_interval=None) as writer:
        event = writer.append(kind, params=params, output=output, meta=meta)
        writer.flush()
    return event


def audit_trail(store: Store, exp: str) -> list[dict[str, Any]]:
    """The decoded audit events of ``exp``, oldest first."""
    return [decode_body(body) for stream, _seq, _kind, body in store.iter_run_bodies(exp)
            if stream == AUDIT_STREAM]
