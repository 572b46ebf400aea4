"""Custom augmentation ops of the trainer-hook tests, in an importable module (spawn workers
import it by name before they rebuild the augmenter)."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np

from ledger.augment import register_op

_calls = {"count": 0}


@register_op("test_offset", version=1)
def offset(batch: np.ndarray, rng: np.random.Generator, *, amount: float = 1.0) -> None:
    """Add ``amount`` plus one uniform draw per batch: deterministic given the batch's rng."""
    batch += np.float32(amount) + rng.random(dtype=np.float32)


@register_op("test_global_rng_probe", version=1)
def global_rng_probe(batch: np.ndarray, rng: np.random.Generator) -> None:
    """Write this process's next ``random.random()`` and ``numpy.random.random()`` and pid."""
    batch[:, 0] = random.random()
    batch[:, 1] = np.random.random()
    batch[:, 2] = os.getpid()


@register_op("test_fail_in_worker", version=1)
def fail_in_worker(batch: np.ndarray, rng: np.random.Generator, *, parent: int = 0,
                   on_call: int = 2, how: str = "raise") -> None:
    """In a process other than ``parent``, fail on the ``on_call``-th call: raise, exit or hang."""
    if os.getpid() == parent:
        return
    _calls["count"] += 1
    if _calls["count"] < on_call:
        return
    if how == "exit":
        os._exit(7)
    if how == "hang":
        time.sleep(60)
    raise ValueError(f"op failed on call {_calls['count']}")


class UnprintableError(Exception):
    """An exception whose own ``__str__`` fails, as some libraries' do."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be shown")


@register_op("test_raise_unprintable", version=1)
def raise_unprintable(batch: np.ndarray, rng: np.random.Generator, *, parent: int = 0) -> None:
    """In a process other than ``parent``, raise an exception whose ``str()`` fails."""
    if os.getpid() != parent:
        raise UnprintableError()


@register_op("test_hold_while_file", version=1)
def hold_while_file(batch: np.ndarray, rng: np.random.Generator, *, path: str = "",
                    from_sample: int = 0, seconds: float = 60.0) -> None:
    """Wait while the file ``path`` exists, if ``batch[0, 0] >= from_sample`` (with
    ``indexed_data`` unshuffled: from that sample's batch on), so a test can hold a worker
    inside an op and let it go; held beyond ``seconds``, raise (a waiting test fails, not hangs)."""
    deadline = time.monotonic() + seconds
    while path and batch[0, 0] >= from_sample and os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"held by {path} for {seconds} s")
        time.sleep(0.01)


@register_op("test_ignore_sigterm", version=1)
def ignore_sigterm(batch: np.ndarray, rng: np.random.Generator, *, parent: int = 0) -> None:
    """In a process other than ``parent``, ignore SIGTERM from now on: a user op that keeps
    its process from being terminated."""
    if os.getpid() != parent:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@register_op("test_fork_pipe_holder", version=1)
def fork_pipe_holder(batch: np.ndarray, rng: np.random.Generator, *, parent: int = 0,
                     pid_file: str = "") -> None:
    """In a process other than ``parent``, once: fork a child holding every descriptor of its
    parent (a worker's end of its pipe too) that sleeps until killed; its pid goes to
    ``pid_file``."""
    if os.getpid() == parent or _calls.get("forked"):
        return
    _calls["forked"] = 1
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    with open(pid_file, "w", encoding="ascii") as file:
        file.write(str(child))


@register_op("test_return_ragged", version=1)
def return_ragged(batch: np.ndarray, rng: np.random.Generator) -> list:
    """Return a ragged list instead of the batch: an op breaking its contract."""
    return [[0.0], [0.0, 1.0]]


@register_op("test_table_scale", version=1)
def table_scale(batch: np.ndarray, rng: np.random.Generator, *, table: object = None) -> None:
    """Scale by 1 (a no-op on values) whatever ``table`` holds: an op with a nested parameter."""
    batch *= np.float32(1.0)
