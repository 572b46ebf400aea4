"""Type hints throughout: mypy finds no error in the packages, under ``[tool.mypy]`` of
pyproject.toml (which names the packages it checks)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.version import Version

from conftest import ROOT

STUBS_CHECKED_AGAINST = {"numpy": "2.2.5", "sqlalchemy": "2.1"}
"""The oldest releases whose inline types the annotations are written against. pyproject.toml
admits older ones at run time, but their types differ: numpy's before 2.2 give ``show_config``
no ``mode`` and ``savez`` loose keywords, before 2.2.5 ``tolist()`` a union with a scalar;
SQLAlchemy's before 2.1 type a row as a Sequence, not a tuple."""


def _older_than_checked() -> list[str]:
    """The installed packages whose types are older than the ones the code is checked against."""
    return [f"{name} {metadata.version(name)}" for name, oldest in STUBS_CHECKED_AGAINST.items()
            if Version(metadata.version(name)) < Version(oldest)]


@pytest.mark.slow
def test_the_packages_pass_mypy() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail(f"mypy is not installed in {sys.executable}: install the dev extra "
                    f"(pip install -e '.[dev]', as `make test` does)", pytrace=False)
    older = _older_than_checked()
    if older:
        checked = ", ".join(f"{name} >= {oldest}"
                            for name, oldest in STUBS_CHECKED_AGAINST.items())
        pytest.skip(f"the code is type-checked against {checked}, whose types differ from those "
                    f"of the installed {', '.join(older)}")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
