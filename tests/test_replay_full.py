"""`ledger replay --full`: the demo's job re-runs from its record and reproduces bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from examples.fraud.job import fraud_demo_job, job_config
from ledger.errors import CannotReplayError
from ledger.experiment import ExperimentManager
from ledger.jobs import job_entrypoint
from ledger.store import Store
from replay import Cause, diff_runs
from replay.full import replay_full
from replay_helpers import record_run


def _record_demo(folder: Path, *, inject: bool = False, workers: int = 0) -> tuple[str, str]:
    url = f"sqlite:///{folder / 'ledger.db'}"
    with ExperimentManager(url, data_dir=folder / "data") as manager:
        exp = fraud_demo_job(manager, seed=42, config=job_config(
            workers=workers, epochs=2, inject_nondeterminism=inject, transactions=6000))
    return url, exp


def test_full_replay_of_the_demo_is_identical_metrics_and_checkpoints_included(
        tmp_path: Path) -> None:
    url, exp = _record_demo(tmp_path, workers=2)
    with Store.open(url) as store:
        report = replay_full(store, exp)
    assert report.certified, report.diff.first_divergence
    assert report.job == "fraud-detection-v3-demo" and report.rerun != exp
    compared = report.diff.compared_by_kind
    assert compared["metric"] == 4 and compared["checkpoint"] == 1  # 2 epochs x (loss, AUC)
    assert compared["augmentation_batch"] > 0 and compared["worker_spawned"] == 2
    assert report.diff.identical_events == report.diff.compared


def test_full_replay_of_the_injected_bug_diverges_at_the_first_batch(tmp_path: Path) -> None:
    url, exp = _record_demo(tmp_path, inject=True)
    with Store.open(url) as store:
        report = replay_full(store, exp)
    divergence = report.diff.first_divergence
    assert not report.certified and divergence is not None
    assert divergence.kind == "augmentation_batch"
    assert list(divergence.identity[1:]) == ["epoch", 0, "batch", 0, "augment"]
    assert divergence.cause is Cause.OUTPUT


def test_full_replay_of_the_injected_bug_on_the_command_line_is_exit_1_with_one_line(
        tmp_path: Path) -> None:
    url, exp = _record_demo(tmp_path, inject=True)
    result = run_cli("--db", url, "replay", exp, "--full")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"DIVERGED: {exp} re-ran as job fraud-detection-v3-demo v1\n")
    [line] = result.stderr.splitlines()
    assert line.startswith("ledger: full replay diverged: ") and "augmentation_batch" in line


def test_diff_of_two_injected_runs_points_at_epoch_0_batch_0(tmp_path: Path) -> None:
    url, first = _record_demo(tmp_path, inject=True)
    _url, second = _record_demo(tmp_path, inject=True)
    with Store.open(url) as store:
        report = diff_runs(store, first, second)
    divergence = report.first_divergence
    assert divergence is not None and divergence.kind == "augmentation_batch"
    assert list(divergence.identity[1:]) == ["epoch", 0, "batch", 0, "augment"]
    assert divergence.cause is Cause.OUTPUT and divergence.a.seed == divergence.b.seed
    assert divergence.a.input == divergence.b.input
    assert not (report.config or report.datasets or report.code)


def test_full_replay_of_a_run_without_a_job_cannot_replay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store, pytest.raises(CannotReplayError, match="records no job"):
        replay_full(store, exp)
    result = run_cli("--db", url, "replay", exp, "--full")
    assert result.returncode == 3 and "Traceback" not in result.stderr


def test_full_replay_of_an_incomplete_run_cannot_replay_saying_why(tmp_path: Path) -> None:
    """A killed demo run re-ran whole and was DIVERGED ("event extra", exit 1) with no word of
    the run being incomplete."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = job_config(workers=0, epochs=2, inject_nondeterminism=False, transactions=6000)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("fraud-detection-v3", seed=42, entrypoint=job_entrypoint(
            "fraud-detection-v3-demo", 1, config))
        exp.suspend()  # as a killed run is left: no run_completed
    result = run_cli("--db", url, "replay", exp.id, "--full")
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        f"ledger: error: {exp.id} is incomplete (no run_completed: killed, suspended or still "
        f"running), so its full re-run, which records the whole run, cannot be compared with "
        f"it: replay without --full certifies the draws it recorded; or resume the run to the "
        f"end"]


def test_full_replay_from_the_command_line(tmp_path: Path) -> None:
    url, exp = _record_demo(tmp_path)
    result = run_cli("--db", url, "replay", exp, "--full")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CERTIFIED") and "metrics and checkpoints" in result.stdout


@pytest.mark.parametrize("options", [("--jobs", "2"), ("--data-dir", "elsewhere"),
                                     ("-j", "1"), ("--take-over",)],
                         ids=["jobs", "data-dir", "jobs-at-default", "take-over"])
def test_full_replay_refuses_options_it_cannot_honour_before_doing_anything(
        tmp_path: Path, options: tuple[str, ...]) -> None:
    """Refused whenever given, even at the default value: silently ignoring `-j 1` read as if
    the option applied."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    with Store.open(url) as store:
        before = store.counts_by_kind(exp)
    result = run_cli("--db", url, "replay", exp, "--full", *options)
    assert result.returncode == 2 and "cannot be used with --full" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    with Store.open(url) as store:
        assert store.counts_by_kind(exp) == before


def test_full_replay_lists_how_the_reruns_code_version_differs_from_the_recorded_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run recorded from a checkout, re-run by an auditor whose copy is a wheel (no commit)
    or another commit: `replay --full` said CERTIFIED and nothing of the code version, which
    only `--json` held. The text lists the differences below the verdict they do not change."""
    import ledger.experiment

    recorded = {"vcs": "git", "commit": "ab" * 20, "dirty": False, "diff_digest": None,
                "untracked": 0}
    monkeypatch.setattr(ledger.experiment, "code_version", lambda *_: recorded)
    url, exp = _record_demo(tmp_path)
    result = run_cli("--db", url, "replay", exp, "--full")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"CERTIFIED: {exp} re-ran as job")
    assert lines[1] == "  code differs from the recorded one:"
    assert f'    commit: "{"ab" * 20}" recorded, ' in result.stdout
