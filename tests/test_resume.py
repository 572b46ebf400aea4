"""Resuming a killed run from its last checkpoint: later draws equal the uninterrupted run's,
nothing is recorded twice, and replay certifies the whole run."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from code_repos import code_outside_the_main_script, git, installed_package
from conftest import ROOT, readme_python_block, run_cli
from ledger.augment import DataAugmenter
from ledger.canonical import canonical
from ledger.errors import (BadInputError, ForeignStateError, StateAheadError,
                           StreamClaimedError)
from ledger.experiment import Experiment, ExperimentManager
from ledger.experiment_info import describe_experiment
from ledger.iterator import TrainingDataIterator
from ledger.store import Store
from ledger.times import utc_text
from ledger.verify import verify as verify_ledger
from replay import diff_runs, replay_run
from replay_helpers import sample_data
from trainer_helpers import bodies

EPOCHS = 3
DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_resume import train
    from ledger.experiment import ExperimentManager
    with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
        exp = manager.create_experiment("resumable", seed=42)
        print(exp.id, flush=True)
        train(exp, sys.argv[3], kill_after_checkpoint=int(sys.argv[4]))
""")


PREEMPTIBLE_DRIVER = textwrap.dedent("""
    import signal, sys, threading
    sys.path.insert(0, {tests!r})
    from test_resume import train
    from ledger.experiment import ExperimentManager
    # The README's recipe: the handler only sets a flag; the loop suspends at a batch boundary
    preempted = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: preempted.set())
    with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
        with manager.create_experiment("resumable", seed=42) as exp:
            print(exp.id, flush=True)
            train(exp, sys.argv[3], preempted=preempted)
""")


def train(exp: Experiment, folder: str, *, start: dict | None = None,
          kill_after_checkpoint: int | None = None,
          preempted: threading.Event | None = None) -> np.ndarray:
    """A tiny deterministic training loop that checkpoints (weights + iterator state) per epoch.

    With ``kill_after_checkpoint`` it announces itself after that epoch's checkpoint and a few
    more batches, then waits to be killed. With ``preempted`` it announces itself at the same
    point, waits for the event (SIGTERM sets it), then saves a mid-epoch checkpoint, suspends
    the run and exits with 143. ``start`` is a saved checkpoint to resume from.
    """
    from ledger.augment import DataAugmenter
    from ledger.iterator import TrainingDataIterator

    features, labels = sample_data(rows=800)
    data = exp.register_dataset("resumable-data", features, labels)
    batches = TrainingDataIterator(data, batch_size=64, num_workers=2, experiment=exp,
                                   augmenter=DataAugmenter(noise_std=0.1, mask_prob=0.1))
    weights = np.zeros(features.shape[1], dtype=np.float64)
    first_epoch = 0
    if start is not None:
        weights = np.frombuffer(start["weights"], dtype=np.float64).copy()
        batches.load_state_dict(start["iterator"])
        first_epoch = start.get("next_epoch", start["epoch"] + 1)
    with batches:
        for epoch in range(first_epoch, EPOCHS):
            for step, (x, _y) in enumerate(batches):
                weights += x.mean(axis=0) * 0.01
                if (kill_after_checkpoint is not None and epoch == kill_after_checkpoint + 1
                        and step == 3):
                    exp.flush()
                    print("killme", flush=True)
                    import time
                    time.sleep(600)
                if preempted is not None and start is None and epoch == 1 and step == 3:
                    print("running", flush=True)
                    preempted.wait(60)
                if preempted is not None and preempted.is_set():
                    Path(folder, "preempted.msgpack").write_bytes(canonical(
                        {"epoch": epoch, "next_epoch": epoch, "weights": weights.tobytes(),
                         "iterator": batches.state_dict()}))
                    exp.suspend()
                    sys.exit(143)
            exp.log_metric("norm", float(np.linalg.norm(weights)), epoch=epoch)
            exp.log_checkpoint("weights", weights, epoch=epoch)
            Path(folder, f"checkpoint-{epoch}.msgpack").write_bytes(canonical(
                {"epoch": epoch, "weights": weights.tobytes(), "iterator": batches.state_dict()}))
    return weights


def _killed_run(folder: Path, url: str, kill_after: int) -> str:
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tests=str(Path(__file__).parent)), url,
         str(folder / "data"), str(folder), str(kill_after)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    exp = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "killme"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    return exp


def test_a_killed_run_resumes_from_its_checkpoint_and_replay_certifies_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "straight").mkdir()
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("resumable", seed=42) as straight:
            expected = train(straight, str(tmp_path / "straight"))
    killed = _killed_run(tmp_path, url, kill_after=0)
    with Store.open(url) as store:
        assert describe_experiment(store, killed).status == "incomplete"
    checkpoint = msgpack.unpackb((tmp_path / "checkpoint-0.msgpack").read_bytes(), raw=False)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.resume_experiment(killed) as resumed:
            weights = train(resumed, str(tmp_path), start=checkpoint)
    np.testing.assert_array_equal(weights, expected)
    with Store.open(url) as store:
        assert verify_ledger(store).ok
        counts = store.counts_by_kind(killed)
        assert counts["run_resumed"] == 1
        assert counts == {**store.counts_by_kind(straight.id), "run_resumed": 1}
        assert replay_run(store, killed, data_dir=tmp_path / "data").certified
        report = diff_runs(store, straight.id, killed)
        assert report.identical, report.first_divergence
    assert run_cli("--db", url, "replay", killed, "--data-dir", str(tmp_path / "data")
                   ).returncode == 0


class _ReadmeModel:
    """The README's stand-in ``model``: keeps what ``load`` is given."""

    def __init__(self) -> None:
        self.loaded: np.ndarray | None = None

    def load(self, weights: np.ndarray) -> None:
        self.loaded = weights


