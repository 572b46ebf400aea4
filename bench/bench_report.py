"""Compliance report generation over a million-event run: time and memory.

The run is built directly with :class:`~ledger.store.StreamWriter` (as ``bench_append`` does):
``experiment_created``, a dataset, two worker spawns, then per epoch a shuffle, its augmentation
batches and two metrics, a checkpoint every ten epochs, and a valid ``run_completed``. The figure
is the wall time of ``ledger report EXP --bundle DIR`` (unsigned) — verification of every chain,
the per-event NDJSON appendix, JSON, HTML, Markdown and the attestations — without ``--replay``,
in a fresh process (imports included), for runs of N/4 and N events (``BENCH_EVENTS``, default
1M), with the CPU seconds of its processes and its peak RSS: the target is under 10 s at N and no
memory growth from N/4 to N. Verification runs in its own processes beside the pass over the
events, so the wall time on an idle machine is about the CPU time over the number of cores; the
load average before each measurement is recorded, since other work on the machine stretches it.

Run: ``.venv/bin/python -m bench.bench_report``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.digests import value_digest
from ledger.events import (AUGMENTATION_BATCH, CHECKPOINT, DATASET_REGISTERED, EPOCH_RESET, METRIC,
                           RUN_COMPLETED, WORKER_SPAWNED)
from ledger.experiment import ExperimentManager
from ledger.seeds import derive_bytes
from ledger.store import Store, StreamWriter

EPOCHS = 100
ROOT = 42


def build_run(url: str, count: int) -> str:
    """Record a run of about ``count`` events in ``url``; return its experiment id."""
    with ExperimentManager(url, data_dir=Path(tempfile.gettempdir())) as manager:
        exp = manager.create_experiment("bench-report", seed=ROOT, exp_id=None,
                                        hyperparams={"lr": 0.01, "batch_size": 256},
                                        purpose="benchmark of report generation")
        exp_id = exp.id
        exp._writer.close()  # the benchmark writes the rest of the chain itself, faster
    store = Store.open(url)
    head = store.last_event(exp_id, "main")
    batches = max(1, (count - 6) // EPOCHS - 3)
    digest = hashlib.sha256(b"dataset").digest()
    with StreamWriter(store, exp_id, "main", _head=head) as writer:
        writer.append(DATASET_REGISTERED, params={
            "name": "transactions", "length": 256 * batches,
            "loader": {"kind": "npz", "base": "data_dir", "path": "datasets/x.npz",
                       "digest": digest.hex(), "features": "features", "labels": "labels"},
            "features": {"dtype": "<f4", "shape": [256 * batches, 32]},
            "labels": {"dtype": "|i1", "shape": [256 * batches]}}, output=digest)
        for worker in range(2):
            path: tuple[str | int, ...] = ("worker", worker)
            writer.append(WORKER_SPAWNED, path=path, seed=derive_bytes(ROOT, path),
                          params={"worker": worker, "num_workers": 2, "start_method": "fork",
                                  "seeded": ["random", "numpy"]},
                          output=hashlib.sha256(bytes([worker])).digest())
        for epoch in range(EPOCHS):
            path = ("epoch", epoch, "shuffle")
            writer.append(EPOCH_RESET, path=path, seed=derive_bytes(ROOT, path),
                          params={"epoch": epoch, "length": 256 * batches, "shuffle": True,
                                  "batch_size": 256, "drop_last": False, "batches": batches,
                                  "dataset": "transactions", "dataset_digest": digest},
                          output=hashlib.sha256(epoch.to_bytes(8, "big")).digest())
            for batch in range(batches):
                path = ("epoch", epoch, "batch", batch, "augment")
                indices = hashlib.sha256((epoch * batches + batch).to_bytes(8, "big")).digest()
                writer.append(AUGMENTATION_BATCH, path=path, seed=derive_bytes(ROOT, path),
                              params={"epoch": epoch, "batch": batch, "rows": 256,
                                      "batch_size": 256, "drop_last": False, "shuffle": True,
                                      "dataset": "transactions", "dataset_digest": digest,
                                      "indices_digest": indices,
                                      "augmenter": [{"op": "gaussian_noise", "version": 1,
                                                     "std": 0.1}]},
                              input=indices, output=hashlib.sha256(indices).digest())
            for name, value in (("loss", 1.0 / (epoch + 1)), ("auc", 0.5 + epoch / 250)):
                writer.append(METRIC, params={"epoch": epoch, "name": name, "value": value},
                              output=value_digest(value))
            if epoch % 10 == 9:
                writer.append(CHECKPOINT, params={"epoch": epoch, "name": "model",
                                                  "arrays": {"w": {"dtype": "<f4",
                                                                   "shape": [32]}}},
                              output=hashlib.sha256(bytes([epoch])).digest())
        writer.flush()
        writer.append(RUN_COMPLETED, params={"status": "ok", "streams": {
            "main": {"count": writer.next_seq, "head": writer.head}}})
    store.close()
    return exp_id


def timed_report(url: str, exp: str, bundle: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (its processes together) and peak RSS (KiB, the largest of
    its processes) of one `ledger report --bundle` process, imports included.

    Its own peak is read from ``VmHWM``: Linux carries ``ru_maxrss`` across ``exec``, so a
    report started from this benchmark process (hundreds of MB after the pipeline and torch
    benchmarks) would report this process's peak instead of its own.
    """
    code = ("import resource, sys, time\n"
            "start = time.perf_counter()\n"
            "from cli.main import main\n"
            "try:\n    main(['--db', sys.argv[1], 'report', sys.argv[2], '--bundle', sys.argv[3],"
            " '--no-record', '--json'])\n"
            "except SystemExit as done:\n"
            "    me = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    kids = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime\n"
            "    try:  # this process's own peak: ru_maxrss would keep the benchmark's, from\n"
            "        status = open('/proc/self/status').read()  # before exec, on Linux\n"
            "        own = int(status.split('VmHWM:')[1].split()[0])\n"
            "    except (OSError, IndexError, ValueError):\n"
            "        own = me.ru_maxrss\n"
            "    print(time.perf_counter() - start, cpu, max(own, kids.ru_maxrss),\n"
            "          file=sys.stderr)\n"
            "    raise\n")
    done = subprocess.run([sys.executable, "-c", code, url, exp, str(bundle)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ledger report failed: {done.stderr.strip()}")
    seconds, cpu, rss = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), float(cpu), int(rss)


def _spin(_index: int) -> float:
    start = time.perf_counter()
    total = 0
    for value in range(5_000_000):
        total += value
    return time.perf_counter() - start


def cores_available() -> float:
    """How many cores' worth of CPU two busy processes get right now (2.0 on an idle 2-core
    machine, about 1.0 when other work takes a core): the report's verification and its pass
    over the events run side by side, so its wall time depends on this."""
    import multiprocessing

    solo = _spin(0)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_spin, range(2))
        both = time.perf_counter() - start
    return round(2 * solo / both, 2)


