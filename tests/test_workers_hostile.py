"""Worker processes used the hard way: a training loop that raises or is interrupted while a
worker is busy, passes left early, ops that break their contract, odd datasets, two iterators
at once — each ends in a clear error or the same batches as ``num_workers=0``, with no worker
left running and no shared memory left behind."""

from __future__ import annotations

import errno
import gc
import multiprocessing
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ledger import (BadInputError, DataAugmenter, ExperimentManager, ResourceError,
                    TrainingDataIterator, WorkerError, register_op)
from conftest import ROOT
import ledger.shm
from ledger.experiment_info import describe_experiment
from ledger.shm import SharedArray
from ledger.verify import verify as verify_ledger
from trainer_helpers import indexed_data, noisy_data, same_batches

import trainer_ops  # noqa: F401 - registers the test ops (workers import it by name)

METHODS = ("fork", "spawn", "forkserver")


def held_augmenter(flag: Path, from_sample: int) -> DataAugmenter:
    """An op holding, while ``flag`` exists, every batch from ``from_sample`` on (unshuffled
    ``indexed_data``), then one that adds a drawn offset (trainer_ops)."""
    return DataAugmenter(ops=[{"op": "test_hold_while_file", "path": str(flag),
                               "from_sample": from_sample}, {"op": "test_offset"}])


def pairs(batches: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rest of one pass, as (x, y) copies."""
    return [(x.copy(), y.copy()) for x, y in batches]


def pool_resources(batches: TrainingDataIterator) -> tuple[list[Any], list[str]]:
    """The worker processes of an iterator's pool and the names of its shared-memory blocks."""
    resources = batches._pool._resources
    return list(resources.processes), [s.descriptor()["name"] for s in resources.shared]


def assert_released(processes: list[Any], names: list[str]) -> None:
    """No worker of the list is alive and no block name is left in /dev/shm."""
    assert [p.pid for p in processes if p.is_alive()] == []
    assert [name for name in names if Path("/dev/shm", name.lstrip("/")).exists()] == []


@pytest.fixture
def created_blocks() -> Iterator[list[str]]:
    """Names of the shared-memory blocks this process creates during the test — what it must
    leave behind none of (/dev/shm is the machine's: other programs' blocks come and go)."""
    names: list[str] = []
    create = SharedArray.create.__func__

    def recording(cls: type[SharedArray], shape: tuple[int, ...], dtype: Any) -> SharedArray:
        shared = create(cls, shape, dtype)
        names.append(shared.descriptor()["name"])
        return shared

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SharedArray, "create", classmethod(recording))
        yield names


def block_tag() -> str:
    """A tag unique to one test, for the names of the blocks it makes."""
    return f"t{uuid.uuid4().hex[:8]}_"


def tag_block_names(monkeypatch: pytest.MonkeyPatch) -> str:
    """Have this process name its blocks ``ledger_<pid>_<tag>…`` until the patch is undone;
    the tag."""
    tag = block_tag()
    monkeypatch.setattr(ledger.shm, "secrets",
                        SimpleNamespace(token_hex=lambda n: tag + secrets.token_hex(n)))
    return tag


def tagged_blocks(tag: str) -> list[str]:
    """The blocks in /dev/shm named with ``tag``: a test's own, whatever blocks other programs
    on the machine make and remove meanwhile (comparing listings taken before and after failed
    whenever another process made a block in between)."""
    return [name for name in os.listdir("/dev/shm")
            if name.startswith("ledger_") and name.split("_", 2)[-1].startswith(tag)]


