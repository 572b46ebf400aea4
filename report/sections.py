"""Sections R1–R7 of the report: what was trained, by whom, with which code, environment,
data, configuration and randomness — all from the run's own recorded events."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from ledger.digests import value_digest
from ledger.environment import recorded_distribution
from ledger.errors import LedgerError
from ledger.events import (AUGMENTATION_BATCH, EPOCH_RESET, EXPERIMENT_CREATED, USER_DRAW,
                           WORKER_SPAWNED)
from ledger.json_view import json_view
from ledger.recorded_differences import differences, session_differences
from ledger.seeds import SEED_SCHEME, root_seed_from_bytes
from report.data_checks import independence
from report.facts import RunFacts
from report.jsonview import hex_or_none, recorded_int, recorded_text, rfc3339
from report.scan import ScanResult

DERIVATION = ('derive(root, path) = first 16 bytes, big-endian, of SHA-256(b"ledger/seed/v1\\x00" '
              '+ canonical([root.to_bytes(16, "big"), list(path)])); generator = '
              'numpy.random.Generator(numpy.random.PCG64(derive(root, path)))')
CONFIG_DIGEST_RULE = 'SHA-256(b"ledger/value/v1\\x00" + canonical(hyperparameters))'


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def run_status(facts: RunFacts) -> str:
    """``ok`` or ``failed`` as run_completed recorded it, else ``incomplete``."""
    if facts.completed is None:
        return "incomplete"
    status = _dict(facts.completed.get("params")).get("status", "ok")
    return status if status in ("ok", "failed") else "unreadable"


def r1_identity(facts: RunFacts) -> dict[str, Any]:
    """R1: experiment, model, purpose, parent (and whether this ledger holds it), status and
    head, final checkpoints, metrics."""
    params = facts.params
    final = []
    for name in sorted(facts.checkpoints):
        body = facts.checkpoints[name]
        checkpoint = _dict(body.get("params"))
        final.append({"name": name, "epoch": checkpoint.get("epoch"),
                      "digest": hex_or_none(body.get("output")),
                      "arrays": json_view(_dict(checkpoint.get("arrays")))})
    return {"title": "Run identity", "exp": facts.row.exp, "name": facts.row.name,
            "model": recorded_text(params.get("model")),
            "purpose": recorded_text(params.get("purpose")),
            "parent": recorded_text(params.get("parent")),
            "parent_in_ledger": facts.parent_in_ledger, "status": run_status(facts),
            "complete": facts.run_head is not None, "run_head": hex_or_none(facts.run_head),
            "error": recorded_text(_dict((facts.completed or {}).get("params")).get("error")),
            "checkpoints": {"final": final, "recorded": facts.checkpoint_count},
            "metrics": facts.metrics.to_json(), "metrics_not_plotted": facts.metrics.unplotted}


def r2_who_and_when(facts: RunFacts) -> dict[str, Any]:
    """R2: who started the run, where, when it started and ended, and with what resources;
    and each session that resumed it (when, host, pid: its ``run_resumed``'s time and meta).
    ``duration_s`` runs from creation to completion; ``suspended_s`` sums the time between each
    resume and the latest event recorded before it, ``active_s`` is the rest: what a run that
    was preempted and resumed days later really ran."""
    created = facts.created or {}
    meta = _dict(created.get("meta"))
    platform = _dict(_dict(facts.params.get("environment")).get("platform"))
    started = recorded_int(created.get("t"))
    ended = recorded_int((facts.completed or {}).get("t"))
    workers = [_dict(body.get("params")) for body in facts.workers]
    duration = None if started is None or ended is None else _seconds(ended - started)
    suspended = None if None in facts.suspended_ns else sum(
        gap for gap in facts.suspended_ns if gap is not None)
    return {"title": "Who and when", "started_by": recorded_text(meta.get("user")),
            "host": recorded_text(meta.get("host")), "pid": recorded_int(meta.get("pid")),
            "started_at": rfc3339(started), "ended_at": rfc3339(ended),
            "duration_s": duration,
            "suspended_s": _seconds(suspended),
            "active_s": None if duration is None or suspended is None else round(
                duration - suspended / 1e9, 3),
            "resources": {"cpu_count": platform.get("cpu_count"),
                          "machine": recorded_text(platform.get("machine")),
                          "workers_spawned": facts.worker_count,
                          "start_methods": sorted({str(w.get("start_method")) for w in workers
                                                   if w.get("start_method") is not None})},
            "note": None if meta.get("user") else
            "the ledger records the host and process of the run, not the user who started it",
            "resumes": [_resumed_by(body, gap)
                        for body, gap in zip(facts.resumes, facts.suspended_ns)]}


def _seconds(nanoseconds: int | None) -> float | None:
    return None if nanoseconds is None else round(nanoseconds / 1e9, 3)


def _resumed_by(body: dict[str, Any], suspended_ns: int | None) -> dict[str, Any]:
    """One session that resumed the run, as its ``run_resumed`` records it: when, who (None in
    ledgers written before a resume recorded its user), host and process — and how long the
    run was suspended before it."""
    meta = _dict(body.get("meta"))
    return {"seq": recorded_int(body.get("seq")), "at": rfc3339(body.get("t")),
            "by": recorded_text(meta.get("user")), "host": recorded_text(meta.get("host")),
            "pid": recorded_int(meta.get("pid")), "suspended_s": _seconds(suspended_ns)}


def r3_code(facts: RunFacts) -> dict[str, Any]:
    """R3: commit, dirty flag, diff digest, the release the code was installed from (when it
    ran from a package folder, not a checkout), entrypoint (as recorded: module, script and argv, or
    the job a trainer named) and command line, configuration digest — as the session that
    created the run recorded them — and how the code of each session that resumed it differed."""
    code = _dict(facts.params.get("code"))
    entry = _dict(facts.params.get("entrypoint"))
    argv = entry.get("argv") if isinstance(entry.get("argv"), list) else None
    return {"title": "Code", "vcs": recorded_text(code.get("vcs")),
            "commit": recorded_text(code.get("commit")),
            "dirty": code.get("dirty") if isinstance(code.get("dirty"), bool) else None,
            "diff_digest": hex_or_none(code.get("diff_digest")),
            "untracked": code.get("untracked") if isinstance(code.get("untracked"), int) else None,
            "distribution": _distribution(code),
            "entrypoint": json_view(entry) if entry else None,
            "command_line": shlex.join(str(arg) for arg in argv) if argv else None,
            "configuration_digest": config_digest(facts),
            "resumes": [_resumed_session(body, "code", code, differences)
                        for body in facts.resumes]}


def _distribution(code: dict[str, Any]) -> dict[str, str] | None:
    """The release a run's code was installed from (see
    :func:`ledger.environment.recorded_distribution`), or None."""
    distribution = recorded_distribution(code)
    return None if distribution is None else dict(zip(("name", "version"), distribution))


def config_digest(facts: RunFacts) -> str | None:
    """The digest of the recorded hyperparameters (see CONFIG_DIGEST_RULE)."""
    hyperparams = facts.params.get("hyperparams")
    if not isinstance(hyperparams, dict):
        return None
    try:
        return value_digest(hyperparams).hex()
    except LedgerError:
        return None


def r4_environment(facts: RunFacts) -> dict[str, Any]:
    """R4: Python, packages, numpy and BLAS (and its thread counts, which R8 compares: they can
    change a sum's low bits), OS, CPU, determinism environment variables — as the session that
    created the run recorded them — and how each session that resumed it differed."""
    environment = _dict(facts.params.get("environment"))
    packages = _dict(environment.get("packages"))
    return {"title": "Environment", "python": json_view(_dict(environment.get("python"))),
            "packages": {str(k): str(v) for k, v in sorted(packages.items())},
            "numpy": {"version": recorded_text(packages.get("numpy")),
                      "blas": json_view(_dict(environment.get("blas")))},
            "blas_threads": json_view(_dict(environment.get("blas_threads"))),
            "platform": json_view(_dict(environment.get("platform"))),
            "determinism_env": json_view(_dict(environment.get("env"))),
            "recorded": bool(environment),
            "resumes": [_resumed_session(body, "environment", environment, session_differences)
                        for body in facts.resumes]}


def _resumed_session(body: dict[str, Any], what: str, at_creation: dict[str, Any],
                     compare: Callable[[Any, Any], list[tuple[str, Any, Any]]]
                     ) -> dict[str, Any]:
    """How the ``what`` (``environment``, ``code``) of the session that recorded the
    ``run_resumed`` ``body`` differs from the one recorded at the run's creation, by
    ``compare``: its differences by key, or ``recorded: false`` when that run_resumed records
    none (ledgers written before it did)."""
    resumed = _dict(body.get("params")).get(what)
    recorded = isinstance(resumed, dict)
    return {"seq": recorded_int(body.get("seq")), "at": rfc3339(body.get("t")),
            "recorded": recorded,
            "differences": [{"key": key, "recorded": json_view(old), "resumed": json_view(new)}
                            for key, old, new in compare(at_creation, resumed)]
            if recorded else None}


def resumed_rows(resume: dict[str, Any]) -> list[list[Any]]:
    """The rows HTML and Markdown show of one R3 or R4 ``resumes`` entry — ``[seq, at,
    difference, recorded, resumed]`` — one per difference, else one saying ``as recorded``
    or, for a run_resumed that records no code or environment, ``not recorded``."""
    lead = [resume["seq"], resume["at"]]
    if resume["differences"] is None:
        return [lead + ["not recorded", None, None]]
    if not resume["differences"]:
        return [lead + ["as recorded", None, None]]
    return [lead + [d["key"], d["recorded"], d["resumed"]] for d in resume["differences"]]


def r5_data(facts: RunFacts, data_dir: Any) -> dict[str, Any]:
    """R5: one row per dataset, and the train/test independence check where roles are given."""
    rows = []
    for body in facts.datasets:
        params = _dict(body.get("params"))
        loader = _dict(params.get("loader"))
        rows.append({"name": recorded_text(params.get("name")),
                     "role": recorded_text(params.get("role")),
                     "source": {"kind": recorded_text(loader.get("kind")),
                                "base": recorded_text(loader.get("base")),
                                "path": recorded_text(loader.get("path"))},
                     "digest": hex_or_none(body.get("output")),
                     "records": params.get("length") if isinstance(params.get("length"), int)
                     else None,
                     "features": json_view(params.get("features")),
                     "labels": json_view(params.get("labels"))})
    return {"title": "Data", "datasets": rows,
            "independence": independence(facts.datasets, data_dir)}


def r6_configuration(facts: RunFacts) -> dict[str, Any]:
    """R6: the canonical hyperparameters and their digest."""
    hyperparams = facts.params.get("hyperparams")
    return {"title": "Configuration",
            "hyperparameters": json_view(hyperparams) if isinstance(hyperparams, dict) else None,
            "digest": config_digest(facts), "digest_rule": CONFIG_DIGEST_RULE}


def r7_randomness(facts: RunFacts, scan: ScanResult,
                  appendix_name: str | None) -> dict[str, Any]:
    """R7: root seed and its source, the scheme, draw counts, seed tree, and the appendix."""
    params = facts.params
    recorded = params.get("root_seed")
    if not (isinstance(recorded, bytes) and len(recorded) == 16):
        recorded = None
    root = None if recorded is None else root_seed_from_bytes(recorded)
    counts = scan.counts
    categories = {"experiment": counts.get(EXPERIMENT_CREATED, 0),
                  "worker_spawn": counts.get(WORKER_SPAWNED, 0),
                  "epoch_shuffle": counts.get(EPOCH_RESET, 0),
                  "augmentation_batch": counts.get(AUGMENTATION_BATCH, 0),
                  "user_draw": counts.get(USER_DRAW, 0)}
    appendix = None
    if scan.appendix is not None:
        appendix = {"file": appendix_name, "media_type": "application/x-ndjson",
                    "lines": scan.appendix.lines, "size": scan.appendix.size,
                    "sha256": scan.appendix.sha256, "bodies": scan.appendix.bodies,
                    "fields": ["hash", "input", "kind", "output", "path", "seed", "seq",
                               "stream"] + (["body"] if scan.appendix.bodies else [])}
    scheme = params.get("seed_scheme")
    return {"title": "Randomness inventory",
            "root_seed": None if root is None else str(root),
            "root_seed_hex": None if recorded is None else recorded.hex(),
            "root_seed_source": recorded_text(params.get("root_seed_source")),
            "scheme": recorded_text(scheme) if scheme is not None else None,
            "scheme_known": scheme == SEED_SCHEME,
            "derivation": DERIVATION,
            "categories": categories, "counts_by_kind": dict(sorted(counts.items())),
            "events": scan.events, "unreadable_paths": scan.unreadable_paths,
            "seed_tree": {"nodes": scan.tree.nodes(), "folded": scan.tree.folded,
                          "max_nodes": scan.tree.max_nodes,
                          "wildcard": "* stands for any integer label"},
            "appendix": appendix}
