"""A 2-rank torch.distributed job preempted mid-epoch resumes every rank's RecordedDataLoader
from its ``state_dict()`` to the uninterrupted job's record and batches.

The job (``distributed_resume_helpers.loader_state_rank``: gloo on this machine, each rank a
process of its own, a recorded DataLoader with the ``jitter`` transform) stops in the middle of
epoch 1 — each rank saves its loader's state, then raises in the block, and with
``on_failure="suspend"`` rank 0 leaves the run incomplete — and is started again with
``distributed_experiment(..., resume=EXP)``, each rank restoring its own state (rank 1 in
stream ``rank-1``, an AttachedRun). The first attempt runs with 2 persistent forked workers per
rank, the second with none. The oracle, an uninterrupted job of the same seed (2 workers): each
rank's batches in the second attempt are the uninterrupted job's remaining ones bit for bit,
``ledger diff`` says identical, ``ledger replay`` certifies. On SQLite, and on PostgreSQL when
``LEDGER_TEST_POSTGRES_URL`` is set.

Without processes: a state is refused by a loader of another rank or world (``BadInputError``),
and rank r's state ahead of its stream's record by a rank of the resumed run (``StateAheadError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import distributed_resume_helpers as helpers  # noqa: E402
import torch_helpers  # noqa: E402
from conftest import ROOT, postgres_base_url, postgres_schema, run_cli  # noqa: E402
from ledger.errors import BadInputError, ForeignStateError, StateAheadError  # noqa: E402
from ledger.events import decode_body  # noqa: E402
from ledger.experiment import ExperimentManager  # noqa: E402
from ledger.integrations.runs import AttachedRun  # noqa: E402
from ledger.integrations.torch import RecordedDataLoader, RecordedTransform  # noqa: E402
from ledger.store import Store  # noqa: E402
from test_distributed_resume import _two_ranks  # noqa: E402

WORLD = 2
STOP = (1, 3)
"""Where the first attempt stops: each rank handed 3 of the 6 batches of epoch 1."""
BATCHES = -(-helpers.SAMPLES // WORLD // helpers.LOADER_STATE_BATCH)


def launch(folder: Path, name: str, url: str, exp: str | None, workers: int,
           stop_after: tuple[int, int] | None, go_on: int = 0
           ) -> tuple[str, dict[int, list[str]]]:
    """Run the job once (both ranks reaped, a hung one killed); return the run id and each
    rank's batch lines ``E B DIGEST``."""
    out = folder / name
    codes = _two_ranks(helpers.loader_state_rank, out, url, str(folder / "data"), str(out),
                       str(folder), exp, workers, stop_after, go_on)
    outcomes = [(out / f"rank-{rank}").read_text() if (out / f"rank-{rank}").exists() else None
                for rank in range(WORLD)]
    expected = "preempted" if stop_after is not None else "done"
    assert codes == [0, 0] and outcomes == [expected] * WORLD, (name, codes, outcomes)
    lines = {rank: (out / f"rank-{rank}.batches").read_text().splitlines()
             for rank in range(WORLD)}
    return exp or (out / "exp").read_text(), lines


