"""The report model (REPORT.md R0–R14) of honest, incomplete, failed, tampered, diverged and
unreplayable runs: each is reported, saying what is wrong, and every report validates."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from ledger.audit import record_audit
from ledger.augment import DataAugmenter, register_op
from ledger.canonical import canonical
from ledger.datasets import dataset_digest
from ledger.digests import value_digest
from ledger.errors import BadInputError, StoreError, UnknownExperimentError
from ledger.events import REPLAY_RECORDED, REPORT_EXPORTED, decode_body
from ledger.experiment import Experiment, ExperimentManager
from ledger.experiment_info import describe_experiment
from ledger.iterator import TrainingDataIterator
from ledger.seeds import SEED_SCHEME, derive_bytes
from ledger.store import Store, StreamWriter
from ledger_builders import drop_append_only_triggers, execute, record_experiment
from replay.engine import record_replay, replay_run
from replay_helpers import record_run, sample_data
from report.attest import replay_statement
from report.data_checks import RECORD_TAG, record_digests
from report.facts import RunFacts, gather
from report.governance import RETENTION_CLASSES, add_months, r11_retention, r13_signoff
from report.html import render_html
from report.markdown import render_markdown
from report.metrics import MAX_POINTS, MAX_SERIES, MetricCurves, Series
from report.model import NOTHING_COMPARED_ALERT, ReportOptions, build_report
from report.sections import r2_who_and_when, r3_code, r4_environment, r6_configuration
from report.seedtree import SeedTree
from report_helpers import report_of, schema_errors


@register_op("test_report_unseeded", version=1)
def unseeded(batch: np.ndarray, rng: np.random.Generator) -> None:
    """A broken op: it ignores its generator, so replay must diverge."""
    batch += np.random.default_rng().normal(0.0, 0.1, batch.shape).astype(batch.dtype)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """One recorded run (2 epochs of 10 batches), shared: (url, data folder, experiment id)."""
    folder = tmp_path_factory.mktemp("honest")
    url = f"sqlite:///{folder / 'ledger.db'}"
    return url, folder / "data", record_run(url, folder / "data")


def test_an_honest_run_reports_every_section(honest: tuple[str, Path, str]) -> None:
    url, data_dir, exp = honest
    report = report_of(url, exp, data_dir=str(data_dir))
    summary = report["summary"]
    assert (summary["run_status"], summary["complete"], summary["integrity"],
            summary["replay"]) == ("ok", True, "VERIFIED", "NOT_REPLAYED")
    with Store.open(url) as store:
        head = store.first_event_hash(exp, "run_completed")
    assert report["R1"]["run_head"] == report["R9"]["run_head"] == head.hex()
    assert [s["name"] for s in report["R1"]["metrics"]] == ["batch_sum"]
    assert [point[0] for point in report["R1"]["metrics"][0]["points"]] == [0, 1]
    assert report["R6"]["hyperparameters"] == {"lr": 0.1}
    assert report["R6"]["digest"] == report["R3"]["configuration_digest"] == value_digest(
        {"lr": 0.1}).hex()
    features, labels = sample_data()
    assert report["R5"]["datasets"][0]["digest"] == dataset_digest(features, labels).hex()
    assert report["R5"]["datasets"][0]["records"] == 600
    r7 = report["R7"]
    assert (r7["root_seed"], r7["root_seed_source"], r7["scheme"]) == ("42", "user",
                                                                       "ledger/seed/v1")
    assert r7["categories"] == {"experiment": 1, "worker_spawn": 0, "epoch_shuffle": 2,
                                "augmentation_batch": 20, "user_draw": 0}
    nodes = {tuple(node["path"]): node for node in r7["seed_tree"]["nodes"]}
    assert nodes[("epoch", 1, "shuffle")]["seed"] == derive_bytes(42, ("epoch", 1,
                                                                       "shuffle")).hex()
    batches = nodes[("epoch", 0, "batch", "*", "augment")]
    assert (batches["count"], batches["range"], batches["seed"]) == (10, [0, 9], None)
    assert report["R7"]["appendix"] is None
    assert [row["section"] for row in report["R14"]["rows"]] == [f"R{n}" for n in range(14)]
    assert report["R9"]["verification"] == {"ok": True, "events": 27, "intact": 27,
                                            "chains": 1, "findings": []}
    assert all(control["in_force"] for control in report["R9"]["append_only_controls"])
    assert "NOT REPLAYED" in " ".join(summary["alerts"])


def test_no_text_claims_that_a_regulation_requires_reproducibility(
        honest: tuple[str, Path, str]) -> None:
    url, _data, exp = honest
    text = json.dumps(report_of(url, exp)).lower()
    assert "requires reproducibility" not in text and "require reproducibility" not in text
    assert "does not by itself establish conformity" in text


def test_the_envelope_carries_the_options_given(honest: tuple[str, Path, str]) -> None:
    """R0 takes the report id, author and time given (export and the CLI pass them), the time
    in UTC whatever the zone it was given in."""
    url, _data, exp = honest
    moment = datetime(2025, 1, 1, 12, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    r0 = report_of(url, exp, report_id="rpt-0123456789abcdef", generated_by="ada@lab",
                   now=moment)["R0"]
    assert (r0["report_id"], r0["generated_by"], r0["generated_at"]) == (
        "rpt-0123456789abcdef", "ada@lab", "2025-01-01T10:00:30Z")


@pytest.mark.parametrize("code,alerts,distribution", [
    ({"vcs": "git", "commit": "0" * 40, "dirty": False, "diff_digest": None, "untracked": 0},
     [], None),
    ({"vcs": None}, ["no code version recorded (not run from a git checkout)"], None),
    ({"vcs": None, "distribution": {"name": "my-trainer", "version": "1.2.0"}},
     ["no commit recorded: the code was installed from the distribution my-trainer 1.2.0, a "
      "release name no digest ties to the code that ran"],
     {"name": "my-trainer", "version": "1.2.0"}),
    ({"vcs": None, "distribution": {"name": "my-trainer", "version": 3}},
     ["no code version recorded (not run from a git checkout)"], None)])
def test_a_replayed_run_of_committed_code_needs_no_attention(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: dict[str, Any],
        alerts: list[str], distribution: dict[str, str] | None) -> None:
    """An honest run from a clean checkout, replayed and intact, has no alert and does not
    ask for attention (every alert is something a reader must act on); without a code
    version, that is its one alert. R3 names the release code installed from a wheel came
    from, and nothing for a recorded release that is not text."""
    import ledger.experiment

    monkeypatch.setattr(ledger.experiment, "code_version", lambda *_: code)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    monkeypatch.undo()
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp, data_dir=tmp_path / "data"))
    report = report_of(url, exp)
    summary = report["summary"]
    assert (summary["alerts"], summary["attention"]) == (alerts, bool(alerts))
    assert (summary["integrity"], summary["findings"], summary["replay"]) == ("VERIFIED", 0,
                                                                             "PASSED")
    assert report["R3"]["distribution"] == distribution
    assert schema_errors(report) == []


@pytest.mark.parametrize("scheme", [SEED_SCHEME, "ledger/seed/v9"])
def test_a_seed_scheme_this_program_does_not_know_is_alerted(tmp_path: Path,
                                                             scheme: str) -> None:
    """Seeds are re-derived by the recorded scheme: one this program does not know means its
    seed paths cannot be checked here, which the summary says; the known one says nothing."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, extra_params={"seed_scheme": scheme})
    alerts = report_of(url, recorded.exp)["summary"]["alerts"]
    assert [alert for alert in alerts if "scheme" in alert] == (
        [] if scheme == SEED_SCHEME else [f"unknown seed derivation scheme {scheme!r}"])


def test_an_unknown_experiment_is_refused(honest: tuple[str, Path, str]) -> None:
    url, _data, _exp = honest
    with Store.open(url) as store, pytest.raises(UnknownExperimentError):
        build_report(store, "exp-000000000000", ReportOptions(record=False))


def test_an_incomplete_run_says_so_everywhere(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, complete=False)
    report = report_of(url, recorded.exp)
    assert report["summary"]["complete"] is False and report["summary"]["run_head"] is None
    assert report["summary"]["run_status"] == "incomplete"
    assert report["R9"]["run_head"] is None and report["R1"]["complete"] is False
    assert report["summary"]["alerts"][0].startswith("INCOMPLETE RUN")
    assert report["summary"]["headline"].startswith(f"{recorded.exp}: run incomplete, "
                                                    f"INCOMPLETE; ledger VERIFIED")
    assert report["R9"]["verification"]["ok"]  # what is there is intact


def test_a_failed_run_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with pytest.raises(RuntimeError):
            with manager.create_experiment("doomed", seed=1) as exp:
                raise RuntimeError("out of memory")
    report = report_of(url, exp.id)
    assert report["summary"]["run_status"] == report["R1"]["status"] == "failed"
    assert "RuntimeError: out of memory" in report["R1"]["error"]
    assert (f"RUN FAILED: run_completed records status failed ({report['R1']['error']})"
            in report["summary"]["alerts"])


def test_a_tampered_run_is_reported_with_the_finding(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET output = :value WHERE exp = :exp AND "
                       "stream = 'main' AND seq = 3", value=bytes(32), exp=recorded.exp)
    report = report_of(url, recorded.exp, replay=True)
    assert report["summary"]["integrity"] == "FAILED"
    finding = report["R9"]["verification"]["findings"][0]
    assert (finding["stream"], finding["seq"]) == ("main", 3)
    events = recorded.event_count()
    intact = events - (len(recorded.main) - 3)
    assert (report["R9"]["verification"]["events"],
            report["R9"]["verification"]["intact"]) == (events, intact)
    [chain_control] = [c for c in report["R9"]["append_only_controls"]
                       if c["control"].startswith("hash chain")]
    assert chain_control["detail"].endswith(f", {intact} intact before the first bad event of "
                                            f"each broken chain")
    assert chain_control["in_force"] is False  # alerted once, as INTEGRITY CHECK FAILED
    assert not [alert for alert in report["summary"]["alerts"] if "hash chain" in alert]
    findings = report["R9"]["verification"]["findings"]
    assert report["summary"]["findings"] == len(findings)
    assert report["summary"]["alerts"][0] == (
        f"INTEGRITY CHECK FAILED: {len(findings)} finding(s); first: {recorded.exp} stream main "
        f"seq 3: {finding['problem']}")
    controls = {c["control"].split(" refuse")[0]: c["in_force"]
                for c in report["R9"]["append_only_controls"]}
    assert controls["database triggers"] is False
    assert report["R8"]["verdict"] == "FAILED" and "verification" in report["R8"]["reason"]


