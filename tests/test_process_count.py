"""How many processes verify and replay start: never more than the cores or the work; how
they are started (fork only when single-threaded); the memory bound on untrusted records.

A mistyped ``--jobs 100000`` once forked a hundred thousand verification processes and
exhausted the machine's memory; these tests pin the bound.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger.processes
import replay.engine
from conftest import ROOT, run_cli
from ledger.store import Store
from ledger.verify import verify
from replay import replay_run
from replay_helpers import record_run

verify_module = importlib.import_module("ledger.verify")  # ``ledger.verify`` is the function


@given(jobs=st.integers(1, 10**9), cores=st.integers(1, 512), units=st.integers(0, 10**9))
def test_process_count_is_bounded_by_jobs_cores_and_work(jobs: int, cores: int,
                                                         units: int) -> None:
    original = ledger.processes.usable_cores
    ledger.processes.usable_cores = lambda: cores
    try:
        count = ledger.processes.process_count(jobs, units)
    finally:
        ledger.processes.usable_cores = original
    assert count == max(1, min(jobs, cores, units))


def test_usable_cores_is_at_least_one_and_at_most_the_cpu_count() -> None:
    assert 1 <= ledger.processes.usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("affinity", [{0}, {0, 2, 5}])
def test_usable_cores_are_those_of_the_affinity_not_the_machine(
        monkeypatch: pytest.MonkeyPatch, affinity: set[int]) -> None:
    """A process pinned to some cores (taskset, a container's cpuset) uses those alone."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: affinity, raising=False)
    assert ledger.processes.usable_cores() == len(affinity)


@pytest.mark.parametrize("count", [3, None])
def test_usable_cores_without_affinity_are_the_cpu_count_or_one(
        monkeypatch: pytest.MonkeyPatch, count: int | None) -> None:
    """Where the platform has no affinity (macOS), the CPU count; one if even that is unknown."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: count)
    assert ledger.processes.usable_cores() == (count or 1)


def test_helper_pools_are_spawned_while_another_thread_runs() -> None:
    """fork beside a running thread could copy a lock that thread holds into the child, held for
    ever: with a second thread alive, verify's and replay's pools use spawn."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert ledger.processes.pool_start_method() == "spawn"
    finally:
        release.set()
        thread.join()


def test_helper_pools_are_forked_from_a_single_threaded_posix_process() -> None:
    """With no other thread, fork is safe and starts workers at once (spawn elsewhere); run in a
    fresh interpreter, which has only its main thread."""
    done = subprocess.run(
        [sys.executable, "-c", "from ledger.processes import pool_start_method; "
                               "print(pool_start_method())"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == ("fork\n" if os.name == "posix" else "spawn\n"), done.stderr


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux's /proc/meminfo")
def test_physical_memory_is_the_machines_total_memory() -> None:
    """The bound on what an untrusted record may allocate is the machine's memory, as the kernel
    reports it (MemTotal, in KiB: equal to within a page)."""
    meminfo = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()
    total = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal:"))) * 1024
    assert abs(ledger.processes.physical_memory() - total) < os.sysconf("SC_PAGE_SIZE")


def test_physical_memory_is_one_tebibyte_when_the_platform_will_not_say(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No sysconf answer is no refusal of every record: a generous 1 TiB bound stands in."""
    def unknown(name: str) -> int:
        raise ValueError(f"unrecognized configuration name {name!r}")

    monkeypatch.setattr(os, "sysconf", unknown)
    assert ledger.processes.physical_memory() == 2**40


def test_verify_starts_no_more_processes_than_cores(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    record_run(url, tmp_path / "data")
    monkeypatch.setattr(verify_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(ledger.processes, "usable_cores", lambda: 2)
    monkeypatch.setattr(verify_module, "plan_segments",
                        functools.partial(verify_module.plan_segments, size=3))
    asked: list[int] = []

    class Spy(ProcessPoolExecutor):
        def __init__(self, max_workers: int, **options: Any) -> None:
            asked.append(max_workers)
            super().__init__(max_workers, **options)

    monkeypatch.setattr(verify_module, "ProcessPoolExecutor", Spy)
    with Store.open(url) as store:
        report = verify(store, jobs=100_000)
    assert report.ok and report.events > 3
    assert asked == [2]


def test_verify_of_one_segment_starts_no_pool(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    monkeypatch.setattr(verify_module, "ProcessPoolExecutor", None)  # any use would fail
    with Store.open(url) as store:
        assert verify(store, exp, jobs=100_000).ok


def test_replay_uses_at_most_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    monkeypatch.setattr(replay.engine, "usable_cores", lambda: 2)
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=100_000, data_dir=tmp_path / "data")
    assert report.certified and report.jobs == 2


def test_cli_jobs_beyond_the_cores_run_with_the_cores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    assert run_cli("--db", url, "verify", "--jobs", "64").returncode == 0
    result = run_cli("--db", url, "replay", exp, "--jobs", "64", "--json",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    certificate = json.loads(result.stdout)
    assert certificate["verdict"] == "certified"
    assert certificate["jobs"] == min(64, ledger.processes.usable_cores())


@pytest.mark.parametrize("jobs", [0, 1])
def test_replay_asked_for_one_process_uses_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               jobs: int) -> None:
    """``jobs`` is an upper bound clamped to at least 1: a serial replay (or a nonsensical 0)
    runs in this process alone, however many cores there are."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data")
    monkeypatch.setattr(replay.engine, "usable_cores", lambda: 4)
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=jobs, data_dir=tmp_path / "data")
    assert report.certified and report.jobs == 1


@pytest.mark.parametrize("epochs,batch_size,jobs,workers", [
    (2, 64, 2, 1), (2, 64, 4, 2), (1, 40, 4, 1)], ids=["jobs", "22-draws", "16-draws"])
def test_replay_starts_no_worker_without_a_chunk_of_draws_to_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int, batch_size: int,
        jobs: int, workers: int) -> None:
    """Replay re-executes draws in this process and at most ``jobs - 1`` workers, and starts no
    worker the draws left after this process's first chunk (8 draws) leave nothing to claim:
    22 draws keep two workers busy, 16 only one."""
    import replay.execution

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "data", epochs=epochs, batch_size=batch_size)
    monkeypatch.setattr(replay.engine, "usable_cores", lambda: 4)
    started: list[int] = []

    class Counted(replay.execution.DrawExecution):
        def __enter__(self) -> replay.execution.DrawExecution:
            entered = super().__enter__()
            started.append(len(self._workers))
            return entered

    monkeypatch.setattr(replay.engine, "DrawExecution", Counted)
    with Store.open(url) as store:
        report = replay_run(store, exp, jobs=jobs, data_dir=tmp_path / "data")
    assert report.certified and started == [workers]


