"""The project as `pip install .` installs it: a wheel, not the checkout.

`ledger verify-report` read the report schema from the repository's ``schemas/``, which a wheel did
not carry: every report, honest or not, failed to verify (exit 2) from a non-editable install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from code_repos import committed_repo
from conftest import ROOT, readme_python_block
from replay_helpers import record_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built without build isolation (no download) from a copy of this
    checkout: setuptools builds in the source tree's build/, where files a commit removed would
    linger and ship."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", "ledger-data", "*.db*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=600)
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_every_schema_the_repository_ships(wheel: Path) -> None:
    """Each file of ``schemas/``, byte for byte, under ``report/schemas/``."""
    with zipfile.ZipFile(wheel) as archive:
        for schema in sorted((ROOT / "schemas").glob("*.json")):
            assert archive.read(f"report/schemas/{schema.name}") == schema.read_bytes(), schema


def _venv(wheel: Path, where: Path) -> tuple[Path, Path]:
    """A virtualenv at ``where`` with ``wheel`` installed (its ``ledger`` script included) and
    this interpreter's packages (numpy, SQLAlchemy, …) on its path; not this interpreter's
    editable install of the checkout, whose import hook would find in the checkout any module
    the wheel lacks (``examples.fraud`` hidden by a project's ``examples``, say). Returns its
    ``bin`` folder and its ``site-packages``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   capture_output=True, text=True, timeout=300)
    python = where / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-compile", str(wheel)], env=_user_env(),
                   check=True, capture_output=True, text=True, timeout=600)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], env=_user_env(),
                               check=True, capture_output=True, text=True,
                               timeout=60).stdout.strip())
    assert (site / "ledger" / "__init__.py").is_file(), "the wheel was not installed"
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n",
                                           encoding="utf-8")
    return where / "bin", site


def _user_env() -> dict[str, str]:
    """A user's environment: no PYTHONPATH (the tests' points at the checkout), no ledger set."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "LEDGER_URL", "LEDGER_DATA_DIR"):
        env.pop(name, None)
    return env


def test_an_installed_wheel_reports_and_verifies(wheel: Path, tmp_path: Path) -> None:
    """`ledger report` then `ledger verify-report` run from the installed copy, far from the
    checkout: the honest report verifies (exit 0), and one whose report_id was edited fails the
    schema check (exit 1) rather than stopping for want of the schema (exit 2)."""
    bin_dir, site = _venv(wheel, tmp_path / "venv")
    exp = record_run(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "ledger-data", epochs=1)
    env = _user_env()

    def ledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / "ledger"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(bin_dir / "python"), "-c", "import report.schema_check as s; "
                            "print(s.SCHEMA_PATH)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    made = ledger("--db", f"sqlite:///{tmp_path / 'ledger.db'}", "report", exp, "--no-record",
                  "-o", "report.json")
    assert made.returncode == 0, made.stderr
    honest = ledger("verify-report", "report.json", "--unsigned")
    assert honest.returncode == 0, honest.stderr

    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    report["R0"]["report_id"] = "anything at all"
    (tmp_path / "edited.json").write_text(json.dumps(report), encoding="utf-8")
    edited = ledger("verify-report", "edited.json", "--unsigned")
    assert edited.returncode == 1, edited.stderr
    assert "R0/report_id" in edited.stdout + edited.stderr


def test_a_demo_installed_into_a_projects_virtualenv_records_its_distribution_not_a_commit(
        wheel: Path, tmp_path: Path) -> None:
    """Installed into the ``.venv`` of a project under git, `ledger demo` recorded that
    project's commit (dirty, its untracked files counted) as the version of the demo's code,
    which lies in ``site-packages`` and which no commit of the project describes. It records
    no commit now, as from a virtualenv outside any repository, but the distribution that
    installed the code, which ``show`` prints."""
    project = committed_repo(tmp_path / "project")
    bin_dir, _site = _venv(wheel, project / ".venv")
    env = _user_env()
    demo = subprocess.run([str(bin_dir / "ledger"), "demo", "--epochs", "1", "--workers", "0",
                           "--json"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stderr
    exp = json.loads(demo.stdout)["runs"][0]["exp"]
    shown = subprocess.run([str(bin_dir / "ledger"), "show", exp, "--json"], cwd=project,
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metadata"]["code"] == {
        "vcs": None, "distribution": {"name": "reproducibility-ledger", "version": "0.1.0"}}
    text = subprocess.run([str(bin_dir / "ledger"), "show", exp], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert ("code        no commit recorded (installed from the distribution "
            "reproducibility-ledger 0.1.0)") in text.stdout.splitlines(), text.stdout


def test_the_installed_examples_package_leaves_a_projects_own_examples_importable(
        wheel: Path, tmp_path: Path) -> None:
    """The wheel installed ``examples`` as a regular package into ``site-packages``, which
    shadowed a project's own ``examples/`` folder (no ``__init__.py``): from the project's root
    ``python -m examples.train`` said ``No module named examples.train``. ``examples`` extends
    its path (pkgutil-style namespace package): the project's modules and the demo's
    ``examples.fraud`` (the ``ledger.replayers`` plug-in) import side by side."""
    bin_dir, site = _venv(wheel, tmp_path / "venv")
    project = tmp_path / "project"
    (project / "examples").mkdir(parents=True)
    (project / "examples" / "train.py").write_text(
        "import examples.fraud.job as job\nprint(job.__file__)\n", encoding="utf-8")
    ran = subprocess.run([str(bin_dir / "python"), "-m", "examples.train"], cwd=project,
                         env=_user_env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert Path(ran.stdout.strip()).is_relative_to(site), ran.stdout


def test_a_projects_own_examples_package_stops_the_demo_and_replay_with_one_line(
        wheel: Path, tmp_path: Path) -> None:
    """A project with its own ``examples/__init__.py``, run from its root (``python -m``, or
    ``PYTHONPATH=.``): that package hides the installed ``examples`` and its ``fraud`` demo.
    Every ``ledger`` command ended in a traceback (the CLI imported the demo at start-up); now
    only ``demo`` needs it (one line, exit 2) and replay names the hiding package (exit 3)."""
    bin_dir, _site = _venv(wheel, tmp_path / "venv")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "ledger-data", epochs=1)
    project = tmp_path / "project"
    (project / "examples").mkdir(parents=True)
    (project / "examples" / "__init__.py").write_text("", encoding="utf-8")
    env = {**_user_env(), "PYTHONPATH": "."}

    def ledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / "ledger"), "--db", url, *args], cwd=project,
                              env=env, capture_output=True, text=True, timeout=300)

    listed = ledger("list")
    assert listed.returncode == 0 and exp in listed.stdout, listed.stderr
    hidden = str(project / "examples" / "__init__.py")
    for args, code in ((("demo", "--epochs", "1"), 2), (("replay", exp, "--no-record"), 3)):
        done = ledger(*args)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert f"'examples' was imported from {hidden}" in done.stderr, done.stderr


def test_the_demos_default_epochs_are_its_hyperparameters() -> None:
    """``ledger demo --epochs`` defaults to the demo's own epochs without importing the demo."""
    from cli.commands.demo import DEMO_EPOCHS
    from examples.fraud.train import HYPERPARAMS

    assert DEMO_EPOCHS == HYPERPARAMS["epochs"]


