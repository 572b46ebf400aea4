"""`ledger show` / `diff` JSON and `replay --full` jobs, against odd values and misbehaving jobs.

A run may legitimately record a NaN hyperparameter or an infinite loss; `--json` must still print
strict JSON. A job that `replay --full` runs is trusted code, but it can still fail, call
`sys.exit`, or not keep its contract (record exactly one experiment, return its id): each of these
is "cannot replay" (exit 3) naming the job — never a certificate, a divergence or a usage error —
with the audited ledger untouched and the scratch ledger removed. And a forged job entry, however
large, is named in one short line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.json_view import json_view as jsonable
from conftest import run_cli
from forgery import copy_run
from ledger.errors import BadInputError, CannotReplayError, CheckFailedError
from ledger.experiment import ExperimentManager
from ledger.jobs import job_entrypoint, register_job
from ledger.store import Store
from replay.full import replay_full
from replay_helpers import record_run

MAX_LINE = 400
"""An error line naming a forged value stays this short, however large the value."""


def _strict_json(text: str) -> Any:
    """Parse ``text`` as a strict parser would: a ``NaN`` or ``Infinity`` literal is an error."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _forged(tmp_path: Path, entrypoint: Any) -> tuple[str, str]:
    """A consistent forgery of a small recorded run whose experiment_created names
    ``entrypoint``: verification passes, so only the job entry decides what --full does."""
    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    exp = record_run(honest, tmp_path / "data", epochs=1)

    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "experiment_created":
            body["params"]["entrypoint"] = entrypoint

    with Store.open(honest) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp, target, change)
    return forged, exp


