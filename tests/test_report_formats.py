"""The report's formats: canonical JSON that validates, escaped self-contained HTML with SVG
curves, escaped Markdown, in-toto attestations, and the JSON view of every event kind."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ledger.augment import DataAugmenter
from ledger.errors import BadInputError
from ledger.events import KINDS, decode_body
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.json_view import json_view
from ledger.store import Store
from ledger.user_draws import register_draw
from ledger.verify import INTACT_NOTE
from replay.engine import record_replay, replay_run
from replay_helpers import sample_data
from report.attest import PROVENANCE_TYPE, TEST_RESULT_TYPE, provenance_statement, replay_statement
from report.export import export_report
from report.html import MAX_CHILDREN, MAX_DEPTH, render_html
from report.jsonview import canonical_json, hex_or_none, parse_json, pretty_json, rfc3339
from report.markdown import m, render_markdown
from report.model import ReportOptions
from report.scan import scan_run
from report.svg import metric_chart
from report_helpers import report_of, schema_errors

HOSTILE = "<script>alert('x')</script> & \"quotes\" | pipes `ticks`"


@register_draw("test_report_dropout", version=1)
def dropout(rng: np.random.Generator, *, shape: list[int], rate: float) -> np.ndarray:
    """A user draw point of the test run."""
    return rng.random(shape) >= rate


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A run with every kind of event, a hostile hyperparameter, a recorded replay and a
    recorded export: (url, experiment id)."""
    folder = tmp_path_factory.mktemp("kinds")
    url = f"sqlite:///{folder / 'ledger.db'}"
    features, labels = sample_data(rows=96)
    with ExperimentManager(url, data_dir=folder / "data") as manager:
        exp = manager.create_experiment(f"model {HOSTILE}", seed=7, purpose=HOSTILE,
                                        hyperparams={"note": HOSTILE, "lr": 0.5})
        data = exp.register_dataset("transactions", features, labels)
        batches = TrainingDataIterator(data, batch_size=32, num_workers=1, experiment=exp,
                                       augmenter=DataAugmenter(noise_std=0.1))
        exp.generator("model", "init").normal(size=3)
        for epoch in range(3):
            if epoch == 2:  # interrupted and resumed: the run records run_resumed
                state = batches.state_dict()
                exp.suspend()
                exp = manager.resume_experiment(exp.id)
                data = exp.register_dataset("transactions", features, labels)
                batches = TrainingDataIterator(data, batch_size=32, num_workers=1,
                                               experiment=exp,
                                               augmenter=DataAugmenter(noise_std=0.1))
                batches.load_state_dict(state)
            for _x, _y in batches:
                pass
            exp.draw("test_report_dropout", ("dropout", epoch), shape=[4], rate=0.5)
            exp.log_metric("loss", 1.0 / (epoch + 1), epoch=epoch)
            exp.log_metric("auc", 0.5 + epoch / 10, epoch=epoch)
        exp.log_checkpoint("model", {"w": np.arange(4.0)}, epoch=2)
        exp.close()
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp.id, data_dir=folder / "data"))
        export_report(store, exp.id, ReportOptions(), fmt="json", output=folder / "first.json")
    return url, exp.id


@pytest.fixture(scope="module")
def report(every_kind: tuple[str, str]) -> dict[str, Any]:
    url, exp = every_kind
    return report_of(url, exp)


def test_every_event_kind_has_a_json_view_that_validates(every_kind: tuple[str, str]) -> None:
    url, exp = every_kind
    seen = set()
    with Store.open(url) as store:
        for _stream, _seq, kind, body in store.iter_run_bodies(exp):
            view = json_view(decode_body(body))
            assert schema_errors(view, "event.v1.json") == [], kind
            seen.add(kind)
    assert seen == KINDS


def test_the_event_schema_refuses_a_malformed_body(every_kind: tuple[str, str]) -> None:
    url, exp = every_kind
    with Store.open(url) as store:
        body = json_view(store.first_event_body(exp, "augmentation_batch"))
    assert schema_errors(body, "event.v1.json") == []
    broken = {**body, "seed": "zz", "path": ["epoch", 0, "shuffle"]}
    assert len(schema_errors(broken, "event.v1.json")) >= 2


def test_the_report_schema_refuses_a_report_that_drifts(report: dict[str, Any]) -> None:
    drifted = json.loads(json.dumps(report))
    drifted["R8"]["verdict"] = "CERTIFIED"
    drifted["R3"]["extra"] = 1
    del drifted["R12"]
    assert len(schema_errors(drifted)) == 3


def test_the_run_with_every_kind_reports_its_draws(report: dict[str, Any]) -> None:
    r7 = report["R7"]
    assert r7["categories"] == {"experiment": 1, "worker_spawn": 1, "epoch_shuffle": 3,
                                "augmentation_batch": 9, "user_draw": 4}
    paths = {tuple(node["path"]) for node in r7["seed_tree"]["nodes"]}
    assert {("worker", 0), ("model", "init"), ("dropout", "*")} <= paths
    assert report["R8"]["verdict"] == "PASSED"
    assert [event["kind"] for event in report["R10"]["events"]] == ["replay_recorded",
                                                                   "report_exported"]
    assert report["R1"]["checkpoints"]["final"][0]["name"] == "model"