def test_a_project_type_checks_its_trainer_against_the_installed_wheel(
        wheel: Path, tmp_path: Path) -> None:
    """The wheel carried no ``py.typed``: mypy run on a project's trainer (the README's) said
    ``Skipping analyzing "ledger": module is installed, but missing library stubs or py.typed
    marker`` and checked nothing it calls. Each typed package carries the marker."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail(f"mypy is not installed in {sys.executable}: install the dev extra")
    with zipfile.ZipFile(wheel) as archive:
        for package in ("ledger", "replay", "report", "cli"):
            assert f"{package}/py.typed" in archive.namelist(), package
    bin_dir, _site = _venv(wheel, tmp_path / "venv")
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(readme_python_block("## Trainer API"), encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "mypy", "--python-executable",
                              str(bin_dir / "python"),
                              "--no-incremental", "train.py"], cwd=project,
                             env=_user_env(),
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_trusted_module_in_the_current_folder_is_named_with_how_to_reach_it(
        wheel: Path, tmp_path: Path) -> None:
    """The ``ledger`` script does not search the current folder (the tests' ``python -m cli``
    does): from a project folder holding ``my_ops.py``, ``ledger replay --trust my_ops`` said
    only ``No module named 'my_ops'``. It says the module is there and how to reach it."""
    bin_dir, _site = _venv(wheel, tmp_path / "venv")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exp = record_run(url, tmp_path / "ledger-data", epochs=1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_ops.py").write_text("", encoding="utf-8")
    command = [str(bin_dir / "ledger"), "--db", url, "replay", exp, "--trust", "my_ops",
               "--no-record", "--data-dir", str(tmp_path / "ledger-data")]
    refused = subprocess.run(command, cwd=project, env=_user_env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "'my_ops' is in the current folder" in refused.stderr, refused.stderr
    assert "PYTHONPATH=. ledger … --trust my_ops" in refused.stderr, refused.stderr
    reached = subprocess.run(command, cwd=project, env={**_user_env(), "PYTHONPATH": "."},
                             capture_output=True, text=True, timeout=300)
    assert reached.returncode == 0 and reached.stdout.startswith("CERTIFIED"), reached.stderr