def _status(url: str, exp: str) -> str:
    with Store.open(url) as store:
        return store.experiment(exp).status


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted job (SQLite, 2 workers per rank): the oracle."""
    folder = tmp_path_factory.mktemp("straight")
    url = f"sqlite:///{folder / 'ledger.db'}"
    exp, lines = launch(folder, "out", url, None, 2, None)
    assert _status(url, exp) == "ok"
    for rank in range(WORLD):  # every batch of every epoch, in order
        assert [line.split()[:2] for line in lines[rank]] == [
            [str(epoch), str(batch)] for epoch in range(helpers.LOADER_STATE_EPOCHS)
            for batch in range(BATCHES)], lines[rank]
    return {"url": url, "exp": exp, "lines": lines}


def preempt_and_resume(folder: Path, url: str, straight: dict[str, Any], go_on: int) -> None:
    """Save each rank's state at STOP and stop ``go_on`` batches later (2 workers per rank),
    resume from the states (no workers), compare with ``straight``."""
    exp, first = launch(folder, "attempt-1", url, None, 2, STOP, go_on)
    assert _status(url, exp) == "incomplete"
    handed = BATCHES * STOP[0] + STOP[1]  # batches each rank was handed before its state
    for rank in range(WORLD):
        assert first[rank] == straight["lines"][rank][:handed + go_on], rank
    resumed, second = launch(folder, "attempt-2", url, exp, 0, None)
    assert resumed == exp and _status(url, exp) == "ok"
    for rank in range(WORLD):  # the rest of epoch 1, then epoch 2, bit for bit
        assert second[rank][0].split()[:2] == [str(STOP[0]), str(STOP[1])], second[rank][:1]
        assert second[rank] == straight["lines"][rank][handed:], rank
    with Store.open(url) as store:
        bodies = [decode_body(body) for stream, _q, _k, body in store.iter_run_bodies(exp)
                  if stream != "audit"]
    identities = [(body["kind"], *body["path"]) for body in bodies if body["seed"] is not None]
    assert len(identities) == len(set(identities))  # nothing redone was recorded twice
    for stream in ("main", "rank-1"):
        assert sum(body["stream"] == stream and body["kind"] == "augmentation_batch"
                   for body in bodies) == BATCHES * helpers.LOADER_STATE_EPOCHS, stream
    diffed = run_cli("diff", exp, straight["exp"], "--db", url, "--db-b", straight["url"])
    assert diffed.returncode == 0 and "IDENTICAL" in diffed.stdout, (
        diffed.stdout + diffed.stderr)
    diffed = run_cli("diff", exp, straight["exp"], "--db", url, "--db-b", straight["url"],
                     "--json")
    assert json.loads(diffed.stdout)["identical"] is True, diffed.stdout
    env = {"LEDGER_DATA_DIR": str(folder / "data"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    replayed = run_cli("replay", exp, "--db", url, "--trust", "torch_helpers", "--no-record",
                       "--json", env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    certificate = json.loads(replayed.stdout)
    assert certificate["verdict"] == "certified", certificate
    assert certificate["compared"]["augmentation_batch"] == (
        WORLD * BATCHES * helpers.LOADER_STATE_EPOCHS), certificate["compared"]


@pytest.mark.slow
@pytest.mark.parametrize("go_on", [0, 2])
def test_a_job_preempted_mid_epoch_resumes_each_rank_s_loader_state_on_sqlite(
        tmp_path: Path, straight: dict[str, Any], go_on: int) -> None:
    """``go_on`` 2: the lost attempt recorded 2 batches past the states, which the resumed
    ranks redo and check against the record (in ``main`` and in ``rank-1``), not record
    twice."""
    preempt_and_resume(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", straight, go_on)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_job_preempted_mid_epoch_resumes_each_rank_s_loader_state_on_postgres(
        tmp_path: Path, straight: dict[str, Any]) -> None:
    with postgres_schema(postgres_base_url()) as url:
        preempt_and_resume(tmp_path, url, straight, 2)


# -- without processes: rank 0 in the main stream, rank 1 attached as rank-1 ------------------------

def _loader(run: Any, data: Any, rank: int, num_replicas: int = WORLD) -> RecordedDataLoader:
    return RecordedDataLoader(run, data, helpers.LOADER_STATE_BATCH, num_replicas=num_replicas,
                              rank=rank, transform=RecordedTransform("jitter", std=0.05))


def _rank_1_state(manager: ExperimentManager, exp: Any, batches: int) -> dict[str, Any]:
    """The state of rank 1's loader (stream rank-1) after ``batches`` batches of epoch 0."""
    with AttachedRun(manager.store, exp.id, "rank-1") as run:
        loader = _loader(run, run.register_dataset("fraud",
                                                   *torch_helpers.fraud_arrays(helpers.SAMPLES)),
                         1)
        for handed, _batch in enumerate(loader, start=1):
            if handed == batches:
                break
        return loader.state_dict()


