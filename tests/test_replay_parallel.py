"""Replay with worker processes and overlapped phases reports exactly what a serial replay would.

The main process claims draws from the front and workers from the back (replay.claims); these
tests make the worker claim first, so that a divergence or failure in its range is really
re-executed there, and check that the earliest one in recorded order is still the one reported,
and that verification still decides first.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import replay.engine
import replay.execution
from ledger.augment import DataAugmenter, register_op
from ledger.errors import CannotReplayError, CheckFailedError
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store
from replay import Cause, replay_run
from replay.claims import Claims

BATCH, BATCHES, MARK = 64, 24, 1000.0
_replaying = {"perturb": False, "fail": False}


@register_op("test_parallel_marked", version=1)
def marked(batch: np.ndarray, rng: np.random.Generator) -> None:
    """Deterministic noise; while a test says so, batches holding a marked row change or fail."""
    batch += rng.standard_normal(batch.shape).astype(batch.dtype)
    if np.any(batch[:, 0] > MARK / 2):
        if _replaying["fail"]:
            raise ValueError("a marked batch cannot be replayed")
        if _replaying["perturb"]:
            batch += 1


def _record(folder: Path, marked_batches: list[int], augmenter: DataAugmenter | None = None
            ) -> tuple[str, str]:
    """One epoch of 24 unshuffled batches (draw i + 1 is batch i); marks the given batches."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(BATCH * BATCHES, 4)).astype(np.float32)
    for batch in marked_batches:
        features[batch * BATCH, 0] = MARK
    labels = np.zeros(len(features), dtype=np.int8)
    url = f"sqlite:///{folder / 'ledger.db'}"
    with ExperimentManager(url, data_dir=folder / "data") as manager:
        with manager.create_experiment("parallel", seed=5) as exp:
            data = exp.register_dataset("marked", features, labels)
            batches = TrainingDataIterator(
                data, BATCH, shuffle=False, experiment=exp,
                augmenter=augmenter or DataAugmenter(ops=[{"op": "test_parallel_marked"}]))
            for _ in batches:
                pass
            exp.log_metric("loss", 0.5, epoch=0)
    return url, exp.id


@pytest.fixture(autouse=True)
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about sharing draws between processes, whatever this machine's cores."""
    monkeypatch.setattr(replay.engine, "usable_cores", lambda: 4)


