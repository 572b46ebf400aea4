"""``python -m bench`` (``make bench``): run every benchmark, print it, write bench/results.json.

Usage: python -m bench [NAME ...]   (NAME: append, verify, pipeline, replay, postgres, torch,
report; all by default). ``python -m bench append verify`` runs only the named ones. Every
``BENCH_*`` setting is checked before the first benchmark starts (``bench/settings.py``).
"""

from __future__ import annotations

import importlib
import sys

from bench.results import RESULTS, save, show
from bench.settings import check_settings, usage

BENCHMARKS = {
    "append": "bench.bench_append",
    "verify": "bench.bench_verify",
    "pipeline": "bench.bench_pipeline",
    "replay": "bench.bench_replay",
    "postgres": "bench.bench_postgres",
    "torch": "bench.bench_torch",
    "report": "bench.bench_report",
}


def main(names: list[str]) -> None:
    """Run the named benchmarks (all by default) and save their records."""
    if any(name in ("-h", "--help") for name in names):
        print(usage(__doc__ or ""))
        return
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"bench: error: unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    check_settings()
    for name in names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        outcome = module.run()
        records = outcome if isinstance(outcome, list) else [outcome]
        for record in records:
            show(record)
        save(records)
    print(f"results written to {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