def load_average() -> float:
    """The 1-minute load average (other work on the machine slows every figure)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run(count: int | None = None) -> dict[str, Any]:
    """Build runs of N/4 and N events and measure report generation over each."""
    count = count or setting("BENCH_EVENTS")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder:
        for label, size in (("quarter", count // 4), ("full", count)):
            url = f"sqlite:///{Path(folder) / f'{label}.db'}"
            start = time.perf_counter()
            exp = build_run(url, size)
            build_seconds = time.perf_counter() - start
            with Store.open(url) as store:
                events = sum(store.counts_by_kind(exp).values())
            load, cores = load_average(), cores_available()
            seconds, cpu, rss = timed_report(url, exp, Path(folder) / f"bundle-{label}")
            figures[f"cores_available_{label}"] = cores
            figures[f"events_{label}"] = events
            figures[f"report_s_{label}"] = seconds
            figures[f"report_cpu_s_{label}"] = cpu
            figures[f"load_average_before_{label}"] = load
            figures[f"peak_rss_kib_{label}"] = rss
            figures[f"build_ledger_s_{label}"] = build_seconds
    return result("report_bundle",
                  figures, {"target_s": 10.0},
                  {"report_s_full_vs_target": figures["report_s_full"] / 10.0,
                   "peak_rss_full_vs_quarter": figures["peak_rss_kib_full"]
                   / figures["peak_rss_kib_quarter"]},
                  {"report_s_full_vs_target": "< 1.0", "peak_rss_full_vs_quarter": "<= 1.1"},
                  "python -m bench.bench_report")


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
