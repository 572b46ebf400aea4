"""Append throughput: the library's StreamWriter against a minimal raw-sqlite3 loop.

Both do the same per-event work — derive the seed of the event's path, canonically encode the
body, chain it with SHA-256 — and store the same row in the same table (same indexes and
triggers); the raw loop inserts one row per ``execute`` in one transaction, as the issue asks.
Rounds alternate which goes first, and the median of the rounds is reported.

Run: ``.venv/bin/python -m bench.bench_append`` (``BENCH_EVENTS`` sets the count, default 1M).
"""

from __future__ import annotations

import hashlib
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.canonical import canonical
from ledger.digests import EVENT_TAG, ZERO_DIGEST
from ledger.events import AUGMENTATION_BATCH, EXPERIMENT_CREATED, make_event
from ledger.seeds import derive_bytes
from ledger.store import Store, StreamWriter
from ledger.store import connect
from ledger.store.connect import SQLITE_SYNCHRONOUS
from ledger.store.store import ROW_COLUMNS

EXP = "exp-bench0000001"
ROOT = 42
BATCHES_PER_EPOCH = 1000


def event_params(index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The path and ≈200-byte params of the index-th benchmark event (an augmentation batch)."""
    epoch, batch = divmod(index, BATCHES_PER_EPOCH)
    params = {"epoch": epoch, "batch": batch, "batch_size": 256, "drop_last": False,
              "dataset": "dataset-fraud-2024Q1",
              "augmenter": [{"op": "gaussian_noise", "version": 1, "std": 0.1},
                            {"op": "feature_mask", "version": 1, "p": 0.1}],
              "indices_digest": hashlib.sha256(index.to_bytes(8, "big")).digest()}
    return ("epoch", epoch, "batch", batch, "augment"), params


def new_ledger(folder: Path, name: str) -> tuple[Store, str]:
    """A new ledger file with the benchmark experiment's first event."""
    url = f"sqlite:///{folder / name}"
    store = Store.open(url, create=True)
    first = make_event(EXP, "main", 0, EXPERIMENT_CREATED, params={"name": "bench"},
                       prev=ZERO_DIGEST, t=time.time_ns())
    store.insert_experiment(EXP, "bench", first)
    return store, url


def run_library(folder: Path, count: int, name: str = "library.db") -> tuple[float, str]:
    """Append ``count`` events through StreamWriter; return (seconds, URL of the ledger)."""
    store, url = new_ledger(folder, name)
    first_hash = store.last_event(EXP, "main")
    start = time.perf_counter()
    with StreamWriter(store, EXP, "main", _head=first_hash) as writer:
        for index in range(count):
            path, params = event_params(index)
            output = hashlib.sha256(params["indices_digest"]).digest()
            writer.append(AUGMENTATION_BATCH, path=path, seed=derive_bytes(ROOT, path),
                          params=params, input=params["indices_digest"], output=output)
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed, url


def run_raw(folder: Path, count: int) -> float:
    """The baseline: the same events through a bare sqlite3 loop, one execute per event."""
    store, url = new_ledger(folder, "raw.db")
    last = store.last_event(EXP, "main")
    assert last is not None  # new_ledger created the experiment
    seq, head = last
    store.close()
    connection = sqlite3.connect(folder / "raw.db", isolation_level=None)
    connection.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
    insert = (f"INSERT INTO ledger_events ({', '.join(ROW_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
    start = time.perf_counter()
    connection.execute("BEGIN")
    for index in range(count):
        path, params = event_params(index)
        output = hashlib.sha256(params["indices_digest"]).digest()
        seed = derive_bytes(ROOT, path)
        seq += 1
        t = time.time_ns()
        body = canonical({"v": 1, "exp": EXP, "stream": "main", "seq": seq,
                          "kind": AUGMENTATION_BATCH, "path": list(path), "seed": seed,
                          "params": params, "input": params["indices_digest"], "output": output,
                          "meta": {}, "prev": head, "t": t})
        digest = hashlib.sha256(EVENT_TAG + body).digest()
        connection.execute(insert, (EXP, "main", seq, AUGMENTATION_BATCH, canonical(list(path)),
                                    seed, params["indices_digest"], output, head, digest, t, body))
        head = digest
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def run_library_synchronous_normal(folder: Path, count: int) -> float:
    """The library with SQLite ``synchronous=NORMAL``: the durability trade-off, measured.

    NORMAL skips the fsync of each commit in WAL mode: a committed batch survives a process
    crash but not a power loss. The library's default is FULL.
    """
    saved = connect.SQLITE_SYNCHRONOUS
    connect.SQLITE_SYNCHRONOUS = "NORMAL"
    try:
        return run_library(folder, count, "normal.db")[0]
    finally:
        connect.SQLITE_SYNCHRONOUS = saved


def run(count: int | None = None, rounds: int = 2) -> dict[str, Any]:
    """Measure both, alternating order over ``rounds``; return the result record."""
    count = count or setting("BENCH_EVENTS")
    library, raw, normal = [], [], []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder:
        for round_index in range(rounds):
            for which in (("library", "raw") if round_index % 2 == 0 else ("raw", "library")):
                target = Path(folder) / f"round{round_index}-{which}"
                target.mkdir()
                if which == "library":
                    library.append(count / run_library(target, count)[0])
                else:
                    raw.append(count / run_raw(target, count))
            normal_folder = Path(folder) / f"round{round_index}-normal"
            normal_folder.mkdir()
            normal.append(count / run_library_synchronous_normal(normal_folder, count))
    lib_rate, raw_rate = statistics.median(library), statistics.median(raw)
    return result("append_sqlite", {"events": count, "library_events_per_s": lib_rate,
                                    "library_rounds": [round(r) for r in library],
                                    "library_synchronous_normal_events_per_s":
                                        statistics.median(normal)},
                  {"raw_sqlite3_events_per_s": raw_rate, "raw_rounds": [round(r) for r in raw]},
                  {"library_vs_raw": lib_rate / raw_rate}, {"library_vs_raw": ">= 0.8"},
                  "python -m bench.bench_append")


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
