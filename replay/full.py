"""Full replay: run the recorded job again from scratch and compare the two runs.

``replay_full`` reads the job, its configuration and the root seed from ``experiment_created``,
runs the job (found through ``ledger.jobs``' registry, never by import path) into a scratch
ledger in a temporary folder, and diffs the original run against the new one — every draw,
every metric, every checkpoint. The run is certified when the two are identical: final AUC and
weights reproduce bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import CannotReplayError, CheckFailedError, LedgerError
from ledger.experiment import ExperimentManager
from ledger.jobs import lookup_job, recorded_job
from ledger.store.store import Store
from ledger.text import error_summary
from ledger.verify import verify
from replay.diff import DiffReport, diff_runs
from replay.engine import recorded_start
from replay.registry import load_plugins


@dataclass(slots=True)
class FullReplayReport:
    """The original run, its re-run in a scratch ledger, and how they compare."""

    exp: str
    job: str
    version: int
    rerun: str
    diff: DiffReport
    plugins: list[str]

    @property
    def certified(self) -> bool:
        """True when the re-run is identical to the original, metrics and checkpoints included."""
        return self.diff.identical

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map."""
        return {"exp": self.exp, "mode": "full", "job": self.job, "version": self.version,
                "rerun": self.rerun, "verdict": "certified" if self.certified else "diverged",
                "diff": self.diff.to_json(), "plugins": self.plugins}


def replay_full(store: Store, exp: str, *, trusted: Sequence[str] = (),
                scratch: str | Path | None = None) -> FullReplayReport:
    """Re-run ``exp``'s recorded job with its configuration and root seed, then diff the runs.

    ``scratch`` is a folder for the scratch ledger (default: a temporary folder, removed after).
    """
    store.experiment(exp)
    checked = verify(store, exp)
    if not checked.ok:
        raise CheckFailedError(f"ledger fails verification, not replayed: "
                               f"{checked.findings[0].describe()}")
    plugins = load_plugins(trusted)
    root, created = recorded_start(store, exp)
    name, version, config = recorded_job(created.get("entrypoint"))
    job = lookup_job(name, version)
    with tempfile.TemporaryDirectory(prefix="ledger-full-replay-",
                                     dir=None if scratch is None else str(scratch)) as folder:
        url = f"sqlite:///{Path(folder) / 'scratch.db'}"
        with ExperimentManager(url, data_dir=Path(folder) / "data") as manager:
            try:
                rerun = job(manager, seed=root, config=config)
            except LedgerError:
                raise
            except Exception as error:  # the job's own failure on the recorded config
                raise CannotReplayError(f"job {name!r} version {version} failed on the recorded "
                                        f"config ({error_summary(error)})") from None
        with Store.open(url) as scratch_store:
            report = diff_runs(store, exp, rerun, store_b=scratch_store)
    return FullReplayReport(exp, name, version, rerun, report, plugins)
