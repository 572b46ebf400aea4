"""The Makefile of the README's two set-up commands (`make demo`, `make test`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_install_stamp_names_the_extras(tmp_path: Path) -> None:
    """`.venv/.installed-dev-postgres`, one stamp per set of extras: `comma` was defined after
    the stamp's `:=` used it, so the stamp was `.installed-dev,postgres-`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()  # an existing venv: make plans only the install
    planned = subprocess.run(["make", "-n", "-C", str(ROOT), "install", f"VENV={venv}",
                              "EXTRAS=dev,postgres,torch"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"touch {venv}/.installed-dev-postgres-torch\n" in planned, planned
