"""A torch.distributed job killed and resumed equals the uninterrupted job.

A 2-rank gloo job (``distributed_resume_helpers.resumable_rank``: DDP, a recorded DataLoader of
2 workers per rank, a checkpoint file — model, optimiser, epoch — after each epoch) is SIGKILLed
at a random point after its first checkpoint, then started again with
``distributed_experiment(..., resume=EXP)`` from its last checkpoint file, as torchrun does
after a failure (``--max-restarts``); a resumed job may be killed too. A kill takes both ranks
(the job stopped), or one — a rank that dies — whose survivor is left a random moment to
notice (its next collective fails: with ``on_failure="suspend"`` rank 0 leaves the run
incomplete) before it is killed too, as torch elastic stops the rest of a job. A kill lands
where a rank waits at a progress point, or races its progress.

Each scenario's kills are drawn from a seeded generator (``DIST_RESUME_SEED``), so a failure
reproduces but for where a racing kill lands; ``DIST_RESUME_SCENARIOS`` (SQLite, one shared
ledger file, default 1) and ``DIST_RESUME_PG_SCENARIOS`` (PostgreSQL, each in a fresh schema
dropped after, default 1) widen the hunt. The oracle, against one uninterrupted run of the same
seed: final weights bit-identical; the metrics and checkpoints the store holds equal, each
recorded once; ``ledger verify`` passes, ``ledger replay`` certifies, ``ledger diff`` says
identical; ``run_completed`` lists both ranks' streams.

The refusals of ``resume=`` (unknown or completed run, another name, seed, hyperparams or world
size, meaningless keyword combinations) run without processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import distributed_resume_helpers as helpers  # noqa: E402
import torch_helpers  # noqa: E402
from conftest import ROOT, postgres_base_url, postgres_schema  # noqa: E402
from ledger.errors import BadInputError, LedgerError, UnknownExperimentError  # noqa: E402
from ledger.events import CHECKPOINT, MAIN_STREAM, METRIC, decode_body  # noqa: E402
from ledger.experiment import ExperimentManager  # noqa: E402
from ledger.integrations.runs import AttachedRun  # noqa: E402
from ledger.integrations.torch import RecordedDataLoader, distributed_experiment  # noqa: E402
from ledger.integrations.torch_distributed import recorded_world  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.verify import verify  # noqa: E402

SEED = int(os.environ.get("DIST_RESUME_SEED", "20261201"))
SCENARIOS = int(os.environ.get("DIST_RESUME_SCENARIOS", "1"))
PG_SCENARIOS = int(os.environ.get("DIST_RESUME_PG_SCENARIOS", "1"))
WORLD = 2
EPOCHS = 3
TRAIN_SEED = 77
PROGRESS_WAIT = 120.0
"""Longest wait for a rank's next progress line or exit: a hang safeguard, never a timing check."""


@dataclass
class Kill:
    """One kill of a job: ``victim`` (0, 1, or None for both ranks) at the ``point``-th progress
    point of rank ``at`` (waiting there with ``pause``, else ``race`` seconds after it wrote it);
    a lone victim's survivor is left ``grace`` seconds to notice before it is killed too."""

    at: int
    point: int
    victim: int | None
    pause: bool
    race: float = 0.0
    grace: float = 0.0

    def describe(self) -> str:
        whom = "both ranks" if self.victim is None else f"rank {self.victim}"
        when = "(paused)" if self.pause else f"+{self.race * 1000:.1f} ms"
        survivor = "" if self.victim is None else f", survivor killed after {self.grace:.2f} s"
        return f"{whom} at rank {self.at}'s point {self.point} {when}{survivor}"


@dataclass
class Attempt:
    """What one launch of the job did: each rank's progress lines and exit code."""

    lines: dict[int, list[str]] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    killed: bool = False


def _progress(out: Path, rank: int) -> list[str]:
    path = out / f"rank-{rank}.progress"
    return path.read_text().splitlines() if path.exists() else []


