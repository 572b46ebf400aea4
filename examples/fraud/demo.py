"""The demo scenario: train ``fraud-detection-v3`` twice with the same seed and compare the runs.

With the trainer hooks the two runs are identical draw for draw (exit 0). With
``inject_nondeterminism`` the augmenter ignores its seed — the bug of the original report — and
the comparison names the first event where the runs part (exit 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.fraud.dataset import load_fraud_data
from examples.fraud.train import HYPERPARAMS, RunResult, train
from ledger.datasets import prepare_data_dir
from ledger.errors import BadInputError, StoreError
from ledger.experiment import ExperimentManager, default_data_dir_for
from ledger.store.connect import describe_url, parse_url, resolve_url
from replay.diff import DiffReport, diff_runs

RUNS = 2
EpochProgress = Callable[[int, int, float, float], None]
"""Called after each epoch with (run index from 1, epoch, mean training loss, validation AUC)."""


@dataclass
class DemoResult:
    """Both runs and their comparison."""

    runs: list[RunResult] = field(default_factory=list)
    diff: DiffReport | None = None
    ledger: str = ""
    data_dir: str | None = None

    @property
    def identical(self) -> bool:
        """True when the two runs recorded the same draws with the same digests."""
        return self.diff is not None and self.diff.identical

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (digests as hex)."""
        return {"ledger": self.ledger, "data_dir": self.data_dir, "identical": self.identical,
                "runs": [{"exp": run.exp, "val_auc": run.aucs, "train_loss": run.losses,
                          "final_val_auc": run.aucs[-1] if run.aucs else None,
                          "head": None if run.head is None else run.head.hex(),
                          "seconds": round(run.seconds, 3)} for run in self.runs],
                "diff": None if self.diff is None else self.diff.to_json()}


def run_demo(url: str | None, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 42,
             workers: int = 2, epochs: int = HYPERPARAMS["epochs"],
             transactions: int | None = None, inject_nondeterminism: bool = False,
             start_method: str | None = None, on_epoch: EpochProgress | None = None,
             on_start: Callable[[], None] | None = None) -> DemoResult:
    """Train twice into the ledger at ``url`` (created if missing) and compare the two runs.

    ``on_start`` is called once the ledger and the data folder are ready, before the first run:
    where a banner belongs, which a refused ledger or folder must not be preceded by.
    """
    # A data folder that is missing or cannot hold the data stops the demo before the ledger
    # is created or written (not as empty tables, or a failed run, in it).
    created: list[Path] = []
    default = default_data_dir_for(url) if data_dir is None else None
    if data_dir is not None:
        created = prepare_data_dir(Path(data_dir))
    elif default is None:
        shown = describe_url(parse_url(url), resolve_url(url))  # as given, not re-encoded
        raise BadInputError(f"got the ledger {shown}, which has no data folder, but the demo "
                            f"stores its dataset: give --data-dir or set LEDGER_DATA_DIR")
    elif default.parent.is_dir():  # else the ledger's own folder is missing: opening says so
        created = prepare_data_dir(default)
    try:
        manager = ExperimentManager(url, data_dir=data_dir)
        refusal = manager.store.append_refusal()  # a read-only URI: before any folder or run
        if refusal is not None:
            manager.close()
            raise StoreError(f"cannot record the demo in {manager.store.url}: {refusal}")
    except BaseException:
        _remove_empty(created)  # the ledger cannot be opened: leave no folder behind either
        raise
    with manager:
        data = load_fraud_data() if transactions is None else load_fraud_data(transactions)
        assert manager.data_dir is not None  # given, or the default just checked
        if data_dir is None:  # the default folder, before any run (a given one is made)
            prepare_data_dir(Path(manager.data_dir))
        result = DemoResult(ledger=manager.store.url, data_dir=str(Path(manager.data_dir)))
        if on_start is not None:
            on_start()
        for index in range(1, RUNS + 1):
            progress = None if on_epoch is None else (
                lambda epoch, loss, auc, index=index: on_epoch(index, epoch, loss, auc))
            result.runs.append(train(data, manager, seed=seed, workers=workers, epochs=epochs,
                                     inject_nondeterminism=inject_nondeterminism,
                                     start_method=start_method, on_epoch=progress))
        first, second = result.runs[0].exp, result.runs[1].exp
        assert first is not None and second is not None  # trained into the manager's ledger
        result.diff = diff_runs(manager.store, first, second)
    return result


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the demo created (deepest first), as long as they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