def test_the_readme_resume_example_runs_as_written(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's resume block, given the id of a run suspended mid-epoch, continues that run
    under its id: it completes, and replay certifies it (the block's names cannot drift)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    features, labels = sample_data(rows=2_000)
    augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.1)
    with ExperimentManager("sqlite:///ledger.db") as manager:
        exp = manager.create_experiment("fraud-detection-v3", seed=42)
        data = exp.register_dataset("dataset-fraud-2024Q1", features, labels)
        batches = TrainingDataIterator(data, batch_size=256, augmenter=augmenter,
                                       num_workers=2, experiment=exp)
        for _step, _batch in zip(range(3), batches):
            pass
        saved = {"iterator": batches.state_dict(), "weights": np.arange(4.0)}
        batches.close()
        exp.suspend()
    code = readme_python_block("### Resuming an interrupted run", "resume_experiment")
    model = _ReadmeModel()
    namespace = {"ExperimentManager": ExperimentManager, "TrainingDataIterator":
                 TrainingDataIterator, "features": features, "labels": labels,
                 "augmenter": augmenter, "saved": saved, "model": model}
    exec(compile(code.replace("exp-3f9c0a1b2c4d", exp.id), "README.md", "exec"),  # noqa: S102
         namespace)
    np.testing.assert_array_equal(model.loaded, saved["weights"])
    with Store.open("sqlite:///ledger.db") as store:
        assert describe_experiment(store, exp.id).status == "ok"
        assert store.counts_by_kind(exp.id)["run_resumed"] == 1
        assert replay_run(store, exp.id, data_dir=tmp_path / "ledger-data").certified


def test_a_run_preempted_by_sigterm_suspends_mid_epoch_and_resumes_identically(
        tmp_path: Path) -> None:
    """Slurm and Kubernetes stop a job with SIGTERM (then SIGKILL): with the README's handler
    the run is suspended at a batch boundary, nothing recorded is lost, and it resumes mid-epoch
    to the uninterrupted run's weights and events."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    (tmp_path / "straight").mkdir()
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("resumable", seed=42) as straight:
            expected = train(straight, str(tmp_path / "straight"))
    process = subprocess.Popen(
        [sys.executable, "-c", PREEMPTIBLE_DRIVER.format(tests=str(Path(__file__).parent)), url,
         str(tmp_path / "data"), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    preempted = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "running"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    process.stdout.close()
    with Store.open(url) as store:
        info = describe_experiment(store, preempted)
        assert info.status == "incomplete" and verify_ledger(store, preempted).ok
        assert info.counts["checkpoint"] == 1  # epoch 0's; the run stopped inside epoch 1
    checkpoint = msgpack.unpackb((tmp_path / "preempted.msgpack").read_bytes(), raw=False)
    assert (checkpoint["iterator"]["epoch"], checkpoint["iterator"]["batch"]) == (1, 4)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.resume_experiment(preempted) as resumed:
            weights = train(resumed, str(tmp_path), start=checkpoint)
    np.testing.assert_array_equal(weights, expected)
    with Store.open(url) as store:
        assert store.counts_by_kind(preempted) == {**store.counts_by_kind(straight.id),
                                                   "run_resumed": 1}
        assert replay_run(store, preempted, data_dir=tmp_path / "data").certified
        report = diff_runs(store, straight.id, preempted)
        assert report.identical, report.first_divergence


def _train_in_epochs(exp: Experiment, *, start: dict | None = None, stop_after: int | None = None,
                     loop_epoch_saved: bool = False) -> dict | None:
    """Three epochs of a tiny loop logging a metric and a checkpoint per epoch. With
    ``stop_after`` it stops at that epoch's last batch (its metric not yet logged) and returns
    the state to resume from; ``loop_epoch_saved`` resumes the loop at the loop's own saved
    epoch instead of ``next_epoch`` — the README's warning: one epoch behind its iterator."""
    features, labels = sample_data(rows=200)
    data = exp.register_dataset("epochs-data", features, labels)
    batches = TrainingDataIterator(data, batch_size=64, experiment=exp,
                                   augmenter=DataAugmenter(noise_std=0.1))
    weights, first = np.zeros(features.shape[1]), 0
    if start is not None:
        weights = start["weights"].copy()
        batches.load_state_dict(start["iterator"])
        first = start["epoch"] if loop_epoch_saved else start["next_epoch"]
    for epoch in range(first, EPOCHS):
        for step, (x, _y) in enumerate(batches):
            weights += x.mean(axis=0) * 0.01
            if epoch == stop_after and step == len(batches) - 1:
                return {"epoch": epoch, "next_epoch": batches.next_epoch,
                        "weights": weights.copy(), "iterator": batches.state_dict()}
        exp.log_metric("norm", float(np.linalg.norm(weights)), epoch=epoch)
        exp.log_checkpoint("weights", weights, epoch=epoch)
    return None


def test_diff_names_a_run_resumed_one_epoch_behind_its_iterator(tmp_path: Path) -> None:
    """Preempted at an epoch's last batch and resumed with the loop's own epoch (not
    ``next_epoch``), a run trains an epoch more, each metric labelled one behind. ``ledger
    diff`` against the uninterrupted run named its first differing metric *same seed,
    different output — nondeterministic code*, sending the engineer hunting for
    nondeterminism; it is *epochs out of step*: the resumed run logged that metric after
    drawing the next epoch, since its resume."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("epochs", seed=42) as straight:
            _train_in_epochs(straight)
        behind = manager.create_experiment("epochs", seed=42)
        state = _train_in_epochs(behind, stop_after=1)
        behind.suspend()
        with manager.resume_experiment(behind.id) as resumed:
            _train_in_epochs(resumed, start=state, loop_epoch_saved=True)
    with Store.open(url) as store:
        [resume_seq] = [seq for _stream, seq, kind, _body in store.iter_run_bodies(behind.id)
                        if kind == "run_resumed"]
        for a, b in ((straight.id, behind.id), (behind.id, straight.id)):
            report = diff_runs(store, a, b)
            divergence = report.first_divergence
            assert (divergence.kind, divergence.identity) == ("metric", ("metric", "norm", 1))
            assert divergence.cause.value == "epochs out of step", divergence.detail
            assert re.search(f"{straight.id} (logged it )?after drawing epoch 1[,:]",
                             divergence.detail)
            assert re.search(f"{behind.id} (logged it )?after drawing epoch 2[,:]",
                             divergence.detail)
            assert (f"{behind.id}'s loop labels its epochs 1 behind the data it trained on, "
                    f"since its resume (run_resumed main#{resume_seq})") in divergence.detail
            assert "nondeterministic" not in divergence.detail
    result = run_cli("--db", url, "diff", straight.id, behind.id)
    assert result.returncode == 1
    assert "metric [norm/1]: epochs out of step" in result.stdout
    assert "epochs out of step" in result.stderr and "Traceback" not in result.stderr


def test_diff_and_replay_word_a_draw_after_a_resume_by_the_resumed_session_environment(
        tmp_path: Path) -> None:
    """A run resumed under another numpy drew its later events with it. diff and replay compared
    only the creating session's environment, so a draw after the resume that differs read "same
    seed, same input and the same library versions gave another output"; they now name the
    version of the session that recorded it."""
    from forgery import copy_run

    url, forged = (f"sqlite:///{tmp_path / name}" for name in ("ledger.db", "forged.db"))
    straight, resumed = _straight_and_resumed(url, tmp_path / "data",
                                              DataAugmenter(noise_std=0.1))
    seam: list[int] = []

    def other_numpy_after_the_resume(body: dict) -> None:
        if body["kind"] == "run_resumed":
            seam.append(body["seq"])
            body["params"]["environment"]["packages"]["numpy"] = "9.9.9"
        elif seam and body["kind"] == "augmentation_batch" and body["path"][1:4] == [1, "batch",
                                                                                     0]:
            body["output"] = bytes(32)

    with Store.open(url) as source, Store.open(forged, create=True) as target:
        copy_run(source, resumed.id, target, other_numpy_after_the_resume)
        report = diff_runs(source, straight.id, resumed.id, store_b=target)
    divergence = report.first_divergence
    assert divergence.identity == ("augmentation_batch", "epoch", 1, "batch", 0, "augment")
    assert divergence.cause.value == "same seed, different output"
    assert divergence.detail.startswith("environments differ: numpy ")
    assert divergence.detail.endswith(
        f", 9.9.9 in {resumed.id}'s session resumed at main#{seam[0]}"), divergence.detail
    assert "same library versions" not in divergence.detail
    # replay likewise: the record was made under the resumed session's numpy, not the first's
    with Store.open(forged) as store:
        replayed = replay_run(store, resumed.id, data_dir=tmp_path / "data").first_divergence
    assert replayed.seq == divergence.b.seq
    assert replayed.cause.value == "same seed, different output"
    assert replayed.detail.startswith(
        f"environments differ: numpy 9.9.9 recorded (session resumed at main#{seam[0]}), "
    ), replayed.detail


def test_diff_lists_how_a_resumed_session_differs_in_environment_and_code(
        tmp_path: Path) -> None:
    """A run resumed under another numpy and another commit: diff's "environment differs" and
    "code differs" compared only the sessions that created the two runs, and listed nothing;
    each resumed session's differences are now listed too, named by where it resumed."""
    from forgery import copy_run

    url, forged = (f"sqlite:///{tmp_path / name}" for name in ("ledger.db", "forged.db"))
    straight, resumed = _straight_and_resumed(url, tmp_path / "data", None)
    seam: list[str] = []

    def other_session(body: dict) -> None:
        if body["kind"] == "experiment_created":
            body["params"]["code"] = "commit-1"
        elif body["kind"] == "run_resumed":
            seam.append(f"{body['stream']}#{body['seq']}")
            body["params"]["code"] = "commit-2"
            body["params"]["environment"]["packages"]["numpy"] = "9.9.9"

    with Store.open(url) as source, Store.open(forged, create=True) as target:
        copy_run(source, straight.id, target, other_session)
        copy_run(source, resumed.id, target, other_session)
    prefix = f"{resumed.id}'s session resumed at {seam[0]}: "
    result = run_cli("--db", forged, "diff", straight.id, resumed.id, "--json")
    assert result.returncode == 0, result.stderr  # every event agrees
    listed = json.loads(result.stdout)["differences"]
    assert listed["code"] == [{"key": f"{prefix}code", "a": "commit-1", "b": "commit-2"}]
    assert listed["environment"] == [{"key": f"{prefix}packages.numpy", "a": np.__version__,
                                      "b": "9.9.9"}]
    # run B's side is B's column, and run A's resumed session is named when it is A
    text = run_cli("--db", forged, "diff", resumed.id, straight.id).stdout.splitlines()
    assert f'    {prefix}code: "commit-2" vs "commit-1"' in text, text
    assert f'    {prefix}packages.numpy: "9.9.9" vs "{np.__version__}"' in text, text
    # a run against its copy: its resumed session is alike one of the other's, so none listed
    with Store.open(forged) as store:
        report = diff_runs(store, resumed.id, resumed.id)
    assert report.code == [] and report.environment == []

    # one the creating sessions already show is not listed again for the resume
    def numpy_from_the_start(body: dict) -> None:
        other_session(body)
        if body["kind"] == "experiment_created":
            body["params"]["environment"]["packages"]["numpy"] = "9.9.9"

    with Store.open(url) as source, Store.open(f"{forged}2", create=True) as target, \
            Store.open(forged) as store:
        copy_run(source, resumed.id, target, numpy_from_the_start)
        report = diff_runs(store, straight.id, resumed.id, store_b=target)
    assert report.environment == [("packages.numpy", np.__version__, "9.9.9")]


def test_a_resumed_run_that_does_not_reproduce_itself_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("resumable", seed=42)
        exp.log_metric("norm", 1.0, epoch=0)
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        with pytest.raises(BadInputError, match="diverges"):
            resumed.log_metric("norm", 2.0, epoch=0)
        assert resumed.log_metric("norm", 1.0, epoch=1) is not None
        resumed.close()


@pytest.mark.parametrize("change", [{"batch_size": 5}, {"drop_last": True}],
                         ids=["batch_size", "drop_last"])
def test_a_resumed_run_starting_over_with_other_batches_is_refused(tmp_path: Path,
                                                                   change: dict) -> None:
    """An epoch_reset's output is the order's digest, which batch_size and drop_last do not
    change: a resumed run that started over with another batch_size was taken for the same
    draw, trained on batches its record does not describe, and replay certified the run."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    features, labels = sample_data(rows=43)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("restart", seed=42)
        data = exp.register_dataset("d", features, labels)
        assert len(list(TrainingDataIterator(data, 10, experiment=exp))) == 5
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        data = resumed.register_dataset("d", features, labels)
        other = TrainingDataIterator(data, **({"batch_size": 10} | change), experiment=resumed)
        key = next(iter(change))
        with pytest.raises(BadInputError, match=f"epoch_reset at path \\['epoch', 0, "
                                                f"'shuffle'\\] with .*{key}=\\S+ \\(recorded"):
            next(iter(other))
        same = TrainingDataIterator(data, 10, experiment=resumed)
        assert len(list(same)) == 5  # the settings it was recorded with: accepted
        resumed.close()
    with Store.open(url) as store:
        assert store.counts_by_kind(exp.id)["epoch_reset"] == 1


def test_a_resumed_run_may_start_over_once_but_not_repeat_an_epoch_it_drew_itself(
        tmp_path: Path) -> None:
    """A run killed before it saved any state is resumed from the start: its first iterator
    redraws epoch 0, which the lost attempt drew (the same draw, recorded once). A second
    fresh iterator in the resumed process would repeat epoch 0 again: refused."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    features, labels = sample_data(rows=40)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("restart", seed=42)
        data = exp.register_dataset("d", features, labels)
        first_attempt = [x for x, _y in TrainingDataIterator(data, 10, experiment=exp)]
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        data = resumed.register_dataset("d", features, labels)
        redone = [x for x, _y in TrainingDataIterator(data, 10, experiment=resumed)]
        assert all(np.array_equal(a, b) for a, b in zip(first_attempt, redone, strict=True))
        with pytest.raises(BadInputError, match="another iterator of .* already drew epoch 0"):
            list(TrainingDataIterator(data, 10, experiment=resumed))
        resumed.close()


def test_a_resumed_run_refuses_a_fresh_iterator_repeating_an_epoch_the_lost_attempt_drew(
        tmp_path: Path) -> None:
    """Resumed from a state, the run's restored iterator goes on at epoch 2; a fresh iterator
    then made in the resumed process (one per epoch, the bug report's pattern) would start at
    epoch 0 again. Epoch 0 was drawn by the lost attempt, not by this process: it used to be
    let through, repeating that order with nothing in the ledger to show it (its draws were
    already recorded). Only the resumed process's first iterator may start over."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    features, labels = sample_data(rows=40)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("restored", seed=42)
        data = exp.register_dataset("d", features, labels)
        batches = TrainingDataIterator(data, 10, experiment=exp)
        for _epoch in range(2):
            list(batches)
        state = batches.state_dict()
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        data = resumed.register_dataset("d", features, labels)
        restored = TrainingDataIterator(data, 10, experiment=resumed)
        restored.load_state_dict(state)
        assert len(list(restored)) == 4 and restored.epoch == 2
        with pytest.raises(BadInputError, match="another iterator of .* already drew epoch 0"):
            list(TrainingDataIterator(data, 10, experiment=resumed))
        resumed.close()


KILLED_BEFORE_REAPED = textwrap.dedent("""
    import os, signal, sys
    from ledger.experiment import ExperimentManager
    manager = ExperimentManager(sys.argv[1], data_dir=sys.argv[2])
    exp = manager.create_experiment("reaped-late", seed=42, exp_id="exp-reapedlate1")
    exp.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # its claim on main left behind
""")


def test_a_killed_run_resumes_before_its_process_is_reaped(tmp_path: Path) -> None:
    """A supervisor that SIGKILLs a trainer and starts the resumed one before it reaps the
    killed process (found by tests/test_kill_resume_properties.py): the killed process is a
    zombie, which os.kill(pid, 0) still finds, and the resume was refused (StreamClaimedError)
    as if the killed trainer still held the run's main stream, until its parent reaped it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_BEFORE_REAPED, url,
                               str(tmp_path / "data")], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        # wait for it to end without reaping it (WNOWAIT): it stays a zombie meanwhile
        ended = os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)
        assert ended is not None and ended.si_status == signal.SIGKILL
        with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
            with manager.resume_experiment("exp-reapedlate1") as resumed:
                resumed.log_metric("resumed", 1)
    finally:
        killed.wait()
    with Store.open(url) as store:
        assert describe_experiment(store, "exp-reapedlate1").status == "ok"
        assert verify_ledger(store).ok