def _points(lines: list[str]) -> int:
    return sum(line.startswith("point ") for line in lines)


def launch(out: Path, url: str, data_dir: Path, checkpoints: Path, exp: str | None,
           kill: Kill | None = None, on_failure: str = "suspend") -> Attempt:
    """Run the job once (both ranks as processes of their own), its progress in ``out``; killed
    as ``kill`` says (None: left to finish)."""
    out.mkdir()
    pauses = [kill.point if kill is not None and kill.pause and kill.at == rank else None
              for rank in range(WORLD)]
    context = _rank_context()
    ranks = [context.Process(target=helpers.resumable_rank, args=(
        rank, WORLD, str(out / "process-group"), url, str(data_dir), str(out), str(checkpoints),
        TRAIN_SEED, EPOCHS, exp, pauses[rank], on_failure)) for rank in range(WORLD)]
    for process in ranks:
        process.start()
    attempt = Attempt()
    try:
        if kill is not None:
            attempt.killed = _kill_when_due(ranks, out, kill)
        for process in ranks:
            process.join(PROGRESS_WAIT)
        assert not any(process.is_alive() for process in ranks), (
            f"a rank still runs {PROGRESS_WAIT:.0f} s on: {[_progress(out, r) for r in (0, 1)]}")
    finally:
        for process in ranks:  # a failed assertion: leave nothing running
            if process.is_alive():
                process.kill()
                process.join()
    attempt.exit_codes = [process.exitcode for process in ranks]
    attempt.lines = {rank: _progress(out, rank) for rank in range(WORLD)}
    return attempt


def _rank_context() -> Any:
    """Where ranks start: forked from a forkserver that has imported the rank's module, torch
    and DDP's imports once, rather than each rank importing them again (seconds per rank)."""
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["distributed_resume_helpers", "torch._dynamo"])
    return context


def _kill_when_due(ranks: list[Any], out: Path, kill: Kill) -> bool:
    """Wait (bounded) for rank ``kill.at`` to reach its point, then kill as ``kill`` says;
    False when the job ended before."""
    deadline = time.monotonic() + PROGRESS_WAIT
    while True:
        lines = _progress(out, kill.at)
        if (kill.pause and "paused" in lines) or (not kill.pause
                                                  and _points(lines) >= kill.point):
            break
        if not any(process.is_alive() for process in ranks):
            return False
        assert time.monotonic() < deadline, f"rank {kill.at} silent: {lines[-3:]}"
        time.sleep(0.002)
    time.sleep(kill.race)
    victims = [0, 1] if kill.victim is None else [kill.victim]
    for rank in victims:
        ranks[rank].kill()
    if kill.victim is not None:
        survivor = ranks[1 - kill.victim]
        survivor.join(kill.grace)  # its next collective fails: it may end by itself
        survivor.kill()
    return True


def _point_of(lines: list[str], label: str) -> int:
    """The number of the progress point ``label`` in a rank's ``lines``."""
    return next(int(line.split()[1]) for line in lines if line.split(maxsplit=2)[2:] == [label])


def _draw_kill(rng: random.Random, lines: dict[int, list[str]], first: bool) -> Kill:
    """A kill at a random point after the first checkpoint (a resumed job: anywhere after its
    start, the checkpoint file being there already); ``lines``: the uninterrupted job's."""
    at = rng.choice([0, 1])
    earliest = _point_of(lines[at], "saved 0" if at == 0 else "epoch-end 0") if first else 1
    point = rng.randint(earliest, _points(lines[at]))
    victim = rng.choice([None, None, 0, 1])
    pause = rng.random() < 0.5
    race = 0.0 if pause else rng.choice([0.0, rng.uniform(0.0, 0.05)])
    grace = rng.choice([0.0, rng.uniform(0.0, 1.5)])
    return Kill(at, point, victim, pause, race, grace)