def _one_short_line(stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and len(lines[0]) <= MAX_LINE and "Traceback" not in stderr


# -- --json is strict JSON -----------------------------------------------------------------------

def test_jsonable_writes_non_finite_floats_as_the_reports_strings() -> None:
    assert jsonable({"a": [float("nan"), float("inf"), -float("inf"), 0.5, b"\x01"]}) == {
        "a": ["NaN", "Infinity", "-Infinity", 0.5, "01"]}


def test_show_and_diff_json_stay_strict_with_nan_hyperparams_and_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = []
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        for loss in (float("nan"), float("inf")):
            with manager.create_experiment("nan-run", seed=1,
                                           hyperparams={"lr": float("nan")}) as exp:
                exp.log_metric("loss", loss, epoch=0)
            ids.append(exp.id)
    shown = run_cli("--db", url, "show", ids[0], "--json")
    assert shown.returncode == 0, shown.stderr
    assert _strict_json(shown.stdout)["metadata"]["hyperparams"] == {"lr": "NaN"}
    compared = run_cli("--db", url, "diff", *ids, "--json")
    assert compared.returncode == 1, compared.stderr
    assert _strict_json(compared.stdout)["identical"] is False


# -- replay --full: a job that fails or breaks its contract is exit 3 -----------------------------

def _record_one(manager: ExperimentManager, seed: int, name: str) -> str:
    with manager.create_experiment(name, seed=seed,
                                   entrypoint=job_entrypoint(name, 1, {})) as exp:
        exp.log_metric("m", 1.0, epoch=0)
    return exp.id


def _raises(error: BaseException) -> Callable[..., str]:
    def job(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> str:
        raise error
    return job


def _returns_none(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> Any:
    _record_one(manager, seed, "test-hostile-returns-none")
    return None


def _records_nothing(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> str:
    return "exp-000000000000"


def _records_two(manager: ExperimentManager, *, seed: int, config: dict[str, Any]) -> str:
    _record_one(manager, seed, "test-hostile-records-two")
    return _record_one(manager, seed, "test-hostile-records-two")


MISBEHAVING_JOBS: dict[str, tuple[Callable[..., Any], str]] = {
    "test-hostile-value-error": (_raises(ValueError("boom")), "failed on the recorded config "
                                                              "(ValueError: boom)"),
    "test-hostile-multi-line": (_raises(ValueError("first\n   second")),  # quoted on one line
                                "(ValueError: first second)"),
    "test-hostile-check-failed": (_raises(CheckFailedError("own check")), "CheckFailedError"),
    "test-hostile-bad-input": (_raises(BadInputError("own input")), "BadInputError"),
    "test-hostile-sys-exit": (_raises(SystemExit(0)), "SystemExit: 0"),
    "test-hostile-returns-none": (_returns_none, "returned None"),
    "test-hostile-records-nothing": (_records_nothing, "recorded the experiments []"),
    "test-hostile-records-two": (_records_two, "records exactly one experiment"),
}
for _name, (_job, _message) in MISBEHAVING_JOBS.items():
    register_job(_name, 1)(_job)


@pytest.mark.parametrize("name", sorted(MISBEHAVING_JOBS))
def test_a_misbehaving_job_cannot_replay_and_leaves_nothing_behind(tmp_path: Path,
                                                                   name: str) -> None:
    forged, exp = _forged(tmp_path, {"job": name, "version": 1, "config": {}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with Store.open(forged) as store:
        before = store.counts_by_kind(exp)
        with pytest.raises(CannotReplayError, match=name) as raised:
            replay_full(store, exp, scratch=scratch)
        assert store.counts_by_kind(exp) == before  # nothing written to the audited ledger
    assert MISBEHAVING_JOBS[name][1] in str(raised.value)
    assert list(scratch.iterdir()) == []  # the scratch ledger is removed


SYS_EXIT_MODULE = "ledger_test_exiting_job"
SYS_EXIT_SOURCE = ("import sys\nfrom ledger.jobs import register_job\n\n"
                   "@register_job('test-hostile-exits', 1)\n"
                   "def job(manager, *, seed, config):\n    sys.exit(0)\n")


def test_a_job_calling_sys_exit_0_is_not_a_certificate_on_the_command_line(
        tmp_path: Path) -> None:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{SYS_EXIT_MODULE}.py").write_text(SYS_EXIT_SOURCE)
    forged, exp = _forged(tmp_path, {"job": "test-hostile-exits", "version": 1, "config": {}})
    env = {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("--db", forged, "replay", exp, "--full", "--trust", SYS_EXIT_MODULE,
                     env=env)
    assert result.returncode == 3, result.stdout + result.stderr  # was 0, with no output at all
    assert result.stdout == "" and _one_short_line(result.stderr)
    assert "test-hostile-exits" in result.stderr and "SystemExit" in result.stderr


CHATTY_MODULE = "ledger_test_chatty_job"
CHATTY_SOURCE = ("import ctypes, os\n"
                 "from ledger.jobs import register_job\n\n"
                 "print('chatty module imported')\n"
                 "os.write(1, b'written to descriptor 1\\n')\n"
                 "ctypes.CDLL(None).printf(b'printed by C\\n')\n\n"
                 "@register_job('test-hostile-chatty', 1)\n"
                 "def job(manager, *, seed, config):\n"
                 "    print('epoch 1  loss 0.5')\n"
                 "    raise ValueError('no data here')\n")


def test_what_trusted_code_prints_goes_to_stderr_so_json_stays_one_document(
        tmp_path: Path) -> None:
    """Training code prints; with --json its lines must not land before the document (they
    made stdout unparsable, and a failure printed no error document at all) — through
    ``print``, through descriptor 1 and through C's stdio alike."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{CHATTY_MODULE}.py").write_text(CHATTY_SOURCE)
    forged, exp = _forged(tmp_path, {"job": "test-hostile-chatty", "version": 1, "config": {}})
    env = {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    full = run_cli("--db", forged, "replay", exp, "--full", "--json", "--trust", CHATTY_MODULE,
                   env=env)
    assert full.returncode == 3, full.stdout + full.stderr
    error = json.loads(full.stdout)["error"]
    assert error["kind"] == "cannot_replay" and "test-hostile-chatty" in error["message"]
    assert "chatty module imported" in full.stderr and "epoch 1  loss 0.5" in full.stderr
    draws = run_cli("--db", forged, "replay", exp, "--json", "--no-record", "--trust",
                    CHATTY_MODULE, "--data-dir", str(tmp_path / "data"), env=env)
    assert draws.returncode == 0, draws.stdout + draws.stderr
    assert json.loads(draws.stdout)["verdict"] == "certified"
    assert sorted(draws.stderr.splitlines()) == ["chatty module imported", "printed by C",
                                                 "written to descriptor 1"]
    report = run_cli("--db", forged, "report", exp, "--replay", "--no-record", "--trust",
                     CHATTY_MODULE, "--data-dir", str(tmp_path / "data"), env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["R8"]["verdict"] == "PASSED"
    assert "chatty module imported" in report.stderr


# -- forged job entries are named in one short line -----------------------------------------------

HUGE = "x" * 1_000_000
DEMO = "fraud-detection-v3-demo"


@pytest.mark.parametrize("entrypoint,message", [
    ({"job": HUGE, "version": 1, "config": {}}, "is not registered"),
    ({"job": DEMO, "version": HUGE, "config": {"a": HUGE}}, "its version is 'xxx"),
    ({"job": DEMO, "version": 1, "config": [HUGE]}, "its config is a list"),
    ({"job": DEMO, "version": 1, "config": {HUGE: 1, "workers": 0, "epochs": 1}},
     "is not one the demo writes"),
    ({"job": DEMO, "version": 1, "config": {"workers": HUGE, "epochs": 1,
                                            "inject_nondeterminism": False}}, "workers='xxx"),
    ({"job": DEMO, "version": 1, "config": {"workers": 0, "epochs": 1,
                                            "inject_nondeterminism": HUGE}},
     "inject_nondeterminism='xxx"),
    ("train.py:main", "records no job"),
    ({"job": DEMO, "version": True, "config": {"workers": 0, "epochs": 1,
                                               "inject_nondeterminism": False}},
     "its version is True, not an int")],
    ids=["name", "version", "config-type", "config-key", "config-value", "config-flag",
         "not-a-map", "version-a-bool"])
def test_a_huge_forged_job_entry_is_named_in_one_short_line(
        tmp_path: Path, entrypoint: dict[str, Any], message: str) -> None:
    forged, exp = _forged(tmp_path, entrypoint)
    result = run_cli("--db", forged, "replay", exp, "--full")
    assert result.returncode == 3, result.stdout + result.stderr[:MAX_LINE]
    assert _one_short_line(result.stderr), f"{len(result.stderr):,} characters on stderr"
    assert message in result.stderr


def test_other_code_cannot_take_a_registered_job_but_the_same_job_registers_again() -> None:
    """(name, version) is a promise about what --full re-runs, as for ops and draws."""
    register_job("test-hostile-returns-none", 1)(_returns_none)  # a module imported again
    with pytest.raises(BadInputError, match="already registered by .*with other code"):
        register_job("test-hostile-returns-none", 1)(_records_nothing)


def test_one_json_view_holds_whatever_a_ledger_decodes_to() -> None:
    """bytes as hex, non-finite floats as strings, ext types by repr, nesting cut: the view of
    every command, diff and report (ledger.json_view), printable by strict JSON."""
    import msgpack

    from ledger.json_view import MAX_DEPTH, json_view

    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 500):
        deep = {"d": deep}
    value = {b"k": [b"\x01\xff", (1, 2.5), float("-inf"), msgpack.ExtType(5, b"x")], "deep": deep}
    shown = json_view(value)
    assert shown["b'k'"][:3] == ["01ff", [1, 2.5], "-Infinity"]
    assert shown["b'k'"][3].startswith("ExtType(")
    assert "..." in json.dumps(shown, allow_nan=False)
    assert json.loads(json.dumps(shown, allow_nan=False)) == shown