@pytest.fixture
def worker_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The main process claims nothing until a worker has claimed its first chunk."""
    front = Claims.from_front

    def after_the_worker(self: Claims) -> range | None:
        deadline = time.monotonic() + 60  # a safeguard against a hang, not a timing assertion
        while self.claimed() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        return front(self)

    monkeypatch.setattr(Claims, "from_front", after_the_worker)


@pytest.fixture
def replaying(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    monkeypatch.setitem(_replaying, "perturb", False)
    monkeypatch.setitem(_replaying, "fail", False)
    return _replaying


def _replay(url: str, exp: str, folder: Path, jobs: int = 2) -> replay.engine.ReplayReport:
    with Store.open(url) as store:
        return replay_run(store, exp, jobs=jobs, data_dir=folder / "data")


@pytest.mark.parametrize("jobs", [2, 3])
def test_a_divergence_in_a_workers_range_is_the_first_when_it_is_the_earliest(
        tmp_path: Path, worker_first: None, replaying: dict[str, bool], jobs: int) -> None:
    url, exp = _record(tmp_path, [22, 23])
    replaying["perturb"] = True
    report = _replay(url, exp, tmp_path, jobs)
    divergence = report.first_divergence
    assert divergence is not None and divergence.path == ["epoch", 0, "batch", 22, "augment"]
    assert divergence.cause is Cause.OUTPUT and divergence.field == "output"
    assert (report.mismatched, report.matched) == (2, BATCHES + 1 + 1 - 2)
    assert report.compared["augmentation_batch"] == BATCHES and report.jobs == jobs


def test_every_workers_divergences_are_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaying: dict[str, bool]) -> None:
    """With two workers each re-executing one chunk (and the main process waiting for both),
    the divergences found in each range are all counted, the earliest reported."""
    url, exp = _record(tmp_path, [3, 12, 20])
    back, front = Claims.from_back, Claims.from_front
    claimed_here = {"chunks": 0}  # each forked worker has its own copy

    def one_chunk(self: Claims) -> range | None:
        claimed_here["chunks"] += 1
        return back(self) if claimed_here["chunks"] == 1 else None

    def after_both_workers(self: Claims) -> range | None:
        deadline = time.monotonic() + 60  # a safeguard against a hang, not a timing assertion
        while self.claimed() < 2 * self.chunk and time.monotonic() < deadline:
            time.sleep(0.001)
        return front(self)

    monkeypatch.setattr(Claims, "from_back", one_chunk)
    monkeypatch.setattr(Claims, "from_front", after_both_workers)
    replaying["perturb"] = True
    report = _replay(url, exp, tmp_path, jobs=3)
    assert report.first_divergence is not None
    assert report.first_divergence.path == ["epoch", 0, "batch", 3, "augment"]
    assert (report.mismatched, report.matched) == (3, BATCHES + 2 - 3)


def test_the_main_processs_earlier_divergence_wins_over_the_workers(
        tmp_path: Path, worker_first: None, replaying: dict[str, bool]) -> None:
    url, exp = _record(tmp_path, [3, 23])
    replaying["perturb"] = True
    report = _replay(url, exp, tmp_path)
    assert report.first_divergence is not None
    assert report.first_divergence.path == ["epoch", 0, "batch", 3, "augment"]
    assert report.mismatched == 2


def test_a_parallel_replay_reports_what_a_serial_one_does(
        tmp_path: Path, replaying: dict[str, bool]) -> None:
    url, exp = _record(tmp_path, [1, 7, 16, 20])
    replaying["perturb"] = True
    serial, parallel = _replay(url, exp, tmp_path, 1), _replay(url, exp, tmp_path, 2)
    assert parallel.first_divergence == serial.first_divergence
    assert (parallel.compared, parallel.matched, parallel.mismatched, parallel.not_draws) == (
        serial.compared, serial.matched, serial.mismatched, serial.not_draws)


def test_a_failure_in_a_workers_range_is_raised_as_a_serial_replay_raises_it(
        tmp_path: Path, request: pytest.FixtureRequest, replaying: dict[str, bool]) -> None:
    """The serial replay runs before the worker goes first: with no worker to wait for, the
    main process would wait out worker_first's safeguard (a minute) before claiming."""
    url, exp = _record(tmp_path, [21])
    replaying["fail"] = True
    serial_error = parallel_error = None
    try:
        _replay(url, exp, tmp_path, 1)
    except CannotReplayError as error:
        serial_error = str(error)
    request.getfixturevalue("worker_first")
    with pytest.raises(CannotReplayError, match="ValueError: a marked batch cannot be replayed"
                       ) as parallel:
        _replay(url, exp, tmp_path)
    parallel_error = str(parallel.value)
    assert parallel_error == serial_error  # the same event named, the same cause
    assert parallel_error.startswith("augmentation_batch main#24 cannot be re-executed")


def test_the_main_processs_earlier_failure_wins_over_the_workers(
        tmp_path: Path, worker_first: None, replaying: dict[str, bool]) -> None:
    """Draws fail in both ranges: the earliest in recorded order (batch 2, the main process's)
    is the one raised, as a serial replay raises it — not the worker's batch 22."""
    url, exp = _record(tmp_path, [2, 22])
    replaying["fail"] = True
    with pytest.raises(CannotReplayError, match=r"^augmentation_batch main#5 cannot be "):
        _replay(url, exp, tmp_path)