def _logs(url: str, exp: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The run's metrics (name, epoch, value) and checkpoints (name, epoch, digest) in order."""
    metrics, checkpoints = [], []
    with Store.open(url) as store:
        for stream, _seq, kind, body_bytes in store.iter_kind_bodies(exp, [METRIC, CHECKPOINT]):
            params = decode_body(body_bytes)["params"]
            assert stream == MAIN_STREAM
            if kind == METRIC:
                metrics.append((params["name"], params["epoch"], params["value"]))
            else:
                checkpoints.append((params["name"], params["epoch"],
                                    decode_body(body_bytes)["output"]))
    return metrics, checkpoints


def _status(url: str, exp: str) -> str:
    with Store.open(url) as store:
        return store.experiment(exp).status


def _cli(*args: str, data_dir: Path | None = None) -> Any:
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("LEDGER_URL", None)
    if data_dir is not None:
        env["LEDGER_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run of the job (an SQLite ledger): the oracle of every scenario."""
    folder = tmp_path_factory.mktemp("straight")
    url = f"sqlite:///{folder / 'ledger.db'}"
    attempt = launch(folder / "out", url, folder / "data", folder, None)
    assert attempt.exit_codes == [0, 0], attempt.lines
    exp, weights = (folder / "out" / "result").read_text().split()
    return {"url": url, "exp": exp, "weights": weights, "logs": _logs(url, exp),
            "lines": attempt.lines}


def run_scenario(folder: Path, url: str, scenario: int, straight: dict[str, Any],
                 plans: list[Kill] | None = None, on_failure: str = "suspend") -> list[str]:
    """Kill the job one or two times (drawn, or ``plans``), resuming it each time, let it
    finish, and compare it with the uninterrupted run; return where each kill landed."""
    rng = random.Random(f"{SEED}/{url.split(':')[0]}/{scenario}")
    kills = plans if plans is not None else [
        _draw_kill(rng, straight["lines"], first=index == 0)
        for index in range(rng.choice([1, 1, 2]))]
    data, notes, exp, out = folder / "data", [], None, folder / "resumed"
    attempt, finished = Attempt(killed=True), False
    for index, kill in enumerate(kills):
        out = folder / f"attempt-{index}"
        attempt = launch(out, url, data, folder, exp, kill, on_failure)
        exp = exp or (out / "exp").read_text()
        # a kill that lands after rank 0 completed the run finds nothing left to resume
        finished = _status(url, exp) == "ok"
        notes.append(f"kill {index}: {kill.describe()}: " + (
            f"ranks exited {attempt.exit_codes}, rank 0 at {attempt.lines[0][-1:]}, rank 1 at "
            f"{attempt.lines[1][-1:]}" if attempt.killed else "finished first")
            + (", the run completed first" if attempt.killed and finished else ""))
        if not attempt.killed or finished:
            break
    context = f"scenario {scenario} (seed {SEED}) on {url.split(':')[0]}: {notes}"
    if attempt.killed and not finished:
        out = folder / "resumed"
        attempt = launch(out, url, data, folder, exp)
    assert (attempt.killed and finished) or attempt.exit_codes == [0, 0], (
        f"{context}\nthe job failed: {attempt.lines}")
    result = out / "result"
    run, weights = result.read_text().split()
    assert run == exp, context
    # 1. the final weights, bit for bit
    assert weights == straight["weights"], context
    # 2. every metric and checkpoint recorded once, as in the uninterrupted run
    assert _logs(url, exp) == straight["logs"], context
    with Store.open(url) as store:
        completed = store.first_event_body(exp, "run_completed")["params"]
        bodies = [decode_body(body) for stream, _q, _k, body in store.iter_run_bodies(exp)
                  if stream != "audit"]
    assert completed["status"] == "ok" and set(completed["streams"]) == {"main", "rank-1"}, (
        context)
    identities = [(body["kind"], *body["path"]) for body in bodies if body["seed"] is not None]
    assert len(identities) == len(set(identities)), context
    # 3. verify, replay, diff
    verified = _cli("verify", exp, "--db", url)
    assert verified.returncode == 0, f"{context}\n{verified.stdout}{verified.stderr}"
    replayed = _cli("replay", exp, "--db", url, "--trust", "torch_helpers", "--no-record",
                    "--json", data_dir=data)
    assert replayed.returncode == 0, f"{context}\n{replayed.stdout}{replayed.stderr}"
    assert json.loads(replayed.stdout)["verdict"] == "certified", context
    diffed = _cli("diff", exp, straight["exp"], "--db", url, "--db-b", straight["url"], "--json")
    assert diffed.returncode == 0, f"{context}\n{diffed.stdout}{diffed.stderr}"
    assert json.loads(diffed.stdout)["identical"] is True, context
    return notes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", range(SCENARIOS))
def test_a_job_killed_and_resumed_equals_the_uninterrupted_job_on_sqlite(
        tmp_path: Path, scenario: int, straight: dict[str, Any]) -> None:
    """Both ranks write into one SQLite file (ranks of one machine)."""
    notes = run_scenario(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", scenario, straight)
    print(f"sqlite scenario {scenario}: {notes}")  # where the kills landed (pytest -s)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("scenario", range(PG_SCENARIOS))
def test_a_job_killed_and_resumed_equals_the_uninterrupted_job_on_postgres(
        tmp_path: Path, scenario: int, straight: dict[str, Any]) -> None:
    with postgres_schema(postgres_base_url()) as url:
        notes = run_scenario(tmp_path, url, scenario, straight)
    print(f"postgres scenario {scenario}: {notes}")  # where the kills landed (pytest -s)


@pytest.mark.slow
def test_a_job_killed_right_after_its_last_checkpoint_file_lost_no_event(
        tmp_path: Path, straight: dict[str, Any]) -> None:
    """Both ranks killed while rank 0 waits just after writing the last epoch's checkpoint
    file: the resumed job starts after that epoch and redoes nothing, so every event up to the
    file must have been durable (``flush_ranks``) — it used to lose the last metric and
    checkpoint records, still in rank 0's write buffer."""
    point = _point_of(straight["lines"][0], f"saved {EPOCHS - 1}")
    run_scenario(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", 0, straight,
                 plans=[Kill(at=0, point=point, victim=None, pause=True)])


# -- what resume= refuses (no process group: a world of one rank) ----------------------------------

def _suspended_run(url: str, data_dir: Path, *, rank_1_world: int | None = None) -> str:
    """An incomplete run named ``solo`` (seed TRAIN_SEED, hyperparams {"epochs": 1}) with one
    user draw; with ``rank_1_world``, stream ``rank-1`` holds the batches rank 1 of a world that
    size drew."""
    with ExperimentManager(url, data_dir=data_dir) as manager:
        exp = manager.create_experiment("solo", seed=TRAIN_SEED, hyperparams={"epochs": 1})
        data = exp.register_dataset("d", *torch_helpers.fraud_arrays(64))
        exp.generator("model", "init")
        exp.flush()
        if rank_1_world is not None:
            with AttachedRun(manager.store, exp.id, "rank-1") as run:
                shared = run.register_dataset("d", *torch_helpers.fraud_arrays(64))
                list(RecordedDataLoader(run, shared, 16, num_replicas=rank_1_world, rank=1,
                                        transform="jitter"))
        exp.suspend()
        return exp.id


def _main_count(url: str, exp: str) -> int:
    with Store.open(url) as store:
        return store.stream_heads(exp)["main"].count


def _resume(url: str, exp: str, **options: Any) -> str:
    """Resume ``exp`` as the ``solo`` job and complete it; return its status."""
    with distributed_experiment(**{"name": "solo", "url": url, "seed": TRAIN_SEED,
                                   "resume": exp, **options}) as run:
        run.generator("model", "init")  # redone: checked against the record
    return run.status


@pytest.mark.parametrize("options, match", [
    ({"name": "other"}, "got name 'other', but exp-.* is the run 'solo'"),
    ({"seed": TRAIN_SEED + 1}, f"got seed {TRAIN_SEED + 1}, but exp-.* another root seed"),
    ({"hyperparams": {"epochs": 2}}, "got hyperparams {'epochs': 2}, but exp-.* was created "
                                     "with {'epochs': 1}"),
    ({"hyperparams": [1]}, "got hyperparams of type list"),
    ({"exp_id": "exp-0123456789ab"}, "got exp_id='exp-0123456789ab' with resume=.*give resume "
                                     "alone"),
    ({"on_failure": "retry"}, "got on_failure='retry', but must be one of"),
    ({"take_over": "yes"}, "got take_over='yes', but must be a bool"),
])
def test_resume_refuses_another_job_and_records_nothing(tmp_path: Path, options: dict,
                                                        match: str) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = _suspended_run(url, tmp_path / "data")
    before = _main_count(url, exp)
    with pytest.raises(BadInputError, match=match):
        _resume(url, exp, **options)
    assert _main_count(url, exp) == before  # no run_resumed: nothing was recorded
    assert _resume(url, exp) == "ok"  # the run is still there to resume


def test_resume_refuses_an_unknown_or_completed_run_and_take_over_without_it(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = _suspended_run(url, tmp_path / "data")
    with pytest.raises(UnknownExperimentError, match="unknown experiment exp-0123456789ab"):
        _resume(url, "exp-0123456789ab")
    with pytest.raises(BadInputError, match="take_over=True without resume"):
        with distributed_experiment("solo", url=url, take_over=True):
            pass
    assert _resume(url, exp) == "ok"
    with pytest.raises(BadInputError, match="completed with status ok: only an incomplete run"):
        _resume(url, exp)
    assert issubclass(UnknownExperimentError, LedgerError)


def test_resume_refuses_a_world_other_than_the_one_the_ranks_drew_with(tmp_path: Path) -> None:
    """Rank 1 of a world of 2 recorded its batches: resuming with 1 rank (no process group here)
    would redo them with other shares, and leave stream rank-1 to nobody."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = _suspended_run(url, tmp_path / "data", rank_1_world=2)
    before = _main_count(url, exp)
    with Store.open(url) as store:
        assert recorded_world(store, exp) == 2
    with pytest.raises(BadInputError, match=f"got a world of 1 rank\\(s\\), but the ranks of "
                                            f"{exp} recorded their draws as a world of 2"):
        _resume(url, exp)
    assert _main_count(url, exp) == before
    # a world of 4 whose rank 1 is the only one that recorded yet: 4 it is
    other = _suspended_run(url, tmp_path / "data", rank_1_world=4)
    with Store.open(url) as store:
        assert recorded_world(store, other) == 4


def test_a_run_whose_ranks_recorded_nothing_resumes_with_any_world(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = _suspended_run(url, tmp_path / "data")
    with Store.open(url) as store:
        assert recorded_world(store, exp) is None
    assert _resume(url, exp, hyperparams={"epochs": 1}) == "ok"
    with Store.open(url) as store:
        assert verify(store, exp).ok
        kinds = [kind for _s, _q, kind, _b in store.iter_run_bodies(exp)]
    assert kinds.count("user_draw") == 1 and kinds.count("run_resumed") == 1


@pytest.mark.parametrize("on_failure, status", [("fail", "failed"), ("suspend", "incomplete")])
def test_on_failure_suspend_leaves_a_failed_block_resumable(tmp_path: Path, on_failure: str,
                                                            status: str) -> None:
    """The default completes a run whose block raised as failed, and a completed run cannot be
    resumed; with on_failure="suspend" it is left incomplete, verifies, and resumes."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with pytest.raises(RuntimeError, match="lost a rank"):
        with distributed_experiment("solo", url=url, seed=TRAIN_SEED,
                                    hyperparams={"epochs": 1}, on_failure=on_failure) as run:
            run.generator("model", "init")
            raise RuntimeError("lost a rank")
    with Store.open(url) as store:
        assert (store.experiment(run.id).status, verify(store, run.id).ok) == (status, True)
    if on_failure == "suspend":
        assert _resume(url, run.id) == "ok"
    else:
        with pytest.raises(BadInputError, match="completed with status failed"):
            _resume(url, run.id)


def test_a_failure_that_cannot_be_shown_still_completes_the_run_failed(tmp_path: Path) -> None:
    """A block's exception whose ``__str__`` raises: rank 0 raised that RuntimeError while
    completing the run, which stayed incomplete, and the job saw it instead of its own error."""
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("this exception cannot be shown")

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with pytest.raises(Unprintable):
        with distributed_experiment("solo", url=url, seed=TRAIN_SEED) as run:
            raise Unprintable()
    with Store.open(url) as store:
        assert store.experiment(run.id).status == "failed"
        last = [decode_body(body) for _s, _q, _k, body in store.iter_run_bodies(run.id)][-1]
    assert last["params"]["error"] == "Unprintable: <exception str() failed>"


def _two_ranks(target: Any, out: Path, *args: Any, wait: float = PROGRESS_WAIT
               ) -> list[int | None]:
    """Run ``target(rank, 2, init_file, *args)`` as ranks 0 and 1 (processes joined one by one,
    so that a rank that dies does not stop the other; one still running ``wait`` seconds on is
    killed, a hang safeguard); return their exit codes."""
    out.mkdir()
    context = _rank_context()
    ranks = [context.Process(target=target, args=(rank, WORLD, str(out / "process-group"),
                                                  *args)) for rank in range(WORLD)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(wait)
        if process.is_alive():  # a hang safeguard
            process.kill()
            process.join()
    return [process.exitcode for process in ranks]


@pytest.mark.parametrize("on_failure, status", [("fail", "failed"), ("suspend", "incomplete")])
def test_a_rank_that_dies_leaves_a_run_the_restarted_job_resumes_with_on_failure_suspend(
        tmp_path: Path, on_failure: str, status: str) -> None:
    """A rank dies (the failure torchrun restarts a job for): rank 0 meets a broken process
    group. By default it completes the run failed, which the restarted job cannot resume; with
    on_failure="suspend" it leaves the run incomplete, and the restarted job resumes it, both
    ranks checking their redone draws, and completes it."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = tmp_path / "first"
    codes = _two_ranks(helpers.rank_1_dies, first, url, str(first), None, on_failure)
    assert codes == [0, 3]
    assert (first / "rank-0").read_text().startswith(
        "RuntimeError"), (first / "rank-0").read_text()  # the broken group, raised on rank 0
    exp = (first / "exp").read_text()
    with Store.open(url) as store:
        assert (store.experiment(exp).status, verify(store, exp).ok) == (status, True)
    again = tmp_path / "again"
    assert _two_ranks(helpers.rank_1_dies, again, url, str(again), exp, on_failure) == [0, 0]
    outcome = (again / "rank-0").read_text()
    if on_failure == "fail":
        assert outcome == (f"BadInputError: got {exp}, which completed with status failed: "
                           f"only an incomplete run can be resumed")
        return
    assert outcome == "no error"
    with Store.open(url) as store:
        completed = store.first_event_body(exp, "run_completed")["params"]
        draws = [(stream, kind) for stream, _q, kind, _b in store.iter_run_bodies(exp)
                 if kind == "coin_flip"]
        assert verify(store, exp).ok
    assert completed["status"] == "ok" and set(completed["streams"]) == {"main", "rank-1"}
    assert sorted(draws) == [("main", "coin_flip"), ("rank-1", "coin_flip")]  # each once


def test_a_job_that_leaves_right_after_the_ranks_meet_to_finish_does_not_hang(
        tmp_path: Path) -> None:
    """The hunt's hang: a resumed job with no epoch left to train left the block at once, and
    freeing its DDP model destroyed the process group while gloo's worker thread still held
    the ranks' meeting to finish (it needs the GIL to free the tensors the ledger gave it; the
    destructor holds the GIL and waits for the thread): the rank hung at exit, 3 jobs in 5 here.
    The meeting now waits until the worker has let go. Four jobs, none may hang (a bounded
    wait per rank)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for job in range(4):
        out = tmp_path / f"job-{job}"
        assert _two_ranks(helpers.quick_job, out, url, str(out), wait=30.0) == [0, 0], (
            f"job {job}: {[(out / f'rank-{r}').exists() for r in range(WORLD)]} ranks done")
        assert all((out / f"rank-{rank}").read_text() == "done" for rank in range(WORLD))


# -- the README's example, run as written (a one-rank gloo job) -------------------------------------

class FlakyModel(torch.nn.Module):
    """The README's model, which can be made to fail at its ``fail_at``-th forward pass (a rank
    that dies mid-epoch, as the block sees it: an error at a collective)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = torch_helpers.small_model()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("Connection closed by peer (a rank died)")
        return self.net(x)


def _run_readme_block(folder: Path, fail_at: int | None,
                      monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Execute the README's resume block in ``folder`` as rank 0 of a one-rank gloo job;
    return its namespace (the error it raised under ``"error"``)."""
    import socket

    import torch.distributed as dist

    from conftest import readme_python_block

    code = readme_python_block("**Resuming a distributed job", "resume=resume")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "1", "LEDGER_URL": f"sqlite:///{folder / 'ledger.db'}",
                        "LEDGER_DATA_DIR": str(folder / "data"),
                        "RUN_ID_FILE": str(folder / "run-id"),
                        "CHECKPOINT_FILE": str(folder / "checkpoint.pt")}.items():
        monkeypatch.setenv(name, value)
    features, labels = torch_helpers.fraud_arrays(256)
    namespace: dict[str, Any] = {"torch": torch, "features": features, "labels": labels,
                                 "make_model": lambda: FlakyModel(fail_at)}
    try:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    except RuntimeError as error:
        namespace["error"] = error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return namespace


def test_the_readme_resume_example_continues_a_job_that_failed_mid_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's block, as written: a job whose rank fails in epoch 1 (after the checkpoint
    file of epoch 0) leaves the run incomplete; started again, it resumes the run from that file
    and ends with the weights and events of a job that never failed."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    expected = _run_readme_block(straight, None, monkeypatch)
    failed = _run_readme_block(killed, 6, monkeypatch)  # 4 batches an epoch: in epoch 1
    assert "Connection closed by peer" in str(failed["error"])
    exp = (killed / "run-id").read_text()
    assert _status(f"sqlite:///{killed / 'ledger.db'}", exp) == "incomplete"
    resumed = _run_readme_block(killed, None, monkeypatch)
    assert "error" not in resumed and resumed["resume"] == exp and resumed["start"] == 1
    for key, value in expected["model"].module.state_dict().items():
        assert torch.equal(resumed["model"].module.state_dict()[key], value), key
    diffed = _cli("diff", exp, (straight / "run-id").read_text(), "--db",
                  f"sqlite:///{killed / 'ledger.db'}", "--db-b",
                  f"sqlite:///{straight / 'ledger.db'}", "--json")
    assert diffed.returncode == 0 and json.loads(diffed.stdout)["identical"] is True, (
        diffed.stdout + diffed.stderr)


def test_a_resumed_job_records_the_code_of_its_code_dir(tmp_path: Path) -> None:
    """``code_dir`` given with ``resume=`` was dropped: rank 0's run_resumed now records that
    repository's version, as create_experiment does with it."""
    import subprocess

    repo = tmp_path / "training-code"
    repo.mkdir()
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.py").write_text("print('train')\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                    "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = _suspended_run(url, tmp_path / "data")
    assert _resume(url, exp, hyperparams={"epochs": 1}, code_dir=repo) == "ok"
    with Store.open(url) as store:
        [seam] = [decode_body(body) for _s, _q, kind, body in store.iter_run_bodies(exp)
                  if kind == "run_resumed"]
    assert seam["params"]["code"]["commit"] == head
