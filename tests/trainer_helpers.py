"""Shared helpers of the trainer-hook tests: small datasets, collected batches, recorded draws."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ledger.events import (AUGMENTATION_BATCH, EPOCH_RESET, USER_DRAW, WORKER_SPAWNED,
                           decode_body)
from ledger.store import Store

DRAW_KINDS = (EPOCH_RESET, AUGMENTATION_BATCH, WORKER_SPAWNED, USER_DRAW)


def indexed_data(rows: int = 100, features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Features whose every column holds the sample index (float32), labels = index (int64).

    A batch then shows which samples it holds: ``x[:, 0]`` without augmentation, ``y`` always.
    """
    index = np.arange(rows)
    return (np.repeat(index[:, None], features, axis=1).astype(np.float32),
            index.astype(np.int64))


def noisy_data(rows: int = 300, features: int = 5, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A small random float32 dataset with binary labels."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, features)).astype(np.float32),
            (rng.random(rows) < 0.3).astype(np.int8))


def epoch_batches(batches: Iterable[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One pass over an iterator, as a list of (x, y) copies."""
    return [(x.copy(), y.copy()) for x, y in batches]


def run_epochs(iterator: Any, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``epochs`` passes over ``iterator``, every batch in order."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(epochs):
        out.extend(epoch_batches(iterator))
    return out


def same_batches(a: list[tuple[np.ndarray, np.ndarray]],
                 b: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """True when both lists hold bit-identical batches in the same order."""
    return len(a) == len(b) and all(
        xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
        for (xa, ya), (xb, yb) in zip(a, b))


def bodies(store: Store, exp: str) -> list[dict[str, Any]]:
    """Every event body of ``exp`` in recording order."""
    return [decode_body(body) for _s, _q, _k, body in store.iter_run_bodies(exp)]


def draws(store: Store, exp: str, kinds: Iterable[str] = DRAW_KINDS
          ) -> list[tuple[Any, ...]]:
    """The draws of a run as (kind, path, seed, input, output), in recording order."""
    wanted = set(kinds)
    return [(b["kind"], tuple(b["path"]), b["seed"], b["input"], b["output"])
            for b in bodies(store, exp) if b["kind"] in wanted]


def nested_lists(levels: int) -> Any:
    """``1`` inside ``levels`` lists: a value exactly that many containers deep."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value