@pytest.fixture
def alarm() -> Iterator[Any]:
    """``alarm(seconds)`` raises KeyboardInterrupt in the main thread after ``seconds``, as
    Ctrl-C would; the previous SIGALRM handler is restored afterwards."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# -- nothing waits for a busy worker but a request for a batch -------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_an_exception_in_the_training_loop_is_not_replaced_by_a_wait_for_busy_workers(
        tmp_path: Path, timeout: float | None) -> None:
    """Leaving the ``with`` block closes the iterator while workers are held inside an op: the
    user's exception must propagate at once, not after the batches in flight (a hang for a stuck
    op) nor as a WorkerError about the wait (before: close() drained those batches)."""
    flag = tmp_path / "hold"
    flag.touch()
    with pytest.raises(ValueError, match="loss is nan"):
        with TrainingDataIterator(indexed_data(64), 4, seed=1, shuffle=False, num_workers=2,
                                  start_method="fork", timeout=timeout,
                                  augmenter=held_augmenter(flag, from_sample=8)) as batches:
            for index, _batch in enumerate(batches):
                if index == 0:
                    processes, names = pool_resources(batches)
                if index == 1:  # batches 2, 3, ... are held
                    raise ValueError("loss is nan")
    assert_released(processes, names)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_while_a_worker_is_busy_stops_the_workers_and_the_next_pass_goes_on(
        tmp_path: Path, alarm: Any, method: str) -> None:
    """KeyboardInterrupt while waiting for a held batch propagates at once (before: the pass's
    clean-up waited for every batch in flight, so Ctrl-C hung on a stuck op); the workers are
    stopped, and the next pass starts new ones and hands out exactly the missing batches."""
    data = indexed_data(48)
    flag = tmp_path / "hold"
    augmenter = held_augmenter(flag, from_sample=8)
    with TrainingDataIterator(data, 4, seed=1, shuffle=False, augmenter=augmenter) as main:
        expected = pairs(main)
    flag.touch()
    got: list[tuple[np.ndarray, np.ndarray]] = []
    with TrainingDataIterator(data, 4, seed=1, shuffle=False, num_workers=2,
                              start_method=method, augmenter=augmenter) as batches:
        iterator = iter(batches)
        got.extend(pairs([next(iterator), next(iterator)]))
        processes, names = pool_resources(batches)
        alarm(0.5)  # batch 2 is held: the wait for it is interrupted
        with pytest.raises(KeyboardInterrupt):
            next(iterator)
        assert_released(processes, names)
        assert batches.batch == 2
        flag.unlink()
        got.extend(pairs(batches))
    assert same_batches(got, expected)


def test_ctrl_c_while_the_dataset_is_copied_to_shared_memory_leaves_no_block(
        monkeypatch: pytest.MonkeyPatch, created_blocks: list[str]) -> None:
    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt  # as Ctrl-C during the copy of a large dataset (seconds)

    batches = TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2)
    monkeypatch.setattr(np, "copyto", interrupted)
    with pytest.raises(KeyboardInterrupt):
        iter(batches)
    monkeypatch.undo()
    batches.close()
    gc.collect()
    assert created_blocks
    assert_released([], created_blocks)


def test_shared_memory_that_cannot_be_reserved_is_one_error_and_leaves_no_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A /dev/shm too small for the dataset (64 MB in a default Docker container) killed the
    process with SIGBUS (exit 135) at the first write past its end: pages are now reserved
    when a block is made, and the shortage is a ResourceError before any worker starts."""
    def full(_fd: int, _offset: int, _length: int) -> None:
        raise OSError(28, "No space left on device")

    tag = tag_block_names(monkeypatch)
    monkeypatch.setattr(os, "posix_fallocate", full)
    batches = TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2)
    with pytest.raises(ResourceError, match=r"cannot have 0\.\d MB of shared memory .*No space "
                                            r"left on device.*--shm-size.*num_workers=0"):
        iter(batches)
    monkeypatch.undo()
    batches.close()
    assert tagged_blocks(tag) == []


