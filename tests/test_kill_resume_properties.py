"""Interrupted-and-resumed equals uninterrupted: a recording training run SIGKILLed at random
points — mid-batch, right after a checkpoint, at an epoch's end, before its first checkpoint,
its resumed processes killed too — and resumed each time from its last checkpoint file, ends
with the uninterrupted run's weights, metrics and events.

Each scenario draws a configuration (data, batch size, epochs, checkpoint period, per-batch
metrics, epoch-end checkpoints, logged checkpoints or not, per-batch user draws) and a kill plan
from a seeded generator, so any failure reproduces (but for where a racing kill lands):
``KILL_RESUME_SEED`` and ``KILL_RESUME_SCENARIOS`` widen the hunt. The training process is
``kill_resume_driver.py``; every process of a run draws its own worker count (0 or 2, fork). A
kill lands exactly at a progress point (the driver waits there), races the driver shortly after
one, or comes a random delay after the process started (while it imports, creates or resumes the
run, starts its workers...). After the last process completes the run, the oracle compares it
with an uninterrupted run of the same seed in another ledger:

- final weights bit-identical;
- the metrics (and checkpoints) the store holds equal the uninterrupted run's, in order, each
  recorded once, and ``ledger show`` summarises them the same;
- ``ledger verify`` passes, ``ledger replay`` certifies the resumed run, and ``ledger diff`` of
  the two runs says identical (the README: a resumed run "replays and diffs like an
  uninterrupted one"; worker counts are not differences);
- a killed driver may be left unreaped (a zombie) while the next process resumes the run, as a
  supervisor that relaunches before it waits leaves it;
- no worker process of a killed driver outlives it (a bounded wait, a hang safeguard), and no
  shared-memory block a killed process held is left in ``/dev/shm`` — but for a kill during the
  worker pool's start-up, the one window the README documents as able to leave one.

The same scenarios run on PostgreSQL (``LEDGER_TEST_POSTGRES_URL``; each run in a fresh schema,
dropped after; ``KILL_RESUME_PG_SCENARIOS`` of them, seeded apart from the SQLite ones). There
a kill may also land inside a write transaction (the driver's ``DB_HOOKS``: a claim or release
inserted, an exclusive lock taken — a take-over's, the schema's creation's or run_completed's —,
a batch's stream lock taken, a COPY begun, half sent, or sent and not committed), paused there
or raced, and a paused driver may leave a child holding its database connections for a few
seconds: the server's backend then goes on holding the dead client's transaction and locks
while the resumed process starts. The oracle adds: every backend that served a killed driver
has ended once the run is complete (a bounded wait, a hang safeguard) — and every resumed
process finished rather than hung (each driver line is awaited at most ``LINE_WAIT``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from conftest import ROOT, postgres_base_url, postgres_schema
from ledger.events import CHECKPOINT, MAIN_STREAM, METRIC, decode_body
from ledger.store import Store
from process_helpers import group_shared_memory, tcp_client_ports

DRIVER = Path(__file__).with_name("kill_resume_driver.py")
SEED = int(os.environ.get("KILL_RESUME_SEED", "20261130"))
SCENARIOS = int(os.environ.get("KILL_RESUME_SCENARIOS", "8"))
PG_SCENARIOS = int(os.environ.get("KILL_RESUME_PG_SCENARIOS", "3"))
SQLITE_LEDGER = "sqlite:///ledger.db"
"""The SQLite ledger of a run: ``ledger.db`` in the run's folder (every process's cwd)."""
EXP = "run-kill-resume"
LINE_WAIT = 120.0
"""Longest wait for the driver's next line or exit: a hang safeguard, never a timing check."""
WORKER_EXIT_WAIT = 60.0
"""Longest wait for a killed driver's workers to end: a hang safeguard as well."""
BACKEND_EXIT_WAIT = 60.0
"""Longest wait for a killed driver's PostgreSQL backends to end once the run is complete."""


