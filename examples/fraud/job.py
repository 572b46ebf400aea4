"""The demo's training as a registered job, so that ``ledger replay --full`` can re-run it.

Importing this module registers the job ``fraud-detection-v3-demo`` (version 1). The package
declares it in the ``ledger.replayers`` entry-point group (pyproject.toml), so replay finds it
without being told to import anything. Importing it also registers ``legacy_gaussian_noise``,
the buggy op of ``--inject-nondeterminism``, so such runs replay (and diverge) instead of being
refused.
"""

from __future__ import annotations

from typing import Any

import examples.fraud.legacy  # noqa: F401 - registers the op of --inject-nondeterminism
from examples.fraud.dataset import TRANSACTIONS, load_fraud_data
from ledger.experiment import ExperimentManager
from ledger.jobs import job_entrypoint, register_job

JOB_NAME = "fraud-detection-v3-demo"
JOB_VERSION = 1


def job_config(*, workers: int, epochs: int, inject_nondeterminism: bool,
               transactions: int = TRANSACTIONS) -> dict[str, Any]:
    """The configuration recorded for one demo run: everything the job needs besides the seed."""
    return {"workers": workers, "epochs": epochs, "inject_nondeterminism": inject_nondeterminism,
            "transactions": transactions}


def entrypoint(config: dict[str, Any]) -> dict[str, Any]:
    """The entrypoint the demo records: this job, by name and version, with its configuration."""
    return job_entrypoint(JOB_NAME, JOB_VERSION, config)


@register_job(JOB_NAME, JOB_VERSION)
def fraud_demo_job(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> str:
    """Train the demo model once with ``config`` and root ``seed``; return the experiment id."""
    from examples.fraud.train import train

    data = load_fraud_data(int(config.get("transactions", TRANSACTIONS)))
    result = train(data, manager, seed=seed, workers=int(config["workers"]),
                   epochs=int(config["epochs"]),
                   inject_nondeterminism=bool(config["inject_nondeterminism"]))
    assert result.exp is not None
    return result.exp
