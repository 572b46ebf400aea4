"""The compliance report of real runs of random shape says what the ledger holds.

Hypothesis draws the shape of small real runs (:mod:`report_oracle`: 1–3 epochs, 0 or 2 forked
loader workers, shuffle, ``drop_last``, built-in augmentation ops, metrics per epoch, per batch
or none and one of odd values (NaN, infinities, 64-bit integers, the float range), checkpoints
of one array or a map, user draws through ``exp.generator`` and ``exp.draw``, hyperparameters
with unicode and nested values, names, models, user ids and parents, a dataset with or without
train/test roles, and a run that ends ok, fails inside its ``with``, is suspended and left
incomplete, or is suspended and resumed; and runs killed in a subprocess), records one to three
of them into one ledger, and compares each report with an oracle the report code has no part
in: what the test logged, and the stored rows read with ``sqlite3`` and ``msgpack`` and hashed
by DESIGN's rules re-implemented in :mod:`report_oracle`.

Checked: every section REPORT.md requires is present and the report validates; identity,
status, error, head, streams, seeds and their tree, counts by kind and category, datasets and
the train/test overlap, hyperparameters and their digest, metrics, checkpoint digests, R2's
process, duration and resuming sessions, R4's packages and each resuming session's environment
differences, R10's history and the NDJSON appendix (bodies too) equal
the oracle; the replay verdict is PASSED for honest runs, FAILED naming the earliest injected
divergence for a run whose augmentation op no longer reproduces its draws, FAILED with the bad
event for a ledger copy whose stored body was edited or whose row was deleted (but for the
cut end of a run without a head, which it reports incomplete), INCONCLUSIVE without the data;
HTML, Markdown and both attestations render, draw every chart point at a number and name the
run's head, datasets, checkpoints, seed and configuration; a signed bundle verifies — against
the ledger too, also once a suspended run went on — and any changed field or byte of it, or of
a file it lists, does not; the same ledger gives the same bytes, in one process or across
processes, or differs only where REPORT.md lets a report differ (its id, generation time and
the dates counted from it); two runs of one seed report the same draws; ``ledger report`` and
``ledger verify-report`` exit as the README documents.

Examples per property: REPORT_EXAMPLES (default 8; fewer for those that start processes);
REPORT_SHRINK=0 reports a failing example without shrinking it. The long hunt, outside the
suite: ``REPORT_EXAMPLES=300 pytest tests/test_report_properties.py --hypothesis-seed=N``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cli.main import main
from conftest import ROOT, run_cli
from ledger.errors import BadInputError
from ledger.store import Store
from report.attest import provenance_statement, replay_statement
from report.check import check_report
from report.export import export_report
from report.html import render_html
from report.jsonview import canonical_json, pretty_json
from report.markdown import m, render_markdown
from report.model import ReportOptions, build_report
from report.signing import generate_key_pair, load_private_key
from report_helpers import report_of, schema_errors
from report_oracle import (FAILURE, Oracle, RunShape, StoredEvent, json_of, kinds, record,
                           resume, run_shapes, seed_of, stored_events, stream_heads,
                           value_digest, with_shape)
from test_divergence_properties import misbehaving_at

EXAMPLES = int(os.environ.get("REPORT_EXAMPLES", 8))
PROPERTY = settings(deadline=None, max_examples=EXAMPLES,
                    phases=[phase for phase in Phase if phase != Phase.shrink
                            or os.environ.get("REPORT_SHRINK") != "0"],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
SECTIONS = {"schema", "summary", *(f"R{number}" for number in range(15))}
ALLOWED_TO_DIFFER = {("R0", "report_id"), ("R0", "generated_at"), ("R13", "date"),
                     ("R11", "retain_from"), ("R11", "earliest_deletion")}
"""What REPORT.md lets two reports of one ledger differ in: the report's id and generation
time (R0), and the dates counted from it (R13's date, R11's retention period)."""
NOW = "2026-11-30T12:00:00+00:00"


def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new folder for one example."""
    return tmp_path_factory.mktemp("run")


def expected_status(shape: RunShape) -> str:
    """The status the run's report must show."""
    return {"ok": "ok", "resumed": "ok", "failed": "failed", "suspended": "incomplete"}[
        shape.ending]


def epoch_points(values: list[tuple[int | None, float]]) -> list[list[float]]:
    """Plotted points of the finite values: at its epoch (the last value of an epoch wins),
    else at its position among them."""
    points: dict[float, float] = {}
    finite = [(epoch, float(value)) for epoch, value in values if math.isfinite(value)]
    for position, (epoch, value) in enumerate(finite):
        points[float(position if epoch is None else epoch)] = value
    return [[x, y] for x, y in points.items()]


def shown(value: float) -> float | str:
    """A metric value as the report's JSON holds it (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def utc_of(t_ns: int) -> str:
    """A recorded time as the report writes it: RFC 3339 UTC, cut to milliseconds."""
    seconds, nanoseconds = divmod(t_ns, 10**9)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{nanoseconds // 10**6:03d}Z")


def environment_changes(recorded: dict[str, Any], resumed: dict[str, Any]
                        ) -> list[dict[str, Any]]:
    """The library, Python and platform leaves of two recorded environments that differ, by
    dotted key, as R4 lists a resuming session's."""
    def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(value, dict):
            return {prefix: value}
        return {key: leaf for name, item in value.items()
                for key, leaf in leaves(item, f"{prefix}.{name}" if prefix else name).items()}
    before, after = leaves(recorded), leaves(resumed)
    shown = ("packages.", "python.version", "blas.", "blas_threads.", "platform.")
    return [{"key": key, "recorded": json_of(before.get(key)), "resumed": json_of(after.get(key))}
            for key in sorted(set(before) | set(after))
            if key.startswith(shown) and before.get(key) != after.get(key)]