@dataclass
class Attempt:
    """What one driver process printed, and what its kill found."""

    lines: list[str] = field(default_factory=list)
    killed: bool = False
    workers: list[int] = field(default_factory=list)
    blocks: set[str] = field(default_factory=set)
    """Shared-memory names (not unlinked) the process group held open when it was killed."""
    unreaped: subprocess.Popen[str] | None = None
    """The killed driver, left a zombie for the next process to meet (reaped after it)."""
    backends: set[int] = field(default_factory=set)
    """PostgreSQL: pids of the server backends serving the driver when it was killed."""

    @property
    def points(self) -> int:
        return sum(line.startswith("point ") for line in self.lines)

    @property
    def pool_started(self) -> bool:
        return bool(self.workers)


def _config(rng: random.Random) -> dict[str, Any]:
    return {"seed": rng.randrange(2**63), "data_seed": rng.randrange(2**32),
            "rows": rng.randint(20, 48), "features": rng.randint(2, 5),
            "batch_size": rng.randint(4, 12), "epochs": rng.randint(2, 4),
            "lr": rng.choice([0.05, 0.3, 1.0]), "noise_std": rng.choice([0.05, 0.2]),
            "mask_prob": rng.choice([0.1, 0.3]), "checkpoint_every": rng.randint(1, 7),
            "batch_metric": rng.choice([None, "per-epoch", "per-run"]),
            "epoch_checkpoint": rng.random() < 0.5, "log_checkpoints": rng.random() < 0.8,
            "dropout": rng.random() < 0.5, "flush_every": rng.choice([None, None, 1, 3])}


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int]) -> list[int]:
    """Wait (bounded) for ``pids`` to end; the ones still running."""
    deadline = time.monotonic() + WORKER_EXIT_WAIT
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return []
        time.sleep(0.02)
    return [pid for pid in pids if _alive(pid)]


@dataclass
class Kill:
    """Where one process of a run is killed (see :func:`_run`), and how that reads."""

    workers: int
    how: str
    kill_at: int | None = None
    pause: bool = True
    race: float = 0.0
    flush: bool = False
    reap_late: bool = False
    db: str | None = None
    hold: float = 0.0


