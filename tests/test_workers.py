"""Worker processes: bit-identical batches for any count and start method, seeded per worker,
in order, over shared memory — and a dead or failing worker is named, never waited for."""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

import ledger
from conftest import readme_python_block
from ledger import (DataAugmenter, ExperimentManager, TrainingDataIterator, WorkerError,
                    derive_bytes, worker_process)
from ledger.digests import array_digest, value_digest
from ledger.events import WORKER_SPAWNED
from ledger.shm import SharedArray
from ledger.verify import verify
from ledger.worker_seeding import (expected_state_digest, is_worker_path, seed_worker_process,
                                   seeded_libraries)
from trainer_helpers import bodies, draws, indexed_data, noisy_data, run_epochs, same_batches

import trainer_ops  # noqa: F401 - registers the test ops (workers import it by name)

ROOT = Path(__file__).resolve().parent.parent

AUGMENTER = {"noise_std": 0.3, "mask_prob": 0.2, "scale_jitter": 0.1,
             "ops": [{"op": "test_offset", "amount": 0.5}]}


def batches_with(workers: int, method: str | None = None, epochs: int = 2,
                 **settings: object) -> list:
    with TrainingDataIterator(noisy_data(rows=230), 16, seed=77, num_workers=workers,
                              start_method=method, augmenter=DataAugmenter(**AUGMENTER),
                              **settings) as batches:
        return run_epochs(batches, epochs)


@pytest.fixture(scope="module")
def reference() -> list:
    """Two epochs made in the main process."""
    return batches_with(0)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_batches_are_bit_identical_for_any_number_of_workers(reference: list,
                                                              workers: int) -> None:
    assert same_batches(batches_with(workers), reference)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_batches_are_bit_identical_for_every_start_method(reference: list, method: str) -> None:
    assert same_batches(batches_with(2, method), reference)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_depth_changes_nothing(reference: list, prefetch: int) -> None:
    assert same_batches(batches_with(3, prefetch=prefetch), reference)


def test_the_largest_batch_size_and_prefetch_pass_through_workers_and_the_ledger(
        tmp_path: Path) -> None:
    """2**63 - 1 is accepted and works: one batch of every sample, recorded; beyond it the
    iterator refuses at once (see test_iterator) instead of failing in the first pass."""
    largest = 2**63 - 1
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("largest", seed=3) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=30))
            batches = TrainingDataIterator(data, largest, num_workers=1, prefetch=largest,
                                           augmenter=DataAugmenter(noise_std=0.1),
                                           experiment=exp)
            [(x, _y)] = list(batches)
            batches.close()
        assert x.shape[0] == 30 and verify(manager.store, exp.id).ok
        [batch] = [body for body in bodies(manager.store, exp.id)
                   if body["kind"] == "augmentation_batch"]
        assert batch["params"]["batch_size"] == largest


def test_an_augmenter_with_its_own_seed_gives_the_same_batches_in_workers() -> None:
    """Without an experiment the order follows ``seed`` and the augmentation the augmenter's
    own seed: in worker processes as in the main one (the workers' RNG states are those of
    ``seed``, which they are checked against)."""
    def epoch(workers: int) -> list:
        with TrainingDataIterator(noisy_data(rows=40), 8, seed=9, num_workers=workers,
                                  augmenter=DataAugmenter(noise_std=0.3, seed=5)) as batches:
            return run_epochs(batches, 1)

    assert same_batches(epoch(2), epoch(0))