def assert_report_says(report: dict[str, Any], run: Oracle,
                       events: list[StoredEvent] | None = None) -> None:
    """``report`` states what the oracle knows of ``run`` (replay left aside); ``events``: the
    run's stored events when the report was made, if the ledger has grown since."""
    shape = run.shape
    events = stored_events(run.db, run.exp) if events is None else events
    own = [event for event in events if event.stream != "audit"]
    assert SECTIONS <= set(report) and all(report[f"R{n}"]["title"] for n in range(15))
    assert not schema_errors(report)
    status = expected_status(shape)
    completed = [event for event in events if event.kind == "run_completed"]
    head = completed[0].hash if completed else None
    assert len(completed) == (status != "incomplete")
    summary, r1 = report["summary"], report["R1"]
    assert (summary["exp"], r1["exp"], r1["name"], summary["name"], r1["model"]) == (
        run.exp, run.exp, shape.name, shape.name,
        shape.name if shape.model is None else shape.model)
    assert r1["parent"] == run.parent
    assert r1["parent_in_ledger"] is (None if run.parent is None else True)  # same ledger
    if shape.exp_id is not None:
        assert run.exp.startswith(f"{shape.exp_id}.")
    created = events[0].body
    r2 = report["R2"]
    assert (r2["host"], r2["pid"]) == (created["meta"]["host"], created["meta"]["pid"])
    resumed = [event for event in events if event.kind == "run_resumed"]
    # suspended before a resume: from the latest time recorded before it, outside audit
    gaps = [max(0, event.body["t"] - max(e.body["t"] for e in events[:position]
                                         if e.stream != "audit"))
            for position, event in enumerate(events) if event.kind == "run_resumed"]
    assert r2["suspended_s"] == round(sum(gaps) / 1e9, 3)
    if completed:
        assert r2["duration_s"] == round((completed[0].body["t"] - created["t"]) / 1e9, 3)
        assert r2["active_s"] == round(r2["duration_s"] - sum(gaps) / 1e9, 3)
    else:
        assert r2["duration_s"] is r2["active_s"] is None
    assert r2["resources"]["workers_spawned"] == kinds(events)["worker_spawned"]
    assert report["R4"]["packages"] == {k: str(v) for k, v in sorted(
        created["params"]["environment"]["packages"].items())}
    assert r2["resumes"] == [{"seq": e.seq, "at": utc_of(e.body["t"]),
                              "by": e.body["meta"].get("user"), "host": e.body["meta"]["host"],
                              "pid": e.body["meta"]["pid"], "suspended_s": round(gap / 1e9, 3)}
                             for e, gap in zip(resumed, gaps, strict=True)]
    assert report["R4"]["resumes"] == [
        {"seq": e.seq, "at": utc_of(e.body["t"]), "recorded": True,
         "differences": environment_changes(created["params"]["environment"],
                                            e.body["params"]["environment"])}
        for e in resumed]
    assert (summary["run_status"], r1["status"]) == (status, status)
    assert summary["complete"] is r1["complete"] is report["R9"]["complete"] is (head is not None)
    assert summary["run_head"] == r1["run_head"] == report["R9"]["run_head"] == head
    assert r1["purpose"] == shape.purpose
    assert r1["error"] == (FAILURE if status == "failed" else None)
    alerts = summary["alerts"]
    assert any(a.startswith("INCOMPLETE RUN") for a in alerts) is (status == "incomplete")
    assert any(a.startswith("RUN FAILED") and FAILURE in a for a in alerts) is (
        status == "failed")
    # metrics and checkpoints
    series = {entry["name"]: entry for entry in r1["metrics"]}
    assert set(series) == set(run.metrics)
    for name, values in run.metrics.items():
        entry = series[name]
        assert (entry["count"], entry["last"], entry["last_epoch"]) == (
            len(values), shown(values[-1][1]), values[-1][0])
        assert entry["points"] == epoch_points(values)
    final = r1["checkpoints"]["final"]
    assert r1["checkpoints"]["recorded"] == len(run.checkpoints)
    if run.checkpoints:
        epoch, digest = run.checkpoints[-1]
        assert [(c["name"], c["epoch"], c["digest"]) for c in final] == [("model", epoch, digest)]
    else:
        assert final == []
    # data
    datasets = {d["name"]: (d["digest"], d["records"], d["role"])
                for d in report["R5"]["datasets"]}
    assert datasets == run.datasets
    stored = {e.body["params"]["name"]: e.body["output"].hex() for e in events
              if e.kind == "dataset_registered"}
    assert stored == {name: digest for name, (digest, _n, _r) in run.datasets.items()}
    independence = report["R5"]["independence"]
    if shape.shared_test_rows is None:
        assert independence["status"] == "not_checked"
    else:
        assert independence["status"] == ("failed" if shape.shared_test_rows else "passed")
        assert [(p["train"], p["test"], p["overlap"]) for p in independence["pairs"]] == [
            ("train-rows", "test-rows", shape.shared_test_rows)]
        assert any("DATA OVERLAP" in a for a in alerts) is bool(shape.shared_test_rows)
    # configuration
    assert report["R6"]["hyperparameters"] == json.loads(json.dumps(shape.hyperparams))
    assert report["R6"]["digest"] == report["R3"]["configuration_digest"] == value_digest(
        shape.hyperparams)
    # randomness
    r7 = report["R7"]
    assert r7["root_seed"] == str(run.root_seed)
    assert r7["root_seed_hex"] == run.root_seed.to_bytes(16, "big").hex()
    assert events[0].body["params"]["root_seed"] == run.root_seed.to_bytes(16, "big")
    assert r7["root_seed_source"] == ("os" if shape.seed is None else "user")
    assert r7["counts_by_kind"] == dict(kinds(events)) and r7["events"] == len(events)
    counted = kinds(own)
    epochs = shape.epochs_run
    assert counted["epoch_reset"] == epochs
    augmenting = shape.augmenter() is not None
    assert counted["augmentation_batch"] == (epochs * shape.batches if augmenting else 0)
    assert r7["categories"] == {
        "experiment": 1, "worker_spawn": counted["worker_spawned"], "epoch_shuffle": epochs,
        "augmentation_batch": counted["augmentation_batch"],
        "user_draw": len(shape.user_draws) + shape.layers}
    nodes = {(tuple(node["path"]), node["kind"]): node for node in r7["seed_tree"]["nodes"]}
    for epoch in range(epochs):
        path = ("epoch", epoch, "shuffle")
        assert nodes[(path, "epoch_reset")]["seed"] == seed_of(run.root_seed, path)
    for path in shape.user_draws:
        folded = tuple("*" if isinstance(label, int) else label for label in path)
        node = nodes[(folded, "user_draw")]
        if folded == path and node["count"] == 1:
            assert node["seed"] == seed_of(run.root_seed, path)
    assert sum(node["count"] for node in r7["seed_tree"]["nodes"]) == sum(
        1 for e in own if e.body["path"])
    for event in own:
        if event.body["path"]:
            assert event.body["seed"].hex() == seed_of(run.root_seed, event.body["path"])
    # integrity
    heads = stream_heads(events)
    assert {s["stream"]: (s["count"], s["head"]) for s in report["R9"]["streams"]} == heads
    verification = report["R9"]["verification"]
    assert (verification["ok"], verification["events"], verification["intact"],
            verification["findings"]) == (True, len(events), len(events), [])
    assert summary["integrity"] == "VERIFIED"


