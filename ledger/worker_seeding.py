"""Seeding a worker process's global RNGs from its derived seed, and digesting their states.

Worker k's seed is ``derive_bytes(root, ("worker", k))`` (16 bytes, s) — worker k of distributed
rank r uses ``("rank", r, "worker", k)`` (:func:`seed_process_at`). From it:

- Python's ``random``: ``random.seed(int.from_bytes(s, "big"))``;
- numpy's global RNG: ``numpy.random.seed(<s as four big-endian uint32 words>)``;
- torch (only when ``importlib.util.find_spec("torch")`` finds it):
  ``torch.manual_seed(int.from_bytes(s[:8], "big"))``.

The library's own draws never use these global RNGs (they use per-path generators); seeding
them makes user code in a worker — a custom op or dataset that calls ``random.random()`` —
different per worker and identical across runs. ``worker_spawned`` records
:func:`expected_state_digest`, computed in the main process from fresh generators, and each
worker reports the digest of its real global states after seeding, which must agree.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import numpy as np

from ledger.digests import array_digest, value_digest
from ledger.seeds import Label, derive_bytes

STATES_TAG = "ledger/worker-rng-states/v1"


def worker_path(worker: int) -> tuple[str, int]:
    """The seed path of worker ``worker``: ``("worker", k)``."""
    return ("worker", worker)


def torch_available() -> bool:
    """True when torch can be imported here (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def seeded_libraries() -> list[str]:
    """The global RNGs a worker seeds: random, numpy, and torch when importable."""
    return ["random", "numpy", "torch"] if torch_available() else ["random", "numpy"]


def _numpy_words(seed: bytes) -> np.ndarray:
    return np.frombuffer(seed, dtype=">u4").astype(np.uint32)


def _torch_seed(seed: bytes) -> int:
    return int.from_bytes(seed[:8], "big")


def seed_worker_process(root: int, worker: int) -> bytes:
    """Seed this process's global RNGs for worker ``worker``; return the digest of their states."""
    return seed_process_at(root, worker_path(worker))


def seed_process_at(root: int, path: Sequence[Label]) -> bytes:
    """Seed this process's global RNGs from ``path`` (e.g. ``("rank", r, "worker", k)``); return
    the digest of their states."""
    seed = derive_bytes(root, path)
    random.seed(int.from_bytes(seed, "big"))
    np.random.seed(_numpy_words(seed))
    torch_state = None
    if torch_available():
        torch = import_torch()
        torch.manual_seed(_torch_seed(seed))
        torch_state = torch.random.get_rng_state().numpy()
    return states_digest(random.getstate(), np.random.get_state(legacy=True), torch_state)


def import_torch() -> Any:
    """``torch``, imported with Ctrl-C held off until its import is done.

    The main process imports torch at a run's first pass with workers (the expected digest of
    the workers' seeded states includes torch's), which takes about a second: a Ctrl-C inside
    it left torch half-imported, and every later pass failed ("cannot import name 'nn' from
    partially initialized module 'torch'", "function 'istft' already has a docstring") where
    the next pass should start new workers and go on. The interrupt is delivered as soon as
    the import ends. Outside the main thread (where no signal handler can be set), a plain
    import."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if threading.current_thread() is not threading.main_thread():
        import torch
        return torch
    held: list[FrameType | None] = []

    def hold(_signum: int, frame: FrameType | None) -> None:
        held.append(frame)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main interpreter's main thread
        import torch
        return torch
    try:
        import torch
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(signal.SIGINT, held[0])
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)
    return torch


def expected_state_digest(root: int, worker: int) -> bytes:
    """The digest :func:`seed_worker_process` must return, computed without touching globals."""
    return expected_state_digest_at(root, worker_path(worker))


def is_worker_path(path: Sequence[Any]) -> bool:
    """True for the library's worker paths: ``("worker", k)`` and ``("rank", r, "worker", k)``."""
    labels = list(path)
    if len(labels) == 4 and labels[0] == "rank" and _index(labels[1]):
        labels = labels[2:]
    return len(labels) == 2 and labels[0] == "worker" and _index(labels[1])


def _index(label: Any) -> bool:
    return type(label) is int and label >= 0


def expected_state_digest_at(root: int, path: Sequence[Label]) -> bytes:
    """The digest :func:`seed_process_at` must return for ``path``, without touching globals."""
    seed = derive_bytes(root, path)
    python_state = random.Random(int.from_bytes(seed, "big")).getstate()
    numpy_state = np.random.RandomState(_numpy_words(seed)).get_state(legacy=True)
    torch_state = None
    if torch_available():
        torch = import_torch()
        torch_state = torch.Generator().manual_seed(_torch_seed(seed)).get_state().numpy()
    return states_digest(python_state, numpy_state, torch_state)


def states_digest(python_state: tuple, numpy_state: Any, torch_state: np.ndarray | None) -> bytes:
    """Digest of the three RNG states (tag ``ledger/worker-rng-states/v1``)."""
    version, internal, gauss = python_state
    name, keys, position, has_gauss, cached = numpy_state
    return value_digest([STATES_TAG, {
        "random": [version, list(internal), gauss],
        "numpy": [name, array_digest(keys), int(position), int(has_gauss), float(cached)],
        "torch": None if torch_state is None else array_digest(torch_state),
    }])