def test_drop_last_and_unshuffled_epochs_match_in_workers() -> None:
    main = batches_with(0, drop_last=True, shuffle=False)
    assert same_batches(batches_with(2, drop_last=True, shuffle=False), main)
    assert len(main) == 2 * (230 // 16)


def test_each_worker_seeds_its_global_rngs_from_its_own_derived_seed() -> None:
    root = 1234
    features = np.zeros((8, 3), dtype=np.float64)
    augmenter = DataAugmenter(ops=[{"op": "test_global_rng_probe"}])
    with TrainingDataIterator(features, 1, seed=root, shuffle=False, num_workers=2,
                              augmenter=augmenter) as batches:
        probes = np.concatenate(list(batches))
        pids = batches.worker_pids
    assert len(set(pids)) == 2 and os.getpid() not in pids
    for worker in (0, 1):
        # in one pass, worker k makes batches k, k + 2, ...: its n-th op call is batch k + 2n
        calls = probes[worker::2]
        assert set(calls[:, 2]) == {pids[worker]}
        seed = derive_bytes(root, ("worker", worker))
        python_rng = random.Random(int.from_bytes(seed, "big"))
        numpy_rng = np.random.RandomState(np.frombuffer(seed, dtype=">u4").astype(np.uint32))
        assert calls[:, 0].tolist() == [python_rng.random() for _ in range(len(calls))]
        assert calls[:, 1].tolist() == [numpy_rng.random_sample() for _ in range(len(calls))]
    assert probes[0, 0] != probes[1, 0]


def test_the_state_digest_of_a_seeded_process_is_the_expected_one() -> None:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        assert seed_worker_process(99, 3) == expected_state_digest(99, 3)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    assert expected_state_digest(99, 3) != expected_state_digest(99, 4)
    assert expected_state_digest(99, 3) != expected_state_digest(100, 3)


def test_the_state_digest_is_the_documented_map_of_the_seeded_states() -> None:
    """``worker_spawned`` records this digest and replay recomputes it: its layout (tag
    ``ledger/worker-rng-states/v1``, every word of each state) must not change under ledgers
    already recorded. Rebuilt here from the module's recipe and fresh generators."""
    seed = derive_bytes(42, ("worker", 0))
    version, internal, gauss = random.Random(int.from_bytes(seed, "big")).getstate()
    name, keys, position, has_gauss, cached = np.random.RandomState(
        np.frombuffer(seed, dtype=">u4").astype(np.uint32)).get_state(legacy=True)
    torch_state = None
    if "torch" in seeded_libraries():
        import torch

        generator = torch.Generator().manual_seed(int.from_bytes(seed[:8], "big"))
        torch_state = array_digest(generator.get_state().numpy())
    assert expected_state_digest(42, 0) == value_digest(["ledger/worker-rng-states/v1", {
        "random": [version, list(internal), gauss],
        "numpy": [name, array_digest(keys), int(position), int(has_gauss), float(cached)],
        "torch": torch_state}])


@pytest.mark.parametrize("path", [("worker", 0), ("worker", 7), ("rank", 0, "worker", 0),
                                  ("rank", 3, "worker", 2)])
def test_the_worker_paths_the_library_seeds_from_are_worker_paths(path: tuple) -> None:
    """Replay re-seeds a ``worker_spawned`` event only at a path the library seeds a worker
    from, worker 0 and rank 0 included."""
    assert is_worker_path(path) and is_worker_path(list(path))


@pytest.mark.parametrize("path", [("worker", -1), ("worker", True), ("worker", 1.0),
                                  ("worker", "1"), ("rank", 1, "worker"), ("rank", -1, "worker", 0),
                                  ("rank", False, "worker", 0), ("rank", "1", "worker", 0),
                                  ("rank", 1, "thread", 0), ("rank", 1, "rank", 1, "worker", 0),
                                  ("epoch", 0), ("worker", 0, "worker", 0), ("worker",), ()])
def test_paths_no_worker_is_seeded_from_are_not_worker_paths(path: tuple) -> None:
    """A forged ``worker_spawned`` at any other path (a negative or non-int index, a bool, a
    label out of place, a path too short or too long) is refused by replay, not certified."""
    assert not is_worker_path(path)


def test_workers_whose_rng_states_are_not_the_derived_ones_are_refused_and_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker's reported RNG state digest is checked against the one its derived seed
    gives: a mismatch (a worker seeded some other way) is a WorkerError before any batch is
    handed out, and the workers already started are stopped at once, not left running for as
    long as the caller keeps the error."""
    monkeypatch.setattr("ledger.iterator.expected_state_digest", lambda _root, _k: bytes(32))
    before = set(multiprocessing.active_children())
    batches = TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2)
    with pytest.raises(WorkerError, match="worker 0 reports RNG states") as refused:
        iter(batches)
    # stopped at once, not when the error (its traceback holds the pool) is collected
    assert refused.traceback and set(multiprocessing.active_children()) <= before
    assert batches.worker_pids == [] and batches.batch == 0


def test_worker_spawned_is_recorded_by_the_main_process_in_worker_order(tmp_path: Path) -> None:
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}") as manager:
        with manager.create_experiment("w", seed=5) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=64))
            with TrainingDataIterator(data, 8, experiment=exp, num_workers=3,
                                      start_method="fork",
                                      augmenter=DataAugmenter(noise_std=0.1)) as batches:
                list(batches)
                pids = batches.worker_pids
        spawned = [b for b in bodies(manager.store, exp.id) if b["kind"] == WORKER_SPAWNED]
    assert [s["path"] for s in spawned] == [["worker", k] for k in range(3)]
    assert [s["stream"] for s in spawned] == ["main"] * 3
    assert [s["meta"]["pid"] for s in spawned] == pids
    for k, event in enumerate(spawned):
        assert event["seed"] == derive_bytes(5, ("worker", k))
        assert event["output"] == expected_state_digest(5, k)
        assert event["params"] == {"worker": k, "num_workers": 3, "start_method": "fork",
                                   "seeded": seeded_libraries()}
    assert len({event["output"] for event in spawned}) == 3


def test_worker_spawned_names_the_start_method_used_when_none_was_given(tmp_path: Path) -> None:
    """A reader of the run sees how its workers were started: with no ``start_method`` the
    method the platform's default resolved to is recorded, not None."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}") as manager:
        with manager.create_experiment("w", seed=5) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=32))
            with TrainingDataIterator(data, 8, experiment=exp, num_workers=1) as batches:
                assert len(list(batches)) == 4
        [spawned] = [b for b in bodies(manager.store, exp.id) if b["kind"] == WORKER_SPAWNED]
    assert spawned["params"]["start_method"] in multiprocessing.get_all_start_methods()