def assert_appendix(lines: bytes, run: Oracle, bodies: bool = False) -> None:
    """The NDJSON appendix lists every event of the run as the store holds it (with
    ``bodies``, each line's body is the JSON view of the stored body)."""
    events = stored_events(run.db, run.exp)
    listed = [json.loads(line) for line in lines.split(b"\n")[:-1]]
    # a label may hold U+0085 or U+2028: escaped, so that str.splitlines reads the same lines
    assert [json.loads(line) for line in lines.decode("utf-8").splitlines()] == listed
    assert lines.endswith(b"\n") or not lines
    order = {"main": 0, "audit": 2}
    expected = sorted(events, key=lambda e: (order.get(e.stream, 1), e.stream, e.seq))
    assert [(e["stream"], e["seq"], e["kind"], e["hash"]) for e in listed] == [
        (e.stream, e.seq, e.kind, e.hash) for e in expected]
    for line, event in zip(listed, expected):
        body = event.body
        assert line["path"] == json.loads(json.dumps(body["path"]))
        for key in ("seed", "input", "output"):
            assert line[key] == (None if body[key] is None else body[key].hex())
        assert ("body" in line) is bodies
        if bodies:
            assert line["body"] == json_of(body)


def report_with_appendix(run: Oracle, **options: Any) -> tuple[dict[str, Any], bytes]:
    """The report of ``run`` (not recorded) and its appendix bytes."""
    handle = io.BytesIO()
    with Store.open(run.url) as store:
        report = build_report(store, run.exp, ReportOptions(
            record=False, data_dir=str(run.data_dir), **options),
            appendix=handle, appendix_name="events.ndjson")
    return report, handle.getvalue()