def _run(folder: Path, ledger: str, config: dict[str, Any], workers: int,
         kill: Kill | None = None) -> Attempt:
    """Run the driver in ``folder`` on the ledger at URL ``ledger`` (same argv for every run of
    a ledger: the recorded entrypoint is the same) with ``workers``, killed as ``kill`` says
    (its fields below; None: not killed). With ``kill_at``, SIGKILL the driver — not
    its workers — at its ``kill_at``-th progress point: waiting there (``pause``), or ``race``
    seconds after it printed that point; with ``kill_at`` 0, ``race`` seconds after it started.
    With ``db`` (``HOOK:N``, see the driver's ``DB_HOOKS``) instead, at the N-th time it reaches
    that point inside a write transaction, paused there or raced; ``hold``: a paused driver
    leaves a child keeping its connections open that long after the kill. ``flush``: a driver
    paused at a progress point flushes the run's events before it waits. ``reap_late``: the
    killed driver is left unreaped (a zombie, in :attr:`Attempt.unreaped`), as by a supervisor
    that starts the resumed process first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(DRIVER.parent)]),
           "KILL_RESUME_WORKERS": str(workers), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("LEDGER_URL", None)
    env.pop("LEDGER_DATA_DIR", None)
    plan = kill or Kill(workers, "not killed")
    kill_at, pause, race, reap_late, db = (plan.kill_at, plan.pause, plan.race, plan.reap_late,
                                           plan.db)
    if kill_at and pause:
        env["KILL_RESUME_PAUSE_AT"] = str(kill_at)
        env["KILL_RESUME_FLUSH_AT_PAUSE"] = "1" if plan.flush else "0"
    if db:
        env["KILL_RESUME_DB_AT"] = db
        env["KILL_RESUME_DB_PAUSE"] = "1" if pause else "0"
        if plan.hold:
            env["KILL_RESUME_HOLD"] = str(plan.hold)
    server_port = None if ledger == SQLITE_LEDGER else make_url(ledger).port or 5432
    process = subprocess.Popen(
        [sys.executable, str(DRIVER), ledger, "data", ".", EXP,
         json.dumps(config, sort_keys=True)], cwd=folder, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    errors: list[str] = []

    def read_out() -> None:
        assert process.stdout is not None
        with process.stdout:  # closed at EOF: once the driver and its workers have ended
            for line in process.stdout:
                lines.put(line.strip())
        lines.put(None)

    def read_errors() -> None:
        assert process.stderr is not None
        with process.stderr:
            errors.extend(process.stderr)

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_errors, daemon=True)]
    for reader in readers:
        reader.start()
    attempt = Attempt()
    # kill_at 0: a kill ``race`` seconds after the start, wherever the driver is (importing,
    # creating or resuming the run, registering its data, starting its workers...)
    deadline = time.monotonic() + race if kill_at == 0 else None
    ended = False  # its output read to the end
    try:
        while True:
            wait = LINE_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                if deadline is None:
                    raise AssertionError(f"driver silent for {LINE_WAIT:.0f} s: "
                                         f"{attempt.lines[-5:]}") from None
                _kill(process, attempt, reap_late, server_port)
                break
            if line is None:
                ended = True
                break
            attempt.lines.append(line)
            if line.startswith("workers "):
                attempt.workers = [int(pid) for pid in line.split()[1:]]
            trigger = ((pause and line == "paused")
                       or (not pause and kill_at and line.startswith("point ")
                           and int(line.split()[1]) == kill_at)
                       or (not pause and db and line == f"db {db.replace(':', ' ')}"))
            if trigger:
                if race:
                    time.sleep(race)
                _kill(process, attempt, reap_late, server_port)
                break
        while not attempt.killed and not ended:  # it ended on its own before the kill landed
            line = lines.get(timeout=LINE_WAIT)
            ended = line is None
            attempt.lines += [] if line is None else [line]
        if attempt.unreaped is None:
            process.wait(timeout=LINE_WAIT)
    finally:
        # a failed assertion above: leave nothing running (poll() would reap a zombie)
        if attempt.unreaped is None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for reader in readers:  # bounded: a worker outliving its driver holds the pipes
            reader.join(timeout=WORKER_EXIT_WAIT)
    if not attempt.killed:
        # ran to its end (or died before the kill landed): it must have completed the run
        assert process.returncode == 0 and attempt.lines[-1:] == ["done"], (
            f"driver exited {process.returncode}: {''.join(errors)[-3000:]}")
    return attempt


def _kill(process: subprocess.Popen[str], attempt: Attempt, reap_late: bool,
          server_port: int | None) -> None:
    """SIGKILL the driver alone, noting which shared-memory blocks its group held (and on
    PostgreSQL, at ``server_port``, which server backends served it): the group is stopped while
    /proc is read (nothing created meanwhile), its workers let go on after. With ``reap_late``,
    a killed driver is waited for but not reaped (:attr:`Attempt.unreaped`)."""
    try:
        os.killpg(process.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    try:
        attempt.blocks = group_shared_memory(process.pid)
        if server_port is not None:
            attempt.backends = _backends_of(tcp_client_ports(process.pid, server_port))
        os.kill(process.pid, signal.SIGKILL)
        attempt.killed = True
    except ProcessLookupError:
        pass
    finally:
        try:
            os.killpg(process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # WNOWAIT: ended, but left a zombie until process.wait()
    ended = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    # a driver that exited on its own between the line and the stop was not killed
    attempt.killed = (attempt.killed and ended is not None and ended.si_code == os.CLD_KILLED
                      and ended.si_status == signal.SIGKILL)
    if reap_late and attempt.killed:
        attempt.unreaped = process
    else:
        process.wait()


def _check_kill_left_nothing(attempt: Attempt, where: str) -> list[str]:
    """No worker outlives its killed driver; no block it held is left in /dev/shm (unless the
    kill landed in the pool's start-up, the window the README says can leave one: those are
    removed, and returned)."""
    survivors = _wait_gone(attempt.workers)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{where}: workers {survivors} outlived their killed driver"
    leaked = sorted(name for name in attempt.blocks if Path("/dev/shm", name).exists())
    for name in leaked:
        Path("/dev/shm", name).unlink(missing_ok=True)
    assert not (leaked and attempt.pool_started), (
        f"{where}: shared memory {leaked} left in /dev/shm after the pool had started")
    return leaked


def _backends_of(client_ports: set[int]) -> set[int]:
    """PostgreSQL: the backends serving the clients at these local ports (pg_stat_activity)."""
    if not client_ports:
        return set()
    with _admin() as connection:
        return set(connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(:ports)"),
            {"ports": sorted(client_ports)}).scalars())


def _live_backends(pids: set[int]) -> dict[int, str]:
    """PostgreSQL: which of these backends still run, each with its state and locks held."""
    if not pids:
        return {}
    with _admin() as connection:
        rows = connection.execute(text(
            "SELECT a.pid, a.state, string_agg(l.locktype || ' ' || l.mode, ', ') "
            "FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted "
            "WHERE a.pid = ANY(:pids) GROUP BY a.pid, a.state"), {"pids": sorted(pids)}).all()
    return {pid: f"{state}; holding {locks}" for pid, state, locks in rows}


@contextlib.contextmanager
def _admin() -> Iterator[Any]:
    """A connection to the test PostgreSQL server, for looking at its sessions."""
    engine = create_engine(postgres_base_url())
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _wait_backends_gone(pids: set[int]) -> dict[int, str]:
    """Wait (bounded: a hang safeguard) for these backends to end; those still running."""
    deadline = time.monotonic() + BACKEND_EXIT_WAIT
    while (live := _live_backends(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return live


def _store_url(folder: Path, ledger: str) -> str:
    """The ledger's URL from anywhere (the SQLite one is relative to the run's folder)."""
    return f"sqlite:///{folder / 'ledger.db'}" if ledger == SQLITE_LEDGER else ledger


def _cli(folder: Path, ledger: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LEDGER_URL", None)
    return subprocess.run([sys.executable, "-m", "cli", "--db", ledger, *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)


def _logs(folder: Path, ledger: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The run's metrics (name, epoch, value) and checkpoints (name, epoch, digest), as
    recorded, in order."""
    metrics, checkpoints = [], []
    with Store.open(_store_url(folder, ledger)) as store:
        for stream, _seq, kind, body_bytes in store.iter_run_bodies(EXP):
            if stream != MAIN_STREAM or kind not in (METRIC, CHECKPOINT):
                continue
            body = decode_body(body_bytes)
            params = body["params"]
            if kind == METRIC:
                metrics.append((params["name"], params["epoch"], params["value"]))
            else:
                checkpoints.append((params["name"], params["epoch"], body["output"]))
    return metrics, checkpoints


