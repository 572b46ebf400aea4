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
from ledger.errors import CannotReplayError
from ledger.experiment import ExperimentManager
from ledger.jobs import job_entrypoint, register_job
from ledger.text import quoted

JOB_NAME = "fraud-detection-v3-demo"
JOB_VERSION = 1


def job_config(*, workers: int, epochs: int, inject_nondeterminism: bool,
               transactions: int = TRANSACTIONS) -> dict[str, Any]:
    """The configuration recorded for one demo run: everything the job needs besides the seed."""
    return {"workers": workers, "epochs": epochs, "inject_nondeterminism": inject_nondeterminism,
            "transactions": transactions}


_BOUNDS = {"workers": (0, 64), "epochs": (1, 1000), "transactions": (1_000, 1_000_000)}
"""What ``ledger demo`` accepts (and a little more room for transactions): a recorded config
outside them was not written by the demo, and is not run."""


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """The recorded config with its values checked, ``transactions`` defaulted; a
    CannotReplayError names what is wrong — ``replay --full`` runs only a config the demo could
    have recorded (a forged one could ask for 10⁹ epochs or 100,000 workers)."""
    config = {"transactions": TRANSACTIONS, **config}
    unknown = sorted(set(config) - {*_BOUNDS, "inject_nondeterminism"})
    if unknown or "workers" not in config or "epochs" not in config:
        raise CannotReplayError(f"the recorded demo config {quoted(sorted(config))} is not one "
                                f"the demo writes (workers, epochs, inject_nondeterminism, "
                                f"transactions)")
    for key, (low, high) in _BOUNDS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CannotReplayError(f"the recorded demo config has {key}={quoted(value)}, but "
                                    f"the demo runs with {key} from {low} to {high}")
    if not isinstance(config.get("inject_nondeterminism"), bool):
        raise CannotReplayError(f"the recorded demo config has inject_nondeterminism="
                                f"{quoted(config.get('inject_nondeterminism'))}, but it must be "
                                f"a bool")
    return config


def entrypoint(config: dict[str, Any]) -> dict[str, Any]:
    """The entrypoint the demo records: this job, by name and version, with its configuration."""
    return job_entrypoint(JOB_NAME, JOB_VERSION, config)


@register_job(JOB_NAME, JOB_VERSION)
def fraud_demo_job(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> str:
    """Train the demo model once with ``config`` and root ``seed``; return the experiment id."""
    from examples.fraud.train import train

    checked = check_config(config)
    data = load_fraud_data(checked["transactions"])
    result = train(data, manager, seed=seed, workers=checked["workers"],
                   epochs=checked["epochs"],
                   inject_nondeterminism=checked["inject_nondeterminism"])
    assert result.exp is not None
    return result.exp