def assert_renders(report: dict[str, Any], run: Oracle) -> None:
    """HTML, Markdown and both attestations render, every chart coordinate is a number, and
    — when the ledger verifies (else its rows may say anything) — they name the run's head,
    datasets, checkpoints, root seed and configuration as the oracle has them."""
    html, markdown = render_html(report), render_markdown(report)
    assert html.startswith("<!DOCTYPE html>") and markdown.startswith("# Compliance")
    for section in SECTIONS - {"schema", "summary"}:
        assert f'id="{section}"' in html
    for chart in re.findall(r"<svg.*?</svg>", html, re.DOTALL):
        numbers = re.findall(r'(?:points|cx|cy|x|y|x1|y1|x2|y2)="([^"]*)"', chart)
        for number in " ".join(numbers).replace(",", " ").split():
            assert math.isfinite(float(number)), chart
    provenance, statement = provenance_statement(report), replay_statement(report)
    json.dumps([provenance, statement], allow_nan=False)
    expected = {"PASSED": "PASSED", "FAILED": "FAILED"}.get(report["R8"]["verdict"], "WARNED")
    if expected == "PASSED" and (report["R8"]["head_is_current"] is False
                                 or report["summary"]["integrity"] != "VERIFIED"):
        expected = "WARNED"  # a pass of another state of the run, or of rows since altered
    assert statement["predicate"]["result"] == expected
    if report["summary"]["integrity"] != "VERIFIED":
        return
    events = stored_events(run.db, run.exp)
    completed = [e.hash for e in events if e.kind == "run_completed"]
    head = completed or [e.hash for e in events if e.stream == "main"][-1:]
    for text in [run.exp, *completed, *(digest for digest, _n, _r in run.datasets.values())]:
        assert text in html and m(text) in markdown, text  # escaped as values are
    subjects = {s["digest"].get("ledger-state-v1") for s in provenance["subject"]}
    if run.checkpoints:
        assert subjects == {run.checkpoints[-1][1]}
    build = provenance["predicate"]["buildDefinition"]
    assert {d["name"]: d["digest"]["ledger-dataset-v1"] for d in build["resolvedDependencies"]
            if d["name"].startswith("dataset/")} == {
        f"dataset/{name}": digest for name, (digest, _n, _r) in run.datasets.items()}
    assert build["externalParameters"]["root_seed"] == str(run.root_seed)
    assert build["externalParameters"]["configuration_digest"] == value_digest(
        run.shape.hyperparams)
    assert [s["digest"]["ledger-event-v1"] for s in statement["subject"]] == head


def differing(a: Any, b: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of the leaves where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(differing(a.get(key), b.get(key), (*path, key))
                             for key in a.keys() | b.keys()))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(differing(x, y, (*path, str(index)))
                             for index, (x, y) in enumerate(zip(a, b))))
    return set() if a == b else {path}


# -- the properties ----------------------------------------------------------------------------

@PROPERTY
@given(shapes=st.lists(run_shapes(), min_size=1, max_size=3))
def test_the_report_of_every_run_of_a_ledger_says_what_the_ledger_holds(
        tmp_path_factory: pytest.TempPathFactory, shapes: list[RunShape]) -> None:
    folder = fresh(tmp_path_factory)
    runs: list[Oracle] = []
    for index, shape in enumerate(shapes):  # a later run names the one before as its parent
        runs.append(record(folder, shape, data_seed=index,
                           parent=runs[-1].exp if runs and index % 2 else None))
    for run in runs:
        full = run.shape.rows % 2 == 1  # the full appendix for some
        report, appendix = report_with_appendix(run, replay=True, full_appendix=full,
                                                jobs=1 + run.shape.batch_size % 2)
        assert_report_says(report, run)
        assert_appendix(appendix, run, bodies=full)
        assert report["R7"]["appendix"]["lines"] == len(stored_events(run.db, run.exp))
        r8 = report["R8"]
        assert (r8["verdict"], r8["counts"]["mismatched"], r8["first_divergence"]) == (
            "PASSED", 0, None), r8
        assert report["summary"]["replay"] == "PASSED"
        assert_renders(report, run)


@PROPERTY
@given(shape=run_shapes(marked=True, endings=("ok", "failed", "resumed")), data=st.data(),
       jobs=st.sampled_from([1, 2]))
def test_a_replay_that_diverges_fails_naming_the_earliest_divergence(
        tmp_path_factory: pytest.TempPathFactory, shape: RunShape, data: st.DataObject,
        jobs: int) -> None:
    run = record(fresh(tmp_path_factory), shape)
    positions = [(epoch, batch) for epoch in range(shape.epochs_run)
                 for batch in range(shape.batches)]
    injected = data.draw(st.sets(st.sampled_from(positions), min_size=1, max_size=4))
    with misbehaving_at(run.root_seed, injected):
        report = report_of(run.url, run.exp, replay=True, data_dir=str(run.data_dir),
                           jobs=jobs)
    r8 = report["R8"]
    epoch, batch = min(injected)
    assert (r8["verdict"], report["summary"]["replay"]) == ("FAILED", "FAILED")
    assert r8["counts"]["mismatched"] == len(injected)
    assert r8["counts"]["compared"] == r8["counts"]["matched"] + len(injected)
    assert (r8["first_divergence"]["kind"], r8["first_divergence"]["path"]) == (
        "augmentation_batch", ["epoch", epoch, "batch", batch, "augment"])
    assert f"REPLAY FAILED: {r8['reason']}" in report["summary"]["alerts"]
    assert report["summary"]["integrity"] == "VERIFIED"
    assert_renders(report, run)


