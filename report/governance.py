"""Sections R10–R14: history, retention, limitations and non-claims, sign-off, crosswalk.

The crosswalk says where each section gives *evidence* for a framework's documentation or
record-keeping provisions. It is not a legal assessment, and none of the frameworks requires
bit-exact reproducibility: a hash-for-hash replay is stronger evidence than they ask for.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import MAXYEAR, MINYEAR, date
from typing import Any

from ledger.errors import BadInputError
from ledger.events import REPLAY_RECORDED, REPORT_EXPORTED
from ledger.json_view import json_view
from report.facts import RunFacts
from report.jsonview import canonical_json, recorded_int, recorded_text, rfc3339
from report.replay_evidence import recorded_verdict

RETENTION_CLASSES = {
    "technical-documentation": (120, "EU AI Act Art. 18: technical documentation kept for 10 "
                                      "years after the system is placed on the market or put "
                                      "into service"),
    "logs": (6, "EU AI Act Art. 19 and 26(6): automatically generated logs kept for at least "
                "6 months"),
}
"""Retention classes: months to keep, and the provision that sets the default."""
DEFAULT_RETENTION = "technical-documentation"

NON_CLAIMS = [
    "Model quality, accuracy or fitness for purpose: the report shows how the run drew its "
    "randomness and whether a replay reproduced those draws, not that the model is good.",
    "Fairness, bias or representativeness of the data or of the model.",
    "Randomness outside the recorded draw points: GPU kernel nondeterminism, thread scheduling, "
    "parallel reductions in a varying order, random generators that libraries seed themselves.",
    "Data content beyond its digest: a dataset is identified by the digest of its arrays; its "
    "correctness, provenance before registration, lawfulness or labelling quality are not "
    "assessed.",
    "Training results: metrics and checkpoint digests are recorded as the training code "
    "reported them; replay re-executes the draws, not training (unless replay --full ran).",
    "Regulatory conformity: the report is evidence for documentation and record-keeping "
    "obligations; it does not by itself establish conformity with any framework, and none of "
    "the frameworks cited requires bit-exact reproducibility.",
    "Identity of persons: user and host names are as the operating system reported them; only "
    "a signature binds the report to the holder of a key.",
]

_EU = "EU AI Act (Regulation 2024/1689)"
_MRM = "US model risk management (SR 11-7, superseded by SR 26-2)"
_GMLP = "FDA Good Machine Learning Practice"
_P11 = "21 CFR Part 11"
_ISO = "ISO/IEC 42001 Annex A"
_NIST = "NIST AI RMF"

CROSSWALK = [
    ("R0", "Envelope", [(_EU, "Annex IV 2(g)", "test reports dated (and signed, see R13)"),
                        (_P11, "§11.10(b)", "the same record in human-readable (HTML, Markdown) "
                                            "and electronic (JSON) form"),
                        (_P11, "§11.10(e)", "computer-generated, time-stamped")]),
    ("R1", "Run identity", [(_EU, "Annex IV 1(a)", "intended purpose and version of the model"),
                            (_MRM, "documentation", "what was trained, for parties unfamiliar "
                                                    "with the model")]),
    ("R2", "Who and when", [(_EU, "Annex IV 2(c)", "computational resources used to train"),
                            (_P11, "§11.10(e)", "time-stamped record of the run")]),
    ("R3", "Code", [(_EU, "Annex IV 1(c)", "software versions"),
                    (_MRM, "documentation", "logged and auditable code versions and changes"),
                    (_GMLP, "principle 2", "good software engineering practices")]),
    ("R4", "Environment", [(_EU, "Annex IV 1(c)", "software and library versions"),
                           (_EU, "Annex IV 2(c)", "computational resources"),
                           (_GMLP, "principle 2", "engineering and data management")]),
    ("R5", "Data", [(_EU, "Annex IV 2(d)", "training data provenance"),
                    (_EU, "Art. 10(2)", "data governance"),
                    (_ISO, "A.7.5", "data provenance"),
                    (_GMLP, "principle 4", "training data independent of test data")]),
    ("R6", "Configuration", [(_MRM, "documentation", "settings detailed enough to re-create "
                                                     "the run"),
                             (_NIST, "MEASURE 2.1", "tools and settings documented")]),
    ("R7", "Randomness inventory", [(_EU, "Art. 12", "automatic recording of events"),
                                    (_ISO, "A.6.2.8", "event logs"),
                                    (_P11, "§11.10(e)", "computer-generated audit trail")]),
    ("R8", "Replay certificate", [(_EU, "Annex IV 2(g)", "test logs and reports"),
                                  (_MRM, "validation", "effective challenge by an independent "
                                                       "replay"),
                                  (_NIST, "MEASURE 1.3", "independent assessors"),
                                  (_NIST, "MEASURE 2.13", "effectiveness of the test process "
                                                          "documented")]),
    ("R9", "Integrity", [(_EU, "Art. 12", "integrity of the recorded events"),
                         (_P11, "§11.10(e)", "audit trail that never obscures earlier records"),
                         (_ISO, "A.6.2.8", "event logs protected from change")]),
    ("R10", "History", [(_P11, "§11.10(e)", "earlier replays and reports kept, not overwritten"),
                        (_EU, "Annex IV 1(a)", "version history")]),
    ("R11", "Retention", [(_EU, "Art. 18", "technical documentation kept 10 years"),
                          (_EU, "Art. 19, 26(6)", "logs kept at least 6 months")]),
    ("R12", "Limitations and non-claims", [(_MRM, "documentation", "limitations and "
                                                                   "assumptions stated"),
                                           (_NIST, "MEASURE 2.13", "limits of the evaluation "
                                                                   "documented")]),
    ("R13", "Sign-off", [(_EU, "Annex IV 2(g)", "signed by the responsible persons")]),
]


def r10_history(facts: RunFacts, schema_version: int) -> dict[str, Any]:
    """R10: replays and report exports recorded for this experiment, and schema migrations."""
    events = []
    for body in facts.audit:
        params = body.get("params")
        if not isinstance(params, dict):
            params = {}
        kind = body.get("kind")  # an edited body can hold anything (verification names it)
        entry: dict[str, Any] = {
            "seq": recorded_int(body.get("seq")),
            "kind": (kind if isinstance(kind, str)
                     else canonical_json(json_view(kind)).decode("utf-8")),
            "at": rfc3339(body.get("t"))}
        if kind == REPLAY_RECORDED:
            entry.update(by=recorded_text(params.get("replayed_by")),
                         outcome=recorded_verdict(params.get("verdict")),
                         detail=f"{_shown_count(params.get('compared_total'))} draws re-executed, "
                                f"{_shown_count(params.get('mismatched'))} mismatched")
        elif kind == REPORT_EXPORTED:
            formats = params.get("formats")
            shown = (", ".join(map(str, formats)) if isinstance(formats, list)
                     else "" if formats is None else str(formats))
            entry.update(by=recorded_text(params.get("generated_by")),
                         outcome=recorded_text(params.get("replay_verdict")),
                         detail=f"report {recorded_text(params.get('report_id')) or '?'} "
                                f"({shown}"
                                f"{', signed' if params.get('signed') else ''})")
        events.append(entry)  # every value is plain JSON already
    return {"title": "History", "events": events, "ledger_schema_version": schema_version,
            "migrations": [],
            "migrations_note": f"schema version {schema_version}: no migration has been applied "
                               f"(the schema records its version; newer versions are refused)"}


def _shown_count(value: Any) -> str:
    """A recorded count as R10 quotes it: ``?`` when the record holds no count."""
    count = recorded_int(value)
    return "?" if count is None else str(count)


def add_months(start: date, months: int) -> date:
    """``start`` plus whole months (the last day of the month when the day does not exist);
    BadInputError when that date is outside the years a date can hold (1–9999)."""
    years, month = divmod(start.month - 1 + months, 12)
    year, month = start.year + years, month + 1
    if not MINYEAR <= year <= MAXYEAR:
        raise BadInputError(f"the retention period ({months} months from {start.isoformat()}) "
                            f"ends outside the years a date can hold ({MINYEAR}–{MAXYEAR})")
    return date(year, month, min(start.day, monthrange(year, month)[1]))


def r11_retention(generated: date, retention_class: str, months: int | None,
                  start: date | None) -> dict[str, Any]:
    """R11: retention class, its basis, and the earliest deletion date (BadInputError for a
    negative period)."""
    default_months, basis = RETENTION_CLASSES.get(retention_class, (120, "set by the operator"))
    keep = months if months is not None else default_months
    if keep < 0:
        raise BadInputError(f"a retention period cannot be negative (got {keep} months)")
    start = start or generated
    return {"title": "Retention", "class": retention_class, "retain_months": keep,
            "retain_from": start.isoformat(), "earliest_deletion": add_months(start, keep)
            .isoformat(), "basis": basis if months is None or months == default_months
            else f"set by the operator ({keep} months); default: {basis}",
            "note": "counted from the report's date unless a start date was given; the legal "
                    "period may start later (e.g. when the system is placed on the market)"}


def r12_limitations(alerts: list[str]) -> dict[str, Any]:
    """R12: what is not certified, in general and for this run."""
    return {"title": "Limitations and non-claims", "non_claims": NON_CLAIMS,
            "this_run": alerts}


def r13_signoff(responsible: str | None, role: str | None, generated_at: str,
                signature: dict[str, Any]) -> dict[str, Any]:
    """R13: responsible person and role, date, signature method (filled by the signer)."""
    persons = [{"name": responsible, "role": role}] if responsible else []
    method = ("Ed25519 detached signature over the canonical JSON bytes of report.json"
              if signature.get("signed") else "unsigned")
    return {"title": "Sign-off", "responsible": persons, "date": generated_at[:10],
            "signature_method": method, "public_key_sha256": signature.get("public_key_sha256")}


def r14_crosswalk() -> dict[str, Any]:
    """R14: which section gives evidence for which framework provision."""
    return {"title": "Crosswalk",
            "note": "Where each section gives evidence for the frameworks' documentation and "
                    "record-keeping provisions. Not a legal assessment; no framework cited "
                    "requires bit-exact reproducibility.",
            "rows": [{"section": section, "title": title,
                      "references": [{"framework": framework, "provision": provision,
                                      "evidence": evidence}
                                     for framework, provision, evidence in references]}
                     for section, title, references in CROSSWALK]}
