"""Jobs: training programs that a full replay may run again, by declared name and version.

``ledger replay --full`` re-runs a recorded run from scratch — same job, same configuration, same
root seed — into a scratch ledger and compares the two runs event by event, metrics and
checkpoints included. It finds the program through this registry, never by an import path
written in the ledger::

    from ledger import job_entrypoint, register_job

    @register_job("fraud-detection-v3", version=1)
    def train_job(manager, *, seed, config):
        with manager.create_experiment("fraud-detection-v3", seed=seed,
                                       entrypoint=job_entrypoint("fraud-detection-v3", 1, config)
                                       ) as exp:
            ...
        return exp.id

A job takes an ExperimentManager, the root seed and the recorded configuration (a canonical
map), records exactly one experiment whose entrypoint is :func:`job_entrypoint` of itself, and
returns that experiment's id. Replay can run it when its module is built in, installed as a
plug-in (entry-point group ``ledger.replayers``) or named with ``--trust MODULE``.

WARNING: (name, version) is a promise, as for augmenter ops: change what the job computes and
register it under a new version, or old runs will no longer re-run identically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger.canonical import normalise
from ledger.declared import check_declared
from ledger.errors import CannotReplayError
from ledger.registered_functions import refuse_other_code
from ledger.text import quoted

JobFunction = Callable[..., str]
_jobs: dict[tuple[str, int], JobFunction] = {}


def register_job(name: str, version: int) -> Callable[[JobFunction], JobFunction]:
    """Register ``function(manager, *, seed, config) -> exp id`` as job ``name`` at ``version``.

    Registering other code under a taken (name, version) raises BadInputError, as for ops and
    draws: a second module must not silently take over what ``--full`` re-runs. The same
    function registered again (its module imported again) is allowed.
    """
    check_declared("job", name, version)

    def decorate(function: JobFunction) -> JobFunction:
        refuse_other_code(f"job {name!r} version {version}", _jobs.get((name, version)), function)
        _jobs[(name, version)] = function
        return function

    return decorate


def job_entrypoint(name: str, version: int, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``entrypoint`` a job records in ``experiment_created``: its name, version, config."""
    return {"job": name, "version": version, "config": normalise(dict(config))}


def recorded_job(entrypoint: Any) -> tuple[str, int, dict[str, Any]]:
    """``(name, version, config)`` of the job an experiment recorded; CannotReplayError if none."""
    if not isinstance(entrypoint, dict) or not isinstance(entrypoint.get("job"), str):
        raise CannotReplayError("the run records no job (ledger.register_job), so --full cannot "
                                "re-run it; replay without --full re-executes its draws")
    name, version, config = entrypoint["job"], entrypoint.get("version"), entrypoint.get("config")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CannotReplayError(f"the run's job entry for {quoted(name)} is malformed: its "
                                f"version is {quoted(version)}, not an int")
    if not isinstance(config, dict):
        raise CannotReplayError(f"the run's job entry for {quoted(name)} is malformed: its "
                                f"config is a {type(config).__name__}, not a map")
    return name, version, config


def lookup_job(name: str, version: int) -> JobFunction:
    """The job registered as ``name`` at ``version``; CannotReplayError with a hint if none."""
    function = _jobs.get((name, version))
    if function is None:
        raise CannotReplayError(f"job {quoted(name)} version {quoted(version)} is not registered: "
                                f"install the package that provides it (entry-point group "
                                f"'ledger.replayers') or name its module with --trust MODULE")
    return function
