"""The report model: one JSON-ready document with sections R0–R14 (``REPORT.md``).

:func:`build_report` reads the ledger once for the quoted events (``facts``), once in a streaming
pass over every event (``scan``: counts, seed tree, the NDJSON appendix), verifies every chain —
in a separate process for large runs, at the same time as the pass — and, with ``replay=True``,
replays the run first. Every renderer (JSON, HTML, Markdown, attestations) works from this
document alone. R0's list of emitted files is filled in by :mod:`report.export`.
"""

from __future__ import annotations

import multiprocessing
import secrets
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, BinaryIO

from ledger import __version__
from ledger.environment import current_user, recorded_distribution
from ledger.processes import exit_with_parent, pool_start_method
from ledger.recorded_differences import LIBRARY_KEYS
from ledger.text import escape_unprintable
from ledger.store.store import ExperimentRow, Store
from ledger.verify import VerifyReport, verify
from replay.causes import shown_version
from replay.engine import default_data_dir_of
from report.facts import RunFacts, gather
from report.governance import (DEFAULT_RETENTION, r10_history, r11_retention, r12_limitations,
                               r13_signoff, r14_crosswalk)
from report.integrity import r9_integrity
from report.replay_evidence import (FAILED, INCONCLUSIVE, NOT_REPLAYED, PASSED, ReplayOutcome,
                                    r8_replay, run_replay)
from report.scan import ScanResult, scan_run
from report.sections import (r1_identity, r2_who_and_when, r3_code, r4_environment, r5_data,
                             r6_configuration, r7_randomness, run_status)

SCHEMA_ID = "ledger/report/v1"
"""The report format and version; ``schemas/report.v1.json`` describes it."""
GENERATOR = "reproducibility-ledger"
SECTION_IDS = tuple(f"R{number}" for number in range(15))
PARALLEL_VERIFY_EVENTS = 100_000
"""From this many events, verification runs in its own process beside the pass over events."""


@dataclass(slots=True)
class ReportOptions:
    """How to build a report. Defaults suit ``ledger report EXP``."""

    replay: bool = False
    jobs: int = 1
    trusted: Sequence[str] = ()
    data_dir: str | None = None
    record: bool = True
    take_over: bool = False
    """Take the audit stream from a writer known to be gone (``--take-over``)."""
    generated_by: str | None = None
    responsible: str | None = None
    role: str | None = None
    retention_class: str = DEFAULT_RETENTION
    retain_months: int | None = None
    retain_from: date | None = None
    full_appendix: bool = False
    report_id: str | None = None
    now: datetime | None = None
    signature: dict[str, Any] = field(default_factory=lambda: {"signed": False})
    """R9's signature entry; :mod:`report.export` fills it when a key is given."""


def new_report_id() -> str:
    """A fresh report id: ``rpt-`` and 16 random hex digits."""
    return "rpt-" + secrets.token_hex(8)


def _verify_in_process(url: str, exp: str) -> VerifyReport:
    with Store.open(url) as store:
        return verify(store, exp)


def _start_verification(store: Store, exp: str, events: int) -> Callable[[], VerifyReport]:
    """Start verifying ``exp``: in another process for large runs; returns how to get the result."""
    if events < PARALLEL_VERIFY_EVENTS or not store.shareable:
        return lambda: verify(store, exp)
    pool = ProcessPoolExecutor(max_workers=1,
                               mp_context=multiprocessing.get_context(pool_start_method()),
                               initializer=exit_with_parent)
    future = pool.submit(_verify_in_process, store.url_with_secrets, exp)

    def result() -> VerifyReport:
        try:
            return future.result()
        finally:
            pool.shutdown(wait=True)
    return result


def build_report(store: Store, exp: str, options: ReportOptions | None = None, *,
                 appendix: BinaryIO | None = None, appendix_name: str | None = None,
                 row: ExperimentRow | None = None) -> dict[str, Any]:
    """Build the report of ``exp`` (UnknownExperimentError when the ledger has no such run).

    Writes the per-event appendix to ``appendix`` when given (named ``appendix_name`` in R7).
    A run that is incomplete, failed, tampered or diverged still gets its report, saying so.
    ``row`` is ``store.experiment(exp)`` when the caller has it already.
    """
    options = options or ReportOptions()
    row = row if row is not None and row.exp == exp else store.experiment(exp)
    _check_retention(options)  # before a replay runs and records its certificate
    data_dir = options.data_dir or default_data_dir_of(store)
    outcome = None
    if options.replay:
        outcome = run_replay(store, exp, jobs=options.jobs, trusted=options.trusted,
                             data_dir=data_dir, record=options.record,
                             take_over=options.take_over)
    heads = store.stream_heads(exp)
    verification = _start_verification(store, exp, sum(h.count for h in heads.values()))
    try:
        facts = gather(store, row, heads)
        scan = scan_run(store, exp, heads, appendix=appendix, bodies=options.full_appendix)
    finally:
        verified = verification()
    return assemble(store, facts, scan, verified, outcome, options, data_dir, appendix_name)


