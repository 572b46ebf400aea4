"""Code safety: nothing named in a ledger is ever imported, unpickled or evaluated.

A ledger is data from someone else. These tests forge internally consistent ledgers whose specs
name an attacker's module and show that replay imports nothing and exits 3; and they scan the
package source for the calls that could run code from ledger content.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli
from forgery import copy_run
from ledger.store import Store
from replay_helpers import record_run

PACKAGES = ("ledger", "replay", "cli", "report", "examples")
EVIL_MODULE = "ledger_test_evil_module"
EVIL_SOURCE = ("from pathlib import Path\n"
               "Path(__file__).with_name('IMPORTED').write_text('the ledger ran my code')\n"
               "def system(*args, **kwargs):\n    return 0\n")


def _rename_op(body: dict[str, Any]) -> None:
    if body["kind"] == "augmentation_batch":
        body["params"]["augmenter"] = [{"op": f"{EVIL_MODULE}:system", "version": 1}]


def _rename_loader(body: dict[str, Any]) -> None:
    if body["kind"] == "dataset_registered":
        body["params"]["loader"]["kind"] = f"{EVIL_MODULE}.load"


def _rename_job(body: dict[str, Any]) -> None:
    if body["kind"] == "experiment_created":
        body["params"]["entrypoint"] = {"job": f"{EVIL_MODULE}:system", "version": 1,
                                        "config": {}}


@pytest.mark.parametrize("change,full", [(_rename_op, False), (_rename_loader, False),
                                         (_rename_job, True)])
def test_a_ledger_naming_a_module_imports_nothing_and_exits_3(
        tmp_path: Path, change: Callable[[dict[str, Any]], None], full: bool) -> None:
    evil_folder = tmp_path / "evil"
    evil_folder.mkdir()
    (evil_folder / f"{EVIL_MODULE}.py").write_text(EVIL_SOURCE)
    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    exp = record_run(honest, tmp_path / "data")
    with Store.open(honest) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp, target, change)
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # consistent forgery
    env = {"PYTHONPATH": os.pathsep.join([str(evil_folder), os.environ.get("PYTHONPATH", "")])}
    options = ["--full"] if full else ["--data-dir", str(tmp_path / "data")]
    result = run_cli("--db", forged, "replay", exp, *options, env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (evil_folder / "IMPORTED").exists(), "replay imported a module named by the ledger"


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name) else
                    f"{ast.unparse(func.value)}.{func.attr}" if isinstance(func, ast.Attribute)
                    else "")
            found.append((name, node))
    return found


def _sources() -> list[Path]:
    return [path for package in PACKAGES if (ROOT / package).is_dir()
            for path in sorted((ROOT / package).rglob("*.py"))]


def test_no_code_path_unpickles_evaluates_or_executes() -> None:
    forbidden = {"eval", "exec", "compile", "pickle.load", "pickle.loads", "marshal.loads",
                 "marshal.load", "__import__", "shelve.open", "dill.loads", "yaml.load"}
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "") or ""]
                if any(name.split(".")[0] in ("pickle", "marshal", "shelve", "dill")
                       for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports a pickler")
        for name, call in _calls(tree):
            if name in forbidden:
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} calls {name}")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                flags = {kw.arg: kw.value for kw in call.keywords}
                if not (isinstance(flags.get("allow_pickle"), ast.Constant)
                        and flags["allow_pickle"].value is False):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} np.load without "
                                     f"allow_pickle=False")
    assert not offenders, offenders


def test_only_the_registry_imports_modules_by_name() -> None:
    importers = []
    for path in _sources():
        for name, call in _calls(ast.parse(path.read_text())):
            if name in ("importlib.import_module", "import_module"):
                importers.append(str(path.relative_to(ROOT)))
    # registry.py: --trust modules and installed plug-ins. worker_process.py: a trainer's worker
    # imports the modules of the ops its own parent process registered (never ledger content).
    allowed = {"replay/registry.py", "ledger/worker_process.py", "bench/__main__.py"}
    assert set(importers) <= allowed, importers
    assert "replay/registry.py" in importers


def test_sql_text_interpolates_only_the_schemas_own_names_and_constants() -> None:
    """Every value in an SQL statement is a bound parameter: an f-string given to a driver
    may hold only constants and the ledger's own table names, never a name read from the
    database (a foreign file's index name went into ``PRAGMA index_xinfo('…')``)."""
    allowed = {"SQLITE_SYNCHRONOUS", "SQLITE_BUSY_SECONDS", "POSTGRES_LOCK_TIMEOUT",
               "table"}  # `table`: ours only; the others: our constants
    offenders = []
    for path in _sources():
        for name, call in _calls(ast.parse(path.read_text())):
            if name.rsplit(".", 1)[-1] not in ("execute", "exec_driver_sql", "text"):
                continue
            for argument in call.args[:1]:
                used = {node.id for part in ast.walk(argument)
                        if isinstance(part, ast.FormattedValue)
                        for node in ast.walk(part.value) if isinstance(node, ast.Name)}
                if used - allowed:
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} puts "
                                     f"{sorted(used - allowed)} in SQL text")
    assert not offenders, offenders


def test_the_scan_sees_the_package() -> None:
    scanned = {path.relative_to(ROOT).parts[0] for path in _sources()}
    assert {"ledger", "replay", "cli", "examples"} <= scanned
    assert len(_sources()) > 20