def test_a_recorded_pass_quoted_from_a_ledger_that_no_longer_verifies_is_flagged(
        tmp_path: Path) -> None:
    """A replay certified the run, then a row was edited: the report still quotes the recorded
    PASSED (it is evidence of who claimed what), but beside a ledger that fails verification it
    must not read as a pass of the rows stored now."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    certified = report_of(url, exp, replay=True, data_dir=str(tmp_path / "data"), record=True)
    assert certified["R8"]["verdict"] == "PASSED"
    honest = report_of(url, exp)
    assert honest["R8"]["verdict"] == "PASSED" and "as recorded by" in honest["summary"][
        "headline"]
    assert "fails verification" not in honest["summary"]["headline"]
    assert not [a for a in honest["summary"]["alerts"] if a.startswith("RECORDED PASS")]
    with Store.open(url) as store:
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET output = :value WHERE exp = :exp AND "
                       "stream = 'main' AND seq = 3", value=bytes(32), exp=exp)
    tampered = report_of(url, exp)
    summary = tampered["summary"]
    assert (summary["integrity"], summary["replay"]) == ("FAILED", "PASSED")
    assert summary["headline"].endswith(" — quoted from a ledger that fails verification")
    assert [a for a in summary["alerts"] if a.startswith("RECORDED PASS NOT TRUSTED: ")]
    # the replay attestation, read alone, said PASSED: byte for byte the untampered one's
    assert replay_statement(honest)["predicate"]["result"] == "PASSED"
    predicate = replay_statement(tampered)["predicate"]
    assert (predicate["result"], predicate["ledgerVerdict"], predicate["passedTests"]) == (
        "WARNED", "PASSED", [])
    assert predicate["warnedTests"] == [f"replay {exp}: PASSED (quoted from a ledger that fails "
                                        f"verification: the recorded replay read the rows as "
                                        f"they were, not those stored now)"]


def test_a_run_completed_moved_out_of_main_is_reported_complete_as_show_says(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET stream = 'mainx' WHERE exp = :exp AND "
                       "kind = 'run_completed'", exp=recorded.exp)
        shown = describe_experiment(store, recorded.exp)
    report = report_of(url, recorded.exp)
    summary = report["summary"]
    assert (shown.status, shown.head) == ("ok", recorded.head)
    assert (summary["run_status"], summary["complete"], summary["run_head"]) == (
        "ok", True, recorded.head.hex())
    assert report["R1"]["status"] == "ok" and report["R1"]["complete"] is True
    assert summary["headline"].startswith(f"{recorded.exp}: run ok, complete; ledger FAILED")


def test_quoted_kinds_written_where_they_do_not_belong_are_not_taken(tmp_path: Path) -> None:
    """Whoever can write the ledger can append any kind to any stream: a replay_recorded
    outside the audit stream is no replay evidence, and a later experiment_created or
    run_completed does not replace the run's own (verification names what is out of place)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        for stream, events in {"worker-7": [
                ("replay_recorded", {"verdict": "certified", "head": recorded.head.hex()}),
                ("run_completed", {"status": "failed", "error": "forged"})],
                "main": [("experiment_created", {"name": "x", "model": "forged"})]}.items():
            writer = StreamWriter(store, recorded.exp, stream, flush_interval=None)
            for kind, params in events:
                writer.append(kind, params=params)
            writer.close()
    report = report_of(url, recorded.exp)
    assert (report["R8"]["verdict"], report["R10"]["events"]) == ("NOT_REPLAYED", [])
    assert (report["R1"]["model"], report["R1"]["status"], report["R1"]["error"]) == (
        "logistic-regression", "ok", None)
    assert report["summary"]["integrity"] == "FAILED"


def test_a_run_completed_outside_main_is_the_head_where_main_ends_at_its_seq(
        tmp_path: Path) -> None:
    """The run head is the hash of the run's run_completed: when that event is in another
    stream (a forgery verification names), main's head is not taken for it, even where main
    holds exactly as many events as a main ending with it would."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=0, complete=False)
        writer = StreamWriter(store, recorded.exp, "worker-7", flush_interval=None)
        for epoch in range(len(recorded.main) - 1):
            writer.append("metric", params={"epoch": epoch, "name": "pad", "value": 0.0})
        writer.append("run_completed", params={"status": "ok"})
        writer.close()
        head = store.first_event_hash(recorded.exp, "run_completed")
    assert head is not None and head != recorded.main[-1].hash
    report = report_of(url, recorded.exp)
    assert report["R9"]["run_head"] == report["summary"]["run_head"] == head.hex()


def test_a_diverged_run_fails_its_replay_and_the_replay_is_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    augmenter = DataAugmenter(ops=[{"op": "test_report_unseeded"}])
    exp = record_run(url, tmp_path / "data", augmenter=augmenter, epochs=1)
    report = report_of(url, exp, replay=True, data_dir=str(tmp_path / "data"), record=True)
    r8 = report["R8"]
    assert (r8["verdict"], r8["source"]) == ("FAILED", "run by this report")
    assert r8["first_divergence"]["kind"] == "augmentation_batch"
    assert r8["counts"]["mismatched"] >= 1 and r8["counts"]["missing"] == 0
    divergence = r8["first_divergence"]
    assert r8["reason"].startswith(f"{exp} {divergence['stream']}#{divergence['seq']} "
                                   f"augmentation_batch [")
    assert f"REPLAY FAILED: {r8['reason']}" in report["summary"]["alerts"]
    later = report_of(url, exp)
    assert later["R8"]["verdict"] == "FAILED"
    assert later["R8"]["environment"] == r8["environment"] and r8["environment"]["packages"]
    assert later["R8"]["source"] == "recorded in the audit stream"
    assert "replay FAILED (as recorded by " in later["summary"]["headline"]
    assert "not re-run by this report" in later["summary"]["headline"]
    assert "as recorded" not in report["summary"]["headline"]  # the replay it ran itself
    assert [(e["kind"], e["outcome"]) for e in later["R10"]["events"]] == [
        ("replay_recorded", "FAILED")]


def test_a_recorded_replay_is_quoted_and_listed_in_the_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp, data_dir=tmp_path / "data"))
    report = report_of(url, exp)
    r8 = report["R8"]
    assert (r8["verdict"], r8["head_is_current"]) == ("PASSED", True)
    assert r8["counts"]["compared"] == r8["counts"]["matched"] == 23
    assert r8["certified_head"] == report["R9"]["run_head"]
    assert report["R10"]["events"][0]["kind"] == "replay_recorded"
    assert not [alert for alert in report["summary"]["alerts"] if "REPLAY" in alert.upper()]


def test_the_latest_recorded_replay_is_quoted_with_what_it_recorded(tmp_path: Path) -> None:
    """Without --replay, R8 quotes the last replay_recorded of the audit stream, not the first:
    a later failed replay must not hide behind an earlier pass. What it recorded (who, when,
    why it failed, environment, plugins, counts) is quoted as recorded."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        head = recorded.head.hex()
        record_audit(store, recorded.exp, REPLAY_RECORDED, {"verdict": "certified",
                                                            "head": head})
        later = record_audit(store, recorded.exp, REPLAY_RECORDED, {
            "verdict": "diverged", "head": head, "replayed_by": "eve@lab",
            "finished_t": recorded.created_t + 10**9, "environment": {"python": "3.11.7"},
            "plugins": ["test_report_dropout/1"], "matched": 1, "mismatched": 1,
            "compared": {"epoch_reset": 2, "metric": 0},
            "first_divergence": {"stream": "main", "seq": 3, "kind": "epoch_reset",
                                 "path": ["epoch", 0, "shuffle"], "cause": "output",
                                 "detail": "digest differs"}})
    report = report_of(url, recorded.exp)
    r8 = report["R8"]
    assert (r8["verdict"], r8["audit_seq"], r8["replayed_by"]) == ("FAILED", later.seq, "eve@lab")
    assert r8["reason"] == "main#3 epoch_reset [epoch/0/shuffle]: output — digest differs"
    assert r8["first_divergence"]["detail"] == "digest differs"
    assert (r8["environment"], r8["plugins"]) == ({"python": "3.11.7"},
                                                  ["test_report_dropout/1"])
    assert (r8["counts"]["compared"], r8["counts"]["mismatched"]) == (2, 1)
    assert f"REPLAY FAILED: {r8['reason']}" in report["summary"]["alerts"]
    assert r8["finished_at"] == "2023-11-14T22:13:21.000Z"
    assert report["summary"]["headline"].endswith(
        "replay FAILED (as recorded by eve@lab at 2023-11-14T22:13:21.000Z; not re-run by this "
        "report: --replay re-runs it)")


@pytest.mark.parametrize("certificate,verdict,current", [
    ({"verdict": "certified", "head": "00" * 32}, "PASSED", False),
    ({"verdict": "diverged", "first_divergence": "forged"}, "FAILED", False),
    ({"verdict": "certified"}, "PASSED", False)])
def test_a_recorded_pass_of_another_head_is_flagged(tmp_path: Path, certificate: dict[str, Any],
                                                   verdict: str, current: bool) -> None:
    """A recorded certificate vouches only for the head it names: a pass of another head (or
    none) is not a pass of this run, and the report says so; a divergence that is not a map
    gives no reason rather than stopping the report."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        record_audit(store, recorded.exp, REPLAY_RECORDED, certificate)
    report = report_of(url, recorded.exp)
    r8 = report["R8"]
    assert (r8["verdict"], r8["head_is_current"], r8["reason"]) == (verdict, current, None)
    flagged = "the recorded replay certified another head than the run's current head"
    assert (flagged in report["summary"]["alerts"]) is (verdict == "PASSED")
    unquoted = ("REPLAY FAILED: the recorded verdict names no divergence that can be quoted"
                in report["summary"]["alerts"])
    assert unquoted is (verdict == "FAILED")  # never "REPLAY FAILED: None"


def test_a_recorded_certificate_of_other_types_still_gives_a_valid_report(
        tmp_path: Path) -> None:
    """Anyone who can write the ledger can append a replay_recorded whose fields have other
    types: R8 and R10 quoted them as they were, and the report no longer validated against
    schemas/report.v1.json (counts of text, plugins as maps, a head that is no SHA-256, a
    replayer that is a list). What has the certificate's types is quoted; the rest is left
    out."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        record_audit(store, recorded.exp, REPLAY_RECORDED, {
            "verdict": "certified", "head": "not a hash", "replayed_by": ["eve"],
            "compared": {"epoch_reset": 2, "forged": "many", "flag": True}, "matched": "all",
            "mismatched": 0, "not_draws": {"metric": "x", "checkpoint": 1},
            "environment_differences": [{"key": "numpy"}, "text"], "plugins": ["p/1", {}],
            "first_divergence": "forged"})
        record_audit(store, recorded.exp, REPORT_EXPORTED, {"report_id": "rpt-x",
                                                            "generated_by": 5,
                                                            "replay_verdict": ["PASSED"]})
    report = report_of(url, recorded.exp)  # validated against the schema
    assert [(e["by"], e["outcome"]) for e in report["R10"]["events"]] == [
        (None, "PASSED"), (None, None)]
    r8 = report["R8"]
    assert (r8["verdict"], r8["certified_head"], r8["head_is_current"]) == ("PASSED", None,
                                                                           False)
    assert r8["counts"] == {"compared": 2, "matched": None, "mismatched": 0, "missing": 0,
                            "extra": 0, "by_kind": {"epoch_reset": 2},
                            "not_draws": {"checkpoint": 1}, "skipped": {}}
    assert (r8["replayed_by"], r8["plugins"], r8["first_divergence"]) == (None, ["p/1"], None)
    assert r8["environment_differences"] == [{"key": "numpy"}]


