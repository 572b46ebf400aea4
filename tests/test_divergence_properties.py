"""Replay and diff name the earliest injected divergence of randomly shaped real runs.

Hypothesis draws the shape of a small real run — rows, features and their dtype, batch size,
1–3 epochs, shuffle, ``drop_last``, 0–2 forked loader workers, built-in ops beside the test op
of :mod:`divergence_ops`, metrics per epoch, per batch or none, passes left early, epochs cut
short by ``reset()`` — records it, and then injects divergences at a random set of (epoch,
batch) positions: the test op adds 1 to exactly the batches whose generator was seeded from
those positions' paths, at replay time only (replay) or while a second recording runs (diff).

The oracle does not ask the engine: batches are consumed, hence recorded, epoch by epoch and
batch by batch (DESIGN §3; checked against the store), so the first divergence is the smallest
injected (epoch, batch) pair, its cause *same seed, different output*, and every injected
position — no other — is one mismatch. Replay must say so serially and in parallel (several
processes with small chunks, the worker sometimes claiming first, draws read in small windows,
so that a divergence is found by either process and in any window), and ``ledger replay`` and
``ledger diff`` must say so with the documented exit codes. With nothing injected, replay
certifies and diff finds the runs identical; another root seed is *seed derivation differs* at
the first draw; a changed dataset is *input differs* before any draw, whatever draws would also
diverge; draws that raise make replay name the earliest of them, serially and in parallel alike.

Examples per property: 20 (the command line's: 4); ``DIVERGENCE_EXAMPLES=500`` for a long hunt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import divergence_ops
import replay.engine
import replay.execution
from conftest import ROOT, run_cli
from divergence_ops import seeds_of
from ledger.augment import DataAugmenter
from ledger.errors import CannotReplayError
from ledger.events import decode_body
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store
from replay import Cause, replay_run
from replay.claims import Claims
from replay.diff import DiffReport, diff_runs
from replay.engine import ReplayReport

Position = tuple[int, int]
"""(epoch, batch) of an augmentation draw."""

PROPERTY = settings(deadline=None, max_examples=int(os.environ.get("DIVERGENCE_EXAMPLES", 20)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""Every property: no wall-clock limit; DIVERGENCE_EXAMPLES raises the count for a long hunt."""