def _check_retention(options: ReportOptions) -> None:
    """BadInputError when R11 cannot be built from ``options`` (a negative period, or one
    that ends past 9999-12-31)."""
    now = (options.now or datetime.now(UTC)).astimezone(UTC)
    r11_retention(now.date(), options.retention_class, options.retain_months,
                  options.retain_from)


def assemble(store: Store, facts: RunFacts, scan: ScanResult, verified: VerifyReport,
             outcome: ReplayOutcome | None, options: ReportOptions, data_dir: Any,
             appendix_name: str | None) -> dict[str, Any]:
    """Put the sections together, with the summary that says what needs attention."""
    now = (options.now or datetime.now(UTC)).astimezone(UTC)
    generated_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    schema_version = store.schema_version
    sections: dict[str, Any] = {
        "R1": r1_identity(facts), "R2": r2_who_and_when(facts), "R3": r3_code(facts),
        "R4": r4_environment(facts), "R5": r5_data(facts, data_dir),
        "R6": r6_configuration(facts), "R7": r7_randomness(facts, scan, appendix_name),
        "R8": r8_replay(facts, outcome),
        "R9": r9_integrity(store, facts, verified, options.signature),
        "R10": r10_history(facts, schema_version),
        "R11": r11_retention(now.date(), options.retention_class, options.retain_months,
                             options.retain_from)}
    alerts = _alerts(facts, sections, verified)
    sections["R12"] = r12_limitations(alerts)
    sections["R13"] = r13_signoff(options.responsible, options.role, generated_at,
                                  options.signature)
    sections["R14"] = r14_crosswalk()
    sections["R0"] = {
        "title": "Envelope", "schema": SCHEMA_ID,
        "report_id": options.report_id or new_report_id(),
        "generator": {"name": GENERATOR, "version": __version__},
        "generated_at": generated_at,
        "generated_by": (options.generated_by
                         or f"{current_user() or 'unknown'}@{socket.gethostname()}"),
        "ledger": {"url": store.url, "backend": store.backend, "schema_version": schema_version},
        "files": []}
    return {"schema": SCHEMA_ID, "summary": _summary(facts, sections, verified, alerts),
            **{key: sections[key] for key in SECTION_IDS}}


def _alerts(facts: RunFacts, sections: dict[str, Any], verified: VerifyReport) -> list[str]:
    alerts = []
    status = run_status(facts)
    if facts.run_head is None:
        alerts.append("INCOMPLETE RUN: no run_completed event, so the run has no head; events "
                      "cut from its end could not be detected")
    if status == "failed":
        error = sections["R1"].get("error")
        alerts.append("RUN FAILED: run_completed records status failed"
                      + (f" ({error})" if error else ""))
    if not verified.ok:
        alerts.append(f"INTEGRITY CHECK FAILED: {len(verified.findings)} finding(s); first: "
                      f"{verified.findings[0].describe()}")
    replay = sections["R8"]
    if replay["verdict"] == FAILED:
        reason = replay["reason"] or "the recorded verdict names no divergence that can be quoted"
        alerts.append(f"REPLAY FAILED: {reason}")
    elif replay["verdict"] == INCONCLUSIVE:
        alerts.append(f"REPLAY INCONCLUSIVE: {replay['reason']}")
    elif replay["verdict"] == NOT_REPLAYED:
        alerts.append("NOT REPLAYED: no replay was run or recorded for this experiment")
    if replay["verdict"] == PASSED and _quoted(replay) and not verified.ok:
        alerts.append(UNTRUSTED_PASS_ALERT)
    counts = replay.get("counts")
    if replay["verdict"] == PASSED and isinstance(counts, dict) and counts.get("compared") == 0:
        alerts.append(NOTHING_COMPARED_ALERT)
    if replay["verdict"] == PASSED and replay["head_is_current"] is False:
        alerts.append("the recorded replay certified another head than the run's current head"
                      if replay["certified_head"] or facts.run_head is not None else
                      "the recorded replay read the incomplete run before it went on: the "
                      "events recorded since were not replayed")
    if replay["environment_differences"]:
        alerts.append(_environment_alert(replay["environment_differences"]))
    resumed_alert = _resumed_alert(sections["R3"], sections["R4"])
    if resumed_alert:
        alerts.append(resumed_alert)
    if sections["R5"]["independence"]["status"] == "failed":
        alerts.append("DATA OVERLAP: records of a test dataset also occur in a training dataset")
    for control in sections["R9"]["append_only_controls"]:
        if not control["in_force"] and not control["control"].startswith("hash chain"):
            alerts.append(f"append-only control not in force: {control['control']}")
    if facts.undecodable:
        alerts.append(f"{len(facts.undecodable)} event(s) could not be decoded")
    code = sections["R3"]
    if code["dirty"]:
        alerts.append(_uncommitted_alert(code))
    if code["vcs"] is None:
        alerts.append(_no_commit_alert(facts.params.get("code")))
    if not sections["R7"]["scheme_known"]:
        alerts.append(f"unknown seed derivation scheme {sections['R7']['scheme']!r}")
    return alerts


