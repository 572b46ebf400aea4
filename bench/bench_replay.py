"""Replay speed: re-executing a recorded data pipeline against the time the pipeline took.

The pipeline is the trainer-hooks benchmark (200,000 x 32 float32, batch 256, Gaussian noise +
10 % feature mask, 2 epochs), recorded into an SQLite ledger with ``num_workers=0``. In the same
run: the recorded pipeline's time (the original), then ``replay_run`` with ``jobs=1`` and
``jobs=2`` over its ledger — verification, dataset re-load and digest included. After one
untimed warm-up round (imports, first fork, first engine), each round records the pipeline
afresh and replays it; each replay is compared with its own round's original, and the median of
those ratios is reported with the lowest and highest round (the machine's speed drifts between
rounds, which a ratio of separate medians would mix in). The target ratios compare with the
original's two epochs (recording included, as the pipeline benchmark times them), while the
replay's time includes its fixed work (verification, dataset re-load and digest);
``*_vs_whole_run`` compares with the whole recorded run instead (ledger opened, experiment
created, dataset digested and stored, two epochs, run closed), which counts fixed work on both
sides. The CPU seconds of each replay (its
process and its workers) are reported beside: on a shared machine they show what the replay
costs when wall times are disturbed by other load.

Run: ``.venv/bin/python -m bench.bench_replay`` (``BENCH_REPLAY_ROUNDS`` sets the rounds).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_pipeline import make_data, pipeline
from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.store import Store
from replay.engine import replay_run


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped children (replay's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def replay_seconds(folder: Path, jobs: int) -> tuple[float, float]:
    """Wall and CPU seconds to replay the single experiment recorded in ``folder``."""
    with Store.open(f"sqlite:///{folder / 'bench.db'}") as store:
        (row,) = store.experiments()
        cpu = _cpu_seconds()
        start = time.perf_counter()
        report = replay_run(store, row.exp, jobs=jobs, data_dir=folder)
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    if not report.certified:
        raise SystemExit(f"benchmark run did not certify: {report.first_divergence}")
    return elapsed, cpu


def run(rounds: int | None = None) -> dict[str, Any]:
    """Record and replay ``rounds`` times; return the result record."""
    rounds = rounds or setting("BENCH_REPLAY_ROUNDS")
    features, labels = make_data()
    original: list[float] = []
    whole_run: list[float] = []
    wall: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as name:  # warm-up, untimed
        pipeline(features, labels, Path(name), record=True, workers=0)
        for jobs in (1, 2):
            replay_seconds(Path(name), jobs)
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as name:
            folder = Path(name)
            timings: dict[str, float] = {}
            original.append(pipeline(features, labels, folder, record=True, workers=0,
                                     timings=timings))
            whole_run.append(timings["run_s"])
            for jobs in (1, 2):
                seconds, cpu_seconds = replay_seconds(folder, jobs)
                wall[jobs].append(seconds)
                cpu[jobs].append(cpu_seconds)
    base = statistics.median(original)
    ratios = {jobs: [seconds / recorded for seconds, recorded in zip(wall[jobs], original)]
              for jobs in (1, 2)}
    run_ratios = {jobs: [seconds / recorded for seconds, recorded in zip(wall[jobs], whole_run)]
                  for jobs in (1, 2)}
    return result("replay_pipeline",
                  {"replay_jobs1_s": statistics.median(wall[1]),
                   "replay_jobs2_s": statistics.median(wall[2]),
                   "replay_jobs1_cpu_s": statistics.median(cpu[1]),
                   "replay_jobs2_cpu_s": statistics.median(cpu[2]), "rounds": rounds},
                  {"original_pipeline_s": base,
                   "original_whole_run_s": statistics.median(whole_run)},
                  {"replay_jobs1_vs_original": statistics.median(ratios[1]),
                   "replay_jobs2_vs_original": statistics.median(ratios[2]),
                   "replay_jobs1_vs_whole_run": statistics.median(run_ratios[1]),
                   "replay_jobs2_vs_whole_run": statistics.median(run_ratios[2])},
                  {"replay_jobs1_vs_original": "<= 1.0", "replay_jobs2_vs_original": "<= 0.6"},
                  "python -m bench.bench_replay",
                  {f"replay_jobs{jobs}_vs_{against}": [min(values), max(values)]
                   for against, table in (("original", ratios), ("whole_run", run_ratios))
                   for jobs, values in table.items()})


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