def _tamper(url: str, kind: str) -> None:
    """Flip one byte of the first ``kind`` event's body: its draws would still re-execute."""
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    connection.execute("DROP TRIGGER ledger_events_no_update")
    body, row_id = connection.execute(
        "SELECT body, id FROM ledger_events WHERE kind = ? LIMIT 1", (kind,)).fetchone()
    decoded = msgpack.unpackb(body)
    decoded["t"] += 1
    connection.execute("UPDATE ledger_events SET body = ? WHERE id = ?",
                       (msgpack.packb(decoded, use_bin_type=True), row_id))
    connection.commit()
    connection.close()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_tampered_ledger_is_refused_even_when_re_execution_would_certify(
        tmp_path: Path, jobs: int) -> None:
    url, exp = _record(tmp_path, [])
    assert _replay(url, exp, tmp_path, jobs).certified
    _tamper(url, "metric")
    with pytest.raises(CheckFailedError, match="fails verification"):
        _replay(url, exp, tmp_path, jobs)


@pytest.mark.parametrize("jobs", [1, 2])
def test_verification_wins_over_a_missing_dataset_and_over_failing_draws(
        tmp_path: Path, replaying: dict[str, bool], jobs: int) -> None:
    url, exp = _record(tmp_path, [2, 20])
    _tamper(url, "augmentation_batch")
    replaying["fail"] = True
    with pytest.raises(CheckFailedError, match="fails verification"):
        _replay(url, exp, tmp_path, jobs)
    for stored in (tmp_path / "data").rglob("*.npz"):
        stored.unlink()
    with pytest.raises(CheckFailedError, match="fails verification"):
        _replay(url, exp, tmp_path, jobs)


@pytest.mark.parametrize("jobs", [1, 2])
def test_changed_data_is_reported_before_any_draw_even_when_draws_then_fail(
        tmp_path: Path, replaying: dict[str, bool], jobs: int) -> None:
    url, exp = _record(tmp_path, [])
    (stored,) = (tmp_path / "data").rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"].copy(), archive["labels"]
    features[5 * BATCH, 0] = MARK  # now batch 5 would fail, but the dataset itself differs first
    np.savez(stored, features=features, labels=labels)
    replaying["fail"] = True
    report = _replay(url, exp, tmp_path, jobs)
    assert report.first_divergence is not None
    assert report.first_divergence.kind == "dataset_registered"
    assert report.first_divergence.cause is Cause.INPUT
    assert dict(report.compared) == {"dataset_registered": 1}


