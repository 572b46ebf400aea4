"""Full replay: run the recorded job again from scratch and compare the two runs.

``replay_full`` reads the job, its configuration and the root seed from ``experiment_created``,
runs the job (found through ``ledger.jobs``' registry, never by import path) into a scratch
ledger in a temporary folder, and diffs the original run against the new one — every draw,
every metric, every checkpoint. The run is certified when the two are identical: final AUC and
weights reproduce bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import CannotReplayError, CheckFailedError
from ledger.experiment import ExperimentManager
from ledger.jobs import lookup_job, recorded_job
from ledger.store.store import Store
from ledger.text import error_summary, quoted
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
    An incomplete run cannot be: the re-run records the whole run, which differs from the part
    recorded by its first missing event (it was DIVERGED, "event extra", with no word of the
    run being incomplete) — CannotReplayError, after verification.
    """
    row = store.experiment(exp)
    checked = verify(store, exp)
    if not checked.ok:
        raise CheckFailedError(f"ledger fails verification, not replayed: "
                               f"{checked.findings[0].describe()}")
    if row.status == "incomplete":
        raise CannotReplayError(f"{exp} is incomplete (no run_completed: killed, suspended or "
                                f"still running), so its full re-run, which records the whole "
                                f"run, cannot be compared with it: replay without --full "
                                f"certifies the draws it recorded; or resume the run to the end")
    plugins = load_plugins(trusted)
    root, created = recorded_start(store, exp)
    name, version, config = recorded_job(created.get("entrypoint"))
    job = lookup_job(name, version)
    with tempfile.TemporaryDirectory(prefix="ledger-full-replay-",
                                     dir=None if scratch is None else str(scratch)) as folder:
        url = f"sqlite:///{Path(folder) / 'scratch.db'}"
        with ExperimentManager(url, data_dir=Path(folder) / "data") as manager:
            returned = _run_job(job, manager, root, config, name, version)
            rerun = _rerun_id(manager.store, returned, name, version)
        with Store.open(url) as scratch_store:
            report = diff_runs(store, exp, rerun, store_b=scratch_store)
    return FullReplayReport(exp, name, version, rerun, report, plugins)


def _run_job(job: Callable[..., Any], manager: ExperimentManager, root: int,
             config: dict[str, Any], name: str, version: int) -> Any:
    """Run the job; whatever stops it — an exception, ours or not, or ``sys.exit`` — is exit 3
    naming the job: a job that cannot re-run is not a divergence (exit 1), a usage error
    (exit 2), nor — as an uncaught ``SystemExit(0)`` would make it — a certificate (exit 0)."""
    try:
        return job(manager, seed=root, config=config)
    except CannotReplayError:
        raise
    except (Exception, SystemExit) as error:
        raise CannotReplayError(f"job {name!r} version {version} failed on the recorded config "
                                f"({error_summary(error)})") from None


def _rerun_id(scratch: Store, returned: Any, name: str, version: int) -> str:
    """The id the job returned, checked against the scratch ledger: a job records exactly one
    experiment and returns its id (ledger.jobs); anything else cannot be compared (exit 3)."""
    recorded = [row.exp for row in scratch.experiments()]
    if len(recorded) != 1 or not isinstance(returned, str) or returned != recorded[0]:
        raise CannotReplayError(f"job {name!r} version {version} returned {quoted(returned)} "
                                f"and recorded the experiments {quoted(recorded)}, but a job "
                                f"records exactly one experiment and returns its id")
    return recorded[0]