_KILLED_PARENT = """
import multiprocessing, os, signal, sys
from concurrent.futures import ProcessPoolExecutor
from ledger.processes import exit_with_parent
from ledger.verify import _set_worker_url
initializer, initargs = {
    "verify": (_set_worker_url, ("sqlite://",)),
    "report": (exit_with_parent, ()),
    "none": (None, ()),
}[sys.argv[1]]
pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context(sys.argv[2]),
                           initializer=initializer, initargs=initargs)
for future in [pool.submit(os.getpid) for _ in range(8)]:
    future.result()  # the workers are up, and idle: blocked on the pool's queue
print(" ".join(str(pid) for pid in pool._processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("initializer", ["verify", "report"])
def test_helper_processes_end_when_their_parent_is_killed(initializer: str,
                                                          method: str) -> None:
    """``ledger verify -j 2`` killed by SIGTERM left its workers blocked on the pool's queue
    for ever (a forked worker holds the queue's other end itself: no EOF comes), holding the
    database and the caller's stdout — ``$(ledger verify)`` hung. Each helper now ends with
    its parent. (The control, a pool without the initializer, is left running: killed here.)"""
    pids: dict[str, list[int]] = {}
    outputs = {}
    try:
        for kind in (initializer, "none"):
            parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, kind, method],
                                      cwd=ROOT, stdout=subprocess.PIPE, text=True)
            outputs[kind] = parent.stdout
            pids[kind] = [int(pid) for pid in parent.stdout.readline().split()]
            assert parent.wait(timeout=120) == -9 and len(pids[kind]) == 2
        for _ in range(600):  # a liveness bound, not a speed target: they end within ms
            if all(map(_gone, pids[initializer])):
                break
            threading.Event().wait(0.1)
        assert all(map(_gone, pids[initializer]))
        assert outputs[initializer].read() == ""  # the end of the output: a caller goes on
        assert not any(map(_gone, pids["none"]))  # the control: orphans blocked for ever
    finally:
        for pid in pids.get("none", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for output in outputs.values():
            output.close()