KILLED_ON_ANOTHER_NODE = textwrap.dedent("""
    import os, signal, sys
    import ledger.store.claims
    ledger.store.claims.host_identity = lambda: "node-7/pid:[4026531836]"  # its claims say so
    from ledger.experiment import ExperimentManager
    manager = ExperimentManager(sys.argv[1], data_dir=sys.argv[2])
    exp = manager.create_experiment("node-lost", seed=42, exp_id="exp-nodelost01")
    exp.log_metric("loss", 0.5, epoch=0)
    exp.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # its claim on main left behind, naming node-7
""")


def test_a_run_whose_node_was_lost_resumes_elsewhere_only_when_taken_over(
        tmp_path: Path) -> None:
    """A trainer killed on another machine left its claim on the run's main stream; from here
    its process cannot be asked about, so resuming is refused naming the holder, and
    ``take_over=True`` (which the refusal tells of) resumes — where resume_experiment had no
    such option and the run could not be resumed at all."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    subprocess.run([sys.executable, "-c", KILLED_ON_ANOTHER_NODE, url, str(tmp_path / "data")],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with pytest.raises(StreamClaimedError, match="node-7.*take_over=True"):
            manager.resume_experiment("exp-nodelost01")
        with manager.resume_experiment("exp-nodelost01", take_over=True) as resumed:
            resumed.log_metric("loss", 0.5, epoch=0)  # remembered, not recorded twice
            resumed.log_metric("loss", 0.25, epoch=1)
    with Store.open(url) as store:
        assert describe_experiment(store, "exp-nodelost01").status == "ok"
        assert verify_ledger(store).ok
        values = [body["params"]["value"] for body in bodies(store, "exp-nodelost01")
                  if body["kind"] == "metric"]
    assert values == [0.5, 0.25]


def test_only_an_incomplete_run_can_be_resumed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("done", seed=1) as exp:
            pass
        with pytest.raises(BadInputError, match="only an incomplete run"):
            manager.resume_experiment(exp.id)


UNFLUSHED_DRIVER = textwrap.dedent("""
    import os, sys
    from ledger.canonical import canonical
    from ledger.augment import DataAugmenter
    from ledger.experiment import ExperimentManager
    from ledger.iterator import TrainingDataIterator
    sys.path.insert(0, {tests!r})
    from replay_helpers import sample_data
    with ExperimentManager(sys.argv[1], data_dir=sys.argv[2]) as manager:
        exp = manager.create_experiment("unflushed", seed=42)
        data = exp.register_dataset("d", *sample_data())
        exp.flush()
        batches = TrainingDataIterator(data, 60, experiment=exp,
                                       augmenter=DataAugmenter(noise_std=0.1))
        list(batches)
        list(batches)
        state = batches.{state}()  # _state: as before state_dict flushed
        open(sys.argv[3], "wb").write(canonical({{"exp": exp.id, "state": state}}))
        os._exit(0)  # killed: whatever was not flushed is lost
