"""A git repository of training code, and a process whose main script lies outside it: what
the tests of ``code_dir`` (create_experiment, resume_experiment) record versions of."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def git(folder: Path, *args: str) -> str:
    """Run git in ``folder``; return what it printed."""
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def committed_repo(repo: Path) -> Path:
    """A new git repository at ``repo`` with train.py committed (one commit): returns it."""
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("print('train')\n")
    git(repo, "add", "train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "c")
    return repo


def code_outside_the_main_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed repository ``training-code`` holding train.py, while ``__main__`` is a
    launcher elsewhere (a console script in a virtualenv): returns the repository."""
    repo = committed_repo(tmp_path / "training-code")
    launcher = tmp_path / "venv-bin" / "launcher"
    launcher.parent.mkdir()
    launcher.write_text("")
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(launcher))
    return repo


def installed_package(packages: Path, name: str, version: str, *,
                      listed_by: str = "RECORD") -> Path:
    """A package ``mytrainer`` installed into the package folder ``packages`` (a
    ``site-packages``) by the distribution ``name`` ``version``, whose dist-info lists it in its
    RECORD or its ``top_level.txt``: returns the package's folder (holding jobs/train.py)."""
    package = packages / "mytrainer"
    (package / "jobs").mkdir(parents=True, exist_ok=True)
    (package / "jobs" / "train.py").write_text("print('train')\n")
    info = packages / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if listed_by == "RECORD":
        (info / "RECORD").write_text(f"mytrainer/jobs/train.py,,\n{info.name}/METADATA,,\n")
    else:
        (info / "top_level.txt").write_text("mytrainer\n")
    return package
