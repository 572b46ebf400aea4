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


def _draw_kill(rng: random.Random, totals: dict[int, int], first: bool) -> Kill:
    """A kill at a random point after the first checkpoint (a resumed job: anywhere after its
    start, the checkpoint file being there already)."""
    at = rng.choice([0, 1])
    earliest = {0: 9, 1: 8}[at] if first else 1  # rank 0's "saved 0", rank 1's epoch-end 0
    point = rng.randint(earliest, totals[at])
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
            "totals": {rank: _points(lines) for rank, lines in attempt.lines.items()}}


def run_scenario(folder: Path, url: str, scenario: int, straight: dict[str, Any],
                 plans: list[Kill] | None = None, on_failure: str = "suspend") -> list[str]:
    """Kill the job one or two times (drawn, or ``plans``), resuming it each time, let it
    finish, and compare it with the uninterrupted run; return where each kill landed."""
    rng = random.Random(f"{SEED}/{url.split(':')[0]}/{scenario}")
    kills = plans if plans is not None else [
        _draw_kill(rng, straight["totals"], first=index == 0)
        for index in range(rng.choice([1, 1, 2]))]
    data, notes, exp = folder / "data", [], None
    attempt = Attempt(killed=True)
    for index, kill in enumerate(kills):
        out = folder / f"attempt-{index}"
        attempt = launch(out, url, data, folder, exp, kill, on_failure)
        exp = exp or (out / "exp").read_text()
        notes.append(f"kill {index}: {kill.describe()}: " + (
            f"ranks exited {attempt.exit_codes}, rank 0 at {attempt.lines[0][-1:]}, rank 1 at "
            f"{attempt.lines[1][-1:]}" if attempt.killed else "finished first"))
        if not attempt.killed:
            break
    context = f"scenario {scenario} (seed {SEED}) on {url.split(':')[0]}: {notes}"
    if attempt.killed:
        out = folder / "resumed"
        attempt = launch(out, url, data, folder, exp)
    assert attempt.exit_codes == [0, 0], f"{context}\nthe job failed: {attempt.lines}"
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
    run_scenario(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", scenario, straight)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("scenario", range(PG_SCENARIOS))
def test_a_job_killed_and_resumed_equals_the_uninterrupted_job_on_postgres(
        tmp_path: Path, scenario: int, straight: dict[str, Any]) -> None:
    with postgres_schema(postgres_base_url()) as url:
        run_scenario(tmp_path, url, scenario, straight)