def tampered_copy(run: Oracle, folder: Path, rng: random.Random, *, delete: bool = False
                  ) -> tuple[Oracle, str, int]:
    """A copy of the run's ledger with one byte of one stored body changed — or with
    ``delete`` one row deleted — (triggers dropped and restored around the edit); returns the
    copy and the (stream, seq) edited."""
    copy = folder / "tampered.db"
    with closing(sqlite3.connect(run.db)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
        rows = target.execute("SELECT id, stream, seq, body FROM ledger_events WHERE exp = ?",
                              (run.exp,)).fetchall()
        row_id, stream, seq, body = rng.choice(rows)
        at = rng.randrange(len(body))
        edited = body[:at] + bytes([body[at] ^ (1 << rng.randrange(8))]) + body[at + 1:]
        triggers = target.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                  "AND tbl_name = 'ledger_events'").fetchall()
        with target:
            for name, _sql in triggers:
                target.execute(f'DROP TRIGGER "{name}"')
            if delete:
                target.execute("DELETE FROM ledger_events WHERE id = ?", (row_id,))
            else:
                target.execute("UPDATE ledger_events SET body = ? WHERE id = ?",
                               (edited, row_id))
            for _name, sql in triggers:
                target.execute(sql)
    return dataclasses.replace(run, url=f"sqlite:///{copy}", db=copy), stream, seq


@PROPERTY
@given(shape=run_shapes(), seed=st.integers(0, 2**32), delete=st.booleans())
def test_a_ledger_with_an_edited_body_fails_verification_and_replay(
        tmp_path_factory: pytest.TempPathFactory, shape: RunShape, seed: int,
        delete: bool) -> None:
    """One byte of one stored body changed, or one row deleted, in a copy of the ledger:
    R9 names it, the replay fails — but for the last event of a stream of a run that has no
    head, whose loss nothing can detect (README: *incomplete*)."""
    folder = fresh(tmp_path_factory)
    run = record(folder, shape)
    copy, stream, seq = tampered_copy(run, folder, random.Random(seed), delete=delete)
    report = report_of(copy.url, copy.exp, replay=True, data_dir=str(copy.data_dir))
    verification = report["R9"]["verification"]
    events = stored_events(run.db, run.exp)
    if delete:
        last = stream_heads(events)[stream][0] - 1 == seq
        headless = expected_status(shape) == "incomplete" or (stream, seq) == next(
            (e.stream, e.seq) for e in events if e.kind == "run_completed")
        if last and headless:  # the run's end cut off: the report says it has no head
            assert verification["ok"] and report["summary"]["integrity"] == "VERIFIED"
            assert verification["events"] == len(events) - 1
            assert report["summary"]["run_status"] == "incomplete"
            assert report["summary"]["alerts"][0].startswith("INCOMPLETE RUN")
            return
        assert verification["ok"] is False and report["summary"]["integrity"] == "FAILED"
        assert report["R8"]["verdict"] == "FAILED"
        assert any(f["stream"] == stream for f in verification["findings"]) or (
            seq == 0 and not any(e.stream == stream for e in stored_events(copy.db, copy.exp))
            or stream == "main" and seq == len([e for e in events if e.stream == "main"]) - 1)
        return
    assert verification["ok"] is False and report["summary"]["integrity"] == "FAILED"
    assert (stream, seq) in {(f["stream"], f["seq"]) for f in verification["findings"]}
    assert verification["intact"] < verification["events"] == len(stored_events(run.db, run.exp))
    assert any(alert.startswith("INTEGRITY CHECK FAILED: ") for alert in
               report["summary"]["alerts"])
    assert report["R8"]["verdict"] == report["summary"]["replay"] == "FAILED"
    controls = {c["control"].split(" ")[0]: c["in_force"]
                for c in report["R9"]["append_only_controls"]}
    assert controls["database"] is True and controls["hash"] is False
    assert report_of(run.url, run.exp)["summary"]["integrity"] == "VERIFIED"  # the original
    assert_renders(report, copy)


