"""The report as Markdown, for reviews and tickets: the summary, the crosswalk, then R0–R13.

Values from the ledger are escaped so that they can neither break a table nor inject markup:
HTML-special characters become entities and Markdown's inline punctuation (emphasis, code,
links, tables) is backslash-escaped, and so is what starts a bare autolink (``https://``,
``www.``, ``@``).
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from ledger.text import escape_unprintable
from ledger.verify import INTACT_NOTE
from report.metrics import unplotted_note
from report.sections import resumed_rows

_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
"""Markdown's inline punctuation; values never start a line, so block markers (#, -, >) are safe."""
_AUTOLINK = re.compile(r"(:(?=//)|@|(?<=[0-9A-Za-z])\.(?=[A-Za-z]))")
"""What starts an autolink without any markup in GitHub-flavoured Markdown and linkify
renderers — ``https://``, ``www.``, an e-mail address, a bare domain (``mk.py``) — escaped so
that a name in the ledger cannot become a live link."""


def m(value: Any) -> str:
    """A value as Markdown-safe inline text (None as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = " ".join(str(value).split())
    text = escape_unprintable(text)  # a terminal escape or bidi control, shown as text
    return _AUTOLINK.sub(r"\\\1", _SPECIAL.sub(r"\\\1", escape(text, quote=False)))


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(m(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _pairs(section: dict[str, Any], keys: list[str]) -> list[str]:
    return _table(["field", "value"], [[key, section.get(key)] for key in keys])


def render_markdown(report: dict[str, Any]) -> str:
    """The report as one Markdown document: the summary (verdicts, the headline — which says
    when R8's verdict is quoted from a recorded replay rather than re-run — the run head and
    the alerts), the crosswalk, then R0–R13."""
    s, r0 = report["summary"], report["R0"]
    out = [f"# Compliance report — {m(s['exp'])}", "",
           f"Report {m(r0['report_id'])} · generated {m(r0['generated_at'])} by "
           f"{m(r0['generated_by'])} · schema {m(report['schema'])}", "",
           f"**Replay verdict: {m(s['replay'])}** · **Ledger integrity: {m(s['integrity'])}** · "
           f"**Run: {m(s['run_status'])}, {'complete' if s['complete'] else 'INCOMPLETE'}**", "",
           f"Summary: {m(s['headline'])}", "",  # a quoted verdict says so here
           f"Run head: {m(s['run_head'] or 'none — the run is incomplete')}", ""]
    for index, alert in enumerate(s["alerts"]):  # one quote, each alert its own paragraph:
        out += ([">"] if index else []) + [f"> **{m(alert)}**"]  # "> " lines run together
    out += [""] if s["alerts"] else []
    r14 = report["R14"]
    out += ["## R14 Crosswalk", "", m(r14["note"]), ""]
    out += _table(["section", "framework", "provision", "evidence given"],
                  [[f"{row['section']} {row['title']}", ref["framework"], ref["provision"],
                    ref["evidence"]] for row in r14["rows"] for ref in row["references"]])
    out += ["## R0 Envelope", ""] + _pairs(r0, ["report_id", "schema", "generator",
                                                 "generated_at", "generated_by", "ledger"])
    if r0["files"]:  # only those written before it: no file can hold its own digest
        out += ["Files written before this one (SHA-256):", ""]
        out += _table(["file", "role", "sha256"],
                      [[f["name"], f["role"], f["sha256"]] for f in r0["files"]])
    r1 = report["R1"]
    out += ["## R1 Run identity", ""] + _pairs(r1, ["exp", "name", "model", "purpose", "parent",
                                                    "parent_in_ledger", "status", "complete", "run_head", "error"])
    out += [f"Final checkpoints ({m(r1['checkpoints']['recorded'])} recorded):", ""]
    out += _table(["checkpoint", "epoch", "state digest"],
                  [[c["name"], c["epoch"], c["digest"]] for c in r1["checkpoints"]["final"]])
    out += _table(["metric", "values", "not plotted (no finite number)", "last", "last epoch"],
                  [[x["name"], x["count"], x.get("not_plotted"), x["last"], x["last_epoch"]]
                   for x in r1["metrics"]])
    if r1["metrics_not_plotted"]:
        out += [m(unplotted_note(r1["metrics_not_plotted"])), ""]
    out += ["## R2 Who and when", ""] + _pairs(report["R2"], ["started_by", "host", "pid",
                                                              "started_at", "ended_at",
                                                              "duration_s", "suspended_s",
                                                              "active_s", "resources", "note"])
    resumed = report["R2"].get("resumes", [])  # absent from reports made before it was added
    if resumed:
        out += ["Sessions that resumed the run:", ""]
        out += _table(["seq", "at", "by", "host", "pid", "suspended before (s)"],
                      [[r["seq"], r["at"], r.get("by"), r["host"], r["pid"],
                        r.get("suspended_s")] for r in resumed])
    out += ["## R3 Code", ""] + _pairs(report["R3"], ["vcs", "commit", "dirty", "diff_digest",
                                                      "untracked", "distribution", "entrypoint",
                                                      "command_line",
                                                      "configuration_digest"])
    out += _resumes(report["R3"], "the code version above")
    r4 = report["R4"]
    out += ["## R4 Environment", ""] + _pairs(r4, ["recorded", "python", "numpy", "blas_threads",
                                                   "platform", "determinism_env"])
    out += _table(["package", "version"], [[k, v] for k, v in r4["packages"].items()])
    out += _resumes(r4, "the environment above")
    r5 = report["R5"]
    out += ["## R5 Data", ""]
    out += _table(["dataset", "role", "source", "content digest", "records"],
                  [[d["name"], d["role"], d["source"]["path"], d["digest"], d["records"]]
                   for d in r5["datasets"]])
    out += [f"Train/test independence: **{m(r5['independence']['status'])}** — "
            f"{m(r5['independence']['reason'])}", ""]
    if r5["independence"]["pairs"]:  # the overlap itself (expected 0), as JSON and HTML give it
        out += _table(["training dataset", "test dataset", "overlap", "test records"],
                      [[p["train"], p["test"], p["overlap"], p["test_records"]]
                       for p in r5["independence"]["pairs"]])
    out += ["## R6 Configuration", ""] + _pairs(report["R6"], ["hyperparameters", "digest",
                                                               "digest_rule"])
    r7 = report["R7"]
    out += ["## R7 Randomness inventory", ""] + _pairs(r7, ["root_seed", "root_seed_hex",
                                                            "root_seed_source", "scheme",
                                                            "derivation", "categories",
                                                            "counts_by_kind", "events"])
    out += _table(["seed path", "kind", "draws", "seed"],
                  [["/".join(map(str, n["path"])), n["kind"], n["count"], n["seed"]]
                   for n in r7["seed_tree"]["nodes"][:60]])
    if len(r7["seed_tree"]["nodes"]) > 60:
        out += [f"… {len(r7['seed_tree']['nodes']) - 60} more paths in the JSON report.", ""]
    appendix = r7["appendix"]
    out += [f"Per-event appendix: {m(appendix['file'])} ({m(appendix['lines'])} lines, sha256 "
            f"{m(appendix['sha256'])})" if appendix else "Per-event appendix: not written", ""]
    r8 = report["R8"]
    out += ["## R8 Replay certificate", "", f"**Verdict: {m(r8['verdict'])}**", ""]
    out += _pairs(r8, ["source", "reason", "replayed_by", "started_at", "finished_at",
                       "certified_head", "head_is_current", "counts", "first_divergence",
                       "environment_differences", "environment", "policy", "plugins"])
    r9 = report["R9"]
    verification = r9["verification"]
    out += ["## R9 Integrity", "",
            f"**Full chain verification: {'VERIFIED' if verification['ok'] else 'FAILED'}** — "
            f"{m(verification['events'])} events in {m(verification['chains'])} chains"
            + ("" if verification["ok"] or verification.get("intact") is None else
               f", {m(verification['intact'])} {INTACT_NOTE}"), ""]
    out += [f"- {m(f['stream'])} seq {m(f['seq'])}: {m(f['problem'])}"
            for f in verification["findings"]] + ([""] if verification["findings"] else [])
    if r9["undecodable_events"]:  # the summary counts them; here is which
        out += ["Events that could not be decoded:", ""]
        out += _table(["stream", "seq", "kind"], [[u["stream"], u["seq"], u["kind"]]
                                                  for u in r9["undecodable_events"]])
    out += _table(["stream", "events", "head"],
                  [[x["stream"], x["count"], x["head"]] for x in r9["streams"]])
    out += _table(["append-only control", "in force", "detail"],
                  [[c["control"], c["in_force"], c["detail"]] for c in r9["append_only_controls"]])
    out += _pairs(r9, ["hash_algorithm", "event_hash_rule", "run_head", "signature"])
    r10 = report["R10"]
    out += ["## R10 History", ""] + _pairs(r10, ["ledger_schema_version", "migrations",
                                                 "migrations_note"])
    out += _table(["seq", "kind", "at", "by", "outcome", "detail"],
                  [[h["seq"], h["kind"], h["at"], h.get("by"), h.get("outcome"), h.get("detail")]
                   for h in report["R10"]["events"]])
    out += ["## R11 Retention", ""] + _pairs(report["R11"], ["class", "retain_months",
                                                             "retain_from", "earliest_deletion",
                                                             "basis", "note"])
    r12 = report["R12"]
    out += ["## R12 Limitations and non-claims", ""] + [f"- {m(x)}" for x in r12["non_claims"]]
    out += [""] + [f"- **{m(x)}**" for x in r12["this_run"]] + [""]
    r13 = report["R13"]
    out += ["## R13 Sign-off", ""]
    out += _table(["responsible person", "role"], [[p["name"], p["role"]]
                                                   for p in r13["responsible"]])
    out += _pairs(r13, ["date", "signature_method", "public_key_sha256"])
    return "\n".join(out).rstrip() + "\n"


def _resumes(section: dict[str, Any], against: str) -> list[str]:
    """R3's or R4's table of how each session that resumed the run differed from the section's
    fields (none when never resumed; absent from reports made before it was added)."""
    if not section.get("resumes"):
        return []
    return [f"Sessions that resumed the run, against {against}:", ""] + _table(
        ["seq", "at", "difference", "recorded", "resumed"],
        [row for resume in section["resumes"] for row in resumed_rows(resume)])
