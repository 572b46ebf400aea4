"""Resuming an interrupted run: same experiment, same root seed, the chain continued.

A run killed (or suspended) before ``run_completed`` is continued by
:meth:`ExperimentManager.resume_experiment`. The resumed process re-executes from the user's last
checkpoint, so it reaches again draws, metrics and checkpoints that the interrupted process
already recorded after that checkpoint. They are remembered here and checked, not recorded twice:
every draw stays recorded once per run (DESIGN §3), and a resumed run whose draws differ from its
own record is refused on the spot. A ``run_resumed`` event in the main stream marks the seam,
and records the resuming session's environment and code version as ``experiment_created`` records
the first session's: a run resumed on another machine, with other library versions, says so.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.arguments import check_flag
from ledger.environment import code_version, current_user, environment_fingerprint
from ledger.errors import BadInputError, CheckFailedError
from ledger.events import (AUDIT_STREAM, CHECKPOINT, DATASET_REGISTERED, EPOCH_RESET,
                           EXPERIMENT_CREATED, MAIN_STREAM, METRIC, RUN_COMPLETED, RUN_RESUMED,
                           decode_body, draw_value)
from ledger.seeds import root_seed_from_bytes
from ledger.store import Store, StreamWriter
from ledger.verify import verify

if TYPE_CHECKING:
    from ledger.experiment import Experiment


def resume(store: Store, exp: str, data_dir: Path | None, *, take_over: bool = False,
           code_dir: str | os.PathLike[str] | None = None) -> "Experiment":
    """Open ``exp`` for recording again (see the module docstring) and return its Experiment.

    ``take_over`` claims the main stream even from a holder that still looks alive — one on
    another machine, which cannot be asked — as :class:`StreamWriter` does. ``code_dir`` names
    the repository whose version ``run_resumed`` records, as for ``create_experiment`` (which
    records no folder to reuse): by default the main script's."""
    from ledger.experiment import Experiment, _existing_path

    take_over = check_flag("take_over", take_over)  # "no" would take the stream over
    code_start = None if code_dir is None else _existing_path("code_dir", code_dir)
    row = store.experiment(exp)
    if row.status != "incomplete":
        raise BadInputError(f"got {exp}, which completed with status {row.status}: only an "
                            f"incomplete run can be resumed")
    checked = verify(store, exp)
    if not checked.ok:
        raise CheckFailedError(f"{exp} fails verification, not resumed: "
                               f"{checked.findings[0].describe()}")
    created = store.first_event_body(exp, EXPERIMENT_CREATED)
    params = created["params"] if created and isinstance(created["params"], dict) else {}
    if not isinstance(params.get("root_seed"), bytes):
        raise BadInputError(f"{exp} has no recorded root seed to resume with")
    writer = StreamWriter(store, exp, MAIN_STREAM, write_behind=True, take_over=take_over)
    try:
        # Checked again now that main is claimed: another process resuming the same run may
        # have completed it since the check above, and nothing may follow run_completed.
        if store.last_kind(exp, MAIN_STREAM) == RUN_COMPLETED:
            raise BadInputError(f"got {exp}, which another process completed while this one "
                                f"resumed it: only an incomplete run can be resumed")
        experiment = Experiment(store, exp, row.name, root_seed_from_bytes(params["root_seed"]),
                                str(params.get("root_seed_source", "user")), writer, data_dir)
        experiment.resumed = True
        parent = params.get("parent")
        experiment.parent = parent if isinstance(parent, str) else None
        checkpoint = _remember(store, experiment)
        experiment._append(RUN_RESUMED, params={"after_seq": writer.next_seq - 1,
                                                "last_checkpoint": checkpoint,
                                                **_session(code_start)},
                           meta={"pid": os.getpid(), "host": socket.gethostname(),
                                 "user": current_user()})
    except BaseException:
        writer.close()  # releases main: the run stays as it was
        raise
    return experiment


def _session(code_start: Path | None) -> dict[str, Any]:
    """What ``run_resumed`` records of the resuming process, as ``experiment_created`` records
    the first one's: its code version (of ``code_start``, else the main script's folder) and
    its environment fingerprint. Ledgers written before lack both: read as "not recorded"."""
    return {"code": code_version(code_start), "environment": environment_fingerprint()}


def _remember(store: Store, experiment: "Experiment") -> dict[str, Any] | None:
    """Load what the run recorded into ``experiment``; return its last checkpoint's params."""
    checkpoint = None
    for stream, seq, kind, body_bytes in store.iter_run_bodies(experiment.id):
        if stream == AUDIT_STREAM:
            continue
        body = decode_body(body_bytes)
        params = body["params"] if isinstance(body["params"], dict) else {}
        if body["seed"] is not None:
            experiment._draws[(kind, tuple(body["path"]))] = draw_value(kind, body["params"],
                                                                        body["output"])
            if kind == EPOCH_RESET:
                experiment._reset_params[tuple(body["path"])] = body["params"]
        elif kind == DATASET_REGISTERED:
            experiment._recorded_datasets[str(params.get("name"))] = (body["output"],
                                                                      params.get("role"))
        elif kind in (METRIC, CHECKPOINT):
            # In recorded order: a metric logged several times per epoch is re-logged so too.
            experiment._recorded_logs.setdefault(
                (kind, params.get("name"), params.get("epoch")), deque()).append(
                    (seq if stream == MAIN_STREAM else None, body["output"]))
            if kind == CHECKPOINT:
                checkpoint = {"name": params.get("name"), "epoch": params.get("epoch"),
                              "digest": body["output"]}
    return checkpoint