def _keys_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _value in pairs]
    assert keys == sorted(keys)
    return dict(pairs)


def test_the_json_is_canonical_and_parses_strictly(report: dict[str, Any]) -> None:
    written = pretty_json(report)
    json.loads(written, object_pairs_hook=_keys_sorted)
    canonical = canonical_json(report)
    assert canonical == canonical_json(parse_json(written))
    assert b"\n" not in canonical and b": " not in canonical[:200]
    with pytest.raises(BadInputError, match="twice"):
        parse_json(b'{"a": 1, "a": 2}')
    with pytest.raises(BadInputError, match="NaN"):
        parse_json(b'{"a": NaN}')
    with pytest.raises(BadInputError, match="not JSON"):
        parse_json(b"<html>")


def test_html_escapes_every_ledger_value_and_loads_nothing(report: dict[str, Any]) -> None:
    html = render_html(report)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "default-src &#x27;none&#x27;" in html or "default-src 'none'" in html
    links = re.findall(r"""\b(?:src|href|action|srcset|data|poster)\s*=\s*(["']?)([^"'\s>]*)""",
                       html)
    assert links and all(quote == '"' and target.startswith("#") for quote, target in links)
    assert not re.search(r"url\(|@import|https?:", html)
    assert html.count("<svg") == 2 and "<polyline" in html
    assert "@media print" in html
    for section in [f"R{n}" for n in range(15)]:
        assert f'id="{section}"' in html


def test_markdown_escapes_values(report: dict[str, Any]) -> None:
    text = render_markdown(report)
    assert "<script" not in text
    assert r"&lt;script&gt;" in text and r"\| pipes \`ticks\`" in text
    assert text.startswith("# Compliance report") and "## R8 Replay certificate" in text
    assert "**Replay verdict: PASSED**" in text


def _md_section(text: str, key: str) -> str:
    """The Markdown of section ``key`` (R0, R4, …): from its heading to the next one."""
    return re.search(rf"^## {key} .*?(?=^## |\Z)", text, re.M | re.S).group(0)


def test_markdown_carries_what_report_md_requires_as_json_and_html_do(
        report: dict[str, Any]) -> None:
    """R0's generator, R4's BLAS and its threads, R8's start, environment and policy, R10's
    migrations: each is in the Markdown, not only in the JSON and HTML."""
    text, html = render_markdown(report), render_html(report)
    r0 = _md_section(text, "R0")
    assert "| generator |" in r0 and report["R0"]["generator"]["version"] in r0
    r4 = _md_section(text, "R4")
    threads = report["R4"]["blas_threads"]
    assert threads  # numpy's OpenBLAS, as recorded
    for library, count in threads.items():
        assert f"{m(library)}\": {count}" in r4 and library in html
    assert report["R4"]["numpy"]["blas"]["blas"]["name"] in r4
    r8 = _md_section(text, "R8")
    for field in ("started\\_at", "environment", "policy"):  # field names are escaped
        assert f"| {field} |" in r8
    assert report["R8"]["started_at"] in r8 and "excluded" in r8
    r10 = _md_section(text, "R10")
    assert "| migrations\\_note |" in r10


def test_markdown_r3_shows_the_recorded_entrypoint(report: dict[str, Any]) -> None:
    """REPORT.md R3 asks for the entrypoint or command line: a job that names its entrypoint
    (the demo's ``{"job": …}``) has no command line, and the Markdown showed only that dash."""
    entry = {"job": "nightly-train", "version": 2}
    text = render_markdown({**report, "R3": {**report["R3"], "entrypoint": entry,
                                             "command_line": None}})
    r3 = _md_section(text, "R3")
    assert '| entrypoint | {"job": "nightly-train", "version": 2} |' in r3


def test_the_provenance_attestation_names_checkpoints_data_code_and_seed(
        report: dict[str, Any]) -> None:
    statement = provenance_statement(report)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PROVENANCE_TYPE
    (subject,) = statement["subject"]
    assert subject["digest"] == {"ledger-state-v1": report["R1"]["checkpoints"]["final"][0][
        "digest"]}
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["root_seed"] == "7"
    assert definition["externalParameters"]["configuration"]["note"] == HOSTILE
    dataset = next(d for d in definition["resolvedDependencies"]
                   if d["name"] == "dataset/transactions")
    assert dataset["digest"] == {"ledger-dataset-v1": report["R5"]["datasets"][0]["digest"]}
    byproducts = statement["predicate"]["runDetails"]["byproducts"]
    assert byproducts[0]["digest"] == {"ledger-event-v1": report["R9"]["run_head"]}


@pytest.mark.parametrize("verdict,result", [("PASSED", "PASSED"), ("FAILED", "FAILED"),
                                            ("INCONCLUSIVE", "WARNED"),
                                            ("NOT_REPLAYED", "WARNED")])
