"""Shared fixtures: a store on every backend (the contract suite), and the CLI as a user runs it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ledger.experiment import ExperimentManager
from ledger.store import Store

POSTGRES_ENV = "LEDGER_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parent.parent


def generic_timedelta(value: int | str) -> np.timedelta64:
    """A timedelta64 of numpy's generic unit — ``np.timedelta64(3)`` — which numpy >= 2.5
    deprecates (a warning, an error in this suite) but still makes, as a user's code may: the
    ledger must refuse it as it refuses one of any unit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.timedelta64(value)


def readme_python_block(heading: str, containing: str = "") -> str:
    """The first ```python block of README.md after ``heading`` that contains ``containing``.

    Tests execute the README's examples as they are written, so the README cannot drift from the
    code users copy it into.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        if containing in block:
            return block
    raise AssertionError(f"README.md has no python block containing {containing!r} after "
                         f"{heading!r}")


def _postgres_schema_url(base: str) -> tuple[str, str]:
    """A URL that puts every table in a fresh schema of the test database, and that schema."""
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", schema


def postgres_base_url() -> str:
    """The test PostgreSQL server's URL (``LEDGER_TEST_POSTGRES_URL``); skips the test when it
    is not set."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against")
    return base


@contextlib.contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A URL to a new, empty schema of the database at ``base``, dropped (with everything in
    it) on leaving the block."""
    import sqlalchemy

    url, schema = _postgres_schema_url(base)
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield url
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to an empty schema on the test PostgreSQL server; skipped when none is configured."""
    with postgres_schema(postgres_base_url()) as url:
        yield url


@pytest.fixture(params=["sqlite-file", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a new ledger on each backend: the store contract tests run once per backend."""
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A new, empty ledger on each backend."""
    opened = Store.open(store_url, create=True)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ExperimentManager]:
    """An ExperimentManager on a fresh SQLite ledger, its data folder beside it."""
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path / "data"
                           ) as opened:
        yield opened


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL for a new SQLite ledger file (not yet created)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


LEDGER_COMMAND = ([str(Path(sys.executable).with_name("ledger"))]
                  if Path(sys.executable).with_name("ledger").is_file()
                  else [sys.executable, "-m", "cli"])
"""How tests start the ``ledger`` command (see :func:`run_cli`)."""


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ledger`` command as a user would, capturing its output: the
    ``ledger`` script beside this interpreter — which, unlike ``python -m cli``, does not put
    the current folder on ``sys.path`` — or ``python -m cli`` where no script is installed."""
    command = [*LEDGER_COMMAND, *args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LEDGER_URL", None) if env is None or "LEDGER_URL" not in env else None
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