def test_the_environment_alert_names_three_differences_and_counts_the_rest(
        tmp_path: Path) -> None:
    """The alert names the first three differences of the replay environment, by key, and
    counts the others, so that it stays one line however many packages changed."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        record_audit(store, recorded.exp, REPLAY_RECORDED, {
            "verdict": "certified", "head": recorded.head.hex(),
            "environment_differences": [{"key": f"packages.p{n}", "recorded": "1.0",
                                         "current": "2.0"} for n in range(5)]})
    alerts = report_of(url, recorded.exp)["summary"]["alerts"]
    assert [alert for alert in alerts if "replay environment" in alert] == [
        "the replay environment differs from the recorded one: "
        + "; ".join(f"packages.p{n} 1.0 recorded, 2.0 at replay" for n in range(3))
        + " and 2 more"]


def test_r1_shows_the_last_checkpoint_of_each_name_and_counts_them_all(tmp_path: Path) -> None:
    """R1's final checkpoints are the last one logged under each name (by name), and it counts
    every checkpoint recorded: an earlier state must not pass for the final model."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("checkpoints", seed=1) as exp:
            exp.log_checkpoint("model", {"w": np.zeros(2)}, epoch=0)
            last = exp.log_checkpoint("model", {"w": np.ones(2)}, epoch=1)
            ema = exp.log_checkpoint("ema", {"w": np.ones(3)}, epoch=1)
    assert last is not None and ema is not None
    checkpoints = report_of(url, exp.id)["R1"]["checkpoints"]
    assert checkpoints["recorded"] == 3
    assert [(c["name"], c["epoch"], c["digest"]) for c in checkpoints["final"]] == [
        ("ema", 1, ema.output.hex()), ("model", 1, last.output.hex())]


def test_a_recorded_verdict_that_is_not_text_is_inconclusive(tmp_path: Path) -> None:
    """A replay_recorded certificate is read back from the audit stream, which anyone who can
    write the ledger appends to: a verdict that is a list (unhashable) made R8 and R10 look it
    up in a dict and the report stopped with ``TypeError: unhashable type: 'list'``."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store:
        record_audit(store, exp, REPLAY_RECORDED, {"verdict": ["certified"]})
    report = report_of(url, exp)
    assert report["R8"]["source"] == "recorded in the audit stream"
    assert report["R8"]["verdict"] == "INCONCLUSIVE"
    assert [(e["kind"], e["outcome"]) for e in report["R10"]["events"]] == [
        ("replay_recorded", "INCONCLUSIVE")]


@pytest.mark.parametrize("field,value,seq,kind", [
    ("seq", "forged", None, "replay_recorded"), ("seq", True, None, "replay_recorded"),
    ("seq", b"\x01", None, "replay_recorded"), ("kind", 5, 0, "5"),
    ("kind", None, 0, "null"), ("kind", ["replay_recorded"], 0, '["replay_recorded"]'),
    ("kind", float("nan"), 0, '"NaN"'), ("params", [1], 0, "replay_recorded")])
def test_an_audit_body_whose_seq_or_kind_has_another_type_still_gives_a_valid_report(
        tmp_path: Path, field: str, value: Any, seq: int | None, kind: str) -> None:
    """R10 quoted the seq and kind of each audit body as they were, and R8 its seq: a body
    edited to hold a seq that is no integer or a kind that is no text made the report fail
    schemas/report.v1.json. A seq of another type is left out; a kind of another type is
    shown as its JSON text (verification names the edited body)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        record_audit(store, recorded.exp, REPLAY_RECORDED, {"verdict": "certified"})
        drop_append_only_triggers(store)
        with store.engine.connect() as connection:
            raw = connection.exec_driver_sql(
                "SELECT body FROM ledger_events WHERE exp = ? AND stream = 'audit'",
                (recorded.exp,)).scalar_one()
        body = decode_body(raw)
        body[field] = value
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND "
                       "stream = 'audit'", body=canonical(body), exp=recorded.exp)
    report = report_of(url, recorded.exp)  # validated against the schema
    assert [(e["seq"], e["kind"]) for e in report["R10"]["events"]] == [(seq, kind)]
    event = report["R10"]["events"][0]
    if field == "kind":  # neither a replay nor an export: nothing of either is quoted
        assert sorted(event) == ["at", "kind", "seq"]
    else:
        assert (event["by"], event["outcome"]) == (
            (None, "PASSED") if field == "seq" else (None, "INCONCLUSIVE"))
    assert report["R8"]["audit_seq"] == (seq if field == "seq" else None)
    assert report["summary"]["integrity"] == "FAILED"


def test_recorded_export_formats_that_are_not_a_list_are_shown_as_recorded(
        tmp_path: Path) -> None:
    """The same stream holds report_exported records: ``formats`` as a number stopped R10
    with ``TypeError: 'int' object is not iterable``; it is shown as recorded."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store:
        record_audit(store, exp, REPORT_EXPORTED, {"report_id": "rpt-x", "formats": 5})
    report = report_of(url, exp)
    assert [(e["kind"], e["detail"]) for e in report["R10"]["events"]] == [
        ("report_exported", "report rpt-x (5)")]


def test_a_replay_without_its_data_is_inconclusive(honest: tuple[str, Path, str],
                                                   tmp_path: Path) -> None:
    url, _data, exp = honest
    report = report_of(url, exp, replay=True, data_dir=str(tmp_path / "elsewhere"))
    assert report["R8"]["verdict"] == "INCONCLUSIVE"
    assert "missing" in report["R8"]["reason"]
    assert report["summary"]["alerts"][0].startswith("REPLAY INCONCLUSIVE")


def test_a_replay_the_ledger_stops_is_inconclusive(honest: tuple[str, Path, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay stopped by the ledger itself (a lost connection, a disk error) proves nothing
    either way: INCONCLUSIVE, saying why, never FAILED."""
    def stopped(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError("cannot read ledger.db: disk I/O error")

    monkeypatch.setattr("report.replay_evidence.replay_run", stopped)
    url, data_dir, exp = honest
    r8 = report_of(url, exp, replay=True, data_dir=str(data_dir))["R8"]
    assert (r8["verdict"], r8["reason"]) == (
        "INCONCLUSIVE", "replay could not run: cannot read ledger.db: disk I/O error")


def _register(exp: Experiment, name: str, role: str, features: np.ndarray) -> None:
    exp.register_dataset(name, features, np.zeros(len(features), np.int8), role=role)


@pytest.mark.parametrize("shared", [0, 3])
def test_train_and_test_data_are_checked_for_shared_records(tmp_path: Path, shared: int) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rng = np.random.default_rng(5)
    train = rng.normal(size=(40, 4)).astype(np.float32)
    test = np.concatenate([rng.normal(size=(10, 4)).astype(np.float32), train[:shared]])
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "train-set", "train", train)
            _register(exp, "test-set", "test", test)
    report = report_of(url, exp.id, data_dir=str(tmp_path / "data"))
    check = report["R5"]["independence"]
    assert check["pairs"] == [{"train": "train-set", "test": "test-set", "overlap": shared,
                               "test_records": 10 + shared}]
    assert check["status"] == ("failed" if shared else "passed")
    assert [d["role"] for d in report["R5"]["datasets"]] == ["train", "test"]
    assert any("DATA OVERLAP" in alert for alert in report["summary"]["alerts"]) == bool(shared)


