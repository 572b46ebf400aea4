"""R9, integrity: the hash chains and their heads, full verification, the append-only controls
in force, and the signature over the report."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from ledger.store.schema import SCHEMA_VERSION
from ledger.store.store import Store
from ledger.verify import INTACT_NOTE, VerifyReport
from report.facts import RunFacts
from report.scan import stream_order

EVENT_HASH_RULE = ('SHA-256(b"ledger/event/v1\\x00" + canonical(body)); each event\'s prev is '
                   'the hash of the event before it in its stream')


def append_only_controls(store: Store, verification: VerifyReport) -> list[dict[str, Any]]:
    """Each control that keeps the ledger append-only, whether it is in force, and how."""
    triggers = store.append_only_triggers()
    postgres = store.backend == "postgresql"
    change = [name for name in triggers if name.endswith(("_no_update", "_no_delete",
                                                          "_append_only"))]
    controls = [{"control": "database triggers refuse UPDATE and DELETE of ledger rows",
                 "in_force": bool(change) and all(triggers[name] for name in change),
                 "detail": _missing(triggers, change)}]
    if postgres:
        truncate = [name for name in triggers if name.endswith("_no_truncate")]
        controls.append({"control": "database triggers refuse TRUNCATE of ledger tables",
                         "in_force": bool(truncate) and all(triggers[n] for n in truncate),
                         "detail": _missing(triggers, truncate)})
    else:
        replace = [name for name in triggers if name.endswith("_no_replace")]
        controls.append({"control": "database triggers refuse INSERT OR REPLACE over a "
                                    "recorded row",
                         "in_force": bool(replace) and all(triggers[n] for n in replace),
                         "detail": _missing(triggers, replace)})
    controls.append({"control": "unique (exp, stream, seq): a second write at a position is "
                                "refused, never a fork of the chain",
                     "in_force": _has_chain_constraint(store), "detail": "ledger_events"})
    controls.append({"control": "hash chain: every event's hash covers the hash of the one "
                                "before it, verified in full for this report",
                     "in_force": verification.ok,
                     "detail": f"{verification.events} events in {verification.chains} chains"
                               + ("" if verification.ok else
                                  f", {verification.intact} {INTACT_NOTE}")})
    controls.append({"control": "schema version recorded; a ledger of a newer version is refused",
                     "in_force": True,
                     "detail": f"ledger schema version {store.schema_version}, this program "
                               f"reads up to {SCHEMA_VERSION}"})
    return controls


def _missing(triggers: dict[str, bool], names: list[str]) -> str:
    absent = [name for name in names if not triggers[name]]
    return ("missing: " + ", ".join(absent)) if absent else f"{len(names)} triggers present"


def _has_chain_constraint(store: Store) -> bool:
    try:
        inspector = inspect(store.engine)
        keys: list[set[str | None]] = [set(item["column_names"]) for item in
                                       inspector.get_unique_constraints("ledger_events")]
        keys += [set(item["column_names"]) for item in inspector.get_indexes("ledger_events")
                 if item.get("unique")]
    except SQLAlchemyError:
        return False
    return {"exp", "stream", "seq"} in keys


def r9_integrity(store: Store, facts: RunFacts, verification: VerifyReport,
                 signature: dict[str, Any]) -> dict[str, Any]:
    """R9 from the stream heads, the verification result, the controls and the signature."""
    streams = [{"stream": head.stream, "count": head.count, "head": head.head.hex()}
               for head in sorted(facts.heads.values(), key=lambda h: stream_order(h.stream))]
    return {"title": "Integrity", "hash_algorithm": "SHA-256", "event_hash_rule": EVENT_HASH_RULE,
            "streams": streams, "run_head": facts.run_head.hex() if facts.run_head else None,
            "complete": facts.run_head is not None,
            "verification": {"ok": verification.ok, "events": verification.events,
                             "intact": verification.intact, "chains": verification.chains,
                             "findings": [finding.to_json() for finding in
                                          verification.findings]},
            "undecodable_events": [{"stream": s, "seq": q, "kind": k}
                                   for s, q, k in facts.undecodable[:100]],
            "append_only_controls": append_only_controls(store, verification),
            "signature": signature}