def test_fork_workers_of_a_recording_run_are_forked_with_the_writer_thread_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recording run has a writer thread; a fork beside it could copy a lock it holds into
    the worker (Python 3.12+ warns of it), so the workers are forked with it stopped, and it
    runs again once they are started."""
    fork, threads_at_fork = os.fork, []

    def watched_fork() -> int:
        threads_at_fork.append([thread.name for thread in threading.enumerate()])
        return fork()

    def writer_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate()
                if thread.name.startswith("ledger-flush-")]

    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}") as manager:
        with manager.create_experiment("w", seed=5) as exp:
            data = exp.register_dataset("d", *noisy_data(rows=64))
            assert writer_threads()
            monkeypatch.setattr(os, "fork", watched_fork)
            with TrainingDataIterator(data, 8, experiment=exp, num_workers=2,
                                      start_method="fork") as batches:
                assert len(list(batches)) == 8
            monkeypatch.undo()
            assert writer_threads() and all(thread.is_alive() for thread in writer_threads())
        assert verify(manager.store, exp.id).ok
    assert len(threads_at_fork) == 2
    assert [name for names in threads_at_fork for name in names
            if name.startswith("ledger-flush-")] == []


RECIPE = readme_python_block("### Experiments", "background_threads_paused")


def _square(n: int) -> int:
    return n * n


def test_a_users_fork_pool_started_in_background_threads_paused_forks_with_no_writer_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's recipe for a fork of the user's own during a recording run, run as written:
    its pool of 4 forks with no writer thread, and recording goes on around it."""
    fork, threads_at_fork = os.fork, []

    def watched_fork() -> int:
        threads_at_fork.append([thread.name for thread in threading.enumerate()])
        return fork()

    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}") as manager:
        with manager.create_experiment("w", seed=5) as exp:
            monkeypatch.setattr(os, "fork", watched_fork)
            namespace = {"ledger": ledger, "multiprocessing": multiprocessing}
            exec(compile(RECIPE, "README.md", "exec"), namespace)  # noqa: S102 - our README
            pool = namespace["pool"]
            with ledger.background_threads_paused():
                exp.log_metric("during", 1.0)  # buffered meanwhile
            monkeypatch.undo()
            with pool:
                assert pool.map(_square, range(4)) == [0, 1, 4, 9]
            exp.log_metric("after", 2.0)
        assert verify(manager.store, exp.id).ok
        metrics = [body["params"]["name"] for body in bodies(manager.store, exp.id)
                   if body["kind"] == "metric"]
    assert metrics == ["during", "after"]
    assert len(threads_at_fork) == 4
    assert [name for names in threads_at_fork for name in names
            if name.startswith("ledger-flush-")] == []