@pytest.mark.parametrize("role", ["val", " Test ", "dev", "held-out"])
def test_everyday_spellings_of_a_test_role_are_checked(tmp_path: Path, role: str) -> None:
    """'val' held 100 training rows and R5 said passed: the role was not in the list, so the
    dataset was left out in silence (the hostile-trainer review)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    train = np.random.default_rng(5).normal(size=(40, 4)).astype(np.float32)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "tr", "train", train)
            _register(exp, "leaky", role, train[:7])
    check = report_of(url, exp.id, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    assert (check["status"], check["pairs"][0]["overlap"]) == ("failed", 7)


def test_a_role_the_check_does_not_know_keeps_it_from_passing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rng = np.random.default_rng(5)
    train = rng.normal(size=(40, 4)).astype(np.float32)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "tr", "train", train)
            _register(exp, "te", "test", rng.normal(size=(10, 4)).astype(np.float32))
            _register(exp, "cal", "calibration", train[:3])
    check = report_of(url, exp.id, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    assert check["status"] == "not_checked"
    assert "'cal' ('calibration') carry a role the check does not know" in check["reason"]
    assert check["pairs"][0]["overlap"] == 0


def test_the_same_rows_in_another_dtype_and_repeated_rows_count(tmp_path: Path) -> None:
    """Training rows cast to float64 (pandas' default) passed as new records, and 200 leaked
    rows (5 rows, 40 times each) were counted as 5."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    train = np.random.default_rng(5).normal(size=(40, 4)).astype(np.float32)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "tr", "train", train)
            _register(exp, "wider", "test", train[:6].astype(np.float64))
            _register(exp, "repeats", "validation", np.repeat(train[:5], 40, axis=0))
    check = report_of(url, exp.id, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    assert [(pair["test"], pair["overlap"], pair["test_records"]) for pair in check["pairs"]] == [
        ("wider", 6, 6), ("repeats", 200, 200)]


def _independence(tmp_path: Path, roles: list[str | None],
                  leak: dict[int, int] | None = None) -> dict[str, Any]:
    """R5's independence check of a run with one dataset per role (named d0, d1, …, of distinct
    random rows), dataset ``i`` of ``leak`` holding the first ``leak[i]`` rows of d0."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rng = np.random.default_rng(5)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            first = rng.normal(size=(20, 3)).astype(np.float32)
            for index, role in enumerate(roles):
                rows = first if index == 0 else rng.normal(size=(5, 3)).astype(np.float32)
                if leak and index in leak:
                    rows = np.concatenate([rows, first[:leak[index]]])
                exp.register_dataset(f"d{index}", rows, np.zeros(len(rows), np.int8),
                                     role=role)
    check = report_of(url, exp.id, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    assert isinstance(check, dict)
    return check


UNKNOWN_NOTE = ("carry a role the check does not know, so were not checked (train or training; "
                "test, validation, val, dev, holdout, eval, …)")


@pytest.mark.parametrize("roles,status,reason", [
    ([None, None], "not_checked", "no dataset roles recorded"),
    (["train", "training"], "not_checked",
     "needs a training and a test (or validation) dataset"),
    (["test", None], "not_checked", "needs a training and a test (or validation) dataset"),
    (["train", "calibration"], "not_checked",
     f"needs a training and a test (or validation) dataset; dataset(s) 'd1' ('calibration') "
     f"{UNKNOWN_NOTE}"),
    (["train", "test", *["x"] * 6], "not_checked",
     "no record of the test datasets occurs in the training ones, but dataset(s) "
     + ", ".join(f"'d{n}' ('x')" for n in range(2, 7)) + f" … {UNKNOWN_NOTE}"),
    (["train", "test", None], "passed", "no record occurs in both")])
def test_the_independence_check_says_why_it_did_not_pass(tmp_path: Path,
                                                         roles: list[str | None], status: str,
                                                         reason: str) -> None:
    """Passing needs a training and a test-like dataset and no role the check does not know;
    otherwise R5 says which is missing. A dataset without a role is not a test set (it is not
    claimed as one), so it neither blocks the check nor is checked."""
    check = _independence(tmp_path, roles)
    assert (check["status"], check["reason"]) == (status, reason)


def test_one_leaky_test_set_among_clean_ones_fails_at_the_pair_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pair that shares records fails the check, however many are clean; and a run with
    exactly MAX_PAIRS pairs is still checked (only more are not)."""
    monkeypatch.setattr("report.data_checks.MAX_PAIRS", 2)
    check = _independence(tmp_path, ["train", "test", "validation"], leak={2: 4})
    assert check["status"] == "failed"
    assert [(pair["test"], pair["overlap"], pair["test_records"]) for pair in check["pairs"]] == [
        ("d1", 0, 5), ("d2", 4, 9)]


def test_record_digests_are_the_documented_hash_of_the_widened_rows() -> None:
    """R5 documents the record digest so that an auditor can recompute it: the tag, canonical
    [dtype, row shape], the row's bytes, integers and booleans widened to <i8, floats to <f8
    and big-endian data read as little-endian; rows of one value in any of these dtypes are
    the same records."""
    values = [[[1, 0], [0, 1]], [[0, 0], [1, 1]]]

    def documented(dtype: str) -> Counter[bytes]:
        return Counter(hashlib.sha256(RECORD_TAG + canonical([dtype, [2, 2]])
                                      + np.array(row, dtype).tobytes()).digest()
                       for row in values)

    for dtype in ("<i8", "<i2", ">i4", "u1", "?"):
        assert record_digests(np.array(values, dtype)) == documented("<i8"), dtype
    for dtype in ("<f8", "<f4", ">f8", "<f2"):
        assert record_digests(np.array(values, dtype)) == documented("<f8"), dtype
    assert record_digests(np.array(values, ">c16")) == documented("<c16")
    assert record_digests(np.zeros((0, 4), np.float32)) == Counter()


@pytest.mark.parametrize("loader", [{"kind": "npz"}, {"kind": "npz", "path": 5,
                                                        "digest": "0" * 64}])
def test_a_forged_loader_leaves_the_check_not_checked(tmp_path: Path,
                                                      loader: dict[str, Any]) -> None:
    """Any writer can append a dataset_registered whose loader lacks its fields or has them
    of other types: the independence check says it could not load the data, and the report
    is still produced."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "tr", "train", np.ones((3, 2), np.float32))
            with Store.open(url) as store:
                writer = StreamWriter(store, exp.id, "worker-9", flush_interval=None)
                writer.append("dataset_registered", params={"name": "te", "role": "test",
                                                            "loader": loader})
                writer.close()
    check = report_of(url, exp.id, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    assert (check["status"], check["pairs"]) == ("not_checked", [])
    assert check["reason"].startswith("data not available: ")
    if "path" not in loader:  # says which field is missing, not a bare "'path'"
        assert check["reason"] == "data not available: a recorded loader has no field 'path'"


def test_roles_without_their_data_are_not_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    features = np.ones((5, 2), np.float32)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("roles", seed=3) as exp:
            _register(exp, "a", "train", features)
            _register(exp, "b", "validation", features + 1)
    report = report_of(url, exp.id, data_dir=str(tmp_path / "nowhere"))
    assert report["R5"]["independence"]["status"] == "not_checked"
    assert "data not available" in report["R5"]["independence"]["reason"]


def test_the_appendix_lists_every_event_with_its_seed_path_and_digests(
        honest: tuple[str, Path, str], tmp_path: Path) -> None:
    url, _data, exp = honest
    target = tmp_path / "events.ndjson"
    with Store.open(url) as store, target.open("wb") as handle:
        report = build_report(store, exp, ReportOptions(record=False), appendix=handle,
                              appendix_name=target.name)
        stored = {(stream, seq): body for stream, seq, _kind, body in store.iter_run_bodies(exp)}
    lines = target.read_bytes().splitlines()
    appendix = report["R7"]["appendix"]
    assert appendix["lines"] == len(lines) == report["R9"]["verification"]["events"] == 27
    assert report["R7"]["events"] == 27
    assert appendix["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert appendix["size"] == target.stat().st_size and appendix["file"] == "events.ndjson"
    entries = [json.loads(line) for line in lines]
    assert all(list(entry) == sorted(entry) for entry in entries)
    batch = next(entry for entry in entries if entry["path"] == ["epoch", 1, "batch", 3,
                                                                 "augment"])
    assert batch["seed"] == derive_bytes(42, ("epoch", 1, "batch", 3, "augment")).hex()
    assert batch["kind"] == "augmentation_batch" and len(batch["output"]) == 64
    assert {(entry["stream"], entry["seq"]) for entry in entries} == set(stored)


def test_a_full_appendix_carries_every_body_in_the_event_schema(
        honest: tuple[str, Path, str], tmp_path: Path) -> None:
    url, _data, exp = honest
    target = tmp_path / "events.ndjson"
    with Store.open(url) as store, target.open("wb") as handle:
        report = build_report(store, exp, ReportOptions(record=False, full_appendix=True),
                              appendix=handle, appendix_name=target.name)
    for line in target.read_bytes().splitlines():
        entry = json.loads(line)
        assert sorted(report["R7"]["appendix"]["fields"]) == sorted(entry)
        assert schema_errors(entry["body"], "event.v1.json") == []
        assert (entry["body"]["seq"], entry["body"]["kind"]) == (entry["seq"], entry["kind"])


@pytest.mark.parametrize("full", [False, True])
def test_appendix_lines_stay_lines_for_readers_that_split_at_unicode_line_breaks(
        tmp_path: Path, full: bool) -> None:
    """Labels and values may hold U+0085, U+2028 or U+2029: JSON leaves them raw, but
    ``str.splitlines`` — and JavaScript before ES2019 — break lines there, and an appendix read
    so lost its events. They are written escaped; every line still reads back as recorded."""
    breaks = "a\x85b\u2028c\u2029d"
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("breaks", seed=5, hyperparams={"note": breaks}) as exp:
            exp.generator("sample", breaks).random()
    target = tmp_path / "events.ndjson"
    with Store.open(url) as store, target.open("wb") as handle:
        report = build_report(store, exp.id, ReportOptions(record=False, full_appendix=full),
                              appendix=handle, appendix_name=target.name)
    text = target.read_text(encoding="utf-8")
    assert not {"\x85", "\u2028", "\u2029"} & set(text)
    lines = text.splitlines()
    assert len(lines) == report["R7"]["appendix"]["lines"] == report["R7"]["events"]
    entries = [json.loads(line) for line in lines]
    assert ["sample", breaks] in [entry["path"] for entry in entries]
    if full:
        created = next(entry for entry in entries if entry["kind"] == "experiment_created")
        assert created["body"]["params"]["hyperparams"]["note"] == breaks


def test_the_seed_tree_stays_bounded_however_many_paths_a_run_draws() -> None:
    tree = SeedTree(max_nodes=50)
    for index in range(5000):
        tree.add("user_draw", ("sample", f"name-{index}", index), bytes(16))
        tree.add("epoch_reset", ("epoch", index, "shuffle"), bytes(16))
    nodes = tree.nodes()
    assert tree.folded and len(nodes) <= 50 + 100 + 2
    assert sum(node["count"] for node in nodes) == 10_000


def test_the_seed_tree_stays_bounded_when_every_path_starts_with_another_label() -> None:
    """Keeping only the first label bounded nothing when every path starts with its own label
    (a user draw keyed by a file name): 20,000 such draws gave 20,000 patterns, not the 2,000
    the README promises. Past max_nodes + 200 patterns, new paths fold to ``…``. A path of one
    label is never shown as ``file-0102/…``: it has nothing after its first label."""
    tree = SeedTree(max_nodes=2)
    for index in range(1000):
        tree.add("user_draw", (f"file-{index:04d}",), bytes(16))
    tree.add("user_draw", ("file-0150", "again"), bytes(16))
    tree.add("user_draw", ("file-0151",), bytes(16))  # its pattern exists: joins it
    nodes = tree.nodes()
    assert len(nodes) == 2 + 200 + 1
    assert [n["path"] for n in nodes[:2]] == [["file-0000"], ["file-0001"]]
    assert [n["path"] for n in nodes[102:104]] == [["file-0102"], ["file-0103"]]
    assert (nodes[151]["path"], nodes[151]["count"]) == (["file-0151"], 2)
    assert (nodes[-1]["path"], nodes[-1]["count"], nodes[-1]["seed"]) == (["…"], 799, None)
    assert sum(node["count"] for node in nodes) == 1002


def test_a_replay_that_compared_no_draw_says_its_pass_certifies_no_output(
        tmp_path: Path) -> None:
    """A run with no draws replayed PASSED with 0 compared, and nothing said that the pass
    vouched for no output at all."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("no-draws", seed=1) as bare:
            bare.log_metric("loss", 0.5, epoch=0)
    report = report_of(url, bare.id, replay=True)
    assert (report["R8"]["verdict"], report["R8"]["counts"]["compared"]) == ("PASSED", 0)
    assert NOTHING_COMPARED_ALERT in report["summary"]["alerts"]
    drawn = record_run(url, tmp_path / "data", epochs=1)
    report = report_of(url, drawn, replay=True, data_dir=str(tmp_path / "data"))
    assert report["R8"]["verdict"] == "PASSED" and report["R8"]["counts"]["compared"] > 0
    assert NOTHING_COMPARED_ALERT not in report["summary"]["alerts"]


def test_values_a_chart_cannot_plot_are_counted_and_shown(tmp_path: Path) -> None:
    """A loss logged NaN, 1.0, NaN had count 3 and one point: the chart drew a dot and hid that
    the loss had diverged twice. The values with no point are counted, and HTML and Markdown
    say so."""
    series = Series("loss")
    for epoch, value in enumerate([float("nan"), 1.0, float("inf"), "text", True, 2]):
        series.add(epoch, value)
    data = series.to_json()
    assert (data["count"], data["points"], data["not_plotted"]) == (6, [[1, 1], [5, 2]], 4)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("diverged", seed=1) as exp:
            for epoch, value in enumerate([float("nan"), 1.0, float("nan")]):
                exp.log_metric("loss", value, epoch=epoch)
            exp.log_metric("acc", 0.5, epoch=0)
    report = report_of(url, exp.id)
    assert [(s["name"], s["count"], s["not_plotted"]) for s in report["R1"]["metrics"]] == [
        ("acc", 1, 0), ("loss", 3, 2)]
    assert not schema_errors(report)
    html, markdown = render_html(report), render_markdown(report)
    assert "loss <span class=\"muted\">(3 values; 2 not plotted (not a finite number); " in html
    assert "acc <span class=\"muted\">(1 value; last 0.5)" in html
    assert "| metric | values | not plotted (no finite number) | last | last epoch |" in markdown
    assert "| loss | 3 | 2 | NaN | 2 |" in markdown


def test_a_metric_series_is_thinned_but_keeps_its_count_and_last_value() -> None:
    series = Series("loss")
    for step in range(50_000):
        series.add(None, 1.0 / (step + 1))
    series.add(None, float("nan"))
    data = series.to_json()
    assert len(data["points"]) <= MAX_POINTS and data["count"] == 50_001
    assert data["points"][0] == [0, 1] and data["thinned_every"] > 1
    assert data["last"] == "NaN"


def test_a_metric_plots_real_numbers_only_and_the_last_value_of_an_epoch() -> None:
    """Booleans, text and non-finite values are counted and kept as the last value, never
    plotted; a boolean epoch is no epoch (the value goes at its position); a second value of an
    epoch replaces the first, as METRICS documents."""
    series = Series("loss")
    for epoch, value in [(None, 1.0), (None, 2.0), (True, 3.0), (None, True), (None, "high"),
                         (None, float("inf")), (7, 0.5), (7, 0.25), (8, 2**52), (9, 2.0**53)]:
        series.add(epoch, value)
    data = series.to_json()
    assert data["points"] == [[0, 1], [1, 2], [2, 3], [7, 0.25], [8, 2**52], [9, 2.0**53]]
    assert [type(y) for _x, y in data["points"][-2:]] == [int, float]  # exact below 2**53 only
    assert (data["count"], data["last"], data["last_epoch"]) == (10, 2.0**53, 9)


def test_a_metric_logged_with_a_boolean_epoch_still_gives_a_valid_report(tmp_path: Path
                                                                         ) -> None:
    """log_metric refuses an epoch that is not an integer, but any writer of the ledger can
    append a metric with ``epoch: true``: R1 gave it as the series' last_epoch, and the report
    failed schemas/report.v1.json (a boolean is no integer). It is no epoch."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, complete=False)
        writer = StreamWriter(store, recorded.exp, "main", flush_interval=None)
        writer.append("metric", params={"epoch": True, "name": "loss", "value": 0.5})
        writer.close()
    [loss] = [s for s in report_of(url, recorded.exp)["R1"]["metrics"] if s["name"] == "loss"]
    assert (loss["last"], loss["last_epoch"], loss["points"]) == (0.5, None, [[0, 0.5]])


@pytest.mark.parametrize("values", [MAX_POINTS, 2 * MAX_POINTS + 3])
def test_a_thinned_series_keeps_every_stride_th_value_from_the_first(values: int) -> None:
    """Up to MAX_POINTS values are all plotted; past that, the kept points are exactly the
    values at multiples of the stride, from the first one, so a curve is not shifted."""
    series = Series("loss")
    for step in range(values):
        series.add(None, float(step))
    data = series.to_json()
    stride = data["thinned_every"]
    assert stride == (1 if values == MAX_POINTS else 4)
    assert data["points"] == [[x, x] for x in range(0, values, stride)]


def test_metric_names_past_the_limit_are_counted_and_series_sorted_by_name() -> None:
    """MAX_SERIES names are plotted, values of further names only counted; a metric without
    a text name is ignored; series are listed by name, not in the order first logged."""
    curves = MetricCurves()
    curves.add({"name": 5, "value": 1.0})
    for index in reversed(range(MAX_SERIES + 1)):
        curves.add({"name": f"m{index:03}", "value": 1.0})
    curves.add({"name": "m000", "value": 2.0})
    names = [series["name"] for series in curves.to_json()]
    assert names == [f"m{index:03}" for index in range(1, MAX_SERIES + 1)]
    assert curves.unplotted == 2


@pytest.mark.parametrize("parallel", [False, True])
def test_a_report_on_every_backend(store_url: str, parallel: bool,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if parallel:  # verification in its own process, as for runs of 100,000 events and more
        monkeypatch.setattr("report.model.PARALLEL_VERIFY_EVENTS", 0)
    with Store.open(store_url, create=True) as store:
        recorded = record_experiment(store, workers=2)
    report = report_of(store_url, recorded.exp)
    assert report["summary"]["integrity"] == "VERIFIED"
    assert report["R9"]["run_head"] == recorded.head.hex()
    assert [s["stream"] for s in report["R9"]["streams"]] == ["main", "worker-0", "worker-1"]
    assert report["R9"]["verification"]["events"] == recorded.event_count()
    assert all(control["in_force"] for control in report["R9"]["append_only_controls"])
    truncate = [c for c in report["R9"]["append_only_controls"] if "TRUNCATE" in c["control"]]
    assert bool(truncate) == store_url.startswith("postgresql")


def test_every_spawned_worker_is_counted_past_the_listed_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R2 counted the worker_spawned events it keeps for their start methods (at most
    MAX_WORKERS_LISTED, 256): a run of 300 workers was reported as 256 spawned. Every one is
    counted; only the list is bounded."""
    monkeypatch.setattr("report.facts.MAX_WORKERS_LISTED", 2)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=3)
    resources = report_of(url, recorded.exp)["R2"]["resources"]
    assert (resources["workers_spawned"], resources["start_methods"]) == (3, ["spawn"])


def test_unreadable_bodies_and_paths_do_not_stop_the_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND "
                       "stream = 'main' AND seq = 0", body=b"\xc1garbage", exp=recorded.exp)
        execute(store, "UPDATE ledger_events SET path = :path WHERE exp = :exp AND "
                       "stream = 'main' AND seq = 2", path=b"\xc1", exp=recorded.exp)
    report = report_of(url, recorded.exp)
    assert report["R9"]["undecodable_events"] == [{"stream": "main", "seq": 0,
                                                   "kind": "experiment_created"}]
    assert report["R7"]["unreadable_paths"] == 1 and report["R7"]["root_seed"] is None
    assert report["summary"]["integrity"] == "FAILED"
    assert any("could not be decoded" in alert for alert in report["summary"]["alerts"])