def _suspended_with_rank_1_state(manager: ExperimentManager, batches: int
                                 ) -> tuple[Any, dict[str, Any]]:
    """A run (left suspended) whose rank 1 handed out ``batches`` batches of epoch 0, and that
    rank's loader state."""
    exp = manager.create_experiment("ranks", seed=91)
    exp.register_dataset("fraud", *torch_helpers.fraud_arrays(helpers.SAMPLES))
    exp.flush()
    state = _rank_1_state(manager, exp, batches)
    exp.suspend()
    return exp, state


def test_a_rank_s_state_is_refused_by_another_rank_s_or_world_s_loader(tmp_path: Path) -> None:
    """Each rank restores its own state file: rank 1's state in rank 0's loader (or in a loader
    of another world) is one BadInputError naming the setting, the loader left as it was."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path / "data"
                           ) as manager, manager.create_experiment("ranks", seed=91) as exp:
        data = exp.register_dataset("fraud", *torch_helpers.fraud_arrays(helpers.SAMPLES))
        exp.flush()
        state = _rank_1_state(manager, exp, 2)
        assert (state["rank"], state["num_replicas"], state["batch"]) == (1, WORLD, 2)
        rank_0 = _loader(exp, data, 0)
        with pytest.raises(BadInputError, match="^got a state saved with rank=1, but this loader "
                                                "has rank=0"):
            rank_0.load_state_dict(state)
        assert (rank_0.state_dict()["epoch"], rank_0.state_dict()["batch"]) == (0, 0)
        for replicas, rank in ((4, 1), (1, 0)):
            with pytest.raises(BadInputError, match=f"^got a state saved with num_replicas=2, "
                                                    f"but this loader has "
                                                    f"num_replicas={replicas}"):
                _loader(exp, data, rank, replicas).load_state_dict(state)


def test_a_resumed_rank_refuses_a_state_ahead_of_its_stream_s_record(tmp_path: Path) -> None:
    """Rank 1's state claiming batches its stream never recorded (events lost after the state
    was taken) would leave them missing from rank-1 for good: the resumed rank refuses it, as
    rank 0 refuses such a state of its own (an AttachedRun had no ``resumed`` and no
    ``has_draw``, so rank r > 0 skipped the check and resumed past its record); its true state
    resumes."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path / "data"
                           ) as manager:
        exp, state = _suspended_with_rank_1_state(manager, 2)
        resumed = manager.resume_experiment(exp.id)
        with AttachedRun(manager.store, exp.id, "rank-1") as run:
            data = run.register_dataset("fraud", *torch_helpers.fraud_arrays(helpers.SAMPLES))
            with pytest.raises(StateAheadError, match="no record of batch 2 of epoch 0"):
                _loader(run, data, 1).load_state_dict({**state, "batch": 4})
            restored = _loader(run, data, 1)
            restored.load_state_dict(state)
            assert len(list(restored)) == BATCHES - 2
        resumed.close()


def test_rank_1_of_a_child_run_continues_its_parent_s_rank_1_state(tmp_path: Path) -> None:
    """A run created with ``parent=`` continues its parent's states on every rank: rank 1
    (an AttachedRun, which did not know the parent) refused the parent's rank-1 state as
    another run's (ForeignStateError) where rank 0 took it; it hands out the rest of the
    epoch now, and a state of any other run is still refused."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path / "data"
                           ) as manager:
        parent, state = _suspended_with_rank_1_state(manager, 2)
        with manager.create_experiment("ranks", seed=91, parent=parent.id) as child:
            child.register_dataset("fraud", *torch_helpers.fraud_arrays(helpers.SAMPLES))
            child.flush()
            with AttachedRun(manager.store, child.id, "rank-1") as run:
                assert run.parent == parent.id
                data = run.register_dataset("fraud",
                                            *torch_helpers.fraud_arrays(helpers.SAMPLES))
                with pytest.raises(ForeignStateError, match="saved by run"):
                    _loader(run, data, 1).load_state_dict({**state, "run": "exp-0123456789ab"})
                restored = _loader(run, data, 1)
                restored.load_state_dict(state)
                assert len(list(restored)) == BATCHES - 2
