"""Type hints throughout: mypy finds no error in the packages, under ``[tool.mypy]`` of
pyproject.toml (which names the packages it checks)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_packages_pass_mypy() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail(f"mypy is not installed in {sys.executable}: install the dev extra "
                    f"(pip install -e '.[dev]', as `make test` does)", pytrace=False)
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