def _no_commit_alert(code: Any) -> str:
    """The alert of a run that recorded no commit: no code version at all, or only the release
    of the distribution that installed its code (a name and version, which no digest ties to
    the code that ran)."""
    distribution = recorded_distribution(code)
    if distribution is None:
        return "no code version recorded (not run from a git checkout)"
    name, version = distribution
    return escape_unprintable(
        f"no commit recorded: the code was installed from the distribution {name} "
        f"{version}, a release name no digest ties to the code that ran")


UNTRUSTED_PASS_ALERT = ("RECORDED PASS NOT TRUSTED: the ledger fails verification, so the "
                        "recorded PASSED speaks for the run as that replay read it, not for the "
                        "rows stored now (a replay refuses a ledger that fails verification)")
"""The alert of a report quoting a recorded PASSED from a ledger that no longer verifies."""


NOTHING_COMPARED_ALERT = ("the replay re-executed no draw: the run records none, so its PASSED "
                          "certifies no output, only that the ledger verifies")
"""The alert of a PASSED replay that compared nothing (a run with no draws): not a false pass,
but no evidence that the run's outputs reproduce either."""


def _environment_alert(differences: list[Any]) -> str:
    """Which library versions or thread counts the replay ran with, against the recorded ones
    (the first three, by key): a count alone would not tell a numpy upgrade from a thread
    setting."""
    shown = []
    for entry in differences[:3]:
        if isinstance(entry, dict):
            shown.append(f"{entry.get('key')} {shown_version(entry.get('recorded'))} "
                         f"recorded, {shown_version(entry.get('current'))} at replay")
    more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
    return f"the replay environment differs from the recorded one: {'; '.join(shown)}{more}"


def _resumed_alert(code: dict[str, Any], environment: dict[str, Any]) -> str | None:
    """An alert naming what the sessions that resumed the run ran with other than the run was
    created with — code, library versions (the first three, each with the resumes that had
    it): the run's later events were recorded by that code, and R3 and R4 head their sections
    with the first session's."""
    resumes_by_change: dict[str, list[str]] = {}
    for section, where in ((code, "code"), (environment, "environment")):
        for resume in section.get("resumes", []):
            for entry in resume["differences"] or []:
                if where == "code" or str(entry["key"]).startswith(LIBRARY_KEYS):
                    change = (f"{entry['key']} {shown_version(entry['recorded'])} recorded, "
                              f"{shown_version(entry['resumed'])} at the resume of seq")
                    resumes_by_change.setdefault(change, []).append(str(resume["seq"]))
    if not resumes_by_change:
        return None
    shown = [f"{change} {', '.join(seqs)}" for change, seqs in resumes_by_change.items()]
    more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
    return (f"RESUMED WITH OTHER CODE OR LIBRARIES: {'; '.join(shown[:3])}{more} (see R3 and "
            f"R4)")


def _uncommitted_alert(code: dict[str, Any]) -> str:
    """What a dirty checkout left on record: a digest of changes to tracked files, if any;
    untracked files are only counted, never digested."""
    if code.get("diff_digest"):
        return ("the code had uncommitted changes: their diff digest is recorded, not their "
                "content")
    return ("the code had uncommitted changes (untracked files only): nothing but their count "
            "is recorded")


def _quoted(replay: dict[str, Any]) -> str:
    """How the headline marks a verdict this report did not produce: it is quoted from a
    ``replay_recorded`` event — evidence of who claims what, not a re-execution."""
    if replay["source"] != "recorded in the audit stream":
        return ""
    return (f" (as recorded by {replay['replayed_by'] or 'an unnamed replayer'}"
            f"{' at ' + replay['finished_at'] if replay['finished_at'] else ''}; not re-run "
            f"by this report: --replay re-runs it)")


def _summary(facts: RunFacts, sections: dict[str, Any], verified: VerifyReport,
             alerts: list[str]) -> dict[str, Any]:
    status = run_status(facts)
    replay = sections["R8"]["verdict"]
    integrity = "VERIFIED" if verified.ok else "FAILED"
    completeness = "complete" if facts.run_head is not None else "INCOMPLETE"
    untrusted = (" — quoted from a ledger that fails verification"
                 if UNTRUSTED_PASS_ALERT in alerts else "")
    headline = (f"{facts.row.exp}: run {status}, {completeness}; ledger {integrity}; replay "
                f"{replay.replace('_', ' ')}{_quoted(sections['R8'])}{untrusted}")
    return {"exp": facts.row.exp, "name": facts.row.name, "run_status": status,
            "complete": facts.run_head is not None,
            "run_head": facts.run_head.hex() if facts.run_head else None,
            "integrity": integrity, "findings": len(verified.findings), "replay": replay,
            "attention": bool(alerts), "alerts": alerts, "headline": headline}
