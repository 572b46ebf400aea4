"""Verification throughput and memory: ``ledger verify`` over a million-event ledger.

Figures: events/s of ``verify`` with one process and with the default (one per core from
PARALLEL_MIN_EVENTS events), each the median of ``BENCH_ROUNDS`` rounds (default 3) that
alternate the two, and the CPU time per event they took (their own and their workers' — the
figure that other load on the machine does not change); the baseline is a bare sqlite3 scan that
only fetches the same rows, in the same run (median too). Memory: peak RSS of a ``ledger verify``
process over ledgers of N/4 and N events — it must not grow with N.

Run: ``.venv/bin/python -m bench.bench_verify`` (``BENCH_EVENTS`` sets N, default 1M).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_append import run_library
from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.store import Store
from ledger.verify import PARALLEL_MIN_EVENTS, verify


def raw_scan(database: Path) -> float:
    """Seconds for sqlite3 to fetch every event row, doing nothing with them (the floor)."""
    connection = sqlite3.connect(database)
    start = time.perf_counter()
    cursor = connection.execute("SELECT exp, stream, seq, kind, path, seed, input, output, prev, "
                                "hash, t, body FROM ledger_events ORDER BY exp, stream, seq")
    while cursor.fetchmany(5000):
        pass
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have finished (pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_verify(url: str, jobs: int | None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (workers included) and events of one verification, which must
    pass."""
    with Store.open(url) as store:
        cpu = _cpu_seconds()
        start = time.perf_counter()
        report = verify(store, jobs=jobs)
        elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    if not report.ok:
        raise SystemExit(f"benchmark ledger did not verify: {report.findings[0].describe()}")
    return elapsed, cpu, report.events


def median_verify(url: str, rounds: int) -> tuple[dict[str, float], int]:
    """Events/s and CPU µs per event (medians of ``rounds``) of verifications with one process
    and with the default, alternated so that a burst of other load hits both alike; and the
    number of events verified."""
    runs: dict[str, list[tuple[float, float, int]]] = {"1_job": [], "default_jobs": []}
    for _round in range(rounds):
        runs["1_job"].append(timed_verify(url, jobs=1))
        runs["default_jobs"].append(timed_verify(url, jobs=None))
    figures = {}
    for label, measured in runs.items():
        events = measured[0][2]
        figures[f"verify_events_per_s_{label}"] = events / statistics.median(
            wall for wall, _cpu, _events in measured)
        figures[f"verify_cpu_us_per_event_{label}"] = 1e6 * statistics.median(
            cpu for _wall, cpu, _events in measured) / events
    return figures, events


def peak_rss_of_cli_verify(url: str) -> int:
    """Peak resident memory (KiB) of a `ledger verify` process, its workers included."""
    code = ("import resource, sys; from cli.main import main\n"
            "try:\n    main(['--db', sys.argv[1], 'verify', '--json'])\n"
            "except SystemExit as done:\n"
            "    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "    print(max(usage, child), file=sys.stderr); raise\n")
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                          check=True)
    return int(done.stderr.strip().splitlines()[-1])


def run(count: int | None = None) -> dict[str, Any]:
    """Build ledgers of N/4 and N events, then measure verify against the raw scan."""
    count = count or setting("BENCH_EVENTS")
    rounds = setting("BENCH_ROUNDS")
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder:
        small_url = run_library(Path(folder), count // 4, "small.db")[1]
        _seconds, url = run_library(Path(folder), count, "large.db")
        scan = statistics.median(raw_scan(Path(folder) / "large.db") for _ in range(rounds))
        figures, events = median_verify(url, rounds)
        memory_small = peak_rss_of_cli_verify(small_url)
        memory_large = peak_rss_of_cli_verify(url)
    default = figures["verify_events_per_s_default_jobs"]
    jobs = (os.cpu_count() or 1) if events >= PARALLEL_MIN_EVENTS else 1
    return result("verify_sqlite",
                  {"events": events, **figures, "jobs_default": jobs, "rounds": rounds,
                   "peak_rss_kib_quarter_ledger": memory_small,
                   "peak_rss_kib_full_ledger": memory_large},
                  {"raw_sqlite3_scan_events_per_s": events / scan},
                  {"verify_vs_raw_scan": default / (events / scan),
                   "memory_full_vs_quarter": memory_large / memory_small},
                  {"verify_events_per_s_default_jobs": ">= 300000",
                   "memory_full_vs_quarter": "about 1 (no growth with events)"},
                  "python -m bench.bench_verify")


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