def test_recorded_draws_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    recorded = {}
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}") as manager:
        for workers in (0, 2):
            with manager.create_experiment("w", seed=5) as exp:
                data = exp.register_dataset("d", *noisy_data(rows=100))
                with TrainingDataIterator(data, 8, experiment=exp, num_workers=workers,
                                          augmenter=DataAugmenter(**AUGMENTER)) as batches:
                    run_epochs(batches, 2)
            recorded[workers] = [d for d in draws(manager.store, exp.id)
                                 if d[0] != WORKER_SPAWNED]
    assert len(recorded[0]) == 2 + 2 * 13
    assert recorded[0] == recorded[2]


def test_resuming_with_another_number_of_workers_gives_the_same_batches() -> None:
    data = noisy_data(rows=100)
    augmenter = DataAugmenter(noise_std=0.1)
    expected = run_epochs(TrainingDataIterator(data, 8, seed=3, augmenter=augmenter), 2)
    with TrainingDataIterator(data, 8, seed=3, augmenter=augmenter, num_workers=2) as first:
        got = run_epochs(first, 1)
        for x, y in first:
            got.append((x.copy(), y.copy()))
            if len(got) == 17:
                break
        state = first.state_dict()
    for workers in (0, 4):
        with TrainingDataIterator(data, 8, seed=3, augmenter=augmenter,
                                  num_workers=workers) as second:
            second.load_state_dict(state)
            rest = run_epochs(second, 1)
        assert same_batches(got + rest, expected)


def test_batches_from_workers_are_copies_out_of_shared_memory() -> None:
    features, labels = indexed_data(64)
    with TrainingDataIterator((features, labels), 4, seed=1, num_workers=2) as batches:
        kept = [x for x, _y in batches]
        for x in kept:
            x[:] = -1
        again = [x.copy() for x, _y in batches]
    assert all((x == -1).all() for x in kept)
    assert sorted(np.concatenate(again)[:, 0].tolist()) == list(range(64))


def test_closing_releases_the_processes_and_the_shared_memory() -> None:
    batches = TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2)
    iterator = iter(batches)
    next(iterator)
    pool = batches._pool
    names = [shared.descriptor()["name"] for shared in pool._resources.shared]
    processes = list(pool._resources.processes)
    batches.close()
    assert all(not process.is_alive() for process in processes)
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)


