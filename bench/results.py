"""Recording benchmark results in ``bench/results.json`` (one object per benchmark)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")


def result(name: str, figures: dict[str, Any], baseline: dict[str, Any], ratio: dict[str, float],
           targets: dict[str, str], command: str,
           spread: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """One benchmark's record: its figures, the baseline's, the ratios, targets, and context.

    ``spread`` gives, for ratios taken round by round, the lowest and highest round: on a noisy
    machine the reader sees how far one round may stray from the median.
    """
    return {"name": name, "figures": figures, "baseline": baseline, "ratio": ratio,
            "targets": targets, "command": command, "spread": spread or {},
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()}}


def save(records: list[dict[str, Any]]) -> None:
    """Merge ``records`` into results.json, replacing earlier records of the same name."""
    existing: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            existing = {item["name"]: item for item in json.loads(RESULTS.read_text())}
        except (ValueError, KeyError, TypeError):
            existing = {}
    for record in records:
        existing[record["name"]] = record
    temporary = RESULTS.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(sorted(existing.values(), key=lambda r: r["name"]),
                                    indent=2, sort_keys=True) + "\n")
    temporary.replace(RESULTS)


def _shown(value: Any) -> str:
    """Floats to three decimals below 100 (seconds), else to one with thousands separators."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"


def show(record: dict[str, Any]) -> None:
    """Print a record for humans."""
    print(f"== {record['name']}")
    for key, value in record["figures"].items():
        print(f"   {key:<34} {_shown(value)}")
    for key, value in record["baseline"].items():
        print(f"   baseline {key:<25} {_shown(value)}")
    spread = record.get("spread", {})
    for key, value in record["ratio"].items():
        rounds = f"rounds {spread[key][0]:.3f} to {spread[key][1]:.3f}; " if key in spread else ""
        target = record["targets"].get(key, "-")
        print(f"   ratio {key:<28} {value:.3f}   ({rounds}target {target})")