def test_undecodable_events_are_all_counted_and_the_first_hundred_listed(tmp_path: Path
                                                                         ) -> None:
    """A damaged ledger can have any number of bodies that do not decode: R9 lists the first
    100 (the report stays small), the alert counts every one."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=0, epochs=101, batches=0)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND "
                       "kind = 'metric'", body=b"\xc1", exp=recorded.exp)
    report = report_of(url, recorded.exp)
    metrics = [event.seq for event in recorded.main if event.kind == "metric"]
    assert len(metrics) == 101
    assert report["R9"]["undecodable_events"] == [
        {"stream": "main", "seq": seq, "kind": "metric"} for seq in metrics[:100]]
    assert "101 event(s) could not be decoded" in report["summary"]["alerts"]


@pytest.mark.parametrize("diff_digest,alert", [
    (b"\x01" * 32, "their diff digest is recorded, not their content"),
    (None, "(untracked files only): nothing but their count is recorded")])
def test_a_dirty_checkout_alert_says_what_was_recorded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      diff_digest: bytes | None,
                                                      alert: str) -> None:
    """Only tracked changes have a digest; a tree dirty from untracked files alone has none."""
    import ledger.experiment

    monkeypatch.setattr(ledger.experiment, "code_version", lambda *_: {
        "vcs": "git", "commit": "0" * 40, "dirty": True, "diff_digest": diff_digest,
        "untracked": 3})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("dirty", seed=1) as exp:
            pass
    report = report_of(url, exp.id)
    assert [a for a in report["summary"]["alerts"] if "uncommitted" in a] == [
        f"the code had uncommitted changes{' ' if diff_digest is None else ': '}{alert}"]


def test_the_environment_alert_names_what_differed_at_replay(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "differs in 1 version(s)": which package or thread count, recorded and at replay."""
    import ledger.experiment
    from ledger.environment import environment_fingerprint

    recorded = environment_fingerprint()
    # Below pyproject's numpy floor, so never the numpy installed here.
    recorded["packages"] = {**recorded["packages"], "numpy": "1.25.2"}
    monkeypatch.setattr(ledger.experiment, "environment_fingerprint", lambda: recorded)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    monkeypatch.undo()
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp, data_dir=tmp_path / "data"))
    alerts = report_of(url, exp)["summary"]["alerts"]
    assert [alert for alert in alerts if "replay environment" in alert] == [
        f"the replay environment differs from the recorded one: packages.numpy 1.25.2 "
        f"recorded, {np.__version__} at replay"]


@pytest.mark.parametrize("complete", [True, False])
def test_r9_lists_every_stream_with_its_count_and_head(tmp_path: Path, complete: bool) -> None:
    """R9 certifies each stream's count and head, main first and the audit stream last (what
    verify-report --against-ledger compares), every chain verified, and says whether the run
    is complete."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=2, complete=complete)
        record_audit(store, recorded.exp, REPORT_EXPORTED, {"report_id": "rpt-x"})
        heads = store.stream_heads(recorded.exp)
    r9 = report_of(url, recorded.exp)["R9"]
    streams = ["main", "worker-0", "worker-1", "audit"]
    assert r9["streams"] == [{"stream": name, "count": heads[name].count,
                              "head": heads[name].head.hex()} for name in streams]
    assert [entry["count"] for entry in r9["streams"][:3]] == [
        len(recorded.streams[name]) for name in streams[:3]]
    assert r9["verification"]["chains"] == len(streams)
    assert (r9["complete"], r9["run_head"]) == (complete, recorded.head.hex() if complete
                                                else None)


@pytest.mark.parametrize("trigger,control", [
    ("ledger_events_no_update", "database triggers refuse UPDATE and DELETE of ledger rows"),
    ("ledger_stream_claims_no_delete",
     "database triggers refuse UPDATE and DELETE of ledger rows"),
    ("ledger_meta_no_replace", "database triggers refuse INSERT OR REPLACE over a recorded row")])
def test_one_missing_trigger_is_named_and_alerted(tmp_path: Path, trigger: str,
                                                 control: str) -> None:
    """A control is in force only while every trigger it names is there: one trigger dropped
    (the chain still intact) puts its control out of force, names the trigger, and alerts."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        execute(store, f'DROP TRIGGER "{trigger}"')
    report = report_of(url, recorded.exp)
    controls = {c["control"]: c for c in report["R9"]["append_only_controls"]}
    assert [name for name, c in controls.items() if not c["in_force"]] == [control]
    assert controls[control]["detail"] == f"missing: {trigger}"
    assert [c["detail"] for c in controls.values() if c["control"].startswith("database")
            and c["control"] != control] == [
        "4 triggers present" if "UPDATE" in control else "8 triggers present"]
    assert [a for a in report["summary"]["alerts"] if "control" in a] == [
        f"append-only control not in force: {control}"]
    assert report["summary"]["integrity"] == "VERIFIED"