@pytest.mark.parametrize("dtype", [">f8", "<f8", ">i2", "<u4", "?", "<M8[ns]"])
def test_a_block_attached_from_its_descriptor_reads_as_the_array_it_copied(dtype: str) -> None:
    """The descriptor a worker attaches with keeps the byte order: a little-endian block read as
    native on a big-endian machine (or the reverse) would hand out other values. A worker
    closing its mapping leaves the block's name to its owner (other workers may still attach);
    the owner's close removes it, and may be called again."""
    array = np.arange(12).reshape(3, 4).astype(dtype)
    shared = SharedArray.copy_of(array)
    name = shared.descriptor()["name"]
    try:
        attached = SharedArray.attach(shared.descriptor())
        assert attached.array is not None and attached.array.dtype == array.dtype
        assert attached.array.shape == (3, 4) and np.array_equal(attached.array, array)
        attached.close()
        assert Path("/dev/shm", name).exists()
    finally:
        shared.close()
    assert not Path("/dev/shm", name).exists()
    shared.close()  # safe twice: the pool's release and a finalizer may both get to it
    assert shared.array is None


@pytest.mark.parametrize(("code", "remedy"), [
    (errno.EROFS, "/dev/shm is read-only here: use num_workers=0"),
    (errno.EMFILE, r"raise the limit on open files \(ulimit -n\) or use num_workers=0"),
    (errno.ENFILE, r"raise the limit on open files \(ulimit -n\) or use num_workers=0"),
    (errno.ENOSPC, r"make /dev/shm larger \(docker run --shm-size\) or use num_workers=0 \(a "
                   r"smaller batch_size or prefetch needs less\)")])
def test_shared_memory_that_cannot_be_made_is_one_error_saying_what_to_do(
        monkeypatch: pytest.MonkeyPatch, code: int, remedy: str) -> None:
    """Each reason /dev/shm refuses a block (read-only, out of descriptors, full) is a
    ResourceError with the remedy for that reason, before any worker starts."""
    def refused(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shared_memory, "SharedMemory", refused)
    with TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2) as batches:
        with pytest.raises(ResourceError, match=rf"cannot have 0\.\d MB of shared memory for "
                                                rf"worker processes \({os.strerror(code)}\): "
                                                rf"{remedy}$"):
            iter(batches)
        assert batches._pool is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="needs root on Linux to mount a small /dev/shm in a mount namespace")
