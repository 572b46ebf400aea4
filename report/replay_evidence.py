"""R8, the replay certificate: run a replay now (``--replay``) or quote the last recorded one.

Verdicts: **PASSED** — every re-executed draw matched its record; **FAILED** — a draw diverged,
or the ledger failed verification so it was not replayed; **INCONCLUSIVE** — the replay could not
run (data or code missing, an import not allowed); ``NOT_REPLAYED`` when no replay was run or
recorded. A replay run by the report is recorded in the experiment's audit stream like
``ledger replay`` records its own (unless recording is off).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.errors import CannotReplayError, CheckFailedError, LedgerError
from ledger.events import AUDIT_STREAM
from ledger.json_view import json_view
from ledger.store.store import Store
from report.facts import RunFacts
from report.jsonview import recorded_int, recorded_text, rfc3339
from replay.engine import POLICY, ReplayReport, record_replay, replay_run

PASSED, FAILED, INCONCLUSIVE, NOT_REPLAYED = "PASSED", "FAILED", "INCONCLUSIVE", "NOT_REPLAYED"
EXCLUDED = [
    {"what": "meta",
     "why": "observed facts (pid, host, durations) that differ between honest runs"},
    {"what": "t", "why": "wall-clock time of recording"},
    {"what": "metric and checkpoint events",
     "why": "outputs of training, not draws: compared only when training is re-run "
            "(replay --full)"},
    {"what": "the audit stream", "why": "replays and report exports recorded after the run"},
]

MISSING_NOTE = ("replay re-executes each recorded draw, so no draw can be missing or extra (both "
                "counts are 0); a draw that cannot be re-executed makes the replay INCONCLUSIVE")


@dataclass(slots=True)
class ReplayOutcome:
    """A replay run by the report: its certificate, or why it could not give one."""

    certificate: dict[str, Any] | None
    verdict: str
    reason: str | None
    environment: dict[str, Any] | None


def run_replay(store: Store, exp: str, *, jobs: int, trusted: Sequence[str],
               data_dir: Any, record: bool, take_over: bool = False) -> ReplayOutcome:
    """Replay ``exp`` now; never raises for a run that cannot be certified."""
    try:
        report: ReplayReport = replay_run(store, exp, jobs=jobs, trusted=trusted,
                                          data_dir=data_dir)
    except CheckFailedError as error:
        return ReplayOutcome(None, FAILED, str(error), None)
    except CannotReplayError as error:
        return ReplayOutcome(None, INCONCLUSIVE, f"replay could not run: {error}", None)
    except LedgerError as error:
        return ReplayOutcome(None, INCONCLUSIVE, f"replay could not run: {error}", None)
    if record:
        record_replay(store, report, take_over=take_over)
    certificate = json_view(report.to_json())
    verdict = PASSED if report.certified else FAILED
    divergence = report.first_divergence  # set whenever the run is not certified
    reason = None if report.certified or divergence is None else divergence.describe()
    return ReplayOutcome(certificate, verdict, reason, json_view(report.environment))


def _latest_recorded(facts: RunFacts) -> tuple[dict[str, Any], dict[str, Any]] | None:
    for body in reversed(facts.audit):
        if body.get("kind") == "replay_recorded" and isinstance(body.get("params"), dict):
            return body, body["params"]
    return None


def r8_replay(facts: RunFacts, outcome: ReplayOutcome | None) -> dict[str, Any]:
    """R8 from a replay run now, else from the last recorded one, else NOT_REPLAYED."""
    section: dict[str, Any] = {
        "title": "Replay certificate", "verdict": NOT_REPLAYED, "source": None, "reason": None,
        "replayed_by": None, "started_at": None, "finished_at": None, "environment": None,
        "environment_differences": [],
        "policy": {"rule": POLICY, "excluded": EXCLUDED, "missing_and_extra": MISSING_NOTE},
        "counts": None, "first_divergence": None, "certified_head": None,
        "head_is_current": None, "audit_seq": None, "plugins": []}
    current_head = facts.run_head.hex() if facts.run_head else None
    if outcome is not None:
        section.update(source="run by this report", verdict=outcome.verdict,
                       reason=outcome.reason, environment=outcome.environment)
        certificate = outcome.certificate
    else:
        recorded = _latest_recorded(facts)
        if recorded is None:
            section["reason"] = "no replay was run or recorded for this experiment"
            return section
        body, certificate = recorded
        verdict = recorded_verdict(certificate.get("verdict"))
        divergence = certificate.get("first_divergence")
        section.update(source="recorded in the audit stream", verdict=verdict,
                       audit_seq=recorded_int(body.get("seq")),
                       environment=json_view(certificate.get("environment"))
                       if isinstance(certificate.get("environment"), dict) else None,
                       reason=_describe(divergence) if verdict == FAILED else None)
    if certificate is None:
        return section
    compared = _counts(certificate.get("compared"))
    head = certificate.get("head")
    section.update(
        replayed_by=recorded_text(certificate.get("replayed_by")),
        started_at=rfc3339(certificate.get("started_t")),
        finished_at=rfc3339(certificate.get("finished_t")),
        environment_differences=_items(certificate.get("environment_differences"), dict),
        counts={"compared": sum(compared.values()),
                "matched": recorded_int(certificate.get("matched")),
                "mismatched": recorded_int(certificate.get("mismatched")),
                "missing": 0, "extra": 0, "by_kind": compared,
                "not_draws": _counts(certificate.get("not_draws")),
                "skipped": _counts(certificate.get("skipped"))},
        first_divergence=json_view(certificate.get("first_divergence"))
        if isinstance(certificate.get("first_divergence"), dict) else None,
        certified_head=head if isinstance(head, str) and _SHA256.fullmatch(head) else None,
        head_is_current=_is_current(head, current_head, certificate, facts),
        plugins=_items(certificate.get("plugins"), str))
    return section


def _is_current(head: Any, current_head: str | None, certificate: dict[str, Any],
                facts: RunFacts) -> bool:
    """Whether the certificate speaks for the run as it is stored now: it names the run's
    head. An incomplete run has no head, nor has its certificate, so two Nones tell nothing:
    there the replay must have read as many events as the run's streams hold now — one that
    went on after the replay holds draws the replay never read. (A replay stopped at a changed
    dataset read the draws it skipped.)"""
    if head is not None or current_head is not None:
        return bool(head == current_head)
    read = (sum(_counts(certificate.get("compared")).values())
            + sum(_counts(certificate.get("not_draws")).values())
            + sum(_counts(certificate.get("skipped")).values()))
    held = sum(stream.count for name, stream in facts.heads.items() if name != AUDIT_STREAM)
    return read == held


# A recorded certificate is read back from the audit stream, which anyone who can write the
# ledger appends to: only what has the types a certificate gives is quoted (the report must
# still validate against schemas/report.v1.json).
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _counts(value: Any) -> dict[str, int]:
    """The whole-number entries of a recorded {kind: count} map."""
    if not isinstance(value, dict):
        return {}
    return {str(key): count for key, count in value.items() if recorded_int(count) is not None}


def _items(value: Any, kind: type) -> list[Any]:
    """The entries of a recorded list that are of ``kind``, in their JSON view."""
    return [json_view(item) for item in value if isinstance(item, kind)] if isinstance(
        value, list) else []


def recorded_verdict(verdict: Any) -> str:
    """PASSED or FAILED for a recorded ``certified`` or ``diverged``; INCONCLUSIVE for anything
    else an audit record holds (not necessarily text, nor hashable)."""
    if not isinstance(verdict, str):
        return INCONCLUSIVE
    return {"certified": PASSED, "diverged": FAILED}.get(verdict, INCONCLUSIVE)


def _describe(divergence: Any) -> str | None:
    if not isinstance(divergence, dict):
        return None
    path = "/".join(str(label) for label in divergence.get("path") or []) or "-"
    return (f"{divergence.get('stream')}#{divergence.get('seq')} {divergence.get('kind')} "
            f"[{path}]: {divergence.get('cause')} — {divergence.get('detail')}")