@dataclass(frozen=True)
class Shape:
    """The shape of one small recorded run."""

    rows: int
    features: int
    dtype: str
    batch_size: int
    epochs: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    builtin_ops: dict[str, Any]
    """DataAugmenter's keyword arguments for its built-in ops."""
    metrics: str
    """``none``; ``epoch``: each epoch's batch sum, under its epoch; ``batch``: each batch's
    sum, under no epoch (so diff aligns them by occurrence)."""
    seed: int
    resets: dict[int, int] = dataclasses.field(default_factory=dict)
    """{epoch: batch}: after that batch the training loop calls ``reset()``, dropping the rest
    of the epoch (never in the last epoch: reset starts the next one)."""
    breaks: frozenset[Position] = frozenset()
    """Batches after which the training loop breaks out of its pass (the next pass goes on
    where it stopped)."""

    @property
    def batches(self) -> int:
        """Batches per epoch (the short last one dropped with ``drop_last``)."""
        if self.drop_last:
            return self.rows // self.batch_size
        return -(-self.rows // self.batch_size)

    def consumed(self, epoch: int) -> int:
        """How many batches of ``epoch`` the training loop takes."""
        return self.resets[epoch] + 1 if epoch in self.resets else self.batches

    @property
    def positions(self) -> list[Position]:
        """Every (epoch, batch) the run consumes — and so records — in consumption order."""
        return [(epoch, batch) for epoch in range(self.epochs)
                for batch in range(self.consumed(epoch))]

    def augmenter(self) -> DataAugmenter:
        """The built-in ops drawn, then the test op (which must see every batch)."""
        return DataAugmenter(**self.builtin_ops, ops=[{"op": divergence_ops.OP}])


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    """Small run shapes: a few dozen rows, a few batches, every loader option."""
    rows = draw(st.integers(1, 40))
    ops = draw(st.fixed_dictionaries({}, optional={
        "noise_std": st.sampled_from([0.05, 0.5]),
        "mask_prob": st.sampled_from([0.1, 0.5]),
        "scale_jitter": st.sampled_from([0.1, 0.3])}))
    drop_last = draw(st.booleans())  # then a batch must fit: empty epochs are refused
    shape = Shape(rows=rows, features=draw(st.integers(1, 4)),
                  dtype=draw(st.sampled_from(["float32", "float64"])),
                  batch_size=draw(st.integers(1, min(rows if drop_last else rows + 2, 12))),
                  epochs=draw(st.integers(1, 3)), shuffle=draw(st.booleans()),
                  drop_last=drop_last, num_workers=draw(st.sampled_from([0, 0, 1, 2])),
                  builtin_ops=ops, metrics=draw(st.sampled_from(["none", "epoch", "batch"])),
                  seed=draw(st.integers(0, 2**128 - 2)))
    resets = draw(st.dictionaries(st.integers(0, shape.epochs - 2),
                                  st.integers(0, shape.batches - 1))) if shape.epochs > 1 else {}
    shape = dataclasses.replace(shape, resets=resets)
    breaks = draw(st.frozensets(st.sampled_from(shape.positions), max_size=3))
    return dataclasses.replace(shape, breaks=breaks)


def injected(shape: Shape, data: st.DataObject, *, min_size: int = 0) -> set[Position]:
    """A random set of the run's positions (every epoch has a batch: see :func:`shapes`)."""
    return data.draw(st.sets(st.sampled_from(shape.positions), min_size=min_size, max_size=5),
                     label="injected positions")


# -- recording ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recorded:
    """A recorded run: where it is, and its id."""

    url: str
    data_dir: Path
    exp: str


def dataset(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """The run's features and labels (fixed by its shape)."""
    rng = np.random.default_rng(shape.rows * 10 + shape.features)
    features = rng.normal(size=(shape.rows, shape.features)).astype(shape.dtype)
    return features, (rng.random(shape.rows) < 0.3).astype(np.int8)


def record(folder: Path, shape: Shape, *, misbehaving: Collection[Position] = ()) -> Recorded:
    """Record ``shape`` into a new ledger in ``folder``; the test op misbehaves at
    ``misbehaving`` while it records (so the run itself differs from an honest one)."""
    root = shape.seed
    url = f"sqlite:///{folder / 'ledger.db'}"
    features, labels = dataset(shape)
    with misbehaving_at(root, misbehaving), \
            ExperimentManager(url, data_dir=folder / "data") as manager:
        with manager.create_experiment("divergence", seed=root) as exp:
            registered = exp.register_dataset("rows", features, labels)
            batches = TrainingDataIterator(
                registered, shape.batch_size, augmenter=shape.augmenter(), experiment=exp,
                shuffle=shape.shuffle, drop_last=shape.drop_last, start_method="fork",
                num_workers=shape.num_workers)
            with batches:
                for epoch in range(shape.epochs):
                    total, batch = 0.0, 0
                    while batch < shape.consumed(epoch):  # one pass, or several with breaks
                        for x, _y in batches:
                            total += float(x.sum())
                            if shape.metrics == "batch":
                                exp.log_metric("batch_sum", float(x.sum()))
                            batch += 1
                            if (epoch, batch - 1) in shape.breaks or \
                                    batch == shape.consumed(epoch):
                                break
                    if epoch in shape.resets:
                        batches.reset()
                    if shape.metrics == "epoch":
                        exp.log_metric("epoch_sum", total, epoch=epoch)
    return Recorded(url, folder / "data", exp.id)


@contextmanager
def misbehaving_at(root: int, positions: Collection[Position],
                   failing: Collection[Position] = ()) -> Iterator[None]:
    """The test op adds 1 to the batches of ``positions`` and raises for those of ``failing``
    (in the run of root seed ``root``) while the block runs, in this process and in the
    processes it forks."""
    divergence_ops.MISBEHAVING.clear()
    divergence_ops.MISBEHAVING.update(seeds_of(root, positions))
    divergence_ops.FAILING.clear()
    divergence_ops.FAILING.update(seeds_of(root, failing))
    try:
        yield
    finally:
        divergence_ops.MISBEHAVING.clear()
        divergence_ops.FAILING.clear()


def recorded_events(run: Recorded) -> list[dict[str, Any]]:
    """Every event of the run, decoded, in recording order."""
    with Store.open(run.url) as store:
        return [decode_body(body) for _stream, _seq, _kind, body in store.iter_run_bodies(run.exp)]


def batch_events(events: list[dict[str, Any]]) -> dict[Position, dict[str, Any]]:
    """The run's augmentation events by position, after checking that they were recorded in
    consumption order — epoch by epoch, batch by batch — which the oracle relies on."""
    batches = {(event["path"][1], event["path"][3]): event for event in events
               if event["kind"] == "augmentation_batch"}
    assert list(batches) == sorted(batches)
    return batches


# -- replay ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parallel:
    """How a parallel replay shares its draws: processes, draws per claim, draws per window,
    and whether a worker claims the first chunk (so that the earliest draws are its own)."""

    jobs: int
    chunk: int
    window: int
    worker_first: bool


parallel_settings = st.builds(Parallel, jobs=st.sampled_from([2, 3]),
                              chunk=st.sampled_from([1, 1, 2, 3, 5, 8]),
                              window=st.sampled_from([3, 7, 16, replay.engine.WINDOW_DRAWS]),
                              worker_first=st.booleans())
"""Mostly chunks smaller than a window: a window of no more draws than a chunk has no worker."""


@contextmanager
def sharing(how: Parallel) -> Iterator[None]:
    """Make a replay really split tiny runs between processes as ``how`` says, on any machine."""
    front = Claims.from_front

    def after_a_worker(self: Claims) -> range | None:
        """Claim from the front once a worker has claimed — when this window has a worker."""
        if self.total > self.chunk:  # else no worker was started (DrawExecution)
            deadline = time.monotonic() + 60  # a safeguard against a hang, not a timing check
            while self.claimed() == 0 and time.monotonic() < deadline:
                time.sleep(0.0005)
        return front(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay.engine, "usable_cores", lambda: 4)
        patch.setattr(replay.engine, "WINDOW_DRAWS", how.window)
        patch.setattr(replay.execution, "Claims",
                      lambda context, total: Claims(context, total, chunk=how.chunk))
        if how.worker_first:
            patch.setattr(Claims, "from_front", after_a_worker)
        yield


def replayed(run: Recorded, jobs: int = 1) -> ReplayReport:
    """``replay_run`` of the run with ``jobs`` processes."""
    with Store.open(run.url) as store:
        return replay_run(store, run.exp, jobs=jobs, data_dir=run.data_dir)


def expected_counts(shape: Shape) -> dict[str, int]:
    """What replay re-executes: the dataset, each worker's seeding, each epoch's order and
    each batch."""
    counts = {"dataset_registered": 1, "epoch_reset": shape.epochs,
              "augmentation_batch": len(shape.positions),
              "worker_spawned": shape.num_workers}
    return {kind: count for kind, count in counts.items() if count}


def assert_replay_names(report: ReplayReport, shape: Shape, positions: set[Position],
                        events: dict[Position, dict[str, Any]]) -> None:
    """``report`` certifies when nothing was injected, else names the earliest injected
    position with cause *same seed, different output* and counts each injected one."""
    assert dict(report.compared) == expected_counts(shape)
    metrics = {"none": 0, "epoch": shape.epochs, "batch": len(shape.positions)}[shape.metrics]
    assert dict(report.not_draws) == {"experiment_created": 1, "run_completed": 1,
                                      **({"metric": metrics} if metrics else {})}
    assert report.mismatched == len(positions)
    assert report.matched == sum(expected_counts(shape).values()) - len(positions)
    if not positions:
        assert report.certified and report.first_divergence is None
        return
    epoch, batch = min(positions)
    first = events[(epoch, batch)]
    divergence = report.first_divergence
    assert not report.certified and divergence is not None
    assert (divergence.kind, divergence.path, divergence.stream, divergence.seq) == (
        "augmentation_batch", ["epoch", epoch, "batch", batch, "augment"], first["stream"],
        first["seq"])
    assert (divergence.cause, divergence.field, divergence.expected) == (
        Cause.OUTPUT, "output", first["output"])


@PROPERTY
@given(shape=shapes(), how=parallel_settings, data=st.data())
def test_replay_names_the_earliest_injected_divergence(
        tmp_path_factory: pytest.TempPathFactory, shape: Shape, how: Parallel,
        data: st.DataObject) -> None:
    run = record(tmp_path_factory.mktemp("run"), shape)
    events = batch_events(recorded_events(run))
    assert sorted(events) == shape.positions
    positions = injected(shape, data)
    with misbehaving_at(shape.seed, positions):
        serial = replayed(run)
        with sharing(how):
            parallel = replayed(run, how.jobs)
    for report in (serial, parallel):
        assert_replay_names(report, shape, positions, events)
    assert parallel.jobs == how.jobs and serial.jobs == 1


@PROPERTY
@given(shape=shapes(), how=parallel_settings, data=st.data())
def test_changed_data_is_named_before_any_draw(
        tmp_path_factory: pytest.TempPathFactory, shape: Shape, how: Parallel,
        data: st.DataObject) -> None:
    """One value of the stored dataset changed — features or labels, at a random row — is
    *input differs* at ``dataset_registered``, however many draws would also diverge or fail."""
    run = record(tmp_path_factory.mktemp("run"), shape)
    (stored,) = run.data_dir.rglob("*.npz")
    with np.load(stored) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    name = data.draw(st.sampled_from(sorted(arrays)), label="changed array")
    row = data.draw(st.integers(0, shape.rows - 1), label="changed row")
    arrays[name][row] += 1
    np.savez(stored, **arrays)
    with misbehaving_at(shape.seed, injected(shape, data), injected(shape, data)):
        serial = replayed(run)
        # no worker first: the changed dataset may stop the draws before any is claimed
        with sharing(Parallel(how.jobs, how.chunk, how.window, worker_first=False)):
            parallel = replayed(run, how.jobs)
    for report in (serial, parallel):
        divergence = report.first_divergence
        assert divergence is not None and divergence.kind == "dataset_registered"
        assert divergence.cause is Cause.INPUT and divergence.field == "output"
        assert dict(report.compared) == {"dataset_registered": 1} and report.mismatched == 1
        # every draw left unchecked is counted, in every window, as are the events that are not
        # draws (the early stop counted neither)
        assert dict(report.skipped) == {kind: count for kind, count
                                        in expected_counts(shape).items()
                                        if kind != "dataset_registered"}
        metrics = {"none": 0, "epoch": shape.epochs, "batch": len(shape.positions)}[shape.metrics]
        assert dict(report.not_draws) == {"experiment_created": 1, "run_completed": 1,
                                          **({"metric": metrics} if metrics else {})}


@PROPERTY
@given(shape=shapes(), how=parallel_settings, data=st.data())
def test_the_earliest_draw_that_cannot_be_re_executed_is_raised(
        tmp_path_factory: pytest.TempPathFactory, shape: Shape, how: Parallel,
        data: st.DataObject) -> None:
    """The op raises at a random non-empty set of positions, beside injected divergences:
    replay cannot replay (exit 3), naming the earliest failing batch, serially and in
    parallel alike — never a verdict."""
    run = record(tmp_path_factory.mktemp("run"), shape)
    events = batch_events(recorded_events(run))
    failing = injected(shape, data, min_size=1)
    epoch, batch = min(failing)
    first = events[(epoch, batch)]
    expected = (f"augmentation_batch {first['stream']}#{first['seq']} cannot be re-executed: "
                f"ValueError: a failing batch cannot be replayed, raised by augmenter op "
                f"'divergence_marked' version 1")
    with misbehaving_at(shape.seed, injected(shape, data), failing):
        with pytest.raises(CannotReplayError) as serial:
            replayed(run)
        with sharing(how), pytest.raises(CannotReplayError) as parallel:
            replayed(run, how.jobs)
    assert str(serial.value) == str(parallel.value) == expected


# -- diff --------------------------------------------------------------------------------------

def diffed(a: Recorded, b: Recorded) -> DiffReport:
    """``diff_runs`` of two runs, each opened from its own URL (the same ledger or two)."""
    with Store.open(a.url) as store_a, Store.open(b.url) as store_b:
        return diff_runs(store_a, a.exp, b.exp, store_b=store_b)


def assert_diff_names(report: DiffReport, shape: Shape, positions: set[Position]) -> None:
    """Identical when nothing was injected, else the earliest injected position is the first
    divergence, *same seed, different output*, and each injected batch differs — and each
    metric computed from one."""
    metrics = {"none": 0, "epoch": len({epoch for epoch, _batch in positions}),
               "batch": len(positions)}[shape.metrics]
    assert (report.differing, report.missing_in_b, report.extra_in_b) == (
        len(positions) + metrics, 0, 0)
    if not positions:
        assert report.identical and report.first_divergence is None
        return
    epoch, batch = min(positions)
    divergence = report.first_divergence
    assert not report.identical and divergence is not None
    assert (divergence.kind, divergence.identity, divergence.cause) == (
        "augmentation_batch", ("augmentation_batch", "epoch", epoch, "batch", batch, "augment"),
        Cause.OUTPUT)


def first_draw(a: Shape, b: Shape) -> tuple[Any, ...]:
    """The identity of the first draw two runs both record: worker 0's seeding when both have
    workers (worker_spawned only one run has is no difference), else the first epoch's order."""
    if a.num_workers and b.num_workers:
        return ("worker_spawned", "worker", 0)
    return ("epoch_reset", "epoch", 0, "shuffle")


def without_workers(run: Recorded) -> list[tuple[Any, ...]]:
    """What the run recorded, in order, but its workers' seeding: (stream, kind, path, epoch
    and name of a metric, output) of each event — which must not depend on the number of
    workers nor on where the training loop left its passes (DESIGN §1, §3)."""
    return [(event["stream"], event["kind"], event["path"], event["params"].get("epoch"),
             event["params"].get("name"), event["output"])
            for event in recorded_events(run) if event["kind"] != "worker_spawned"]


@PROPERTY
@given(shape=shapes(), workers_b=st.sampled_from([0, 1, 2]), data=st.data())
def test_diff_names_the_earliest_injected_divergence(
        tmp_path_factory: pytest.TempPathFactory, shape: Shape, workers_b: int,
        data: st.DataObject) -> None:
    """Run B has the same seed and shape but its own number of workers and passes left
    early, and its op misbehaved at the injected positions; run C has another root seed.
    When B is recorded into A's ledger, each run also replays as it should there: A certified,
    B diverging where its op misbehaved."""
    positions = injected(shape, data)
    shape_b = dataclasses.replace(shape, num_workers=workers_b, breaks=data.draw(
        st.frozensets(st.sampled_from(shape.positions), max_size=3), label="breaks of B"))
    same_ledger = data.draw(st.booleans(), label="B in A's ledger")
    a = record(folder := tmp_path_factory.mktemp("a"), shape)
    b = record(folder if same_ledger else tmp_path_factory.mktemp("b"), shape_b,
               misbehaving=positions)
    assert_diff_names(diffed(a, b), shape, positions)
    if not positions:
        assert without_workers(a) == without_workers(b)
    if same_ledger:
        assert_replay_names(replayed(a), shape, set(), {})
        assert_replay_names(replayed(b), shape_b, positions, batch_events(recorded_events(b)))
    other = record(tmp_path_factory.mktemp("c"),
                   dataclasses.replace(shape_b, seed=shape.seed + 1))
    divergence = diffed(a, other).first_divergence
    assert divergence is not None
    assert (divergence.identity, divergence.cause) == (first_draw(shape, shape_b), Cause.SEED)


# -- the command line --------------------------------------------------------------------------

def cli(run: Recorded, *args: str, misbehaving: Collection[Position] = (), root: int = 0
        ) -> tuple[int, dict[str, Any]]:
    """``ledger --db URL ARGS --json`` in a subprocess that trusts :mod:`divergence_ops`, its
    op misbehaving at ``misbehaving``: the exit code and the JSON document."""
    env = {"LEDGER_DATA_DIR": str(run.data_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           divergence_ops.ENVIRONMENT: divergence_ops.environment_value(
               seeds_of(root, misbehaving))}
    result = run_cli("--db", run.url, *args, "--json", env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@settings(PROPERTY, max_examples=max(4, PROPERTY.max_examples // 5))
@given(shape=shapes(), jobs=st.sampled_from([1, 2]), data=st.data())
def test_the_command_line_names_the_earliest_injected_divergence(
        tmp_path_factory: pytest.TempPathFactory, shape: Shape, jobs: int,
        data: st.DataObject) -> None:
    """``ledger replay`` and ``ledger diff``: the same divergence, exit 1 — or exit 0 when
    nothing was injected."""
    positions = injected(shape, data)
    a = record(tmp_path_factory.mktemp("a"), shape)
    b = record(tmp_path_factory.mktemp("b"), shape, misbehaving=positions)
    code, certificate = cli(a, "replay", a.exp, "--no-record", "--jobs", str(jobs),
                            "--trust", "divergence_ops", misbehaving=positions, root=shape.seed)
    code_b, difference = cli(a, "diff", a.exp, b.exp, "--db-b", b.url)
    assert (code, code_b) == ((1, 1) if positions else (0, 0))
    assert certificate["mismatched"] == len(positions)
    assert certificate["compared"] == expected_counts(shape)
    if not positions:
        assert certificate["verdict"] == "certified" and difference["identical"]
        return
    epoch, batch = min(positions)
    path = ["epoch", epoch, "batch", batch, "augment"]
    replayed_first, diffed_first = certificate["first_divergence"], difference["first_divergence"]
    assert (replayed_first["kind"], replayed_first["path"], replayed_first["cause"]) == (
        "augmentation_batch", path, Cause.OUTPUT.value)
    assert (diffed_first["kind"], diffed_first["identity"], diffed_first["cause"]) == (
        "augmentation_batch", path, Cause.OUTPUT.value)


def test_diff_cause_wording_lives_apart_and_imports_nothing_of_diff() -> None:
    """replay/diff.py had grown to ~580 lines; the words of its causes moved to
    replay/diff_causes.py, which diff imports and which must not import diff back."""
    import ast

    import replay.diff
    import replay.diff_causes

    tree = ast.parse((ROOT / "replay" / "diff_causes.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "replay.diff" not in imported and "replay" not in imported, imported
    assert replay.diff.Session is replay.diff_causes.Session
    assert replay.diff.Explanation is replay.diff_causes.Explanation