""")


@pytest.mark.parametrize("state", ["state_dict", "_state"])
def test_a_state_ahead_of_the_ledger_is_refused_and_state_dict_prevents_it(
        tmp_path: Path, state: str) -> None:
    """A state saved, then the process killed before its events were written (found by the
    crash review: the resumed run skipped two epochs the ledger never got, and replay certified
    it). state_dict() now flushes the run first; a state ahead of a resumed run's record is
    refused at load_state_dict, naming the first missing draw."""
    url, saved = f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "state.bin"
    script = UNFLUSHED_DRIVER.format(tests=str(ROOT / "tests"), state=state)
    subprocess.run([sys.executable, "-c", script, url, str(tmp_path / "data"), str(saved)],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   timeout=120)
    loaded = msgpack.unpackb(saved.read_bytes())
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.resume_experiment(loaded["exp"])
        data = exp.register_dataset("d", *sample_data())
        batches = TrainingDataIterator(data, 60, experiment=exp,
                                       augmenter=DataAugmenter(noise_std=0.1))
        if state == "_state":
            with pytest.raises(StateAheadError, match=r"got a state at epoch 1 batch 10, "
                               r"but exp-\w+ has no record of epoch 0's shuffle: the state "
                               r"is ahead of the ledger"):
                batches.load_state_dict(loaded["state"])
            raise_it = pytest.raises(StateAheadError)
            with raise_it:  # as a training script would: the error leaves the block
                with exp:
                    batches.load_state_dict(loaded["state"])
            # refused before anything was done: the run is still there to resume
            assert describe_experiment(manager.store, exp.id).status == "incomplete"
            manager.resume_experiment(exp.id).suspend()
            return
        with exp:
            batches.load_state_dict(loaded["state"])
            list(batches)
        report = replay_run(manager.store, exp.id, data_dir=tmp_path / "data")
        assert report.certified
        assert (report.compared["epoch_reset"], report.compared["augmentation_batch"]) == (3, 30)


def test_a_state_saved_after_reset_cut_epochs_short_resumes(tmp_path: Path) -> None:
    """Epochs cut short by reset() hold fewer batches than a whole epoch: their state is not
    'ahead of the ledger' (the hostile-trainer review: refused, and the run ended failed)."""
    features, labels = sample_data()
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        exp = manager.create_experiment("cut-short", seed=1)
        data = exp.register_dataset("d", features, labels)
        batches = TrainingDataIterator(data, 60, experiment=exp,
                                       augmenter=DataAugmenter(noise_std=0.1))
        for _epoch in range(2):
            for taken, _batch in enumerate(batches):
                if taken == 2:
                    break
            batches.reset()
        state = batches.state_dict()
        exp.suspend()
        with manager.resume_experiment(exp.id) as resumed:
            data = resumed.register_dataset("d", features, labels)
            again = TrainingDataIterator(data, 60, experiment=resumed,
                                         augmenter=DataAugmenter(noise_std=0.1))
            again.load_state_dict(state)
            assert len(list(again)) == 10
        assert resumed.status == "ok"
        assert replay_run(manager.store, exp.id, data_dir=tmp_path).certified


@pytest.mark.parametrize("stop", ["mid-epoch", "epoch end"])
def test_a_run_resumed_from_its_state_logs_new_metrics_after_those_it_recorded(
        tmp_path: Path, stop: str) -> None:
    """A per-batch loss (epoch=e) and a per-epoch lr (no epoch), suspended with the README's
    recipe: the resumed run's first new value was compared with the first one recorded before
    the interruption and refused as a divergence, and the run ended failed (the hostile-trainer
    review). Values recorded before the saved state are not expected again."""
    features, labels = sample_data()
    stop_after = 13 if stop == "mid-epoch" else 20  # 10 batches per epoch
    url = f"sqlite:///{tmp_path / 'l.db'}"

    def train(exp: Experiment, state: dict | None, stop_at: int | None) -> dict | None:
        data = exp.register_dataset("d", features, labels)
        batches = TrainingDataIterator(data, 60, experiment=exp,
                                       augmenter=DataAugmenter(noise_std=0.1))
        if state is not None:
            batches.load_state_dict(state)
        taken = 0
        while batches.next_epoch < 3:
            for x, _y in batches:
                exp.log_metric("loss", float(x.sum()), epoch=batches.epoch)
                taken += 1
                if taken == stop_at and stop == "mid-epoch":
                    return batches.state_dict()
            exp.log_metric("lr", 0.1 / (batches.epoch + 1))
            if taken == stop_at:  # at the epoch's end, once its lr is logged
                return batches.state_dict()
        return None

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("metrics", seed=5) as whole:
            train(whole, None, None)
        exp = manager.create_experiment("metrics", seed=5)
        state = train(exp, None, stop_after)
        exp.suspend()
        with manager.resume_experiment(exp.id) as resumed:
            assert train(resumed, state, None) is None
        assert resumed.status == "ok"
        assert diff_runs(manager.store, whole.id, exp.id).identical


def _train_logging_losses(exp: Experiment, state: dict | None, until: int, *,
                          save_at: int = -1, lr: bool = False
                          ) -> tuple[TrainingDataIterator, dict | None]:
    """Batches of 60 rows by 6 (10 per epoch) up to the ``until``-th of the lineage from
    ``state``, each batch's loss logged (and, with ``lr``, an lr at each epoch's end); the
    iterator, and its state after the ``save_at``-th batch."""
    features, labels = sample_data(rows=60)
    batches = TrainingDataIterator(exp.register_dataset("d", features, labels), 6,
                                   experiment=exp)
    if state is not None:
        batches.load_state_dict(state)
    saved = None
    while (position := batches.epoch * 10 + batches.batch) < until:
        x, _y = next(iter(batches))
        exp.log_metric("loss", float(x.sum()), epoch=batches.epoch)
        if lr and batches.epoch_finished:
            exp.log_metric("lr", 0.1 / (batches.epoch + 1), epoch=batches.epoch)
        if position + 1 == save_at:
            saved = batches.state_dict()
    return batches, saved


@pytest.mark.parametrize("second_start", ["from the start", "from an earlier state"])
def test_a_state_saved_before_a_resumed_run_caught_up_does_not_log_its_metrics_twice(
        tmp_path: Path, second_start: str) -> None:
    """A resumed run re-executing what the lost attempt logged saves a state before it has
    caught up (a time-based checkpoint, say), and is killed again. Resumed from that state, it
    used to log the lost attempt's later losses a second time: the state noted only where the
    ledger stood (recorded_until), and every loss recorded before that point was taken for one
    before the state. Found by the stateful iterator machine. The run's metrics are now those
    of the uninterrupted run, each once."""
    url = f"sqlite:///{tmp_path / 'l.db'}"

    def train(exp: Experiment, state: dict | None, until: int, save_at: int = -1
              ) -> dict | None:
        return _train_logging_losses(exp, state, until, save_at=save_at, lr=True)[1]

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("metrics", seed=5) as whole:
            train(whole, None, 25)
        exp = manager.create_experiment("metrics", seed=5)
        early = train(exp, None, 14, save_at=3)  # killed after batch 4 of epoch 1
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        start = None if second_start == "from the start" else early
        late = train(resumed, start, 12, save_at=7)  # saved before it caught up; killed
        resumed.suspend()
        with manager.resume_experiment(exp.id) as again:
            train(again, late, 25)
        report = diff_runs(manager.store, whole.id, exp.id)
        assert report.identical, report.first_divergence


def test_a_state_saved_after_suspend_resumes_without_logging_its_metrics_twice(
        tmp_path: Path) -> None:
    """The README saves the state before ``suspend()``; saved after it, the state used to hold
    neither ``logged`` nor ``recorded_until`` (the run was closed), so the resumed run compared
    its first loss with the lost attempt's first of that epoch and was refused as diverging.
    ``logged`` is now saved whether or not the run is still open."""
    url = f"sqlite:///{tmp_path / 'l.db'}"

    def train(exp: Experiment, state: dict | None, until: int) -> TrainingDataIterator:
        return _train_logging_losses(exp, state, until)[0]

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("metrics", seed=5) as whole:
            train(whole, None, 25)
        exp = manager.create_experiment("metrics", seed=5)
        batches = train(exp, None, 14)
        exp.suspend()
        state = batches.state_dict()  # after suspend
        assert state["logged"] == [["metric", "loss", 0, 10], ["metric", "loss", 1, 4]]
        with manager.resume_experiment(exp.id) as again:
            train(again, state, 25)
        report = diff_runs(manager.store, whole.id, exp.id)
        assert report.identical, report.first_divergence


@pytest.mark.parametrize("parent_until", [5, 15], ids=["first-epoch", "second-epoch"])
def test_a_resumed_child_run_continues_from_its_parents_state(tmp_path: Path,
                                                             parent_until: int) -> None:
    """A run continuing its parent's state (parent=) is killed before its own first
    checkpoint; resumed, it loads the parent's state again — the only one it has. It used to be
    refused as ahead of the child's ledger (StateAheadError: the child never drew the parent's
    epochs), or, within that epoch, to log its losses a second time (the parent's ledger
    position was taken for one in the child's). Found while extending the stateful iterator
    machine. The resumed child now ends as an uninterrupted child would."""
    def train(exp: Experiment, state: dict | None, until: int, save_at: int = -1
              ) -> dict | None:
        return _train_logging_losses(exp, state, until, save_at=save_at)[1]

    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("parent", seed=5) as parent:
            state = train(parent, None, parent_until, save_at=parent_until)
        with manager.create_experiment("child", seed=5, parent=parent.id) as whole:
            train(whole, state, parent_until + 7)
        child = manager.create_experiment("child", seed=5, parent=parent.id)
        train(child, state, parent_until + 4)  # killed before its own first checkpoint
        child.suspend()
        with manager.resume_experiment(child.id) as again:
            train(again, state, parent_until + 7)
        assert again.status == "ok"
        report = diff_runs(manager.store, whole.id, child.id)
        assert report.identical, report.first_divergence


def _augmented_batches(exp: Experiment) -> TrainingDataIterator:
    """The child-run tests' iterator: 60 rows in batches of 6, with noise."""
    features, labels = sample_data(rows=60)
    return TrainingDataIterator(exp.register_dataset("d", features, labels), 6, experiment=exp,
                                augmenter=DataAugmenter(noise_std=0.1))


def test_a_resumed_child_run_continues_from_its_own_checkpoint(tmp_path: Path) -> None:
    """A child run (parent=) that began at its parent's state, epoch 1 batch 5, checkpoints at
    batch 8 and is killed; resumed, it loads its own checkpoint. That was refused as ahead of
    the ledger (StateAheadError: 'no record of epoch 0's shuffle' — the parent drew epoch 0).
    Found by the stateful iterator machine. Its own draws are still checked: a state one batch
    past them is refused."""

    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("parent", seed=5) as parent:
            batches = _augmented_batches(parent)
            list(batches)
            for _batch, _x in zip(range(5), batches):
                pass
            state = batches.state_dict()
        with manager.create_experiment("child", seed=5, parent=parent.id) as whole:
            batches = _augmented_batches(whole)
            batches.load_state_dict(state)
            expected = [x for x, _y in batches]
        child = manager.create_experiment("child", seed=5, parent=parent.id)
        batches = _augmented_batches(child)
        batches.load_state_dict(state)
        for _batch, _x in zip(range(3), batches):
            pass
        own = batches.state_dict()
        child.suspend()
        with manager.resume_experiment(child.id) as again:
            batches = _augmented_batches(again)
            batches.load_state_dict(own)
            with pytest.raises(StateAheadError, match="no record of batch 8 of epoch 1"):
                batches.load_state_dict({**own, "batch": 9})
            rest = [x for x, _y in batches]
        assert all(np.array_equal(a, b) for a, b in zip(expected[3:], rest, strict=True))
        report = diff_runs(manager.store, whole.id, child.id)
        assert report.identical, report.first_divergence


def test_a_resumed_child_run_loads_a_checkpoint_saved_where_it_began(tmp_path: Path) -> None:
    """A child run continuing its parent's state at an epoch's end checkpoints at once (it has
    drawn nothing), goes on into the next epoch, and is killed; resumed, it loads that first
    checkpoint: it was refused ('no record of batch 0 of epoch 0', the parent's batch)."""

    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("parent", seed=5) as parent:
            batches = _augmented_batches(parent)
            list(batches)
            state = batches.state_dict()
        child = manager.create_experiment("child", seed=5, parent=parent.id)
        batches = _augmented_batches(child)
        batches.load_state_dict(state)
        first = batches.state_dict()
        expected = [x for x, _y in batches]  # epoch 1
        child.suspend()
        with manager.resume_experiment(child.id) as again:
            batches = _augmented_batches(again)
            batches.load_state_dict(first)
            redone = [x for x, _y in batches]
            assert batches.epoch == 1
        assert all(np.array_equal(a, b) for a, b in zip(expected, redone, strict=True))


def test_a_run_continuing_a_state_mid_epoch_records_where_it_resumed(
        manager: ExperimentManager) -> None:
    """A new run continuing its parent's state mid-epoch records that epoch's reset again (it
    is this run's first draw of it) and notes the batch it resumed at, so a reader of the run
    alone sees that its first batches are the parent's; the next epoch's reset notes nothing."""
    features, labels = sample_data()
    with manager.create_experiment("parent", seed=7) as parent:
        batches = TrainingDataIterator(parent.register_dataset("d", features, labels), 60,
                                       experiment=parent)
        for taken, _batch in enumerate(batches):
            if taken == 2:
                break
        state = batches.state_dict()
    with manager.create_experiment("child", seed=7, parent=parent.id) as child:
        again = TrainingDataIterator(child.register_dataset("d", features, labels), 60,
                                     experiment=child)
        again.load_state_dict(state)
        assert [len(list(again)) for _epoch in range(2)] == [7, 10]
    resets = [(body["params"]["epoch"], body["meta"]) for body in bodies(manager.store, child.id)
              if body["kind"] == "epoch_reset"]
    assert resets == [(0, {"resumed_at_batch": 3}), (1, {})]


def test_the_state_of_a_completed_run_holds_no_recorded_until(manager: ExperimentManager) -> None:
    """After the run completed, state_dict() of its iterator still works, with the position and
    settings only: ``recorded_until`` marks what a resumed run will not log again, and a
    completed run is never resumed (its state continues in a new run, parent=)."""
    with manager.create_experiment("done", seed=7) as exp:
        batches = TrainingDataIterator(exp.register_dataset("d", *sample_data()), 60,
                                       experiment=exp)
        list(batches)
        assert type(batches.state_dict()["recorded_until"]) is int
    state = batches.state_dict()
    assert "recorded_until" not in state
    assert (state["epoch"], state["batch"], state["started"]) == (0, 10, True)
    assert state["dataset"] == "d"  # for a reader: a load compares the dataset by its digest


@pytest.mark.parametrize("ahead, missing", [({"batch": 6}, "batch 5 of epoch 0"),
                                            ({"epoch": 1, "batch": 0}, "epoch 1's shuffle")],
                         ids=["one-batch-ahead", "epoch-not-started"])
def test_a_state_one_draw_ahead_of_the_resumed_run_is_refused(
        manager: ExperimentManager, ahead: dict, missing: str) -> None:
    """A state (another program's, say) claiming one batch more than the run recorded, or an
    epoch it never started, is refused at its first missing draw — not only states that are far
    ahead; the state the run saved itself then loads and continues the epoch."""
    features, labels = sample_data()

    def iterator(exp: Experiment) -> TrainingDataIterator:
        return TrainingDataIterator(exp.register_dataset("d", features, labels), 60,
                                    experiment=exp, augmenter=DataAugmenter(noise_std=0.1))

    exp = manager.create_experiment("ahead", seed=3)
    batches = iterator(exp)
    for taken, _batch in enumerate(batches):
        if taken == 4:
            break
    state = batches.state_dict()
    exp.suspend()
    with manager.resume_experiment(exp.id) as resumed:
        again = iterator(resumed)
        with pytest.raises(StateAheadError, match=f"has no record of {missing}: the state is "):
            again.load_state_dict({**state, **ahead})
        again.load_state_dict(state)
        assert len(list(again)) == 5
    assert resumed.status == "ok"


def _forty_rows(exp: Experiment) -> TrainingDataIterator:
    """The foreign-state tests' iterator: 40 rows in batches of 10, the same data every run."""
    features, labels = sample_data(rows=40)
    return TrainingDataIterator(exp.register_dataset("d", features, labels), 10, experiment=exp)


def test_a_resumed_run_refuses_a_state_saved_by_another_run(tmp_path: Path) -> None:
    """A resumed run loads a state of its own or of the run it continues. One saved by an
    unrelated run used to skip every check (it names another run), so a state ahead of this
    run's record resumed past draws the ledger never got — a hole replay would certify. It is
    refused, naming both runs, and the run is left resumable (suspended), not failed."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("other", seed=7) as other:
            batches = _forty_rows(other)
            for _epoch in range(3):
                list(batches)
            foreign = batches.state_dict()
        exp = manager.create_experiment("resumable", seed=7)
        list(_forty_rows(exp))
        exp.suspend()
        with pytest.raises(ForeignStateError, match=f"saved by run '{other.id}', but resumed "
                                                    f"run {exp.id} continues only"):
            with manager.resume_experiment(exp.id) as resumed:
                _forty_rows(resumed).load_state_dict(foreign)
        assert describe_experiment(manager.store, exp.id).status == "incomplete"
        manager.resume_experiment(exp.id).close()  # still resumable


def test_a_new_run_loads_only_a_state_of_the_run_it_continues(tmp_path: Path) -> None:
    """A new run loading another run's state started mid-epoch with nothing in its record
    linking it to the run that drew what came before. Refused, unless ``parent=`` names that
    run; a run's own state loads as before."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("saver", seed=7) as saver:
            batches = _forty_rows(saver)
            next(iter(batches))
            state = batches.state_dict()
            batches.close()
        with pytest.raises(ForeignStateError, match=f"saved by run '{saver.id}', but new run "
                                                    f"exp-[0-9a-f]+ does not continue it: "
                                                    f"create the run with parent="):
            with manager.create_experiment("unrelated", seed=7) as unrelated:
                _forty_rows(unrelated).load_state_dict(state)
        with manager.create_experiment("child", seed=7, parent=saver.id) as child:
            continued = _forty_rows(child)
            continued.load_state_dict(state)
            assert len(list(continued)) == 3  # the batches the saver had left


@pytest.mark.parametrize("run", [None, 7, ["exp-0"]], ids=["none", "int", "list"])
def test_a_state_whose_run_is_not_an_id_is_refused(tmp_path: Path, run: object) -> None:
    """``run`` set to None was taken for a state naming no run (an unrecorded iterator's), so a
    state of one run started another, unrelated one at batch 2; replay certified it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("saver", seed=7) as saver:
            batches = _forty_rows(saver)
            next(iter(batches))
            state = {**batches.state_dict(), "run": run}
            batches.close()
        with manager.create_experiment("unrelated", seed=7) as unrelated:
            with pytest.raises(BadInputError, match=r"got a state whose 'run' is .*, but a "
                                                    r"state_dict names the run that saved it"):
                _forty_rows(unrelated).load_state_dict(state)
        resumed = manager.create_experiment("resumed", seed=7)
        resumed.suspend()
        with manager.resume_experiment(resumed.id) as again:
            with pytest.raises(BadInputError, match="got a state whose 'run' is"):
                _forty_rows(again).load_state_dict(state)
        # an unrecorded iterator's state names no run: it starts a new run where it stands
        unrecorded = TrainingDataIterator(sample_data(rows=40), 10, seed=7)
        next(iter(unrecorded))
        plain = unrecorded.state_dict()
        assert "run" not in plain
        with manager.create_experiment("from-unrecorded", seed=7) as started:
            continued = _forty_rows(started)
            continued.load_state_dict(plain)
            assert len(list(continued)) == 3


def _suspended_run(manager: ExperimentManager) -> Experiment:
    """A run that drew one batch of user draws and was suspended: resumable."""
    exp = manager.create_experiment("sessions", seed=11)
    exp.generator("model", "init").normal(size=4)
    exp.suspend()
    return exp


def _resumed_params(store: Store, exp: str) -> list[dict]:
    return [body["params"] for body in bodies(store, exp) if body["kind"] == "run_resumed"]


def test_run_resumed_records_the_resuming_sessions_environment_and_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run resumed on another machine, with other library versions, was recorded only by its
    seam (after_seq, last_checkpoint): the session that wrote the rest of the run was invisible.
    run_resumed now records that process's environment and code version as experiment_created
    does — the code of ``code_dir`` when given, else of the main script's folder."""
    from ledger.environment import code_version, environment_fingerprint

    repo = code_outside_the_main_script(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = _suspended_run(manager)
        manager.resume_experiment(exp.id).suspend()
        with manager.resume_experiment(exp.id, code_dir=repo / "train.py"):
            pass
    with Store.open(url) as store:
        first, second = _resumed_params(store, exp.id)
        assert verify_ledger(store).ok
    for params in (first, second):
        assert params["environment"] == environment_fingerprint()
        assert set(params) == {"after_seq", "last_checkpoint", "code", "environment"}
    assert first["code"] == code_version(tmp_path / "venv-bin" / "launcher") == {"vcs": None}
    assert second["code"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert second["code"]["dirty"] is False


def test_a_resume_naming_a_code_dir_that_does_not_exist_records_nothing(
        manager: ExperimentManager, tmp_path: Path) -> None:
    exp = _suspended_run(manager)
    with pytest.raises(BadInputError, match="code_dir .*no such file or folder"):
        manager.resume_experiment(exp.id, code_dir=tmp_path / "no-such-repo")
    assert "run_resumed" not in manager.store.counts_by_kind(exp.id)
    with manager.resume_experiment(exp.id):  # still resumable: main was never claimed
        pass


def _resumed_before_sessions_were_recorded(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(url, exp) of a completed run resumed once, whose run_resumed holds only after_seq and
    last_checkpoint, as ledgers written before the session was recorded do."""
    import ledger.resume

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with monkeypatch.context() as patched:
        patched.setattr(ledger.resume, "_session", lambda _code_start: {})
        with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
            exp = _suspended_run(manager)
            with manager.resume_experiment(exp.id) as again:
                again.generator("model", "init")  # remembered, not recorded twice
                again.generator("model", "head")
    with Store.open(url) as store:
        assert set(_resumed_params(store, exp.id)[0]) == {"after_seq", "last_checkpoint"}
    return url, exp.id


def test_a_run_resumed_before_sessions_were_recorded_still_verifies_replays_and_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, exp = _resumed_before_sessions_were_recorded(tmp_path, monkeypatch)
    with Store.open(url) as store:
        assert verify_ledger(store).ok
        assert replay_run(store, exp, data_dir=tmp_path / "data").certified
        assert describe_experiment(store, exp).status == "ok"
    shown = run_cli("show", exp, "--db", url)
    assert shown.returncode == 0, shown.stderr


def _resumed_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(url, exp) of a completed run resumed twice: once here, once by a session whose numpy,
    Python and OS release differ from those experiment_created recorded."""
    import ledger.resume
    from ledger.environment import environment_fingerprint

    here = environment_fingerprint()
    elsewhere = {**here, "packages": {**here["packages"], "numpy": "0.0.other"},
                 "python": {**here["python"], "version": "3.99.0"},
                 "platform": {**here["platform"], "release": "other-kernel"}}
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = _suspended_run(manager)
        manager.resume_experiment(exp.id).suspend()
        with monkeypatch.context() as patched:
            patched.setattr(ledger.resume, "environment_fingerprint", lambda: elsewhere)
            with manager.resume_experiment(exp.id):
                pass
    return url, exp.id


ELSEWHERE = [("packages.numpy", np.__version__, "0.0.other"),
             ("platform.release", platform.release(), "other-kernel"),
             ("python.version", platform.python_version(), "3.99.0")]
"""How _resumed_elsewhere's second session differs from the recorded environment, by key."""


def test_show_lists_each_session_that_resumed_the_run_and_how_its_environment_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger show`` described only the session that created the run; every resume is now
    listed — its seq, time, user, host, pid — with the library, Python and platform differences
    of its environment from the recorded one."""
    import socket

    from ledger.environment import current_user

    url, exp = _resumed_elsewhere(tmp_path, monkeypatch)
    with Store.open(url) as store:
        first, second = describe_experiment(store, exp).resumes
        seams = [body for body in bodies(store, exp) if body["kind"] == "run_resumed"]
    assert [(r.seq, r.t, r.user, r.host, r.pid) for r in (first, second)] == [
        (body["seq"], body["t"], current_user(), socket.gethostname(), os.getpid())
        for body in seams]
    assert first.environment_differences == []
    assert second.environment_differences == ELSEWHERE
    shown = run_cli("show", exp, "--db", url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index("resumes:")
    assert lines[at + 1].split() == ["seq", str(first.seq), utc_text(first.t), "by",
                                     current_user(), "host", socket.gethostname(), "pid",
                                     str(os.getpid())]
    assert [line.strip() for line in lines[at + 2:at + 4]] == [
        "code version as recorded", "environment as recorded (libraries, Python, platform)"]
    assert lines[at + 4].split()[:2] == ["seq", str(second.seq)]
    assert [line.strip() for line in lines[at + 5:at + 9]] == ["code version as recorded"] + [
        f"{key}: {old} recorded, {new} at resume" for key, old, new in ELSEWHERE]
    document = json.loads(run_cli("show", exp, "--db", url, "--json").stdout)
    assert document["resumes"] == [
        {"seq": r.seq, "t": r.t, "user": current_user(), "host": socket.gethostname(),
         "pid": os.getpid(),
         "environment_differences": [{"key": key, "recorded": old, "resumed": new}
                                     for key, old, new in r.environment_differences],
         "code_differences": []}
        for r in (first, second)]


def test_show_of_a_run_never_resumed_lists_no_resumes(manager: ExperimentManager) -> None:
    with manager.create_experiment("straight", seed=3) as exp:
        pass
    url = manager.store.url
    assert "resumes:" not in run_cli("show", exp.id, "--db", url).stdout.splitlines()
    assert json.loads(run_cli("show", exp.id, "--db", url, "--json").stdout)["resumes"] == []


def test_show_of_a_run_resumed_before_sessions_were_recorded_says_not_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, exp = _resumed_before_sessions_were_recorded(tmp_path, monkeypatch)
    lines = run_cli("show", exp, "--db", url).stdout.splitlines()
    at = lines.index("resumes:")
    assert [line.strip() for line in lines[at + 2:at + 4]] == [
        "code version not recorded", "environment not recorded"]
    [resumed] = json.loads(run_cli("show", exp, "--db", url, "--json").stdout)["resumes"]
    assert resumed["environment_differences"] is resumed["code_differences"] is None


def test_show_names_what_the_code_of_a_resuming_session_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run resumed from another commit: ``ledger show`` named the environment's differences
    only, though run_resumed records the session's code version too."""
    import ledger.resume

    real = ledger.resume.code_version
    other = "c0ffee" * 6 + "c0ff"
    monkeypatch.setattr(ledger.resume, "code_version",
                        lambda start: {**real(start), "commit": other})
    url, exp = _resumed_elsewhere(tmp_path, monkeypatch)
    with Store.open(url) as store:
        created = bodies(store, exp)[0]["params"]["code"].get("commit")
    lines = run_cli("show", exp, "--db", url).stdout.splitlines()
    at = lines.index("resumes:")
    assert lines[at + 2].strip() == (f"code.commit: {created or 'absent'} recorded, {other} "
                                     f"at resume")
    document = json.loads(run_cli("show", exp, "--db", url, "--json").stdout)
    assert [r["code_differences"] for r in document["resumes"]] == [
        [{"key": "commit", "recorded": created, "resumed": other}]] * 2


NO_REPOSITORY = "(no git repository with a commit was found)"


def test_show_names_the_distribution_a_session_without_a_commit_ran_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run created from a checkout and resumed from an installed wheel said "no git
    repository with a commit was found" of the resumed session, though the ledger records the
    release that session ran; a session resumed from another release lists the version."""
    repo = code_outside_the_main_script(tmp_path, monkeypatch)
    commit = git(repo, "rev-parse", "HEAD")
    release_1 = installed_package(tmp_path / "v1" / "site-packages", "my-trainer", "1.2.0")
    release_2 = installed_package(tmp_path / "v2" / "site-packages", "my-trainer", "1.3.0")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        from_checkout = manager.create_experiment("m", seed=1, code_dir=repo)
        from_checkout.suspend()
        manager.resume_experiment(from_checkout.id, code_dir=release_1).suspend()
        from_wheel = manager.create_experiment("m", seed=1, code_dir=release_1)
        from_wheel.suspend()
        manager.resume_experiment(from_wheel.id, code_dir=release_2).suspend()
    lines = run_cli("show", from_checkout.id, "--db", url).stdout.splitlines()
    assert lines[lines.index("resumes:") + 2] == (
        f"    code.commit: {commit} recorded, no commit at resume (installed from the "
        f"distribution my-trainer 1.2.0)")
    lines = run_cli("show", from_wheel.id, "--db", url).stdout.splitlines()
    assert ("code        no commit recorded (installed from the distribution my-trainer 1.2.0)"
            in lines)
    assert lines[lines.index("resumes:") + 2] == (
        "    code.distribution.version: 1.2.0 recorded, 1.3.0 at resume")


@pytest.mark.parametrize("created_in_git", [True, False])
def test_show_says_a_session_outside_git_recorded_no_commit_as_it_says_of_the_creating_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, created_in_git: bool) -> None:
    """A run created in a git repository and resumed outside one was shown as four lines of
    'code.commit: … recorded, absent at resume' (dirty, untracked and vcs alike), while the
    creating session's code outside git was shown as '{"vcs": null}': neither said that no
    git repository was found, so no commit was recorded. Both now say so, in the same words;
    --json keeps the recorded values and their differences."""
    repo = code_outside_the_main_script(tmp_path, monkeypatch)
    outside = tmp_path / "venv-bin"  # no git repository above it
    commit = git(repo, "rev-parse", "HEAD")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("m", seed=1,
                                        code_dir=repo if created_in_git else outside)
        exp.suspend()
        manager.resume_experiment(exp.id, code_dir=outside if created_in_git else repo).suspend()
    shown = run_cli("show", exp.id, "--db", url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index("resumes:")
    if created_in_git:
        assert lines[at + 2] == (f"    code.commit: {commit} recorded, no commit at resume "
                                 f"{NO_REPOSITORY}")
    else:
        assert f"code        no commit recorded {NO_REPOSITORY}" in lines
        assert lines[at + 2] == (f"    code.commit: no commit recorded {NO_REPOSITORY}, "
                                 f"{commit} at resume")
    assert lines[at + 3].strip().startswith("environment")
    assert "absent" not in shown.stdout
    [resumed] = json.loads(run_cli("show", exp.id, "--db", url, "--json").stdout)["resumes"]
    git_side = {"commit": commit, "dirty": False, "untracked": 0, "vcs": "git"}
    assert {d["key"]: d["recorded" if created_in_git else "resumed"]
            for d in resumed["code_differences"]} == git_side


def test_the_readme_documents_every_param_run_resumed_records(manager: ExperimentManager) -> None:
    """The README's seam paragraph named after_seq and last_checkpoint only; each param a
    run_resumed records, and its meta, must be named there."""
    exp = _suspended_run(manager)
    manager.resume_experiment(exp.id).close()
    [seam] = [body for body in bodies(manager.store, exp.id) if body["kind"] == "run_resumed"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("`run_resumed` event marks the seam"):][:1500]
    for name in [*seam["params"], *seam["meta"]]:
        assert f"`{name}`" in paragraph, name


def test_the_event_schema_describes_the_session_run_resumed_records(
        manager: ExperimentManager) -> None:
    """schemas/event.v1.json knew only after_seq and last_checkpoint of run_resumed: its
    ``code`` and ``environment`` are now described as experiment_created's (and stay optional,
    as ledgers written before lack them)."""
    from ledger.json_view import json_view
    from report_helpers import schema_errors

    exp = _suspended_run(manager)
    manager.resume_experiment(exp.id).close()
    [seam] = [json_view(body) for body in bodies(manager.store, exp.id)
              if body["kind"] == "run_resumed"]
    assert schema_errors(seam, "event.v1.json") == []
    older = {**seam, "params": {key: seam["params"][key]
                                for key in ("after_seq", "last_checkpoint")}}
    assert schema_errors(older, "event.v1.json") == []
    for broken in ({"environment": "linux"}, {"code": {"commit": "abc"}}, {"code": []}):
        assert schema_errors({**seam, "params": {**seam["params"], **broken}},
                             "event.v1.json"), broken


def test_show_gives_a_resumed_session_s_odd_versions_as_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version recorded as something other than text (a forged or odd environment) is shown
    as JSON, as show gives every recorded value, not as Python's repr."""
    import ledger.resume
    from ledger.environment import environment_fingerprint

    here = environment_fingerprint()
    odd = {**here, "packages": {**here["packages"], "numpy": ["1", {"b": None}], "odd": True}}
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = _suspended_run(manager)
        monkeypatch.setattr(ledger.resume, "environment_fingerprint", lambda: odd)
        with manager.resume_experiment(exp.id):
            pass
    lines = [line.strip() for line in run_cli("show", exp.id, "--db", url).stdout.splitlines()]
    assert f'packages.numpy: {np.__version__} recorded, ["1", {{"b": null}}] at resume' in lines
    assert "packages.odd: absent recorded, true at resume" in lines


def _straight_and_resumed(url: str, data_dir: Path, augmenter: DataAugmenter | None
                          ) -> tuple[Experiment, Experiment]:
    """Two runs of seed 5, 2 epochs of 200 rows in batches of 64: one straight through, one
    suspended after epoch 0's second batch and resumed from its saved state to the end."""
    features, labels = sample_data(rows=200)

    def run(exp: Experiment, state: dict | None = None, stop: bool = False) -> dict | None:
        batches = TrainingDataIterator(exp.register_dataset("d", features, labels), 64,
                                       experiment=exp, augmenter=augmenter)
        if state is not None:
            batches.load_state_dict(state)
        for epoch in range(batches.next_epoch, 2):
            for step, _batch in enumerate(batches):
                if stop and (epoch, step) == (0, 1):
                    return batches.state_dict()
        return None

    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("r", seed=5) as straight:
            run(straight)
        resumed = manager.create_experiment("r", seed=5)
        state = run(resumed, stop=True)
        resumed.suspend()
        with manager.resume_experiment(resumed.id) as again:
            run(again, state)
    return straight, resumed