def test_a_chain_key_that_cannot_be_inspected_is_not_in_force(
        honest: tuple[str, Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """R9 states the unique (exp, stream, seq) key in force only when the database shows it:
    an inspection that fails states it as not in force (and alerts), never as in force."""
    def failing(_engine: Any) -> None:
        raise OperationalError("PRAGMA index_list", {}, Exception("database is locked"))

    monkeypatch.setattr("report.integrity.inspect", failing)
    url, _data, exp = honest
    report = report_of(url, exp)
    [control] = [c for c in report["R9"]["append_only_controls"]
                 if c["control"].startswith("unique (exp, stream, seq)")]
    assert control["in_force"] is False
    assert f"append-only control not in force: {control['control']}" in report["summary"][
        "alerts"]


@pytest.mark.parametrize("unique_index", [False, True])
def test_the_unique_chain_position_is_stated_as_the_database_holds_it(
        tmp_path: Path, unique_index: bool) -> None:
    """An SQLite ledger handed over may have ledger_events rebuilt as a plain copy, without its
    unique (exp, stream, seq) key: that control is then not in force; a unique index on the
    same columns keeps it in force."""
    path = tmp_path / "ledger.db"
    with Store.open(f"sqlite:///{path}", create=True) as store:
        recorded = record_experiment(store)
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(
            "ALTER TABLE ledger_events RENAME TO old_events; CREATE TABLE ledger_events AS "
            "SELECT * FROM old_events; DROP TABLE old_events;" + (
                "CREATE UNIQUE INDEX chain ON ledger_events (exp, stream, seq);"
                if unique_index else ""))
    report = report_of(f"sqlite:///{path}", recorded.exp)
    [control] = [c for c in report["R9"]["append_only_controls"]
                 if c["control"].startswith("unique (exp, stream, seq)")]
    assert control["in_force"] is unique_index
    alert = f"append-only control not in force: {control['control']}"
    assert (alert in report["summary"]["alerts"]) is not unique_index


@pytest.mark.parametrize("start,months,end", [
    (date(2026, 1, 31), 1, date(2026, 2, 28)), (date(2028, 1, 31), 1, date(2028, 2, 29)),
    (date(2026, 12, 15), 1, date(2027, 1, 15)), (date(2026, 3, 31), 120, date(2036, 3, 31)),
    (date(2026, 8, 31), 6, date(2027, 2, 28)), (date(9999, 11, 30), 1, date(9999, 12, 30)),
    (date(1, 3, 31), -1, date(1, 2, 28))])
def test_retention_adds_whole_months_ending_on_the_last_day_that_exists(
        start: date, months: int, end: date) -> None:
    assert add_months(start, months) == end


@pytest.mark.parametrize("start,months", [(date(9990, 1, 1), 120), (date(9999, 12, 31), 1),
                                          (date(1, 1, 31), -1)])
def test_a_retention_period_ending_outside_the_years_of_a_date_is_refused(
        start: date, months: int) -> None:
    """A period ending past 9999-12-31 (``--retain-from 9990-01-01`` with the default 120
    months) made add_months retry with ever smaller days and never return: ``ledger report``
    hung. It is refused, saying why."""
    with pytest.raises(BadInputError, match=f"{months} months from {start.isoformat()}"):
        add_months(start, months)


def test_r11_keeps_the_class_default_unless_the_operator_sets_a_period() -> None:
    generated = date(2026, 11, 30)
    default = r11_retention(generated, "technical-documentation", None, None)
    assert (default["retain_months"], default["retain_from"], default["earliest_deletion"]) == (
        120, "2026-11-30", "2036-11-30")
    assert default["basis"] == RETENTION_CLASSES["technical-documentation"][1]
    logs = r11_retention(generated, "logs", 24, date(2027, 1, 1))
    assert (logs["retain_months"], logs["retain_from"], logs["earliest_deletion"]) == (
        24, "2027-01-01", "2029-01-01")
    assert logs["basis"] == (f"set by the operator (24 months); default: "
                             f"{RETENTION_CLASSES['logs'][1]}")


def test_r13_names_the_responsible_person_and_the_signature_method() -> None:
    unsigned = r13_signoff(None, None, "2026-11-30T10:00:00.000Z", {"signed": False})
    assert (unsigned["responsible"], unsigned["date"], unsigned["signature_method"]) == (
        [], "2026-11-30", "unsigned")
    signed = r13_signoff("Ada", "validator", "2026-11-30T10:00:00.000Z",
                         {"signed": True, "public_key_sha256": "ab" * 32})
    assert signed["responsible"] == [{"name": "Ada", "role": "validator"}]
    assert signed["signature_method"].startswith("Ed25519 detached signature")
    assert signed["public_key_sha256"] == "ab" * 32
    assert r13_signoff("", "validator", "2026-11-30T10:00:00Z", {})["responsible"] == []


def test_r11_defaults_of_each_class_and_periods_the_operator_gives() -> None:
    """README: logs are kept 6 months by default; a class the program does not know keeps
    10 years on the operator's word; 0 months is the operator's period (deletion may follow
    at once), and a period equal to the class default is stated as the default."""
    generated = date(2026, 11, 30)
    logs = r11_retention(generated, "logs", None, None)
    assert (logs["retain_months"], logs["earliest_deletion"], logs["basis"]) == (
        6, "2027-05-30", RETENTION_CLASSES["logs"][1])
    other = r11_retention(generated, "contract", None, None)
    assert (other["class"], other["retain_months"], other["earliest_deletion"],
            other["basis"]) == ("contract", 120, "2036-11-30", "set by the operator")
    none = r11_retention(generated, "logs", 0, None)
    assert (none["retain_months"], none["earliest_deletion"], none["basis"]) == (
        0, "2026-11-30", f"set by the operator (0 months); default: {RETENTION_CLASSES['logs'][1]}")
    assert r11_retention(generated, "logs", 6, None)["basis"] == RETENTION_CLASSES["logs"][1]


def test_a_negative_retention_period_is_refused(honest: tuple[str, Path, str]) -> None:
    """ReportOptions(retain_months=-1) gave R11 a deletion date before its start and a report
    that failed its schema (retain_months has minimum 0)."""
    url, _data, exp = honest
    with pytest.raises(BadInputError, match=r"cannot be negative \(got -1 months\)"):
        report_of(url, exp, retain_months=-1)


def test_a_report_keeps_technical_documentation_ten_years_by_default(
        honest: tuple[str, Path, str]) -> None:
    url, _data, exp = honest
    r11 = report_of(url, exp, now=datetime(2028, 2, 29, 23, 0, tzinfo=timezone.utc))["R11"]
    assert (r11["class"], r11["retain_months"], r11["retain_from"], r11["earliest_deletion"],
            r11["basis"]) == ("technical-documentation", 120, "2028-02-29", "2038-02-28",
                              RETENTION_CLASSES["technical-documentation"][1])


def test_r10_r12_and_r14_agree_with_the_rest_of_the_report(honest: tuple[str, Path, str]
                                                           ) -> None:
    """R12 lists this run's alerts and every limitation the README's R12 promises; each R14
    row carries the title of the section it names, and R11's row cites the provisions its
    retention classes rest on; R10 states the ledger's schema version and no migration."""
    url, _data, exp = honest
    report = report_of(url, exp)
    assert report["R12"]["this_run"] == report["summary"]["alerts"] != []
    non_claims = report["R12"]["non_claims"]
    for topic in ("Model quality", "Fairness", "GPU kernel nondeterminism", "Data content",
                  "Training results", "Regulatory conformity", "Identity of persons"):
        assert [claim for claim in non_claims if topic in claim] != [], topic
    rows = report["R14"]["rows"]
    assert [row["title"] for row in rows] == [report[row["section"]]["title"] for row in rows]
    retention = {ref["provision"]: ref for ref in rows[11]["references"]}
    assert sorted(retention) == ["Art. 18", "Art. 19, 26(6)"]
    assert {ref["framework"] for ref in retention.values()} == {"EU AI Act (Regulation 2024/1689)"}
    assert "10 years" in retention["Art. 18"]["evidence"]
    assert "6 months" in retention["Art. 19, 26(6)"]["evidence"]
    assert "Art. 18" in RETENTION_CLASSES["technical-documentation"][1]
    assert "Art. 19 and 26(6)" in RETENTION_CLASSES["logs"][1]
    with Store.open(url) as store:
        version = store.schema_version
    r10 = report["R10"]
    assert (r10["ledger_schema_version"], r10["migrations"]) == (version, [])
    assert r10["migrations_note"].startswith(f"schema version {version}: no migration")


def test_r10_shows_what_a_record_leaves_out_as_unknown(tmp_path: Path) -> None:
    """A replay record without counts (or with counts that are no integers) says ``?`` for
    each, not 0 — it used to claim "0 draws re-executed"; an export without a report id says
    ``?``, not "report None"; without formats it shows none, and formats recorded as 0 show 0.
    """
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
        record_audit(store, recorded.exp, REPLAY_RECORDED, {"verdict": "certified"})
        record_audit(store, recorded.exp, REPORT_EXPORTED, {"report_id": "rpt-x"})
        record_audit(store, recorded.exp, REPORT_EXPORTED, {"report_id": "rpt-y", "formats": 0})
        record_audit(store, recorded.exp, REPLAY_RECORDED,
                     {"verdict": "certified", "compared_total": True, "mismatched": "1"})
        record_audit(store, recorded.exp, REPORT_EXPORTED, {"formats": ["json"]})
    events = report_of(url, recorded.exp)["R10"]["events"]
    assert [(e["seq"], e["outcome"], e["detail"]) for e in events] == [
        (0, "PASSED", "? draws re-executed, ? mismatched"), (1, None, "report rpt-x ()"),
        (2, None, "report rpt-y (0)"), (3, "PASSED", "? draws re-executed, ? mismatched"),
        (4, None, "report ? (json)")]


def test_r10_says_what_each_replay_and_export_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store:
        record_audit(store, exp, REPLAY_RECORDED, {"verdict": "diverged", "replayed_by": "ada",
                                                   "compared_total": 40, "mismatched": 3})
        record_audit(store, exp, REPORT_EXPORTED, {
            "report_id": "rpt-x", "formats": ["json", "html", "md"], "signed": True,
            "generated_by": "bob", "replay_verdict": "FAILED"})
    events = report_of(url, exp)["R10"]["events"]
    assert [(e["by"], e["outcome"], e["detail"]) for e in events] == [
        ("ada", "FAILED", "40 draws re-executed, 3 mismatched"),
        ("bob", "FAILED", "report rpt-x (json, html, md, signed)")]
    assert all(e["at"].endswith("Z") for e in events)


def _tree_rows(tree: SeedTree) -> list[tuple[tuple[Any, ...], int, str | None, Any]]:
    return [(tuple(n["path"]), n["count"], n["seed"], n["range"]) for n in tree.nodes()]


def test_the_seed_tree_folds_integer_labels_and_keeps_their_range() -> None:
    """Augmentation batches of an epoch and a user's integer labels fold into one pattern with
    the range of the first folded integer; worker, epoch and rank paths stay as drawn; one draw
    shows its seed and no range; integers sort numerically."""
    tree = SeedTree()
    for batch in (4, 2, 9):
        tree.add("augmentation_batch", ("epoch", 1, "batch", batch, "augment"), b"\x01")
    tree.add("user_draw", ("mix", 5, "a", 1), b"\x02")
    tree.add("user_draw", ("mix", 3, "a", 9), b"\x03")
    tree.add("user_draw", ("epoch", 1, "other", 3, "augment"), b"\x04")
    tree.add("user_draw", ("rank", 10, "init"), b"\x05")
    tree.add("user_draw", ("rank", 2, "init"), b"\x06")
    tree.add_batches("augmentation_batch", 0, 1, 7, 7, b"\x07")
    assert _tree_rows(tree) == [
        (("epoch", 0, "batch", "*", "augment"), 1, "07", None),
        (("epoch", 1, "batch", "*", "augment"), 3, None, [2, 9]),
        (("epoch", 1, "other", 3, "augment"), 1, "04", None),
        (("mix", "*", "a", "*"), 2, None, [3, 5]),
        (("rank", 2, "init"), 1, "06", None),
        (("rank", 10, "init"), 1, "05", None)]


def test_the_seed_tree_folds_new_paths_coarsely_once_it_holds_max_nodes() -> None:
    tree = SeedTree(max_nodes=2)
    tree.add("user_draw", ("a",), b"\x01")
    tree.add("user_draw", ("b",), b"\x02")
    assert not tree.folded
    tree.add("user_draw", ("a",), b"\x01")
    assert not tree.folded
    tree.add("user_draw", ("c", "d"), b"\x03")
    assert tree.folded
    tree.add_batches("augmentation_batch", 4, 3, 0, 2, None)
    assert [n["path"] for n in tree.nodes()] == [
        ["a"], ["b"], ["c", "d"], ["epoch", "*", "batch", "*", "augment"]]


def test_past_max_nodes_integers_fold_first_then_all_but_the_first_label() -> None:
    """Once full, a new epoch path joins the one ``epoch/*/shuffle`` pattern — also once the
    tree holds max_nodes + 100 patterns, since that pattern exists; only a path with no
    pattern yet keeps just its first label (a path of one label, or none, stays as it is)."""
    tree = SeedTree(max_nodes=2)
    tree.add("user_draw", ("a",), b"\x01")
    tree.add("user_draw", ("b",), b"\x02")
    tree.add("epoch_reset", ("epoch", 7, "shuffle"), b"\x03")
    tree.add("epoch_reset", ("epoch", 8, "shuffle"), b"\x04")
    for index in range(99):
        tree.add("user_draw", (f"c{index:02d}",), b"\x05")
    tree.add("epoch_reset", ("epoch", 9, "shuffle"), b"\x06")
    tree.add("user_draw", (), b"\x07")
    tree.add("user_draw", ("d", 1), b"\x08")
    rows = _tree_rows(tree)
    assert len(rows) == 104 and tree.folded
    assert rows[:4] == [((), 1, "07", None), (("a",), 1, "01", None), (("b",), 1, "02", None),
                        (("c00",), 1, "05", None)]
    assert rows[-2:] == [(("d", "…"), 1, "08", None), (("epoch", "*", "shuffle"), 3, None, None)]


def test_a_user_pattern_made_past_max_nodes_keeps_its_first_draw_in_its_range() -> None:
    """A user's pattern first drawn once the tree was full lost that draw's integer: draws
    at mix/5/a/1 and mix/3/a/9 showed the range 3–3. A pattern that folding makes no
    coarser keeps its range; a coarser one (epoch/*/shuffle) has none."""
    tree = SeedTree(max_nodes=1)
    tree.add("user_draw", ("x",), b"\x01")
    tree.add("user_draw", ("mix", 5, "a", 1), b"\x02")
    tree.add("user_draw", ("mix", 3, "a", 9), b"\x03")
    tree.add("augmentation_batch", ("epoch", 2, "batch", 4, "augment"), b"\x04")
    tree.add("augmentation_batch", ("epoch", 3, "batch", 6, "augment"), b"\x05")
    assert _tree_rows(tree) == [(("epoch", "*", "batch", "*", "augment"), 2, None, None),
                                (("mix", "*", "a", "*"), 2, None, [3, 5]),
                                (("x",), 1, "01", None)]


def test_augmentation_batches_join_their_pattern_and_fold_into_one_past_max_nodes() -> None:
    """Batches of an epoch already in a full tree join its pattern; a new epoch's join the
    one ``epoch/*/batch/*/augment`` pattern, with every count and the widest range — also
    when a single batch drawn past max_nodes made that pattern (without a range)."""
    tree = SeedTree(max_nodes=2)
    tree.add("user_draw", ("a",), b"\x01")
    tree.add_batches("augmentation_batch", 0, 2, 0, 1, None)
    tree.add_batches("augmentation_batch", 0, 3, 5, 9, None)
    assert not tree.folded
    tree.add("augmentation_batch", ("epoch", 1, "batch", 3, "augment"), b"\x02")
    tree.add_batches("augmentation_batch", 2, 4, 3, 6, None)
    tree.add_batches("augmentation_batch", 3, 2, 1, 4, None)
    assert tree.folded and _tree_rows(tree) == [
        (("a",), 1, "01", None), (("epoch", 0, "batch", "*", "augment"), 5, None, [0, 9]),
        (("epoch", "*", "batch", "*", "augment"), 7, None, [1, 6])]
    full = SeedTree(max_nodes=1)
    full.add("user_draw", ("a",), b"\x01")
    full.add_batches("augmentation_batch", 0, 1, 4, 4, b"\x09")
    assert full.folded and _tree_rows(full)[-1] == (
        ("epoch", "*", "batch", "*", "augment"), 1, "09", None)


def test_patterns_sort_by_kind_too_and_a_draw_without_a_seed_shows_none() -> None:
    """One path drawn as two kinds gives two patterns in kind order; a draw added without a
    seed shows none; a label that is literally ``*`` joins the wildcard pattern rather than
    stopping the count."""
    tree = SeedTree()
    tree.add("user_draw", ("mix", "*"), None)
    tree.add("user_draw", ("mix", 3), b"\x01")
    tree.add("user_draw", ("z",), None)
    tree.add("b_kind", ("k",), b"\x02")
    tree.add("a_kind", ("k",), b"\x03")
    assert [(n["path"], n["kind"], n["count"], n["seed"]) for n in tree.nodes()] == [
        (["k"], "a_kind", 1, "03"), (["k"], "b_kind", 1, "02"),
        (["mix", "*"], "user_draw", 2, None), (["z"], "user_draw", 1, None)]


def test_the_seed_tree_holds_2000_patterns_before_it_folds() -> None:
    """The README's bound: 2,000 patterns are kept as drawn, the next path is folded."""
    tree = SeedTree()
    for index in range(2000):
        tree.add("user_draw", (f"p{index}", 1), bytes(16))
    assert (tree.max_nodes, tree.folded, len(tree.nodes())) == (2000, False, 2000)
    tree.add("user_draw", ("q", 1), bytes(16))
    assert tree.folded


def test_only_five_label_epoch_batch_paths_with_an_integer_batch_fold_as_augmentation() -> None:
    """``epoch/e/batch/b/augment`` folds b alone; a longer path, a batch that is not an
    integer or another first label are folded as a user's paths are (or kept, under
    ``epoch``), and an empty path is a pattern of its own."""
    tree = SeedTree()
    tree.add("user_draw", ("epoch", 1, "batch", 3, "augment", "extra"), b"\x01")
    tree.add("user_draw", ("mix", 1, "batch", 3, "augment"), b"\x02")
    tree.add("user_draw", ("epoch", 1, "batch", "x", "augment"), b"\x03")
    tree.add("user_draw", (), b"\x04")
    assert _tree_rows(tree) == [
        ((), 1, "04", None),
        (("epoch", 1, "batch", 3, "augment", "extra"), 1, "01", None),
        (("epoch", 1, "batch", "x", "augment"), 1, "03", None),
        (("mix", "*", "batch", "*", "augment"), 1, "02", None)]


def _facts_of_a_recorded_run(tmp_path: Path) -> RunFacts:
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}", create=True) as store:
        recorded = record_experiment(store)
        return gather(store, store.experiment(recorded.exp))


def test_r2_states_when_the_run_started_and_ended_and_how_long_it_took(tmp_path: Path
                                                                       ) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    start = 1_700_000_000 * 10**9
    r2 = r2_who_and_when(replace(facts, created={**(facts.created or {}), "t": start},
                                 completed={**(facts.completed or {}),
                                            "t": start + 61_234_567_890}))
    assert (r2["started_at"], r2["ended_at"]) == ("2023-11-14T22:13:20.000Z",
                                                  "2023-11-14T22:14:21.234Z")
    assert r2["duration_s"] == 61.235


HOUR = 3600 * 10**9


def _resumed_after(store: Store, recorded_exp: str, last_t: int, resumed_t: int) -> None:
    """Resume the suspended run ``recorded_exp`` (its main stream's last event at ``last_t``)
    with a ``run_resumed`` at ``resumed_t``, one more event, and complete it an hour later."""
    times = iter([resumed_t, resumed_t + 1, resumed_t + HOUR])
    writer = StreamWriter(store, recorded_exp, "main", flush_interval=None,
                          clock=lambda: next(times))
    writer.append("run_resumed", params={"suspended_after": last_t}, meta={"pid": 2})
    writer.append("metric", params={"epoch": 9, "name": "val_auc", "value": 0.9},
                  output=value_digest(0.9))
    writer.append("run_completed", params={"status": "ok", "streams": {}})
    writer.close()


@pytest.mark.parametrize("gap", [2 * HOUR, -5 * 10**9])
def test_r2_counts_the_time_a_resumed_run_was_suspended_apart_from_the_time_it_ran(
        store_url: str, gap: int) -> None:
    """A run preempted in the evening and resumed the next morning did not train all night:
    R2 keeps the duration from creation to completion, and says how long the run was
    suspended (from the latest event recorded before each resume to the resume) and so how
    long it ran. A resume whose clock is behind the last event's (another machine) counts no
    suspension rather than a negative one."""
    url = store_url
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=0, complete=False)
        last_t = recorded.main[-1].t
        _resumed_after(store, recorded.exp, last_t, last_t + gap)
    report = report_of(url, recorded.exp)
    r2, suspended = report["R2"], max(gap, 0) / 1e9
    assert r2["duration_s"] == round((last_t + gap + HOUR - recorded.created_t) / 1e9, 3)
    assert (r2["suspended_s"], [r["suspended_s"] for r in r2["resumes"]]) == (
        suspended, [suspended])
    assert r2["active_s"] == round(r2["duration_s"] - suspended, 3)
    assert schema_errors(report) == []