def test_the_replay_attestation_carries_the_verdict(report: dict[str, Any], verdict: str,
                                                    result: str) -> None:
    changed = json.loads(json.dumps(report))
    changed["R8"]["verdict"] = verdict
    statement = replay_statement(changed)
    assert statement["predicateType"] == TEST_RESULT_TYPE
    predicate = statement["predicate"]
    assert (predicate["result"], predicate["ledgerVerdict"]) == (result, verdict)
    assert statement["subject"] == [{"name": f"{report['R1']['exp']}/run-head",
                                     "digest": {"ledger-event-v1": report["R9"]["run_head"]}}]
    listed = {"PASSED": "passedTests", "FAILED": "failedTests", "WARNED": "warnedTests"}[result]
    assert len(predicate[listed]) == 1 and isinstance(predicate["configuration"], list)


def test_a_bundle_holds_every_format_and_r0_lists_their_digests(
        every_kind: tuple[str, str], tmp_path: Path) -> None:
    url, exp = every_kind
    with Store.open(url) as store:
        result = export_report(store, exp, ReportOptions(record=False), bundle=tmp_path / "b")
    names = sorted(path.name for path in (tmp_path / "b").iterdir())
    assert names == ["SHA256SUMS", "events.ndjson", "provenance.intoto.json",
                     "replay.intoto.json", "report.html", "report.json", "report.md"]
    written = json.loads((tmp_path / "b" / "report.json").read_text())
    assert schema_errors(written) == []
    listed = {f["name"]: f["sha256"] for f in written["R0"]["files"]}
    assert set(listed) == set(names) - {"SHA256SUMS", "report.json"}
    sums = dict(reversed(line.split("  ")) for line in
                (tmp_path / "b" / "SHA256SUMS").read_text().splitlines())
    assert all(sums[name] == digest for name, digest in listed.items())
    assert result.report["R7"]["appendix"]["file"] == "events.ndjson"


MARKUP = ("<img src=x onerror=alert(1)>\n# heading \\| `tick` [link](http://x) *em* _u_ ~s~ "
          "\u202e\x1b[2J https://bare.example www.bare.example a@bare.example mk.py")
"""Text a tampered ledger could hold anywhere: HTML, a line break, Markdown block and inline
markup, a bidi control, a terminal escape, and bare URLs, an address and a domain that
renderers turn into links by themselves."""
FREE_FORM_MAPS = (("R3", "entrypoint"), ("R4", "packages"), ("R4", "determinism_env"),
                  ("R6", "hyperparameters"), ("R7", "counts_by_kind"), ("R8", "environment"))
"""Maps whose keys come from the ledger too (names of hyperparameters, packages, kinds, …)."""


def _hostile(value: Any, keys: bool = False) -> Any:
    """``value`` with every string (and, with ``keys``, every key) wrapped in MARKUP."""
    if isinstance(value, dict):
        return {(f"{MARKUP}{key}" if keys else key): _hostile(item, keys)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_hostile(item, keys) for item in value]
    return f"{MARKUP}{value}" if isinstance(value, str) else value