def test_progress_is_reported_while_workers_replay(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.engine, "PROGRESS_EVERY", 4)
    seen: list[tuple[int, int]] = []
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=2, data_dir=tmp_path / "data",
                            on_progress=lambda done, total: seen.append((done, total)))
    assert report.certified and seen
    # The total is what replay re-executes — the dataset, the epoch's shuffle and its batches —
    # not the run's metrics, creation and completion (a bar that stopped at 1,000 / 1,592).
    assert all(total == 1 + 1 + BATCHES == report.matched for _done, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_spawned_workers_replay_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, exp = _record(tmp_path, [], DataAugmenter(noise_std=0.1, mask_prob=0.1))  # built in
    monkeypatch.setattr(replay.execution, "pool_start_method", lambda: "spawn")
    report = _replay(url, exp, tmp_path)
    assert report.certified and report.matched == BATCHES + 2


def test_spawned_workers_import_the_trusted_modules(tmp_path: Path, worker_first: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker starts from a fresh interpreter: it imports the modules the auditor
    trusted (here the one registering the run's custom op) before re-executing its draws, so a
    run that replays serially replays with spawned workers too."""
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.execution, "pool_start_method", lambda: "spawn")
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=2, data_dir=tmp_path / "data",
                            trusted=[__name__])
    assert report.certified and report.matched == BATCHES + 2


def test_a_worker_that_dies_before_answering_cannot_certify(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies without sending its outcome (the OOM killer, say) leaves draws nobody
    compared: replay is exit 3 naming the worker's exit code, never a certificate nor a hang."""
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.execution, "_worker_main", lambda _connection, _job: os._exit(9))
    with pytest.raises(CannotReplayError, match=r"a replay worker process died \(exit code 9\)"):
        _replay(url, exp, tmp_path)


def test_progress_is_told_while_a_window_is_re_executed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of fewer than WINDOW_DRAWS draws is one window: progress is told as its draws are
    re-executed, not only once they are all done (a progress line frozen until the end)."""
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.engine, "PROGRESS_EVERY", 1)
    totals: list[tuple[int, int]] = []
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=1, data_dir=tmp_path / "data",
                            on_progress=lambda done, total: totals.append((done, total)))
    seen = [done for done, _total in totals]
    assert report.certified and seen[-1] == 1 + 1 + BATCHES
    assert len(seen) > 2 and seen[0] < BATCHES
    assert {total for _done, total in totals} == {seen[-1]}  # the bar ends full


def test_draws_are_read_in_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   replaying: dict[str, bool]) -> None:
    url, exp = _record(tmp_path, [4, 19])
    monkeypatch.setattr(replay.engine, "WINDOW_DRAWS", 10)
    replaying["perturb"] = True
    report = _replay(url, exp, tmp_path)
    assert report.first_divergence is not None
    assert report.first_divergence.path == ["epoch", 0, "batch", 4, "augment"]
    assert report.mismatched == 2 and report.matched == BATCHES + 2 - 2


def test_claims_meet_in_the_middle_and_stop_at_a_failure() -> None:
    import multiprocessing

    claims = Claims(multiprocessing.get_context("fork"), 20, chunk=8)
    assert claims.from_front() == range(0, 8)
    assert claims.from_back() == range(12, 20)
    claims.stop_at(10)
    assert claims.from_front() == range(8, 10)
    assert claims.from_back() is None and claims.from_front() is None


def test_no_window_holds_more_than_window_draws(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory does not grow with the run: the draws (24 batches and the epoch's shuffle; not
    the dataset nor the metric) are handed to re-execution WINDOW_DRAWS at a time, in order."""
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.engine, "WINDOW_DRAWS", 10)
    windows: list[int] = []

    class Counted(replay.execution.DrawExecution):
        def __init__(self, context: Any, bodies: Any, jobs: int, trusted: Any) -> None:
            windows.append(len(bodies))
            super().__init__(context, bodies, jobs, trusted)

    monkeypatch.setattr(replay.engine, "DrawExecution", Counted)
    report = _replay(url, exp, tmp_path)
    assert report.certified and report.matched == BATCHES + 2
    assert windows == [10, 10, BATCHES + 1 - 20]


def test_changed_data_wins_over_draws_that_fail_before_its_digest_is_done(
        tmp_path: Path, replaying: dict[str, bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """A draw may fail while the datasets are still being digested: the changed dataset is
    still what replay reports (a divergence, exit 1), not the failure it caused."""
    url, exp = _record(tmp_path, [])
    (stored,) = (tmp_path / "data").rglob("*.npz")
    with np.load(stored) as archive:
        features, labels = archive["features"].copy(), archive["labels"]
    features[0, 0] = MARK  # batch 0 now fails to replay, and the dataset itself differs
    np.savez(stored, features=features, labels=labels)
    replaying["fail"] = True
    digest = replay.engine.dataset_redraw

    def slow(loaded: Any) -> Any:
        time.sleep(1.0)  # the failing draw is re-executed long before this digest is done
        return digest(loaded)

    monkeypatch.setattr(replay.engine, "dataset_redraw", slow)
    report = _replay(url, exp, tmp_path, jobs=1)
    assert report.first_divergence is not None
    assert report.first_divergence.kind == "dataset_registered"
    assert report.first_divergence.cause is Cause.INPUT


def test_progress_counts_every_event_done_and_needs_no_listener(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress is told with the events done so far — at the end every dataset and draw (one
    dataset, one shuffle, 24 batches) — and a replay with no listener just runs."""
    url, exp = _record(tmp_path, [])
    monkeypatch.setattr(replay.engine, "PROGRESS_EVERY", 1)
    assert _replay(url, exp, tmp_path).certified  # no on_progress
    totals: list[tuple[int, int]] = []
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=1, data_dir=tmp_path / "data",
                            on_progress=lambda done, total: totals.append((done, total)))
    seen = [done for done, _total in totals]
    assert report.certified and seen[-1] == 1 + 1 + BATCHES