def test_a_small_dev_shm_raises_a_resource_error_not_a_bus_error(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import numpy as np
        from ledger import TrainingDataIterator
        features = np.zeros((200_000, 16), np.float32)  # 12.8 MB: more than /dev/shm holds
        for _x, _y in TrainingDataIterator((features, None), 256, seed=1, num_workers=2):
            pass
    """)
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=4m tmpfs /dev/shm && exec "$0" -c "$1"', sys.executable,
         script], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, (result.returncode, result.stderr)  # Python's, not SIGBUS
    assert "ResourceError: cannot have 12.8 MB of shared memory" in result.stderr


@pytest.mark.parametrize("limit", [8, 10, 12, 14])
def test_out_of_descriptors_while_making_shared_memory_leaves_no_block_and_says_so(
        limit: int) -> None:
    """The fix review, with `ulimit -n 10`: the block was made, then the standard library failed
    to register it (its resource tracker needs descriptors) — 9.6 MB left in /dev/shm on every
    run, and a message that blamed /dev/shm's size."""
    import resource

    tag = block_tag()
    script = textwrap.dedent(f"""
        import secrets, types
        import numpy as np
        import ledger.shm
        from ledger import TrainingDataIterator
        ledger.shm.secrets = types.SimpleNamespace(
            token_hex=lambda n: {tag!r} + secrets.token_hex(n))  # this run's blocks: tagged
        features = np.zeros((20_000, 16), np.float32)
        for _x, _y in TrainingDataIterator((features, None), 256, seed=1, num_workers=2):
            pass
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    last = result.stderr.strip().splitlines()[-1]
    # where the descriptors run out depends on how many the interpreter holds: either step
    assert re.fullmatch(r"ledger\.errors\.ResourceError: (cannot have 1\.3 MB of shared memory "
                        r"for worker processes \(Too many open files\): raise the limit on open "
                        r"files \(ulimit -n\) or use num_workers=0|cannot start worker [01]: Too "
                        r"many open files \(raise the limit on open files \(ulimit -n\), or use "
                        r"fewer workers or num_workers=0\))", last), last
    assert tagged_blocks(tag) == []


@pytest.mark.parametrize(("code", "limit"), [
    (errno.EMFILE, r"open files \(ulimit -n\)"), (errno.ENFILE, r"open files \(ulimit -n\)"),
    (errno.EAGAIN, r"processes \(ulimit -u\)")])
def test_a_worker_that_cannot_be_started_names_the_limit_to_raise(
        monkeypatch: pytest.MonkeyPatch, code: int, limit: str) -> None:
    """Out of descriptors or of processes (fork's EAGAIN under ``ulimit -u``), the error names
    that limit, as the shared-memory one does: it said only "raise the limit", leaving the user
    to guess which."""
    from ledger.workers import WorkerPool

    def refused(*_args: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(WorkerPool, "_start_process", refused)
    with TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2) as batches:
        with pytest.raises(ResourceError, match=rf"^cannot start worker 0: {os.strerror(code)} "
                                                rf"\(raise the limit on {limit}, or use fewer "
                                                rf"workers or num_workers=0\)$"):
            iter(batches)


def test_a_worker_that_cannot_be_started_for_want_of_descriptors_is_a_resource_error(
        monkeypatch: pytest.MonkeyPatch, created_blocks: list[str]) -> None:
    """Worker 1 cannot be started: a ResourceError, and worker 0 and every block are released
    at once — not only once the half-made pool, kept alive by the error's traceback, is
    collected."""
    from ledger.workers import WorkerPool

    start = WorkerPool._start_process

    def no_descriptors_for_worker_1(pool: WorkerPool, context: Any, worker: int,
                                    *args: Any) -> None:
        if worker == 1:
            raise OSError(24, "Too many open files")
        start(pool, context, worker, *args)

    before = {p.pid for p in multiprocessing.active_children()}
    monkeypatch.setattr(WorkerPool, "_start_process", no_descriptors_for_worker_1)
    with TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2) as batches:
        with pytest.raises(ResourceError, match="cannot start worker 1: Too many open files "
                                                r"\(raise the limit") as caught:
            iter(batches)
        # ``caught`` holds the traceback, and the half-made pool with it
        assert "worker 1" in str(caught.value)
        assert {p.pid for p in multiprocessing.active_children()} <= before
        assert created_blocks
        assert_released([], created_blocks)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("workers", "prefetch"), [(1, 1), (2, 3)])
def test_a_pass_left_early_continues_with_the_same_batches(method: str, workers: int,
                                                            prefetch: int) -> None:
    """break mid-epoch, then continue, reset() and restore a state: the batches left in flight
    are collected by the next pass before their slots are reused, never handed out twice."""
    data = noisy_data(rows=90)
    augmenter = DataAugmenter(noise_std=0.3, mask_prob=0.2, ops=[{"op": "test_offset"}])
    with TrainingDataIterator(data, 4, seed=8, augmenter=augmenter) as main:
        expected = pairs(main) + pairs(main) + pairs(main)
    got: list[tuple[np.ndarray, np.ndarray]] = []
    with TrainingDataIterator(data, 4, seed=8, augmenter=augmenter, num_workers=workers,
                              start_method=method, prefetch=prefetch) as batches:
        for x, y in batches:
            got.append((x.copy(), y.copy()))
            if len(got) == 5:
                break
        got.extend(pairs(batches))                   # the rest of epoch 0
        for x, y in batches:
            got.append((x.copy(), y.copy()))
            if len(got) == len(batches) + 3:
                break
        state = batches.state_dict()
        batches.reset()                              # epoch 2 starts: one batch, left
        next(iter(batches))
        batches.load_state_dict(state)               # back to epoch 1, batch 3
        got.extend(pairs(batches))
        got.extend(pairs(batches))
    assert same_batches(got, expected)


def test_closing_kills_a_busy_worker_whose_op_ignores_sigterm(tmp_path: Path) -> None:
    """An op that ignores SIGTERM cannot keep a worker alive past close(): a worker held in it
    outlives SIGTERM and is killed, and no worker or block is left behind."""
    flag = tmp_path / "hold"
    flag.touch()
    augmenter = DataAugmenter(ops=[{"op": "test_ignore_sigterm", "parent": os.getpid()},
                                   {"op": "test_hold_while_file", "path": str(flag),
                                    "from_sample": 4}])
    try:
        with TrainingDataIterator(indexed_data(64), 4, seed=1, shuffle=False, num_workers=2,
                                  start_method="fork", augmenter=augmenter) as batches:
            next(iter(batches))
            processes, names = pool_resources(batches)
        assert_released(processes, names)
    finally:
        flag.unlink()


def test_garbage_collecting_an_iterator_left_mid_pass_stops_its_workers(tmp_path: Path) -> None:
    """An iterator never closed, dropped while its workers are held inside an op: collecting
    it stops the workers and leaves no shared memory behind."""
    flag = tmp_path / "hold"
    flag.touch()
    batches = TrainingDataIterator(indexed_data(64), 4, seed=1, shuffle=False, num_workers=2,
                                   start_method="fork", augmenter=held_augmenter(flag, 4))
    iterator = iter(batches)
    next(iterator)
    processes, names = pool_resources(batches)
    del batches, iterator
    gc.collect()
    assert_released(processes, names)


def test_ctrl_c_reaching_the_workers_is_left_to_the_main_process() -> None:
    """Ctrl-C in a terminal signals the whole process group, workers included: a worker ignores
    it (the main process decides whether the run stops) and goes on making batches."""
    with TrainingDataIterator(indexed_data(40), 4, seed=1, num_workers=2,
                              start_method="fork") as batches:
        iterator = iter(batches)
        got = [next(iterator)]
        for pid in batches.worker_pids:
            os.kill(pid, signal.SIGINT)
        got.extend(iterator)
    samples = np.concatenate([y for _x, y in got])
    assert sorted(samples.tolist()) == list(range(40))


def test_closing_an_iterator_lets_its_idle_workers_exit_cleanly() -> None:
    """With no batch in flight, close() tells the workers to stop and they exit on their own
    (code 0): not terminated, nor failing on the stop message."""
    with TrainingDataIterator(noisy_data(), 8, seed=1, num_workers=2) as batches:
        assert len(list(batches)) == len(batches)
        processes, names = pool_resources(batches)
    assert [process.exitcode for process in processes] == [0, 0]
    assert_released(processes, names)


# -- ops that break their contract -------------------------------------------------------------------


@pytest.mark.parametrize("recording", [False, True], ids=["seed", "experiment"])
def test_a_forked_child_that_exits_normally_leaves_the_parents_workers_alone(
        tmp_path: Path, recording: bool) -> None:
    """A child of ``os.fork`` ending with ``sys.exit`` runs Python's exit handlers, which used
    to stop the parent's workers: multiprocessing's terminated the daemon workers it inherited
    (SIGTERM), and the pool's own finalizer sent them STOP through the inherited pipes — the
    parent's next batch failed with a WorkerError — then tracebacked on join."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    script = textwrap.dedent(f"""
        import contextlib, os, signal, sys
        import numpy as np
        from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from trainer_helpers import noisy_data

        def batches(experiment, fork_after):
            data = noisy_data(rows=400)
            if experiment is not None:
                data = experiment.register_dataset("d", *data)
            iterator = TrainingDataIterator(
                data, 16, augmenter=DataAugmenter(noise_std=0.1), num_workers=2,
                start_method="fork", experiment=experiment,
                seed=None if experiment is not None else 3)
            made = []
            with iterator:
                for x, _y in iterator:
                    made.append(x.copy())
                    if len(made) == fork_after:
                        child = os.fork()
                        if child == 0:
                            signal.alarm(20)
                            sys.exit(0)  # Python's exit handlers run, in the child
                        os.waitpid(child, 0)
            return made

        with contextlib.ExitStack() as stack:
            experiment = None
            if {recording!r}:
                manager = stack.enter_context(ExperimentManager({url!r}))
                experiment = stack.enter_context(manager.create_experiment("fork", seed=3))
            forked = batches(experiment, fork_after=2)
        unforked = batches(None, fork_after=-1)
        assert len(forked) == len(unforked) == 25
        assert all(np.array_equal(a, b) for a, b in zip(forked, unforked))
        print("same batches", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "same batches\n"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_forked_child_that_iterates_the_parents_iterator_uses_workers_of_its_own(
        method: str) -> None:
    """A child of ``os.fork`` taking batches from the iterator it inherited used to ask the
    parent's workers through the inherited pipes and read the answers meant for the parent: the
    parent then waited for ever (no timeout set). Now a new pass in the child starts the child's
    own workers, and a pass begun in the parent refuses to go on in the child."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from ledger import DataAugmenter, TrainingDataIterator, WorkerError
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from trainer_helpers import noisy_data

        def iterator():
            return TrainingDataIterator(noisy_data(rows=64), 8, seed=3, num_workers=2,
                                        augmenter=DataAugmenter(noise_std=0.1),
                                        start_method={method!r})

        reference = [x for x, _y in iterator()]
        batches = iterator()
        parents_pass = iter(batches)
        made = [next(parents_pass)[0] for _ in range(2)]
        child = os.fork()
        if child == 0:
            try:
                try:
                    next(parents_pass)
                    refused = False
                except WorkerError as error:
                    refused = "belong to the process that started them" in str(error)
                fresh = iter(batches)
                mine = [next(fresh)[0] for _ in range(3)]
                same = all(np.array_equal(a, b) for a, b in zip(mine, reference[2:5]))
                batches.close()
                os._exit(0 if same and refused else 1)
            except BaseException as error:
                print(f"child: {{error!r}}", file=sys.stderr, flush=True)
                os._exit(2)
        _pid, status = os.waitpid(child, 0)
        made += [x for x, _y in parents_pass]
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert len(made) == 8 and all(np.array_equal(a, b) for a, b in zip(made, reference))
        batches.close()
        print("same batches", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "same batches\n"


def test_an_op_returning_a_ragged_list_is_named_in_the_main_process() -> None:
    """Before: numpy's ValueError about inhomogeneous shapes, naming neither op nor batch."""
    augmenter = DataAugmenter(ops=[{"op": "test_return_ragged"}])
    with TrainingDataIterator(noisy_data(rows=8), 4, seed=1, augmenter=augmenter) as batches:
        with pytest.raises(BadInputError, match=r"op 'test_return_ragged' returned a list that "
                                                r"is not an array of one shape"):
            list(batches)


@pytest.mark.parametrize("method", METHODS)
def test_an_op_returning_a_ragged_list_in_a_worker_names_worker_batch_and_op(
        method: str) -> None:
    augmenter = DataAugmenter(ops=[{"op": "test_return_ragged"}])
    with TrainingDataIterator(noisy_data(rows=8), 4, seed=1, augmenter=augmenter,
                              num_workers=1, start_method=method) as batches:
        with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) failed while making batch 0 "
                                              r"of epoch 0: BadInputError: op "
                                              r"'test_return_ragged' returned a list"):
            list(batches)
        processes = list(batches._pool._resources.processes) if batches._pool else []
    assert [p for p in processes if p.is_alive()] == []


def test_an_op_only_the_main_process_knows_fails_the_start_and_releases_everything(
        created_blocks: list[str]) -> None:
    """An op registered inside a function is unknown to a spawned worker, which imports only
    the op's module: the start fails with WorkerError, and no worker or block is left."""
    @register_op("test_hostile_local_op", version=1)
    def local_op(batch: np.ndarray, rng: np.random.Generator) -> None:
        """Registered at call time only."""

    before = {p.pid for p in multiprocessing.active_children()}
    augmenter = DataAugmenter(ops=[{"op": "test_hostile_local_op"}])
    with TrainingDataIterator(noisy_data(rows=8), 4, seed=1, augmenter=augmenter,
                              num_workers=2, start_method="spawn") as batches:
        with pytest.raises(WorkerError, match=r"worker \d \(pid \d+\) failed while starting: "
                                              r".*test_hostile_local_op"):
            list(batches)
    assert {p.pid for p in multiprocessing.active_children()} <= before
    assert created_blocks
    assert_released([], created_blocks)


def test_a_worker_failure_leaves_a_failed_run_that_verifies(tmp_path: Path) -> None:
    """The recorded events up to the failure stay a valid chain; the run is marked failed."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    augmenter = DataAugmenter(noise_std=0.1, ops=[{"op": "test_fail_in_worker",
                                                   "parent": os.getpid(), "on_call": 3}])
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with pytest.raises(WorkerError, match="failed while making batch 4 of epoch 0"):
            with manager.create_experiment("w", seed=2) as exp:
                data = exp.register_dataset("d", *noisy_data(rows=64))
                with TrainingDataIterator(data, 4, experiment=exp, augmenter=augmenter,
                                          num_workers=2, start_method="fork") as batches:
                    list(batches)
        assert describe_experiment(manager.store, exp.id).status == "failed"
        assert verify_ledger(manager.store).ok


# -- odd datasets and iterators: the batches of num_workers=0 -------------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _memory_mapped(path: Path, array: np.ndarray) -> np.ndarray:
    mapped = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
    mapped[:] = array
    mapped.flush()
    return np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)


def odd_dataset(kind: str, tmp_path: Path) -> tuple[Any, int, bool]:
    """(data, batch_size, augment) of an unusual but valid input."""
    rng = np.random.default_rng(5)
    floats = rng.standard_normal((9, 6))
    index = np.arange(9)
    return {
        "fewer samples than workers x batch": ((floats[:3].astype(np.float32), index[:3]), 2,
                                               True),
        "one sample": ((floats[:1].astype(np.float32), index[:1]), 5, True),
        "batch larger than the dataset": ((floats.astype(np.float32), index), 100, True),
        "fortran-ordered": ((np.asfortranarray(floats.astype(np.float32)), index), 2, True),
        "non-contiguous view": ((floats.astype(np.float32)[::-1, ::2], index), 4, True),
        "read-only, no labels": (_read_only(floats.astype(np.float32)), 4, True),
        "memory-mapped float64": ((_memory_mapped(tmp_path / "m.dat", floats), index), 4, True),
        "float64 3-d, 2-d labels": ((floats.reshape(9, 3, 2), floats[:, :2]), 2, True),
        "big-endian float64": ((floats.astype(">f8"), index), 4, True),
        "int16 features": (((floats * 100).astype(np.int16), index), 3, False),
        "bool features": ((floats > 0, index), 3, False),
        "no feature columns": ((floats[:, :0].astype(np.float32), index), 4, False),
    }[kind]


def all_batches(data: Any, batch_size: int, augment: bool, workers: int = 0,
                method: str | None = None, epochs: int = 2) -> list[tuple[np.ndarray, ...]]:
    """``epochs`` passes, each batch as a tuple of arrays (x alone without labels)."""
    augmenter = DataAugmenter(noise_std=0.3, mask_prob=0.2, scale_jitter=0.1,
                              ops=[{"op": "test_offset"}]) if augment else None
    with TrainingDataIterator(data, batch_size, seed=9, augmenter=augmenter,
                              num_workers=workers, start_method=method) as batches:
        return [tuple(np.copy(a) for a in (b if isinstance(b, tuple) else (b,)))
                for _ in range(epochs) for b in batches]


def identical(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> bool:
    """Same batches: count, dtypes, shapes and bytes."""
    return len(a) == len(b) and all(
        len(p) == len(q) and all(x.dtype == y.dtype and x.shape == y.shape
                                 and x.tobytes() == y.tobytes() for x, y in zip(p, q))
        for p, q in zip(a, b))


ODD_KINDS = ["fewer samples than workers x batch", "one sample", "batch larger than the dataset",
             "fortran-ordered", "non-contiguous view", "read-only, no labels",
             "memory-mapped float64", "float64 3-d, 2-d labels", "big-endian float64",
             "int16 features", "bool features", "no feature columns"]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_datasets_give_the_same_batches_with_any_number_of_forked_workers(
        kind: str, tmp_path: Path) -> None:
    data, batch_size, augment = odd_dataset(kind, tmp_path)
    expected = all_batches(data, batch_size, augment)
    assert expected
    for workers in (1, 2, 4):
        assert identical(all_batches(data, batch_size, augment, workers, "fork"), expected)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_odd_datasets_give_the_same_batches_with_every_start_method(method: str,
                                                                   tmp_path: Path) -> None:
    for kind in ("fewer samples than workers x batch", "fortran-ordered",
                 "memory-mapped float64", "int16 features"):
        data, batch_size, augment = odd_dataset(kind, tmp_path)
        expected = all_batches(data, batch_size, augment)
        assert identical(all_batches(data, batch_size, augment, 2, method), expected), kind


def test_a_dataset_that_drop_last_would_empty_is_refused_before_any_worker_starts() -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(BadInputError, match="every epoch would be empty"):
        TrainingDataIterator(noisy_data(rows=3), 4, seed=1, drop_last=True, num_workers=2)
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_two_iterators_with_workers_interleaved_each_give_their_own_batches() -> None:
    data_a, data_b = indexed_data(40), noisy_data(rows=50)
    augmenter = DataAugmenter(noise_std=0.1)
    with TrainingDataIterator(data_a, 4, seed=1) as main_a:
        expected_a = pairs(main_a)
    with TrainingDataIterator(data_b, 3, seed=2, augmenter=augmenter) as main_b:
        expected_b = pairs(main_b)
    with TrainingDataIterator(data_a, 4, seed=1, num_workers=1, start_method="fork") as a, \
            TrainingDataIterator(data_b, 3, seed=2, augmenter=augmenter, num_workers=2,
                                 start_method="forkserver") as b:
        got_a, got_b = [], []
        for batch_a, batch_b in zip(a, b):
            got_a.append((batch_a[0].copy(), batch_a[1].copy()))
            got_b.append((batch_b[0].copy(), batch_b[1].copy()))
        got_b.extend(pairs(b))
        assert set(a.worker_pids).isdisjoint(b.worker_pids)
    assert same_batches(got_a, expected_a) and same_batches(got_b, expected_b)


@pytest.mark.parametrize(("saved_with", "loaded_with"), [((2, "spawn"), (1, "forkserver")),
                                                         ((1, "forkserver"), (0, None)),
                                                         ((0, None), (2, "spawn"))])
def test_a_state_saved_mid_epoch_resumes_bit_identically_under_other_workers(
        saved_with: tuple[int, str | None], loaded_with: tuple[int, str | None]) -> None:
    data = noisy_data(rows=70)
    augmenter = DataAugmenter(noise_std=0.2, scale_jitter=0.1, ops=[{"op": "test_offset"}])
    with TrainingDataIterator(data, 8, seed=4, augmenter=augmenter) as main:
        expected = pairs(main) + pairs(main)
    workers, method = saved_with
    with TrainingDataIterator(data, 8, seed=4, augmenter=augmenter, num_workers=workers,
                              start_method=method) as first:
        got = []
        for x, y in first:
            got.append((x.copy(), y.copy()))
            if len(got) == 3:
                break
        state = first.state_dict()
    workers, method = loaded_with
    with TrainingDataIterator(data, 8, seed=4, augmenter=augmenter, num_workers=workers,
                              start_method=method) as second:
        second.load_state_dict(state)
        got += pairs(second) + pairs(second)
    assert same_batches(got, expected)