def test_completing_the_run_closes_its_iterators_and_stops_their_workers(tmp_path: Path) -> None:
    """An iterator the training loop never closed is closed when its run completes: its worker
    processes do not outlive the run, and it refuses another pass instead of starting new ones."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("left-open", seed=1) as exp:
            data = exp.register_dataset("d", *noisy_data())
            batches = TrainingDataIterator(data, 8, experiment=exp, num_workers=2)
            next(iter(batches))
            processes = list(batches._pool._resources.processes)
    assert processes and all(not process.is_alive() for process in processes)
    assert batches.worker_pids == []
    with pytest.raises(ledger.BadInputError, match="closed"):
        iter(batches)


def test_shared_memory_blocks_are_named_by_the_process_that_made_them() -> None:
    """``ledger_<pid>_<random>``: a block that a kill during start-up left in /dev/shm can be
    told from other programs' (the standard library's own names are ``psm_…``) and traced to
    its training process; 31 characters at most with the "/", as macOS allows."""
    blocks = [SharedArray.create((4, 3), np.float32) for _ in range(3)]
    try:
        names = [block.descriptor()["name"] for block in blocks]
    finally:
        for block in blocks:
            block.close()
    for name in names:
        assert re.fullmatch(rf"ledger_{os.getpid()}_[0-9a-f]{{12}}", name), name
        assert len("/" + name) <= 31  # Linux pids have 7 digits at most (pid_max <= 2**22)
    assert len(set(names)) == 3


def test_the_shared_memory_names_are_gone_once_the_workers_have_attached() -> None:
    with TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2) as batches:
        iterator = iter(batches)
        next(iterator)
        names = [shared.descriptor()["name"] for shared in batches._pool._resources.shared]
        assert names
        for name in names:
            with pytest.raises(FileNotFoundError):
                shared_memory.SharedMemory(name=name)
        assert len(list(iterator)) == len(batches) - 1  # the mappings still work


def training_process(method: str, report: str) -> tuple[subprocess.Popen, list[str]]:
    """A Python process in a session of its own, holding a 2-worker iterator (``method``) in
    the middle of a pass; with the words it printed of ``report`` (an expression over
    ``batches``) once its first batch arrived. It then sleeps until killed."""
    script = textwrap.dedent(f"""
        import time
        from ledger import TrainingDataIterator
        from trainer_helpers import noisy_data
        batches = TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2,
                                       start_method={method!r})
        iterator = iter(batches)
        next(iterator)
        print(" ".join(map(str, {report})), flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=env, start_new_session=True)
    assert child.stdout is not None
    words = child.stdout.readline().split()
    child.stdout.close()
    return child, words


def test_killing_the_whole_process_group_leaves_no_shared_memory() -> None:
    child, names = training_process(
        "fork", '[s.descriptor()["name"] for s in batches._pool._resources.shared]')
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert len(names) == 6
    assert not [name for name in names if Path("/dev/shm", name).exists()]


def running(pid: int) -> bool:
    """True while process ``pid`` exists and is no zombie (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_exit_when_the_training_process_is_killed_alone(method: str) -> None:
    """SIGKILL of the training process alone (the OOM killer) leaves its workers waiting for
    tasks: each watches its parent as well as its pipe and exits — a fork worker's pipe never
    reports the end, the worker holding the main process's end of it too. (A worker still
    running after a minute fails the test, and the group is killed.)"""
    child, pids = training_process(method, "batches.worker_pids")
    assert len(pids) == 2
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 60
    while any(running(int(pid)) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if running(int(pid))]
    if left:
        os.killpg(child.pid, signal.SIGKILL)
    assert left == []


def _kill_worker_mid_epoch(batches: TrainingDataIterator, worker: int) -> None:
    """Take one batch, SIGKILL ``worker``, and expect the pass to raise a WorkerError naming
    it, its pid, its exit code and the batch it was making."""
    iterator = iter(batches)
    next(iterator)
    victim = batches.worker_pids[worker]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerError, match=rf"worker {worker} \(pid {victim}\) died with exit "
                                          rf"code -9 while making batch \d+ of epoch 0"):
        for _batch in iterator:
            pass


def test_a_worker_killed_mid_epoch_is_named_with_its_batch() -> None:
    with TrainingDataIterator(noisy_data(rows=400), 4, seed=1, num_workers=2,
                              augmenter=DataAugmenter(noise_std=0.1)) as batches:
        _kill_worker_mid_epoch(batches, 1)


def test_a_dead_worker_is_named_even_while_another_process_holds_its_pipe(
        tmp_path: Path) -> None:
    """A worker's pipe reports nothing when the worker dies while another process holds the
    worker's end too (here a child an op forked): the main process watches the worker's
    process as well, and names the dead worker at once — not after ``timeout`` (or never)."""
    pid_file = tmp_path / "holder.pid"
    augmenter = DataAugmenter(ops=[{"op": "test_fork_pipe_holder", "parent": os.getpid(),
                                    "pid_file": str(pid_file)}])
    try:
        with TrainingDataIterator(noisy_data(rows=400), 4, seed=1, num_workers=1, timeout=60,
                                  start_method="fork", augmenter=augmenter) as batches:
            _kill_worker_mid_epoch(batches, 0)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text(encoding="ascii")), signal.SIGKILL)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_that_exits_is_named_with_its_batch(method: str) -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_fail_in_worker", "parent": os.getpid(),
                                    "on_call": 2, "how": "exit"}])
    with TrainingDataIterator(noisy_data(rows=100), 4, seed=1, num_workers=2,
                              start_method=method, augmenter=augmenter) as batches:
        with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) died with exit code 7 "
                                              r"while making batch 2 of epoch 0"):
            list(batches)


def test_an_exception_in_a_worker_is_reported_with_worker_batch_and_error() -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_fail_in_worker", "parent": os.getpid(),
                                    "on_call": 3, "how": "raise"}])
    with TrainingDataIterator(noisy_data(rows=100), 4, seed=1, num_workers=2,
                              augmenter=augmenter) as batches:
        with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) failed while making batch "
                                              r"4 of epoch 0: ValueError: op failed on call 3"
                           ) as caught:
            list(batches)
    # the worker's own traceback travels with the error, down to the op that raised, which
    # its note names
    assert caught.value.worker_traceback is not None
    assert "in fail_in_worker" in caught.value.worker_traceback
    assert caught.value.worker_traceback.rstrip().endswith(
        "ValueError: op failed on call 3\nraised by augmenter op 'test_fail_in_worker' version 1")


def test_an_exception_that_cannot_be_shown_is_still_reported_as_the_workers_error() -> None:
    """An op's exception whose ``__str__`` raises: formatting the report raised again in the
    worker, which died with a traceback of its own and exit code 1, its error's type lost."""
    augmenter = DataAugmenter(ops=[{"op": "test_raise_unprintable", "parent": os.getpid()}])
    with TrainingDataIterator(noisy_data(rows=100), 4, seed=1, num_workers=1,
                              augmenter=augmenter) as batches:
        with pytest.raises(WorkerError, match=r"^worker 0 \(pid \d+\) failed while making batch "
                                              r"0 of epoch 0: UnprintableError: <exception str\(\) "
                                              r"failed>$"):
            list(batches)