def mutated(document: Any, rng: random.Random) -> Any:
    """``document`` with one leaf (or one list made shorter) changed."""
    if isinstance(document, dict) and document:
        key = rng.choice(sorted(document))
        return {**document, key: mutated(document[key], rng)}
    if isinstance(document, list) and document:
        index = rng.randrange(len(document))
        if rng.random() < 0.1:
            return document[:index] + document[index + 1:]
        return [*document[:index], mutated(document[index], rng), *document[index + 1:]]
    if isinstance(document, bool):
        return not document
    if isinstance(document, (int, float)):
        return document + 1
    if isinstance(document, str):
        return document + "x" if not document or rng.random() < 0.5 else document[:-1]
    return 0 if document is None else None


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One signing key pair for the module."""
    private, public, _fingerprint = generate_key_pair(tmp_path_factory.mktemp("keys") / "k")
    return private, public


@PROPERTY
@given(shape=run_shapes(), seed=st.integers(0, 2**32))
def test_a_signed_bundle_verifies_and_any_change_to_it_does_not(
        tmp_path_factory: pytest.TempPathFactory, key_pair: tuple[Path, Path], shape: RunShape,
        seed: int) -> None:
    rng = random.Random(seed)
    folder = fresh(tmp_path_factory)
    run = record(folder, shape)
    private, public = key_pair
    bundle = folder / "bundle"
    before = stored_events(run.db, run.exp)
    with Store.open(run.url) as store:
        result = export_report(store, run.exp, ReportOptions(data_dir=str(run.data_dir),
                                                             record=rng.random() < 0.5),
                               bundle=bundle, key=load_private_key(private))
    report_file = bundle / "report.json"
    original = report_file.read_bytes()
    parsed = json.loads(original)
    assert parsed == json.loads(pretty_json(result.report))
    assert_report_says(parsed, run, before)
    assert check_report(report_file, public).ok
    with Store.open(run.url) as store:
        assert check_report(report_file, public, exp=run.exp, store=store).ok
    if shape.ending == "suspended" and rng.random() < 0.5:  # the run goes on after its report
        resume(run)
        with Store.open(run.url) as store:
            later = check_report(report_file, public, exp=run.exp, store=store)
        assert later.ok, later.failures
        assert any("the run went on after the report" in note for note in later.notes)
    # one field changed
    changed = mutated(parsed, rng)
    if changed != parsed:
        report_file.write_bytes(pretty_json(changed) if rng.random() < 0.5
                                else json.dumps(changed).encode())
        try:
            assert not check_report(report_file, public).ok, differing(parsed, changed)
        except BadInputError:
            pass  # no longer a report at all (a section that is not a map)
    # one byte changed
    at = rng.randrange(len(original))
    flipped = original[:at] + bytes([original[at] ^ (1 << rng.randrange(7))]) + original[at + 1:]
    report_file.write_bytes(flipped)
    try:
        same = json.loads(flipped) == parsed
    except ValueError:
        same = False
    try:
        assert check_report(report_file, public).ok is same, (at, flipped[at - 20:at + 20])
    except BadInputError:
        assert not same
    report_file.write_bytes(original)
    # one byte of another file of the bundle changed
    other = rng.choice(sorted(p for p in bundle.iterdir() if p.name not in (
        "report.json", "report.json.sig")))
    data = other.read_bytes()
    at = rng.randrange(len(data))
    other.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    assert not check_report(report_file, public).ok, other.name
    if other.name != "SHA256SUMS":  # without the list, R0's digest alone tells the change
        (bundle / "SHA256SUMS").unlink()
        check = check_report(report_file, public)
        assert not check.ok and check.files[other.name] == "altered", check


@PROPERTY
@given(shape=run_shapes())
def test_the_same_ledger_gives_the_same_report(tmp_path_factory: pytest.TempPathFactory,
                                               shape: RunShape) -> None:
    from datetime import datetime
    run = record(fresh(tmp_path_factory), shape)
    fixed = {"report_id": "rpt-0123456789abcdef", "now": datetime.fromisoformat(NOW)}
    first, appendix = report_with_appendix(run, **fixed)
    second, again = report_with_appendix(run, **fixed)
    assert canonical_json(first) == canonical_json(second) and appendix == again
    assert render_html(first) == render_html(second)
    assert render_markdown(first) == render_markdown(second)
    later, _ = report_with_appendix(run)
    assert {path[:2] for path in differing(first, later)} <= ALLOWED_TO_DIFFER


@PROPERTY
@given(shape=run_shapes(endings=("ok", "failed", "resumed")))
def test_two_runs_of_one_seed_report_the_same_draws(tmp_path_factory: pytest.TempPathFactory,
                                                    shape: RunShape) -> None:
    folder = fresh(tmp_path_factory)
    shape = with_shape(shape, seed=shape.seed if shape.seed is not None else 7, exp_id=None)
    runs = [record(folder, shape), record(folder, shape)]
    (a, lines_a), (b, lines_b) = (report_with_appendix(run) for run in runs)
    for report, run in ((a, runs[0]), (b, runs[1])):
        assert_report_says(report, run)
    assert a["R1"]["run_head"] != b["R1"]["run_head"] or a["R1"]["run_head"] is None
    for section, key in (("R7", "seed_tree"), ("R7", "categories"), ("R7", "counts_by_kind"),
                         ("R6", "digest"), ("R1", "metrics"), ("R1", "checkpoints"),
                         ("R5", "datasets")):
        assert a[section][key] == b[section][key], (section, key)

    def draws(lines: bytes) -> list[tuple[Any, ...]]:
        return [(line["kind"], line["path"], line["seed"], line["input"], line["output"])
                for line in map(json.loads, lines.split(b"\n")[:-1]) if line["path"]]

    assert draws(lines_a) == draws(lines_b)


@dataclass(frozen=True)
class Ran:
    """What one ``ledger`` command did."""

    exit_code: int
    stdout: str
    stderr: str


@settings(PROPERTY, max_examples=max(2, EXAMPLES // 2))
@given(shape=run_shapes(), tamper=st.booleans(), seed=st.integers(0, 2**32))
def test_the_command_line_reports_every_run_and_exits_as_documented(
        tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
        key_pair: tuple[Path, Path], shape: RunShape, tamper: bool, seed: int) -> None:
    """``ledger report`` and ``ledger verify-report`` as an auditor runs them (``main``, as
    the ``ledger`` command calls it: the documented exit codes are its own)."""
    folder = fresh(tmp_path_factory)
    run = record(folder, shape)
    if tamper:
        run, _stream, _seq = tampered_copy(run, folder, random.Random(seed))

    def ledger(*args: str) -> Ran:
        """``ledger --db URL ARGS`` — without --db for a verify-report that reads no ledger
        (no --against-ledger), which refuses a --db it would not read (exit 2)."""
        reads_ledger = args[0] != "verify-report" or "--against-ledger" in args
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([*(("--db", run.url) if reads_ledger else ()), *args])
        out, err = capsys.readouterr()
        return Ran(int(exited.value.code or 0), out, err)

    shown = ledger("report", run.exp, "--no-record", "--data-dir", str(run.data_dir))
    assert shown.exit_code == 0, shown.stderr
    document = json.loads(shown.stdout)
    api = report_of(run.url, run.exp, data_dir=str(run.data_dir))
    assert {path[:2] for path in differing(document, api)} <= ALLOWED_TO_DIFFER
    for fmt in ("html", "md"):
        assert ledger("report", run.exp, "--no-record", "--format", fmt,
                      "-o", str(folder / f"r.{fmt}")).exit_code == 0
    private, public = key_pair
    bundle = folder / "bundle"
    made = ledger("report", run.exp, "--bundle", str(bundle), "--sign-key", str(private),
                  "--replay", "--data-dir", str(run.data_dir))
    assert made.exit_code == 0, made.stderr
    verdict = json.loads((bundle / "report.json").read_text())["R8"]["verdict"]
    assert verdict == ("FAILED" if tamper else "PASSED")
    checked = ledger("verify-report", str(bundle / "report.json"), "--public-key", str(public),
                     "--exp", run.exp, "--against-ledger")
    assert checked.exit_code == 0, checked.stderr
    assert ledger("verify-report", str(bundle / "report.json"), "--public-key", str(public),
                  "--exp", "exp-000000000000").exit_code == 1
    (bundle / "report.md").write_text("# changed\n")
    assert ledger("verify-report", str(bundle / "report.json"), "--public-key",
                  str(public)).exit_code == 1
    assert ledger("report", "exp-000000000000", "--no-record").exit_code == 2
    unsigned = folder / "unsigned"  # verify-report checks signed reports only: no signature, 2
    assert ledger("report", run.exp, "--bundle", str(unsigned), "--no-record").exit_code == 0
    refused = ledger("verify-report", str(unsigned / "report.json"), "--public-key", str(public))
    assert refused.exit_code == 2 and "no signature" in refused.stderr


KILLED = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from ledger.augment import DataAugmenter
    from ledger.experiment import ExperimentManager
    from ledger.iterator import TrainingDataIterator
    url, data_dir, seed, workers, batches_before_kill = sys.argv[1:6]
    rng = np.random.default_rng(0)
    with ExperimentManager(url, data_dir=data_dir) as manager:
        exp = manager.create_experiment("killed", seed=int(seed),
                                        hyperparams={"ß": [1, {"x": None}]})
        data = exp.register_dataset("rows", rng.normal(size=(24, 3)).astype(np.float32))
        batches = TrainingDataIterator(data, 5, experiment=exp, num_workers=int(workers),
                                       augmenter=DataAugmenter(noise_std=0.1), start_method="fork")
        taken = 0
        for epoch in range(3):
            for _batch in batches:
                taken += 1
                if taken == int(batches_before_kill):
                    exp.flush()
                    print(exp.id, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            exp.log_metric("epoch", epoch, epoch=epoch)
""")