def _hostile_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report with every string value, and the keys of its free-form maps, hostile; one
    entrypoint argument and a long seed tree so that lists of scalars and folded trees show."""
    changed = _hostile(json.loads(json.dumps(report)))
    for section, name in FREE_FORM_MAPS:
        changed[section][name] = _hostile({"item": 1, **(changed[section][name] or {})},
                                          keys=True)
    changed["R3"]["entrypoint"]["argv"] = [MARKUP, "--flag"]
    changed["R9"]["verification"]["findings"] = [
        {"exp": MARKUP, "stream": MARKUP, "seq": 1, "problem": MARKUP}]
    changed["R12"]["this_run"] = changed["summary"]["alerts"] = [MARKUP]
    changed["R0"]["files"] = [{"name": MARKUP, "role": MARKUP, "sha256": "ab" * 32}]
    changed["R13"]["responsible"] = [{"name": MARKUP, "role": MARKUP}]
    return changed


def test_html_escapes_every_string_of_a_hostile_report(report: dict[str, Any]) -> None:
    """Wherever ledger text lands — a table cell or key, a list, the seed tree, a chart, an
    alert — it shows as text: no element, no raw bidi control or escape reaches the page."""
    html = render_html(_hostile_report(report))
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "\u202e" not in html and "\x1b" not in html


def test_markdown_escapes_every_string_of_a_hostile_report(report: dict[str, Any]) -> None:
    """No ledger text adds a line, a heading, a table column, a link or code to the Markdown."""
    text = render_markdown(_hostile_report(report))
    assert "<img" not in text and "\u202e" not in text and "\x1b" not in text
    assert not any(line.startswith("# heading") for line in text.splitlines())
    assert r"\*em\* \_u\_ \~s\~" in text

    def markup(line: str) -> list[str]:
        """The markup characters of ``line`` that no backslash escapes."""
        return [token for token in re.findall(r"\\.|[|`\[\]]", line) if token[0] != "\\"]

    assert [token for token in markup(text) if token != "|"] == []
    # what starts a bare autolink (GitHub-flavoured Markdown, linkify) is escaped everywhere
    assert r"https\://bare\.example www\.bare\.example a\@bare\.example mk\.py" in text
    assert not re.findall(r"(?<!\\)(?::(?=//)|@|(?<=[0-9A-Za-z])\.(?=[A-Za-z]))", text)
    for table in re.findall(r"(?:^\|.*\n)+", text, re.M):
        assert len({len(markup(line)) for line in table.splitlines()}) == 1, table


def test_html_banner_shows_attention_and_completeness(report: dict[str, Any]) -> None:
    """The summary banner is red and says INCOMPLETE only when the report says so."""
    changed = json.loads(json.dumps(report))
    changed["summary"].update(attention=False, complete=True, alerts=[])
    html = render_html(changed)
    assert '<section id="summary" class="banner ok">' in html and '<ul class="alerts">' not in html
    assert '<span class="complete">complete</span>' in html
    changed["summary"].update(attention=True, complete=False, alerts=["the run is incomplete"])
    html = render_html(changed)
    assert '<section id="summary" class="banner attention">' in html
    assert '<span class="INCOMPLETE">INCOMPLETE</span>' in html
    assert '<ul class="alerts"><li>the run is incomplete</li></ul></section>' in html


def test_markdown_summary_states_completeness_and_alerts(report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    changed["summary"].update(complete=True, alerts=[])
    assert "complete**" in render_markdown(changed) and "> **" not in render_markdown(changed)
    changed["summary"].update(complete=False, alerts=["the run is incomplete"])
    text = render_markdown(changed)
    assert "INCOMPLETE**" in text and "> **the run is incomplete**" in text


def test_markdown_folds_whitespace_of_a_value_into_single_spaces() -> None:
    assert m("first\tsecond  \n third ") == "first second third"


def test_html_shows_booleans_digests_and_nested_values_by_their_type(
        report: dict[str, Any]) -> None:
    """Booleans as yes/no, a 32-digit hex value as code, a list mixing values and maps as a
    list, and maps nested deeper than five levels as one line of code."""
    changed = json.loads(json.dumps(report))
    deep: dict[str, Any] = {"leaf": 1}
    for level in range(7):
        deep = {f"level{level}": deep}
    changed["R6"]["hyperparameters"] = {"deep": deep, "mixed": [1, {"inner": 2}]}
    html = render_html(changed)
    assert "<tr><th>Complete</th><td>yes</td></tr>" in html
    assert "<tr><th>Intended purpose</th><td>(not recorded)</td></tr>" not in html
    changed["R1"]["purpose"] = None
    assert "<tr><th>Intended purpose</th><td>(not recorded)</td></tr>" in render_html(changed)
    assert f"<td><code>{report['R7']['root_seed_hex']}</code></td>" in html
    assert "<ul><li>1</li><li><table" in html
    r6 = html[html.index('<section id="R6">'):html.index('<section id="R7">')]
    assert r6.count("<table") == 7 and "<code>{&#x27;level2&#x27;: " in r6


def _tree_html(report: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    """R7's seed tree as HTML for these nodes."""
    changed = json.loads(json.dumps(report))
    changed["R7"]["seed_tree"]["nodes"] = nodes
    html = render_html(changed)
    return html[html.index('<ul class="tree">'):html.index('<section id="R8">')]


def _node(path: list[Any], count: int = 1, seed: str | None = "ab" * 16,
          span: list[int] | None = None) -> dict[str, Any]:
    return {"path": path, "kind": "user_draw", "count": count, "seed": seed, "range": span}


def test_html_seed_tree_shows_a_draw_its_seed_and_a_pattern_its_count_and_range(
        report: dict[str, Any]) -> None:
    tree = _tree_html(report, [_node(["model", "init"]),
                               _node(["epoch", 0, "batch", "*", "augment"], 5, None, [2, 6])])
    assert f"<code>model/init</code> — user_draw, seed <code>{'ab' * 16}</code>" in tree
    assert "<code>epoch/0/batch/*/augment</code> — user_draw: 5 draws, indices 2–6" in tree


def test_html_seed_tree_cuts_paths_deeper_than_max_depth(report: dict[str, Any]) -> None:
    labels = [f"l{n}" for n in range(MAX_DEPTH + 1)]
    assert "…" not in _tree_html(report, [_node(labels[:MAX_DEPTH])])
    deeper = _tree_html(report, [_node(labels)])
    assert f"<code>{'/'.join(labels[:MAX_DEPTH])}/…</code>" in deeper
    assert f"l{MAX_DEPTH}" not in deeper