def _show(folder: Path, ledger: str) -> dict[str, Any]:
    shown = _cli(folder, ledger, "show", EXP, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)




def _draw_kill(rng: random.Random, kill: int, total: int, postgres: bool) -> Kill:
    """Kill ``kill`` of a run (0: in the process that creates it) of ``total`` points."""
    workers = rng.choice([0, 2])
    modes = ["paused", "paused", "race", "race", "delay"]
    mode = rng.choice(modes + ["db", "db", "db", "db-race"] if postgres else modes)
    if mode.startswith("db"):
        # inside a write transaction; the first exclusive lock of a resumed process is its
        # take-over of the stream, the last one of a run the lock that completes it
        hook = rng.choice(["claim", "batch-lock", "in-copy", "copy-half", "copied",
                           "exclusive-lock"])
        nth = rng.randint(1, 2) if hook in ("claim", "exclusive-lock") else rng.randint(1, 3)
        pause = mode == "db"
        hold = rng.choice([0.0, rng.uniform(0.5, 4.0)]) if pause else 0.0
        race = 0.0 if pause else rng.choice([0.0, rng.uniform(0.0, 0.005)])
        how = (f"{hook}:{nth} " + (f"(paused{f', connections held {hold:.2f} s' if hold else ''})"
                                   if pause else f"+{race * 1000:.1f} ms"))
        reap_late = rng.random() < 0.5
        return Kill(workers, how, kill_at=None, pause=pause, race=race, reap_late=reap_late,
                    db=f"{hook}:{nth}", hold=hold)
    # the first kill anywhere in a whole run; a resumed process has fewer points to go
    kill_at = 0 if mode == "delay" else rng.randint(1, total if kill == 0 else max(1, total // 2))
    pause = mode == "paused"
    flush = pause and rng.random() < 0.5
    race = {"paused": 0.0, "race": rng.choice([0.0, rng.uniform(0.0, 0.02)]),
            "delay": rng.uniform(0.2, 0.8)}[mode]
    reap_late = rng.random() < 0.5  # drawn last: the SQLite scenarios draw as they always did
    if pause:
        how = f"point {kill_at} (paused{', flushed' if flush else ''})"
    else:
        how = (f"point {kill_at} +{race * 1000:.1f} ms" if kill_at
               else f"{race * 1000:.0f} ms after start")
    return Kill(workers, how, kill_at=kill_at, pause=pause, race=race, flush=flush,
                reap_late=reap_late)


def _kill_and_resume(rng: random.Random, label: str, config: dict[str, Any], total: int,
                     folder: Path, ledger: str, notes: list[str],
                     unreaped: list[subprocess.Popen[str]], backends: set[int],
                     plans: list[Kill] | None = None) -> int:
    """Kill the run in ``folder`` one to three times (drawn, or as ``plans`` say), resuming it
    each time, then let it complete; returns how many driver processes ran. Notes where each
    kill landed; on PostgreSQL adds the backends that served each killed driver to
    ``backends``, and notes those still running (their client dead, unnoticed) when the next
    process starts."""
    attempts = 0
    postgres = ledger != SQLITE_LEDGER
    for kill in range(rng.randint(1, 3) if plans is None else len(plans)):
        plan = _draw_kill(rng, kill, total, postgres) if plans is None else plans[kill]
        where = (f"{label} kill {kill}: workers {plan.workers}, {plan.how}"
                 f"{', reaped late' if plan.reap_late else ''}; {config}")
        attempt = _run(folder, ledger, config, plan.workers, plan)
        attempts += 1
        for zombie in unreaped:  # the process just run has met them unreaped: now reaped
            zombie.wait()
        unreaped.clear()
        if not attempt.killed:
            notes.append(f"{where}: finished first")
            return attempts
        if attempt.unreaped is not None:
            unreaped.append(attempt.unreaped)
        last = next((line for line in reversed(attempt.lines)
                     if line.startswith(("point ", "db "))), "before any point")
        leaked = _check_kill_left_nothing(attempt, where)
        backends |= attempt.backends
        alive = _live_backends(attempt.backends)
        notes.append(f"{where}: killed after {last!r}"
                     + (f"; {len(leaked)} blocks left by the pool's start-up" if leaked else "")
                     + (f"; backends still serving it at the next start: {alive}"
                        if alive else ""))
    # meets the last zombie, if any; the caller reaps
    _run(folder, ledger, config, rng.choice([0, 2]))
    return attempts + 1


def run_scenario(tmp_path: Path, scenario: int, backend: str = "sqlite", *,
                 plans: list[Kill] | None = None, config: dict[str, Any] | None = None
                 ) -> list[str]:
    """One scenario of seed ``SEED`` on ``backend`` (``sqlite``, or ``postgres``: two fresh
    schemas of the test server, dropped after): run, kill, resume, compare. ``plans`` and
    ``config`` replace the drawn kills and configuration. Returns its kill notes."""
    if backend == "sqlite":
        return _scenario(tmp_path, scenario, SQLITE_LEDGER, SQLITE_LEDGER, plans, config)
    base = postgres_base_url()
    with postgres_schema(base) as straight, postgres_schema(base) as killed:
        return _scenario(tmp_path, scenario, straight, killed, plans, config)


def _scenario(tmp_path: Path, scenario: int, straight_ledger: str, killed_ledger: str,
              plans: list[Kill] | None, fixed: dict[str, Any] | None) -> list[str]:
    postgres = killed_ledger != SQLITE_LEDGER
    rng = random.Random(f"{SEED}/postgres/{scenario}" if postgres else f"{SEED}/{scenario}")
    label = f"{'postgres ' if postgres else ''}scenario {scenario} (seed {SEED})"
    config = _config(rng)
    config = config if fixed is None else {**config, **fixed}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    total = _run(straight, straight_ledger, config, rng.choice([0, 2])).points
    notes: list[str] = []
    unreaped: list[subprocess.Popen[str]] = []
    backends: set[int] = set()
    try:
        attempts = _kill_and_resume(rng, label, config, total, killed, killed_ledger, notes,
                                    unreaped, backends, plans)
    finally:
        for zombie in unreaped:
            zombie.wait()
    context = f"{label}: {notes}"

    # 0. PostgreSQL: no backend of a killed driver outlives the run it was killed in
    left = _wait_backends_gone(backends)
    assert not left, f"{context}\nbackends of killed drivers still running: {left}"
    # 1. final weights, bit for bit
    assert (killed / "final.npy").read_bytes() == (straight / "final.npy").read_bytes(), context
    # 2. metrics and checkpoints as the store holds them: the same, each recorded once
    assert _logs(killed, killed_ledger) == _logs(straight, straight_ledger), context
    shown_killed, shown_straight = _show(killed, killed_ledger), _show(straight, straight_ledger)
    assert shown_killed["status"] == "ok", context
    assert shown_killed["metrics"] == shown_straight["metrics"], context
    counts, expected = dict(shown_killed["counts"]), dict(shown_straight["counts"])
    resumed = counts.pop("run_resumed", 0)
    assert resumed <= attempts - 1, context
    counts.pop("worker_spawned", None)
    expected.pop("worker_spawned", None)
    assert counts == expected, context
    # 3. verify, replay, diff
    verified = _cli(killed, killed_ledger, "verify", EXP)
    assert verified.returncode == 0, f"{context}\n{verified.stdout}{verified.stderr}"
    replayed = _cli(killed, killed_ledger, "replay", EXP, "--data-dir", "data", "--no-record")
    assert replayed.returncode == 0 and replayed.stdout.startswith("CERTIFIED"), (
        f"{context}\n{replayed.stdout}{replayed.stderr}")
    diffed = _cli(killed, killed_ledger, "diff", EXP, EXP, "--db-b",
                  _store_url(straight, straight_ledger))
    assert diffed.returncode == 0 and diffed.stdout.startswith("IDENTICAL"), (
        f"{context}\n{diffed.stdout}{diffed.stderr}")
    return notes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", range(SCENARIOS))
def test_a_run_killed_at_random_points_and_resumed_equals_the_uninterrupted_run(
        tmp_path: Path, scenario: int) -> None:
    run_scenario(tmp_path, scenario)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("scenario", range(PG_SCENARIOS))
def test_on_postgres_a_run_killed_at_random_points_and_resumed_equals_the_uninterrupted_run(
        tmp_path: Path, scenario: int) -> None:
    """The same property on PostgreSQL, with kills inside write transactions too: a claim or
    release inserted, a take-over's or run_completed's lock taken, a batch's lock taken, a
    COPY begun, half sent or sent and not yet committed — some with the killed driver's
    connections kept open a while, so that the resumed process starts while the server still
    serves the dead client's transaction."""
    run_scenario(tmp_path, scenario, "postgres")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("hook", ["batch-lock:2", "copied:2"])
def test_on_postgres_a_resume_meeting_the_killed_drivers_open_batch_waits_for_it(
        tmp_path: Path, hook: str) -> None:
    """A driver killed inside a batch's transaction (its stream lock taken; or its rows sent,
    not committed) while a child keeps its connection open: the server's backend goes on
    holding that transaction, and the resumed process starts meanwhile. Its take-over of the
    stream waits for that backend (it must not refuse, nor go on beside it) and the run ends
    as the uninterrupted one. (``flush_every`` 1: the driver's second COPY is a writer's batch,
    the first being the experiment's creation.)"""
    plans = [Kill(workers=0, how=f"{hook} (paused, connections held 3 s)", db=hook, hold=3.0)]
    notes = run_scenario(tmp_path, 0, "postgres", plans=plans,
                         config={"flush_every": 1, "epochs": 2})
    # the premise: the resumed process started while the dead driver's batch held its lock
    assert "backends still serving it at the next start" in notes[0], notes
    assert "advisory ShareLock" in notes[0], notes