def test_r2_of_a_run_never_resumed_counts_no_suspension(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store)
    r2 = report_of(url, recorded.exp)["R2"]
    assert (r2["suspended_s"], r2["active_s"]) == (0.0, r2["duration_s"])


@pytest.mark.parametrize("started", [True, 1.7e18, "1700000000000000000"])
def test_r2_gives_no_duration_when_the_recorded_start_is_not_an_integer(
        tmp_path: Path, started: Any) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    r2 = r2_who_and_when(replace(facts, created={**(facts.created or {}), "t": started},
                                 completed={**(facts.completed or {}), "t": 2 * 10**9}))
    assert (r2["started_at"], r2["duration_s"]) == (None, None)
    assert r2["ended_at"] == "1970-01-01T00:00:02.000Z"


def test_r2_notes_that_the_user_is_not_recorded_only_when_it_is_not(tmp_path: Path) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    created = facts.created or {}
    without = r2_who_and_when(replace(facts, created={**created, "meta": {"host": "h"}}))
    assert without["started_by"] is None and "not the user" in without["note"]
    named = r2_who_and_when(replace(facts, created={**created, "meta": {"user": "ada"}}))
    assert (named["started_by"], named["note"]) == ("ada", None)


def _with_params(facts: RunFacts, **params: Any) -> RunFacts:
    created = facts.created or {}
    return replace(facts, created={**created, "params": {**facts.params, **params}})