def test_html_seed_tree_summarises_the_middle_of_many_children(report: dict[str, Any]) -> None:
    def children(count: int) -> list[dict[str, Any]]:
        return [_node(["user", f"c{n:02d}"], 2, None, [0, 1]) for n in range(count)]

    assert "more (" not in _tree_html(report, children(MAX_CHILDREN))
    tree = _tree_html(report, children(MAX_CHILDREN + 6))
    assert "… 6 more (12 draws; every one is in the JSON report and the appendix)" in tree
    shown = re.findall(r"<code>(c\d\d)</code>", tree)
    assert shown == [f"c{n:02d}" for n in range(MAX_CHILDREN // 2)] + [
        f"c{n:02d}" for n in range(MAX_CHILDREN // 2 + 6, MAX_CHILDREN + 6)]


def test_html_r9_states_a_failed_verification_with_its_findings(report: dict[str, Any]) -> None:
    """A passed verification shows VERIFIED and no intact count; a failed one FAILED, how many
    events are still intact and each finding."""
    html = render_html(report)
    assert '<span class="VERIFIED">VERIFIED</span>' in html and INTACT_NOTE not in html
    changed = json.loads(json.dumps(report))
    changed["R9"]["verification"].update(ok=False, intact=5, findings=[
        {"exp": "exp-1", "stream": "main", "seq": 6, "problem": "hash mismatch"}])
    html = render_html(changed)
    assert '<span class="FAILED">FAILED</span>' in html and f", 5 {INTACT_NOTE}</p>" in html
    assert '<ul class="alerts"><li>exp-1 stream main seq 6: hash mismatch</li></ul>' in html
    changed["R9"]["verification"]["ok"] = True
    assert INTACT_NOTE not in render_html(changed)


def test_html_lays_out_the_crosswalk_the_appendix_and_plain_sections(
        report: dict[str, Any]) -> None:
    """A crosswalk section spans as many rows as it has references; R7 says when no appendix
    was written and names it when one was; a section without its own layout lists its fields,
    not its title."""
    html = render_html(report)
    for row in report["R14"]["rows"]:
        assert (f'<td rowspan="{len(row["references"])}"><a href="#{row["section"]}">'
                in html)
    assert "<tr><th>Per-event appendix</th><td>not written</td></tr>" in html
    r2 = html[html.index('<section id="R2">'):html.index('<section id="R3">')]
    assert "<th>started_at</th>" in r2 and "<th>title</th>" not in r2
    changed = json.loads(json.dumps(report))
    changed["R7"]["appendix"] = {"file": "events.ndjson", "lines": 3}
    assert "<th>file</th><td>events.ndjson</td>" in render_html(changed)


def test_markdown_lists_sixty_seed_paths_and_counts_the_rest(report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    nodes = [_node(["user", f"p{n:03d}"]) for n in range(61)]
    changed["R7"]["seed_tree"]["nodes"] = nodes[:60]
    text = render_markdown(changed)
    assert "| user/p059 |" in text and "more paths" not in text
    changed["R7"]["seed_tree"]["nodes"] = nodes
    text = render_markdown(changed)
    assert "| user/p060 |" not in text and "… 1 more paths in the JSON report." in text


def test_markdown_states_verification_appendix_and_values_as_recorded(
        report: dict[str, Any]) -> None:
    """VERIFIED or FAILED with the intact count, the appendix or that none was written, the
    dataset's source path, booleans as yes/no and maps as JSON."""
    text = render_markdown(report)
    assert "**Full chain verification: VERIFIED**" in text and INTACT_NOTE not in text
    assert "Per-event appendix: not written" in text
    assert f"| transactions | — | {m(report['R5']['datasets'][0]['source']['path'])} |" in text
    assert "| complete | yes |" in text and '| hyperparameters | {"lr": 0.5,' in text
    changed = json.loads(json.dumps(report))
    changed["R9"]["verification"].update(ok=False, intact=5)
    changed["R7"]["appendix"] = {"file": "events.ndjson", "lines": 3, "sha256": "ab" * 32}
    changed["R10"]["migrations"] = ["v1", "v2"]
    text = render_markdown(changed)
    assert '| migrations | \\["v1", "v2"\\] |' in text
    assert "**Full chain verification: FAILED** — " in text and f", 5 {INTACT_NOTE}" in text
    assert f"Per-event appendix: events\\.ndjson (3 lines, sha256 {'ab' * 32})" in text


def _series(points: list[tuple[float, float]], last_epoch: int | None = None) -> dict[str, Any]:
    return {"name": "loss", "points": [list(point) for point in points],
            "last_epoch": last_epoch}


def test_a_metric_chart_places_the_highest_value_at_the_top() -> None:
    svg = metric_chart(_series([(0, 1.0), (1, 3.0)], last_epoch=1))
    assert '<polyline class="curve" points="64.0,150.0 548.0,14.0"/>' in svg
    assert '<text x="60" y="18" text-anchor="end">3</text>' in svg
    assert '<text x="60" y="150" text-anchor="end">1</text>' in svg
    assert ">epoch</text>" in svg and svg.count("<circle") == 2
    assert ">value number</text>" in metric_chart(_series([(0, 1.0), (1, 3.0)]))


def test_a_metric_chart_of_one_value_or_a_flat_zero_line_is_drawn() -> None:
    for points in ([(0, 2.0)], [(0, 0.0), (1, 0.0)]):
        svg = metric_chart(_series(points))
        assert svg.count("<circle") == len(points) and "<polyline" in svg
    assert metric_chart(_series([])) == '<p class="muted">loss: no numeric values to plot</p>'


def test_a_metric_chart_of_values_wider_apart_than_any_float_places_every_point() -> None:
    """A loss that swung from -1e308 to 1e308 — a span no float holds — drew its points at
    NaN (``points="64.0,nan …"``): the span overflowed to infinity (found by the report
    properties)."""
    svg = metric_chart(_series([(0, 1e308), (1, -1e308), (2, 0.0)], last_epoch=2))
    assert '<polyline class="curve" points="64.0,14.0 306.0,150.0 548.0,82.0"/>' in svg
    assert "nan" not in svg and "inf" not in svg


def test_a_metric_chart_marks_each_value_up_to_sixty() -> None:
    assert metric_chart(_series([(n, n) for n in range(60)])).count("<circle") == 60
    assert "<circle" not in metric_chart(_series([(n, n) for n in range(61)]))


def test_the_provenance_of_a_run_without_a_checkpoint_names_the_run_head(
        report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    changed["R1"]["checkpoints"]["final"] = []
    statement = provenance_statement(changed)
    assert statement["subject"] == [{"name": f"{report['R1']['exp']}/run-head",
                                     "digest": {"ledger-event-v1": report["R9"]["run_head"]}}]


def test_the_attestations_of_an_incomplete_run_name_the_main_stream_head(
        report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    changed["R1"]["checkpoints"]["final"] = []
    changed["R9"]["run_head"] = None
    (main,) = [s for s in report["R9"]["streams"] if s["stream"] == "main"]
    assert any(s["head"] != main["head"] for s in report["R9"]["streams"])
    expected = [{"name": f"{report['R1']['exp']}/main-stream-head (incomplete run)",
                 "digest": {"ledger-event-v1": main["head"]}}]
    assert provenance_statement(changed)["subject"] == expected
    assert replay_statement(changed)["subject"] == expected


def test_the_provenance_lists_the_run_head_then_every_stream_head_as_byproducts(
        report: dict[str, Any]) -> None:
    byproducts = provenance_statement(report)["predicate"]["runDetails"]["byproducts"]
    assert byproducts[0] == {"name": f"{report['R1']['exp']}/run-head",
                             "digest": {"ledger-event-v1": report["R9"]["run_head"]}}
    assert byproducts[1:] == [{"name": f"stream/{s['stream']}",
                               "digest": {"ledger-event-v1": s["head"]},
                               "annotations": {"events": s["count"]}}
                              for s in report["R9"]["streams"]]
    assert len(byproducts) > 2


def test_the_provenance_names_the_code_and_datasets_only_when_their_digests_are_recorded(
        report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    changed["R3"].update(commit="0123abcd", dirty=True)
    dependencies = provenance_statement(changed)["predicate"]["buildDefinition"][
        "resolvedDependencies"]
    code = [d for d in dependencies if d["name"] == "code"]
    assert [(d["digest"], d["annotations"]["dirty"]) for d in code] == [
        ({"gitCommit": "0123abcd"}, True)]
    changed["R3"].update(commit=None, distribution=None)
    for dataset in changed["R5"]["datasets"]:
        dataset["digest"] = None
    assert provenance_statement(changed)["predicate"]["buildDefinition"][
        "resolvedDependencies"] == []


def test_the_provenance_names_code_installed_from_a_wheel_by_its_release(
        report: dict[str, Any]) -> None:
    """Code with no commit but a recorded distribution is a dependency known by a package URL
    (no digest: a release name is all the run recorded); a report made before R3 carried the
    distribution names no code, as before."""
    changed = json.loads(json.dumps(report))
    changed["R3"].update(commit=None, distribution={"name": "my-trainer", "version": "1.2.0"})
    dependencies = provenance_statement(changed)["predicate"]["buildDefinition"][
        "resolvedDependencies"]
    assert [d for d in dependencies if d["name"] == "code"] == [
        {"name": "code", "uri": "pkg:pypi/my-trainer@1.2.0",
         "annotations": {"distribution": "my-trainer", "version": "1.2.0"}}]
    del changed["R3"]["distribution"]
    assert not [d for d in provenance_statement(changed)["predicate"]["buildDefinition"][
        "resolvedDependencies"] if d["name"] == "code"]


@pytest.mark.parametrize("verdict,listed,line", [
    ("FAILED", "failedTests", "replay {exp}: seed mismatch"),
    ("INCONCLUSIVE", "warnedTests", "replay {exp}: INCONCLUSIVE (seed mismatch)")])
def test_the_replay_attestation_quotes_the_reason_of_a_verdict_that_did_not_pass(
        report: dict[str, Any], verdict: str, listed: str, line: str) -> None:
    changed = json.loads(json.dumps(report))
    changed["R8"].update(verdict=verdict, reason="seed mismatch")
    predicate = replay_statement(changed)["predicate"]
    assert predicate[listed] == [line.format(exp=report["R1"]["exp"])]
    assert predicate["passedTests"] == []


def test_canonical_json_refuses_a_float_that_json_cannot_hold() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            canonical_json({"loss": value})
        with pytest.raises(ValueError):
            pretty_json({"loss": value})


def test_a_recorded_time_that_is_a_boolean_is_no_time() -> None:
    assert rfc3339(True) is None and rfc3339(False) is None
    assert rfc3339(1) == "1970-01-01T00:00:00.000Z"


def test_pretty_json_is_indented_sorted_and_ends_in_one_newline() -> None:
    assert pretty_json({"b": 1, "a": "é"}) == '{\n  "a": "é",\n  "b": 1\n}\n'.encode()


def test_a_name_that_is_not_utf8_keeps_its_escaped_bytes_in_canonical_json() -> None:
    name = b"run-\xff".decode("utf-8", "surrogateescape")
    data = canonical_json({"name": name})
    assert data == b'{"name":"run-\\udcff"}'
    assert parse_json(data) == {"name": name}


def test_the_appendix_lists_main_first_audit_last_each_in_seq_order_with_its_digests(
        every_kind: tuple[str, str]) -> None:
    url, exp = every_kind
    target = io.BytesIO()
    with Store.open(url) as store:
        heads = store.stream_heads(exp)
        result = scan_run(store, exp, sorted(heads), appendix=target)
        bodies = {(stream, seq): decode_body(body)
                  for stream, seq, _kind, body in store.iter_run_bodies(exp)}
    entries = [json.loads(line) for line in target.getvalue().splitlines()]
    order = [(entry["stream"], entry["seq"]) for entry in entries]
    streams = list(dict.fromkeys(stream for stream, _seq in order))
    assert streams == ["main", "audit"]  # given as ["audit", "main"]
    assert order == sorted(order, key=lambda key: (streams.index(key[0]), key[1]))
    assert set(order) == set(bodies) and result.events == len(entries)
    for entry in entries:
        body = bodies[(entry["stream"], entry["seq"])]
        assert (entry["input"], entry["output"]) == (hex_or_none(body.get("input")),
                                                     hex_or_none(body.get("output")))


def test_markdown_summary_states_the_headline_that_qualifies_a_quoted_verdict(
        report: dict[str, Any]) -> None:
    """A verdict quoted from a recorded replay is a claim, not a re-execution: the headline
    says "as recorded by …; not re-run by this report" (and "quoted from a ledger that fails
    verification" when it does). JSON and HTML carry the headline; the Markdown showed a bare
    "Replay verdict: PASSED"."""
    assert report["R8"]["source"] == "recorded in the audit stream"
    headline = report["summary"]["headline"]
    assert "as recorded by" in headline and "not re-run by this report" in headline
    text = render_markdown(report)
    summary = text[:text.index("## R14 ")]
    assert m(headline) in summary and "as recorded by" in summary


def test_markdown_r5_shows_each_pair_and_its_overlap(report: dict[str, Any]) -> None:
    """REPORT.md R5's independence check is the overlap of record digests, expected 0: JSON
    and HTML list each (training, test) pair with its overlap, the Markdown only said
    "failed", never how many test records, nor of which datasets."""
    changed = json.loads(json.dumps(report))
    changed["R5"]["independence"] = {
        "status": "failed", "reason": "records of a test dataset also occur in a training "
        "dataset", "pairs": [{"train": "tr", "test": "holdout", "overlap": 7,
                              "test_records": 10}]}
    r5 = _md_section(render_markdown(changed), "R5")
    assert "| training dataset | test dataset | overlap | test records |" in r5
    assert "| tr | holdout | 7 | 10 |" in r5
    assert "| training dataset |" not in _md_section(render_markdown(report), "R5")


def test_markdown_shows_the_derivation_events_by_kind_hash_rule_and_retention_note(
        report: dict[str, Any]) -> None:
    """README: the Markdown has the same fields as JSON and HTML. It left out R7's derivation
    rule, root seed in hex and events by kind (the only place a resumed run's run_resumed
    shows), R9's event hash rule and R11's note that the legal period may start later."""
    text = render_markdown(report)
    r7, r9, r11 = (_md_section(text, key) for key in ("R7", "R9", "R11"))
    assert f"| root\\_seed\\_hex | {report['R7']['root_seed_hex']} |" in r7
    assert f"| derivation | {m(report['R7']['derivation'])} |" in r7
    assert report["R7"]["counts_by_kind"]["run_resumed"] == 1  # the fixture's run was resumed
    assert "| counts\\_by\\_kind |" in r7 and '"run\\_resumed": 1' in r7
    assert f"| event\\_hash\\_rule | {m(report['R9']['event_hash_rule'])} |" in r9
    assert f"| note | {m(report['R11']['note'])} |" in r11



def test_markdown_alerts_are_separate_paragraphs_of_the_quote(report: dict[str, Any]) -> None:
    """Consecutive "> **…**" lines are one paragraph in Markdown (a soft line break renders as
    a space): two alerts ran together into one line. An empty quote line separates them."""
    changed = json.loads(json.dumps(report))
    changed["summary"]["alerts"] = ["RUN FAILED: boom", "DATA OVERLAP: test records in training"]
    text = render_markdown(changed)
    assert "> **RUN FAILED: boom**\n>\n> **DATA OVERLAP: test records in training**\n\n" in text


def test_html_r8_names_the_plugins_the_replay_loaded(report: dict[str, Any]) -> None:
    """Which replayer plugins the replay imported is part of its certificate: JSON and
    Markdown give R8's plugins, the HTML left them out."""
    changed = json.loads(json.dumps(report))
    changed["R8"]["plugins"] = ["plugin:audited-ops", "test_report_dropout/1"]
    html = render_html(changed)
    r8 = html[html.index('<section id="R8">'):html.index('<section id="R9">')]
    assert "<th>Plugins loaded</th>" in r8
    assert "plugin:audited-ops" in r8 and "test_report_dropout/1" in r8


def test_r1_says_how_many_checkpoints_were_recorded_and_metric_values_left_out(
        report: dict[str, Any]) -> None:
    """Past MAX_SERIES names a metric's values are counted, not kept (R1 metrics_not_plotted),
    and R1 counts every checkpoint recorded, not only each name's last: HTML and Markdown
    showed neither count, so a table of a few metrics read as all there were."""
    changed = json.loads(json.dumps(report))
    changed["R1"]["metrics_not_plotted"] = 37
    changed["R1"]["checkpoints"]["recorded"] = 5
    r1 = _md_section(render_markdown(changed), "R1")
    assert "Final checkpoints (5 recorded)" in r1
    assert "37 values of metrics past the first 100 names are counted, not shown" in r1
    html = render_html(changed)
    html_r1 = html[html.index('<section id="R1">'):html.index('<section id="R2">')]
    assert "37 values of metrics past the first 100 names are counted, not shown" in html_r1
    plain = render_markdown(report)
    assert "past the first 100 names" not in plain and "past the first 100 names" not in (
        render_html(report))


def test_html_and_markdown_r9_list_the_events_that_could_not_be_decoded(
        report: dict[str, Any]) -> None:
    """R9 names each event whose body could not be decoded (stream, seq, kind); the summary
    only counts them. HTML and Markdown showed the count alone, so a reader could not find
    them."""
    changed = json.loads(json.dumps(report))
    changed["R9"]["undecodable_events"] = [{"stream": "worker-1", "seq": 17, "kind": "metric"}]
    r9 = _md_section(render_markdown(changed), "R9")
    assert "| worker-1 | 17 | metric |" in r9 and "could not be decoded" in r9
    html = render_html(changed)
    html_r9 = html[html.index('<section id="R9">'):html.index('<section id="R10">')]
    assert "<td>worker-1</td><td class=\"num\">17</td><td>metric</td>" in html_r9
    assert "could not be decoded" not in _md_section(render_markdown(report), "R9")


def test_markdown_r0_says_its_files_are_those_written_before_it(report: dict[str, Any]) -> None:
    """A bundle's report.md can list only the files written before it (not itself, the JSON,
    the signature or SHA256SUMS): HTML says so above its table, the Markdown showed a bare
    table that read as the whole bundle."""
    changed = json.loads(json.dumps(report))
    changed["R0"]["files"] = [{"name": "events.ndjson", "role": "per-event appendix (R7)",
                               "media_type": "application/x-ndjson", "sha256": "ab" * 32}]
    r0 = _md_section(render_markdown(changed), "R0")
    assert "Files written before this one (SHA-256):\n\n| file | role | sha256 |" in r0


def test_markdown_r4_says_whether_the_environment_was_recorded(report: dict[str, Any]) -> None:
    """A run recorded without its environment shows empty maps: JSON and HTML say
    ``recorded: no``, the Markdown left the reader to guess why R4 was empty."""
    changed = json.loads(json.dumps(report))
    changed["R4"].update(recorded=False, python={}, packages={}, platform={},
                         determinism_env={}, blas_threads={})
    assert "| recorded | no |" in _md_section(render_markdown(changed), "R4")
    assert "| recorded | yes |" in _md_section(render_markdown(report), "R4")


def test_the_replay_attestation_of_a_pass_of_another_head_is_no_pass_of_its_subject(
        report: dict[str, Any]) -> None:
    """The attestation's subject is the run head as stored now; a recorded PASSED of another
    head (head_is_current false: a replay of an earlier state of the run, an incomplete run
    that went on) attested "PASSED" for that subject, which no replay read. It is WARNED,
    naming why, with the verdict in ledgerVerdict."""
    changed = json.loads(json.dumps(report))
    changed["R8"].update(verdict="PASSED", head_is_current=False, certified_head="00" * 32)
    predicate = replay_statement(changed)["predicate"]
    assert (predicate["result"], predicate["ledgerVerdict"]) == ("WARNED", "PASSED")
    assert predicate["passedTests"] == []
    assert predicate["warnedTests"] == [
        f"replay {report['R1']['exp']}: PASSED (of another state of the run than the subject: "
        f"the recorded replay did not read the events stored now)"]
    assert replay_statement(report)["predicate"]["result"] == "PASSED"  # a pass of this head