@settings(PROPERTY, max_examples=max(2, EXAMPLES // 4))
@given(seed=st.integers(0, 2**128 - 1), workers=st.sampled_from([0, 2]),
       batches=st.integers(1, 15))
def test_a_run_killed_while_recording_is_reported_incomplete_and_intact(
        tmp_path_factory: pytest.TempPathFactory, seed: int, workers: int, batches: int) -> None:
    """A run whose process was killed (SIGKILL, after a flush) has no head: its report says
    incomplete, verifies what is there, and its replay passes on every draw it recorded."""
    folder = fresh(tmp_path_factory)
    url = f"sqlite:///{folder / 'ledger.db'}"
    killed = subprocess.run([sys.executable, "-c", KILLED, url, str(folder / "data"), str(seed),
                             str(workers), str(batches)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    exp = killed.stdout.strip()
    events = stored_events(folder / "ledger.db", exp)
    report = report_of(url, exp, replay=True, data_dir=str(folder / "data"))
    summary = report["summary"]
    assert (summary["run_status"], summary["complete"], summary["run_head"]) == (
        "incomplete", False, None)
    assert any(alert.startswith("INCOMPLETE RUN") for alert in summary["alerts"])
    assert report["R7"]["root_seed"] == str(seed)
    assert report["R7"]["counts_by_kind"] == dict(kinds(events))
    assert kinds(events)["augmentation_batch"] >= batches  # every batch taken was flushed
    assert kinds(events)["epoch_reset"] == (batches - 1) // 5 + 1
    assert {s["stream"]: (s["count"], s["head"]) for s in report["R9"]["streams"]} == \
        stream_heads(events)
    assert report["R9"]["verification"]["ok"] and summary["integrity"] == "VERIFIED"
    assert report["R8"]["verdict"] == "PASSED", report["R8"]["reason"]
    assert report["R6"]["hyperparameters"] == {"ß": [1, {"x": None}]}


@PROPERTY
@given(shape=run_shapes(), exports=st.lists(st.tuples(
    st.sampled_from(["json", "html", "md", "bundle"]), st.booleans(), st.booleans()),
    min_size=1, max_size=3))
def test_every_recorded_replay_and_export_is_in_the_history_of_later_reports(
        tmp_path_factory: pytest.TempPathFactory, key_pair: tuple[Path, Path], shape: RunShape,
        exports: list[tuple[str, bool, bool]]) -> None:
    """Exports (format, with --replay, signed) recorded one after the other: R10 of a later
    report lists each replay and export in order, R8 quotes the last replay, and R9 counts
    the audit stream that holds them."""
    folder = fresh(tmp_path_factory)
    run = record(folder, shape)
    expected: list[tuple[str, str | None, str | None]] = []
    for number, (fmt, replayed, signed) in enumerate(exports):
        bundle = folder / f"bundle{number}" if fmt == "bundle" else None
        output = None if bundle else folder / f"report{number}.{fmt}"
        signed = signed and fmt in ("json", "bundle")
        with Store.open(run.url) as store:
            result = export_report(store, run.exp, ReportOptions(replay=replayed,
                                                                 data_dir=str(run.data_dir)),
                                   fmt="json" if bundle else fmt, output=output, bundle=bundle,
                                   key=load_private_key(key_pair[0]) if signed else None)
        if replayed:
            expected.append(("replay_recorded", "PASSED", None))
        expected.append(("report_exported", result.report["R8"]["verdict"],
                         result.report["R0"]["report_id"]))
        assert result.report["R8"]["verdict"] == ("PASSED" if replayed or any(
            kind == "replay_recorded" for kind, _o, _i in expected) else "NOT_REPLAYED")
    report = report_of(run.url, run.exp, data_dir=str(run.data_dir))
    history = report["R10"]["events"]
    assert [(e["kind"], e["outcome"]) for e in history] == [(k, o) for k, o, _i in expected]
    assert [e["seq"] for e in history] == list(range(len(expected)))
    for entry, (_kind, _outcome, report_id) in zip(history, expected):
        if report_id is not None:
            assert report_id in entry["detail"]
    audit = [e for e in stored_events(run.db, run.exp) if e.stream == "audit"]
    assert [e.kind for e in audit] == [kind for kind, _o, _i in expected]
    streams = {s["stream"]: s["count"] for s in report["R9"]["streams"]}
    assert streams["audit"] == len(expected)
    replays = any(kind == "replay_recorded" for kind, _o, _i in expected)
    assert report["R8"]["verdict"] == ("PASSED" if replays else "NOT_REPLAYED")
    assert report["R8"]["source"] == ("recorded in the audit stream" if replays else None)
    assert_report_says(report, run)


@pytest.mark.slow
@settings(PROPERTY, max_examples=max(2, EXAMPLES // 4))
@given(shapes=st.lists(run_shapes(), min_size=1, max_size=2))
def test_ledger_report_gives_the_same_report_in_any_process(
        tmp_path_factory: pytest.TempPathFactory, shapes: list[RunShape]) -> None:
    """``ledger report`` run as separate commands — each with its own random hash seed (set
    order), and another number of replay jobs — writes the same report, but for what
    REPORT.md lets differ and the replay's own times, and the same appendix byte for byte."""
    assert "PYTHONHASHSEED" not in os.environ  # else every command would hash alike
    folder = fresh(tmp_path_factory)
    runs = [record(folder, shape, data_seed=index) for index, shape in enumerate(shapes)]
    for run in runs:
        documents = []
        for number in range(2):
            (folder / run.exp / str(number)).mkdir(parents=True)
            appendix = folder / run.exp / str(number) / "events.ndjson"
            made = run_cli("--db", run.url, "report", run.exp, "--no-record", "--replay",
                           "--jobs", str(number + 1), "--data-dir", str(run.data_dir),
                           "--appendix", str(appendix), "--generated-by", "auditor",
                           "--trust", "divergence_ops", "--trust", "report_oracle",
                           env={"PYTHONPATH": str(ROOT / "tests")})
            assert made.returncode == 0, made.stderr
            documents.append((json.loads(made.stdout), appendix.read_bytes()))
        (first, lines), (second, again) = documents
        assert lines == again
        allowed = ALLOWED_TO_DIFFER | {("R8", "started_at"), ("R8", "finished_at")}
        assert {path[:2] for path in differing(first, second)} <= allowed, differing(first,
                                                                                     second)
        assert_report_says(first, run)
        assert first["R8"]["verdict"] == "PASSED", first["R8"]["reason"]


@PROPERTY
@given(shape=run_shapes())
def test_a_replay_without_the_runs_data_is_inconclusive(
        tmp_path_factory: pytest.TempPathFactory, shape: RunShape) -> None:
    """Replay needs the stored datasets: without them (another data folder) R8 is
    INCONCLUSIVE with its reason, alerted, and the replay attestation WARNED."""
    folder = fresh(tmp_path_factory)
    run = record(folder, shape)
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    report = report_of(run.url, run.exp, replay=True, data_dir=str(elsewhere))
    r8 = report["R8"]
    assert (r8["verdict"], report["summary"]["replay"]) == ("INCONCLUSIVE", "INCONCLUSIVE")
    assert r8["reason"] and f"REPLAY INCONCLUSIVE: {r8['reason']}" in report["summary"]["alerts"]
    assert replay_statement(report)["predicate"]["result"] == "WARNED"
    if shape.shared_test_rows is not None:
        assert report["R5"]["independence"]["status"] == "not_checked"
    events = stored_events(run.db, run.exp)
    assert report["R7"]["counts_by_kind"] == dict(kinds(events))
    assert report["summary"]["integrity"] == "VERIFIED"
    assert report["summary"]["run_status"] == expected_status(shape)