def test_r3_shows_the_dirty_flag_only_when_it_is_recorded_as_a_boolean(tmp_path: Path
                                                                      ) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    code = {"vcs": "git", "commit": "abc", "dirty": True}
    assert r3_code(_with_params(facts, code=code))["dirty"] is True
    assert r3_code(_with_params(facts, code={**code, "dirty": "no"}))["dirty"] is None


@pytest.mark.parametrize("hyperparams", [[1, 2], "lr=0.1", None])
def test_hyperparameters_that_are_not_a_mapping_have_no_digest(
        tmp_path: Path, hyperparams: Any) -> None:
    facts = _with_params(_facts_of_a_recorded_run(tmp_path), hyperparams=hyperparams)
    assert r3_code(facts)["configuration_digest"] is None
    assert (r6_configuration(facts)["hyperparameters"], r6_configuration(facts)["digest"]) == (
        None, None)


def test_r4_says_whether_the_environment_was_recorded(tmp_path: Path) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    assert r4_environment(_with_params(facts, environment=None))["recorded"] is False
    recorded = r4_environment(_with_params(facts, environment={"python": {"version": "3.11"}}))
    assert recorded["recorded"] is True and recorded["python"] == {"version": "3.11"}


@pytest.mark.parametrize("pid,shown", [(4242, 4242), (True, None), ("4242", None)])
def test_r2_shows_the_recorded_pid_only_when_it_is_an_integer(tmp_path: Path, pid: Any,
                                                              shown: int | None) -> None:
    facts = _facts_of_a_recorded_run(tmp_path)
    r2 = r2_who_and_when(replace(facts, created={**(facts.created or {}), "meta": {"pid": pid}}))
    assert r2["pid"] == shown and type(r2["pid"]) is type(shown)


def test_a_recorded_pass_of_an_incomplete_run_that_went_on_is_flagged(tmp_path: Path) -> None:
    """An incomplete run has no head, and neither has the certificate of its replay: R8 said
    head_is_current (None == None) even after the run recorded more draws, so a PASSED
    covering the first epoch only was quoted for the whole run, without an alert. The events
    the replay read must be those the run holds now."""
    url, data = f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "data"
    features, labels = sample_data()
    with ExperimentManager(url, data_dir=data) as manager:
        exp = manager.create_experiment("grows", seed=3)
        registered = exp.register_dataset("rows", features, labels)
        batches = TrainingDataIterator(registered, batch_size=64, experiment=exp)
        for _batch in batches:
            pass
        state = batches.state_dict()
        exp.suspend()
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp.id, data_dir=data))
    quoted = report_of(url, exp.id)["R8"]  # nothing recorded since: the pass covers the run
    assert (quoted["verdict"], quoted["head_is_current"]) == ("PASSED", True)
    with ExperimentManager(url, data_dir=data) as manager:
        exp = manager.resume_experiment(exp.id)
        registered = exp.register_dataset("rows", features, labels)
        batches = TrainingDataIterator(registered, batch_size=64, experiment=exp)
        batches.load_state_dict(state)
        for _batch in batches:  # epoch 1: a shuffle the recorded replay never read
            pass
        exp.suspend()
    report = report_of(url, exp.id)
    r8 = report["R8"]
    assert (r8["verdict"], r8["certified_head"], r8["head_is_current"]) == ("PASSED", None,
                                                                           False)
    assert ("the recorded replay read the incomplete run before it went on: the events "
            "recorded since were not replayed" in report["summary"]["alerts"])
    replayed = report_of(url, exp.id, replay=True, data_dir=str(data))["R8"]
    assert (replayed["verdict"], replayed["head_is_current"]) == ("PASSED", True)


def test_r2_and_r4_list_every_session_that_resumed_the_run_and_how_its_environment_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R2 and R4 described only the session that created the run: a run resumed on another
    machine, with another numpy, reported the first machine's environment alone. R2 now lists
    each resuming session (when, host, pid) and R4 how its environment differs from R4's; the
    JSON, HTML and Markdown say the same."""
    import os
    import socket

    from report.html import render_html
    from report.markdown import m, render_markdown
    from test_resume import ELSEWHERE, _resumed_elsewhere
    from trainer_helpers import bodies
    from ledger.environment import current_user
    from ledger.times import utc_text

    url, exp = _resumed_elsewhere(tmp_path, monkeypatch)
    with Store.open(url) as store:
        seams = [body for body in bodies(store, exp) if body["kind"] == "run_resumed"]
        recorded = [body for body in bodies(store, exp) if body["stream"] != "audit"]
    gaps = [body["t"] - max(earlier["t"] for earlier in recorded[:position])
            for position, body in enumerate(recorded) if body["kind"] == "run_resumed"]
    report = report_of(url, exp)
    assert report["R2"]["resumes"] == [
        {"seq": body["seq"], "at": utc_text(body["t"]), "by": current_user(),
         "host": socket.gethostname(), "pid": os.getpid(), "suspended_s": round(gap / 1e9, 3)}
        for body, gap in zip(seams, gaps, strict=True)]
    assert report["R4"]["resumes"] == [
        {"seq": body["seq"], "at": utc_text(body["t"]), "recorded": True, "differences": [
            {"key": key, "recorded": old, "resumed": new} for key, old, new in changes]}
        for body, changes in zip(seams, ([], ELSEWHERE), strict=True)]
    markdown, html = render_markdown(report), render_html(report)
    r2, r4 = (_md_section(markdown, key) for key in ("R2", "R4"))
    for body in seams:
        assert (f"| {body['seq']} | {m(utc_text(body['t']))} | {m(current_user())} | "
                f"{m(socket.gethostname())} | {os.getpid()} |") in r2
    assert f"| {seams[0]['seq']} | {m(utc_text(seams[0]['t']))} | as recorded | — | — |" in r4
    for key, old, new in ELSEWHERE:
        assert f"| {seams[1]['seq']} | {m(utc_text(seams[1]['t']))} | {m(key)} | {m(old)} | " \
               f"{m(new)} |" in r4
        assert all(text in html for text in (key, old, new))
    assert utc_text(seams[1]["t"]) in html and "Sessions that resumed the run" in html


def test_a_report_of_a_run_resumed_before_sessions_were_recorded_says_not_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from report.html import render_html
    from report.markdown import render_markdown
    from test_resume import _resumed_before_sessions_were_recorded

    url, exp = _resumed_before_sessions_were_recorded(tmp_path, monkeypatch)
    report = report_of(url, exp)
    [resumed] = report["R4"]["resumes"]
    assert (resumed["recorded"], resumed["differences"]) == (False, None)
    [code] = report["R3"]["resumes"]
    assert (code["recorded"], code["differences"]) == (False, None)
    assert len(report["R2"]["resumes"]) == 1
    assert not any(alert.startswith("RESUMED WITH") for alert in report["summary"]["alerts"])
    r4 = _md_section(render_markdown(report), "R4")
    assert f"| {resumed['seq']} |" in r4 and "| not recorded |" in r4
    assert "not recorded" in render_html(report).split('id="R4"')[1].split("</section>")[0]


def test_a_run_never_resumed_reports_no_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=1)
    report = report_of(url, exp)
    assert report["R2"]["resumes"] == report["R3"]["resumes"] == report["R4"]["resumes"] == []


def test_a_run_resumed_with_other_code_or_libraries_is_alerted_and_r3_shows_its_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R3 named only the creating session's commit, and nothing in the summary said that later
    events were recorded by other code or another numpy: the report read as one version's run.
    R3 now lists each resuming session's code differences, and an alert names what differed
    that can change outputs — code and library versions, not the machine (platform keys)."""
    import ledger.resume
    from report.html import render_html
    from report.markdown import m, render_markdown
    from test_resume import _resumed_elsewhere

    real = ledger.resume.code_version
    monkeypatch.setattr(ledger.resume, "code_version",
                        lambda start: {**real(start), "commit": "c0ffee" * 6 + "c0ff"})
    url, exp = _resumed_elsewhere(tmp_path, monkeypatch)
    report = report_of(url, exp)
    created = report["R3"]["commit"]
    first, second = report["R3"]["resumes"]
    assert [d["key"] for d in second["differences"]] == ["commit"]
    assert first["differences"] == second["differences"] and second["recorded"] is True
    [alert] = [a for a in report["summary"]["alerts"] if a.startswith("RESUMED WITH")]
    assert f"commit {created or 'absent'} recorded, {'c0ffee' * 6}c0ff at the resume of seq " \
           f"{first['seq']}, {second['seq']}" in alert
    assert f"packages.numpy {np.__version__} recorded, 0.0.other at the resume of seq " \
           f"{second['seq']}" in alert and "platform" not in alert
    r3 = _md_section(render_markdown(report), "R3")
    assert f"| {second['seq']} | {m(second['at'])} | commit |" in r3
    assert "against the code version above" in render_html(report)


def _md_section(text: str, key: str) -> str:
    """The Markdown of section ``key`` (R0, R4, …): from its heading to the next one."""
    import re

    found = re.search(rf"^## {key} .*?(?=^## |\Z)", text, re.M | re.S)
    assert found is not None
    return found.group(0)


def test_a_recorded_failure_at_a_changed_dataset_of_an_incomplete_run_is_current(
        tmp_path: Path) -> None:
    """A replay stops at a changed dataset without re-executing the draws: its certificate
    counted neither them nor the events that are not draws, so R8 judged that the replay had
    read less than the incomplete run holds and said it went on since, which it had not."""
    url, data = f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "data"
    with ExperimentManager(url, data_dir=data) as manager:
        exp = manager.create_experiment("stopped", seed=3)
        registered = exp.register_dataset("rows", *sample_data())
        for _batch in TrainingDataIterator(registered, batch_size=64, experiment=exp):
            pass
        exp.suspend()
    (stored,) = data.rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"] + 1.0, archive["labels"]
    np.savez(stored, features=features, labels=labels)
    with Store.open(url) as store:
        record_replay(store, replay_run(store, exp.id, data_dir=data))
    report = report_of(url, exp.id)
    r8 = report["R8"]
    assert (r8["verdict"], r8["certified_head"], r8["head_is_current"]) == ("FAILED", None, True)
    assert not any("went on" in alert for alert in report["summary"]["alerts"])
    # compared: the dataset, which differed; left unchecked: the draws, as every one would
    assert (r8["counts"]["compared"], r8["counts"]["mismatched"], r8["counts"]["skipped"]) == (
        1, 1, {"epoch_reset": 1})
