"""The human-readable copy: one self-contained HTML file.

No scripts, fonts, images or links outside the file (a Content-Security-Policy of
``default-src 'none'`` says so to the browser as well); every value from the ledger passes through
:func:`html.escape`; metric curves are inline SVG; the seed derivation tree is folded so that a
run of a million draws shows a page, not a million lines; ``@media print`` makes it print cleanly.
The summary and the crosswalk (R14, which auditors read first) come before sections R0–R13.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ledger.text import escape_unprintable
from ledger.verify import INTACT_NOTE
from report.metrics import unplotted_note
from report.sections import resumed_rows
from report.seedtree import ELLIPSIS
from report.svg import metric_chart

CSP = "default-src 'none'; style-src 'unsafe-inline'"
MAX_DEPTH = 32
"""Labels of a seed path shown as levels of the tree; a deeper path is cut at an ellipsis (a
forged run's paths can be thousands of labels deep, and each level is a nested list)."""
MAX_CHILDREN = 24
"""Children of one tree node shown before the middle ones are summarised."""
_ORDER = ("R14", "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11",
          "R12", "R13")

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1000px;padding:24px;color:#1b1b1b;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:4px;
margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.kv>tbody>tr>th,table.kv>tr>th{width:28%}td.num{text-align:right}
code,.mono{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:12px;
word-break:break-all}
.banner{border:3px solid #2e7d32;background:#eef7ee;padding:12px 16px;margin:16px 0}
.banner.attention{border-color:#b71c1c;background:#fdecea}
.verdict{font-weight:700;font-size:16px}.PASSED,.VERIFIED{color:#1b5e20}
.FAILED,.INCOMPLETE{color:#b71c1c}.INCONCLUSIVE,.NOT_REPLAYED{color:#8a5300}
ul.alerts li{font-weight:600}.muted{color:#666}
nav ol{columns:3;font-size:13px}
ul.tree,ul.tree ul{list-style:none;margin:0;padding-left:18px;border-left:1px dotted #bbb}
ul.tree{padding-left:4px;border:0}ul.tree li{margin:1px 0}
svg.chart{display:block;margin:4px 0 12px;max-width:100%;height:auto}
svg.chart .axis{stroke:#555;stroke-width:1}svg.chart .curve{fill:none;stroke:#1f4e9c;stroke-width:2}
svg.chart .dots circle{fill:#1f4e9c}svg.chart text{font-size:11px;fill:#333}
footer{margin-top:32px;font-size:12px;color:#666}
@media print{body{max-width:none;padding:0;font-size:11pt}nav{display:none}
h2{break-after:avoid}table,svg.chart,.banner,ul.tree li{break-inside:avoid}
.banner{background:none}a{color:inherit;text-decoration:none}
@page{margin:18mm 14mm}}
"""


def e(value: Any) -> str:
    """Escape any value for HTML text or an attribute (None shows as a dash)."""
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    # Bidi controls would reorder the page around them: shown as text.
    return escape(escape_unprintable(str(value), keep="\n\t"), quote=True)


def _code(value: Any) -> str:
    return e(value) if value is None else f"<code>{e(value)}</code>"


def _value(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: nested maps as tables, lists as lists, scalars escaped."""
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">(none)</span>'
        if depth > 4:
            return _code(value)
        rows = "".join(f"<tr><th>{e(key)}</th><td>{_value(item, depth + 1)}</td></tr>"
                       for key, item in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list):
        if not value:
            return '<span class="muted">(none)</span>'
        if all(not isinstance(item, (dict, list)) for item in value):
            return ", ".join(_code(item) for item in value)
        return "<ul>" + "".join(f"<li>{_value(item, depth + 1)}</li>" for item in value) + "</ul>"
    if isinstance(value, str) and len(value) >= 32 and all(c in "0123456789abcdef" for c in value):
        return _code(value)
    return e(value)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{e(label)}</th><td>{_value(value)}</td></tr>"
                                          for label, value in pairs) + "</table>"


def _section(report: dict[str, Any], key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{key} {e(report[key]["title"])}</h2>{body}</section>'


def _summary(report: dict[str, Any]) -> str:
    summary = report["summary"]
    state = "attention" if summary["attention"] else "ok"
    alerts = "".join(f"<li>{e(alert)}</li>" for alert in summary["alerts"])
    completeness = "complete" if summary["complete"] else "INCOMPLETE"
    return (f'<section id="summary" class="banner {state}">'
            f'<p class="verdict">Replay verdict: <span class="{e(summary["replay"])}">'
            f'{e(summary["replay"].replace("_", " "))}</span> · Ledger integrity: '
            f'<span class="{e(summary["integrity"])}">{e(summary["integrity"])}</span> · Run: '
            f'{e(summary["run_status"])}, <span class="{e(completeness)}">{e(completeness)}</span>'
            f'</p><p>{e(summary["headline"])}</p>'
            f'<p>Run head: {_code(summary["run_head"] or "none — the run is incomplete")}</p>'
            + (f'<ul class="alerts">{alerts}</ul>' if alerts else "") + "</section>")


def _r0(report: dict[str, Any]) -> str:
    r0 = report["R0"]
    files = "".join(f"<tr><td>{e(f['name'])}</td><td>{e(f['role'])}</td><td>{_code(f['sha256'])}"
                    f"</td></tr>" for f in r0["files"])
    return _rows([("Report id", r0["report_id"]), ("Schema", r0["schema"]),
                  ("Generator", f"{r0['generator']['name']} {r0['generator']['version']}"),
                  ("Generated at (UTC)", r0["generated_at"]), ("Generated by", r0["generated_by"]),
                  ("Ledger", r0["ledger"])]) + (
        "<h3>Files written before this one (SHA-256)</h3><table><tr><th>file</th><th>role</th>"
        f"<th>sha256</th></tr>{files}</table>" if files else "")


def _parent(r1: dict[str, Any]) -> str | None:
    """R1's parent run, and whether the ledger holds it (not said in reports made before)."""
    found = r1.get("parent_in_ledger")
    if r1["parent"] is None or found is None:
        return r1["parent"]
    return f"{r1['parent']} ({'in' if found else 'not in'} this ledger)"


def _not_plotted(series: dict[str, Any]) -> str:
    """What a chart leaves out: its values that are no finite number (a NaN loss)."""
    count = series.get("not_plotted")
    return f"; {e(count)} not plotted (not a finite number)" if count else ""


def _r1(report: dict[str, Any]) -> str:
    r1 = report["R1"]
    checkpoints = "".join(f"<tr><td>{e(c['name'])}</td><td>{e(c['epoch'])}</td>"
                          f"<td>{_code(c['digest'])}</td></tr>" for c in r1["checkpoints"]["final"])
    charts = "".join(f"<h3>{e(s['name'])} <span class=\"muted\">({e(s['count'])} "
                     f"value{'' if s['count'] == 1 else 's'}{_not_plotted(s)}; last "
                     f"{e(s['last'])})</span></h3>{metric_chart(s)}"
                     for s in r1["metrics"])
    return (_rows([("Experiment", r1["exp"]), ("Name", r1["name"]), ("Model", r1["model"]),
                   ("Intended purpose", r1["purpose"] or "(not recorded)"),
                   ("Parent run", _parent(r1)), ("Status", r1["status"]),
                   ("Complete", r1["complete"]), ("Run head", r1["run_head"]),
                   ("Error", r1["error"])])
            + f"<h3>Final checkpoints ({e(r1['checkpoints']['recorded'])} recorded)</h3>"
            + (f"<table><tr><th>name</th><th>epoch</th><th>state digest</th></tr>{checkpoints}"
               f"</table>" if checkpoints else '<p class="muted">no checkpoint recorded</p>')
            + "<h3>Metrics</h3>" + (charts or '<p class="muted">no metric recorded</p>')
            + (f'<p class="muted">{e(unplotted_note(r1["metrics_not_plotted"]))}</p>'
               if r1["metrics_not_plotted"] else ""))


def _r2(report: dict[str, Any]) -> str:
    """R2's fields, then a table of the sessions that resumed the run (when there are any)."""
    resumes = report["R2"].get("resumes", [])
    rows = "".join(f"<tr><td class=\"num\">{e(r['seq'])}</td><td>{e(r['at'])}</td>"
                   f"<td>{e(r.get('by'))}</td><td>{e(r['host'])}</td>"
                   f"<td class=\"num\">{e(r['pid'])}</td>"
                   f"<td class=\"num\">{e(r.get('suspended_s'))}</td></tr>" for r in resumes)
    return (_rows([(name, value) for name, value in report["R2"].items()
                   if name not in ("title", "resumes")])
            + ("<h3>Sessions that resumed the run</h3><table><tr><th>run_resumed seq</th>"
               "<th>at (UTC)</th><th>by</th><th>host</th><th>pid</th>"
               f"<th>suspended before (s)</th></tr>{rows}</table>" if resumes else ""))


def _r3(report: dict[str, Any]) -> str:
    """R3's fields, then how the code of each session that resumed the run differed."""
    return _with_resumes(report["R3"], "the code version above")


def _r4(report: dict[str, Any]) -> str:
    """R4's fields, then how each session that resumed the run differed from them."""
    return _with_resumes(report["R4"], "the environment above")


def _with_resumes(section: dict[str, Any], against: str) -> str:
    """A section's fields, then a table of how each session that resumed the run differed from
    them (R3's code, R4's environment), when it was resumed."""
    resumes = section.get("resumes", [])  # absent from reports made before it was added
    rows = "".join(f"<tr><td class=\"num\">{e(seq)}</td><td>{e(at)}</td><td>{e(key)}</td>"
                   f"<td>{_value(old)}</td><td>{_value(new)}</td></tr>"
                   for resume in resumes for seq, at, key, old, new in resumed_rows(resume))
    return (_rows([(name, value) for name, value in section.items()
                   if name not in ("title", "resumes")])
            + (f"<h3>Sessions that resumed the run, against {against}</h3><table>"
               "<tr><th>run_resumed seq</th><th>at (UTC)</th><th>difference</th>"
               f"<th>recorded</th><th>resumed</th></tr>{rows}</table>" if resumes else ""))


def _r5(report: dict[str, Any]) -> str:
    r5 = report["R5"]
    rows = "".join(f"<tr><td>{e(d['name'])}</td><td>{e(d['role'])}</td>"
                   f"<td>{_value(d['source'])}</td><td>{_code(d['digest'])}</td>"
                   f"<td class=\"num\">{e(d['records'])}</td></tr>" for d in r5["datasets"])
    check = r5["independence"]
    return ("<table><tr><th>name</th><th>role</th><th>source</th><th>content digest</th>"
            f"<th>records</th></tr>{rows}</table>"
            "<h3>Train/test independence</h3>"
            + _rows([("status", check["status"]), ("reason", check["reason"]),
                     ("pairs", check["pairs"])]))


def _tree(report: dict[str, Any]) -> str:
    r7 = report["R7"]
    trie: dict[Any, Any] = {}
    for node in r7["seed_tree"]["nodes"]:
        level = trie
        for label in node["path"][:MAX_DEPTH]:
            level = level.setdefault(("label", str(label)), {})
        if len(node["path"]) > MAX_DEPTH:
            level = level.setdefault(("label", ELLIPSIS), {})
        level.setdefault(("leaves",), []).append(node)
    root = (f'root seed {_code(r7["root_seed"])} ({e(r7["root_seed_source"])}), scheme '
            f'{_code(r7["scheme"])}')
    return f'<ul class="tree"><li>{root}{_branch(trie)}</li></ul>'


def _leaf(node: dict[str, Any]) -> str:
    if node["count"] == 1:
        return f' — {e(node["kind"])}, seed {_code(node["seed"])}'
    extent = (f", indices {e(node['range'][0])}–{e(node['range'][1])}" if node["range"] else "")
    return f" — {e(node['kind'])}: {e(node['count'])} draws{extent}"


def _branch(level: dict[Any, Any]) -> str:
    children = [(key, value) for key, value in level.items() if key[0] == "label"]
    if not children:
        return ""
    if len(children) > MAX_CHILDREN:
        head, tail = children[:MAX_CHILDREN // 2], children[-MAX_CHILDREN // 2:]
        hidden = children[MAX_CHILDREN // 2:-MAX_CHILDREN // 2]
        draws = sum(_draws(value) for _key, value in hidden)
        summary = (f"… {len(hidden)} more ({draws} draws; every one is in the JSON report and "
                   f"the appendix)")
        middle: list[tuple[Any, dict[Any, Any]]] = [(("summary", summary), {})]
        children = head + middle + tail
    items = []
    for key, value in children:
        if key[0] == "summary":
            items.append(f'<li class="muted">{e(key[1])}</li>')
            continue
        labels = [key[1]]
        while len(value) == 1 and next(iter(value))[0] == "label":  # a chain of single labels
            (child, value), = value.items()
            labels.append(child[1])
        leaves = "".join(_leaf(node) for node in value.get(("leaves",), []))
        items.append(f"<li><code>{e('/'.join(labels))}</code>{leaves}{_branch(value)}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _draws(level: dict[Any, Any]) -> int:
    total = sum(node["count"] for node in level.get(("leaves",), []))
    return total + sum(_draws(value) for key, value in level.items() if key[0] == "label")


def _r7(report: dict[str, Any]) -> str:
    r7 = report["R7"]
    appendix = r7["appendix"]
    return (_rows([("Root seed", r7["root_seed"]), ("Root seed (hex)", r7["root_seed_hex"]),
                   ("Given by", {"user": "the user", "os": "drawn from the OS and recorded"}.get(
                       r7["root_seed_source"], r7["root_seed_source"])),
                   ("Derivation scheme", r7["scheme"]), ("Derivation", r7["derivation"]),
                   ("Draws by category", r7["categories"]),
                   ("Events by kind", r7["counts_by_kind"]),
                   ("Events", r7["events"]),
                   ("Per-event appendix", appendix if appendix else "not written")])
            + "<h3>Seed derivation tree</h3>" + _tree(report)
            + ('<p class="muted">The tree was folded further: the run draws from more paths than '
               'a report lists one by one.</p>' if r7["seed_tree"]["folded"] else ""))


def _r8(report: dict[str, Any]) -> str:
    r8 = report["R8"]
    return (f'<p class="verdict">Verdict: <span class="{e(r8["verdict"])}">'
            f'{e(r8["verdict"].replace("_", " "))}</span></p>'
            + _rows([("Source", r8["source"]), ("Reason", r8["reason"]),
                     ("Replayed by", r8["replayed_by"]), ("Started (UTC)", r8["started_at"]),
                     ("Finished (UTC)", r8["finished_at"]),
                     ("Certified head", r8["certified_head"]),
                     ("Head is the run's current head", r8["head_is_current"]),
                     ("Counts", r8["counts"]), ("First divergence", r8["first_divergence"]),
                     ("Environment differences from R4", r8["environment_differences"]),
                     ("Replay environment", r8["environment"]),
                     ("Comparison policy", r8["policy"]),
                     ("Plugins loaded", r8["plugins"])]))


def _r9(report: dict[str, Any]) -> str:
    r9 = report["R9"]
    verification = r9["verification"]
    status = "VERIFIED" if verification["ok"] else "FAILED"
    streams = "".join(f"<tr><td>{e(s['stream'])}</td><td class=\"num\">{e(s['count'])}</td>"
                      f"<td>{_code(s['head'])}</td></tr>" for s in r9["streams"])
    controls = "".join(f"<tr><td>{e(c['control'])}</td><td>{e(c['in_force'])}</td>"
                       f"<td>{e(c['detail'])}</td></tr>" for c in r9["append_only_controls"])
    undecodable = "".join(f"<tr><td>{e(u['stream'])}</td><td class=\"num\">{e(u['seq'])}</td>"
                          f"<td>{e(u['kind'])}</td></tr>" for u in r9["undecodable_events"])
    findings = "".join(f"<li>{e(f['exp'])} stream {e(f['stream'])} seq {e(f['seq'])}: "
                       f"{e(f['problem'])}</li>" for f in verification["findings"])
    return (f'<p class="verdict">Full chain verification: <span class="{status}">{status}</span>'
            f' — {e(verification["events"])} events in {e(verification["chains"])} chains'
            f'{_intact(verification)}</p>'
            + (f'<ul class="alerts">{findings}</ul>' if findings else "")
            + _rows([("Hash algorithm", r9["hash_algorithm"]),
                     ("Event hash", r9["event_hash_rule"]),
                     ("Run head", r9["run_head"] or "none: the run is incomplete"),
                     ("Signature", r9["signature"])])
            + f"<table><tr><th>stream</th><th>events</th><th>head</th></tr>{streams}</table>"
            + f"<h3>Append-only controls</h3><table><tr><th>control</th><th>in force</th>"
              f"<th>detail</th></tr>{controls}</table>"
            + (f"<h3>Events that could not be decoded</h3><table><tr><th>stream</th>"
               f"<th>seq</th><th>kind</th></tr>{undecodable}</table>" if undecodable else ""))


def _r10(report: dict[str, Any]) -> str:
    r10 = report["R10"]
    rows = "".join(f"<tr><td>{e(h['seq'])}</td><td>{e(h['kind'])}</td><td>{e(h['at'])}</td>"
                   f"<td>{e(h.get('by'))}</td><td>{e(h.get('outcome'))}</td>"
                   f"<td>{e(h.get('detail'))}</td></tr>" for h in r10["events"])
    return ((f"<table><tr><th>seq</th><th>kind</th><th>at (UTC)</th><th>by</th><th>outcome</th>"
             f"<th>detail</th></tr>{rows}</table>" if rows else
             '<p class="muted">no earlier replay or report recorded</p>')
            + _rows([("Ledger schema version", r10["ledger_schema_version"]),
                     ("Migrations", r10["migrations_note"])]))


def _r12(report: dict[str, Any]) -> str:
    r12 = report["R12"]
    return ("<h3>Not certified by this report</h3><ul>"
            + "".join(f"<li>{e(item)}</li>" for item in r12["non_claims"]) + "</ul>"
            + "<h3>For this run</h3>"
            + ("<ul>" + "".join(f"<li>{e(item)}</li>" for item in r12["this_run"]) + "</ul>"
               if r12["this_run"] else '<p class="muted">nothing further</p>'))


def _r13(report: dict[str, Any]) -> str:
    r13 = report["R13"]
    people = "".join(f"<tr><td>{e(p['name'])}</td><td>{e(p['role'])}</td></tr>"
                     for p in r13["responsible"])
    return ((f"<table><tr><th>responsible person</th><th>role</th></tr>{people}</table>"
             if people else '<p class="muted">no responsible person named</p>')
            + _rows([("Date", r13["date"]), ("Signature method", r13["signature_method"]),
                     ("Public key (SHA-256)", r13["public_key_sha256"])]))


def _r14(report: dict[str, Any]) -> str:
    r14 = report["R14"]
    rows = []
    for row in r14["rows"]:
        for index, ref in enumerate(row["references"]):
            head = (f'<td rowspan="{len(row["references"])}"><a href="#{e(row["section"])}">'
                    f'{e(row["section"])}</a> {e(row["title"])}</td>' if index == 0 else "")
            rows.append(f"<tr>{head}<td>{e(ref['framework'])}</td><td>{e(ref['provision'])}</td>"
                        f"<td>{e(ref['evidence'])}</td></tr>")
    return (f"<p>{e(r14['note'])}</p><table><tr><th>section</th><th>framework</th>"
            f"<th>provision</th><th>evidence given</th></tr>{''.join(rows)}</table>")


def _plain(report: dict[str, Any], key: str) -> str:
    return _rows([(name, value) for name, value in report[key].items() if name != "title"])


_RENDER = {"R0": _r0, "R1": _r1, "R2": _r2, "R3": _r3, "R4": _r4, "R5": _r5, "R7": _r7,
           "R8": _r8, "R9": _r9, "R10": _r10, "R12": _r12, "R13": _r13, "R14": _r14}


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML document."""
    summary = report["summary"]
    title = f"Compliance report — {summary['exp']}"
    toc = "".join(f'<li><a href="#{key}">{key} {e(report[key]["title"])}</a></li>'
                  for key in _ORDER)
    body = "".join(_section(report, key, _RENDER.get(key, lambda r, k=key: _plain(r, k))(report))
                   for key in _ORDER)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p>{e(summary['name'])} · report "
        f"<code>{e(report['R0']['report_id'])}</code> · generated {e(report['R0']['generated_at'])}"
        f" by {e(report['R0']['generated_by'])} · schema <code>{e(report['schema'])}</code></p>"
        f"</header>{_summary(report)}<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}"
        "<footer>The electronic copy of this report is report.json (canonical JSON, validated by "
        "schemas/report.v1.json); a signature, when present, covers that file's canonical bytes. "
        "The per-event list of draws is the NDJSON appendix named in R7.</footer>"
        "</body></html>\n")


def _intact(verification: dict[str, Any]) -> str:
    """How many events a failed verification still proved intact (nothing when it passed)."""
    if verification["ok"] or verification.get("intact") is None:
        return ""
    return f", {e(verification['intact'])} {INTACT_NOTE}"