def test_a_worker_that_stops_answering_is_named_after_the_timeout() -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_fail_in_worker", "parent": os.getpid(),
                                    "on_call": 1, "how": "hang"}])
    with TrainingDataIterator(noisy_data(rows=40), 4, seed=1, num_workers=1, timeout=0.5,
                              augmenter=augmenter) as batches:
        with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) sent nothing for 0.5 s "
                                              r"while making batch 0 of epoch 0"):
            list(batches)


def test_after_a_worker_failure_the_next_pass_starts_new_workers() -> None:
    with TrainingDataIterator(noisy_data(rows=80), 4, seed=1, num_workers=2) as batches:
        iterator = iter(batches)
        next(iterator)
        os.kill(batches.worker_pids[0], signal.SIGKILL)
        with pytest.raises(WorkerError):
            list(iterator)
        position = batches.batch
        rest = list(batches)
    assert len(rest) == 20 - position


def test_workers_started_by_the_default_method_leave_the_programs_choice_open() -> None:
    """Starting workers with the platform's default method does not fix multiprocessing's
    global default as a side effect: the program may still call ``set_start_method`` afterwards
    (it raises once a default is fixed). Run in a fresh interpreter, whose default is unset."""
    script = textwrap.dedent("""
        import multiprocessing
        from ledger import TrainingDataIterator
        from trainer_helpers import noisy_data
        with TrainingDataIterator(noisy_data(rows=16), 4, seed=1, num_workers=1) as batches:
            assert len(list(batches)) == 4
        multiprocessing.set_start_method("spawn")
        print(multiprocessing.get_start_method())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"})
    assert done.stdout == "spawn\n", done.stderr


def test_an_unknown_start_method_is_refused() -> None:
    with pytest.raises(ValueError, match="got start method 'thread', but must be one of"):
        list(TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=1, start_method="thread"))


def test_workers_augment_with_the_augmenters_own_seed_when_the_iterator_has_another() -> None:
    """An augmenter seeded apart from the iterator keeps its seed in the workers too (they get
    both roots): 2 workers make the main process's batches, which are not those of an augmenter
    seeded like the iterator."""
    def one_epoch(workers: int, augment_seed: int) -> list:
        with TrainingDataIterator(noisy_data(rows=64), 8, seed=77, num_workers=workers,
                                  augmenter=DataAugmenter(noise_std=0.3, seed=augment_seed)
                                  ) as batches:
            return run_epochs(batches, 1)

    expected = one_epoch(0, 5)
    assert same_batches(one_epoch(2, 5), expected)
    assert not same_batches(one_epoch(0, 77), expected)


def test_the_batch_timeout_does_not_bound_the_start_of_a_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``timeout`` bounds the wait for a batch; a worker's start (imports, attaching, seeding)
    has a bound of its own, so a start slower than ``timeout`` is no failure (a fork worker
    inherits the slowed seeding)."""
    seed = worker_process.seed_worker_process

    def slow_seed(root: int, worker: int) -> bytes:
        time.sleep(1.5)
        return seed(root, worker)

    monkeypatch.setattr(worker_process, "seed_worker_process", slow_seed)
    with TrainingDataIterator(noisy_data(rows=16), 4, seed=1, num_workers=1, timeout=0.5,
                              start_method="fork") as batches:
        assert len(list(batches)) == 4


def _ready_replaced(message: object) -> object:
    return [1, 2] if isinstance(message, dict) and "ready" in message else message


def _batch_renumbered(message: object) -> object:
    if isinstance(message, list) and len(message) == 7:
        return [message[0], message[1] + 1, *message[2:]]
    return message


@pytest.mark.parametrize(("forge", "error"), [
    (_ready_replaced, r"worker 0 sent \[1, 2\] instead of its ready message"),
    (_batch_renumbered, "worker 0 answered batch 1 of epoch 0 when batch 0 of epoch 0 was due")])
def test_a_worker_message_out_of_protocol_is_a_worker_error(
        monkeypatch: pytest.MonkeyPatch, forge: Callable[[object], object], error: str) -> None:
    """The main process checks what a worker sends: a start-up message that is not the ready
    map, or an answer for another batch than the one due (whose slot holds another batch), is a
    WorkerError naming the worker — never a traceback or a batch handed out as the wrong one.
    Fork workers inherit the forging ``pack``; the main process's own is untouched."""
    pack = worker_process.pack
    monkeypatch.setattr(worker_process, "pack", lambda message: pack(forge(message)))
    with TrainingDataIterator(noisy_data(rows=16), 4, seed=1, num_workers=1,
                              start_method="fork") as batches:
        with pytest.raises(WorkerError, match=error):
            list(batches)


def test_a_closed_pool_refuses_a_pass() -> None:
    """A pass asked of a closed pool is one WorkerError, not an IndexError on its released
    pipes."""
    with TrainingDataIterator(noisy_data(rows=16), 4, seed=1, num_workers=1) as batches:
        next(iter(batches))
        pool = batches._pool
    assert pool is not None
    with pytest.raises(WorkerError, match="the worker pool is closed"):
        next(pool.run(0, 0, 1))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_script_without_a_main_guard_is_told_why_its_workers_died(tmp_path: Path,
                                                                     method: str) -> None:
    """A spawn or forkserver worker imports the main module again; without a ``__main__`` guard
    that import makes an iterator of its own and the worker dies as it starts. The error said
    only 'died with exit code 1 while starting'; it now names the guard."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from ledger import TrainingDataIterator, WorkerError
        features = np.zeros((40, 3), dtype=np.float32)
        try:
            with TrainingDataIterator(features, 4, seed=1, num_workers=1,
                                      start_method={method!r}) as batches:
                list(batches)
        except WorkerError as error:
            print("WorkerError:", error)
    """), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).parent.parent),
                               os.environ.get("PYTHONPATH", "")])})
    parent_line = [line for line in done.stdout.splitlines() if line.startswith("WorkerError")]
    assert len(parent_line) == 1, (done.stdout, done.stderr)
    assert "died with exit code 1 while starting" in parent_line[0]
    assert 'if __name__ == "__main__"' in parent_line[0]
