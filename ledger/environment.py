"""What ran and where: the environment fingerprint, the code version and the entrypoint.

``experiment_created`` records these three so that a reader of the ledger — or replay — knows
which program produced a run and on what machine. Everything returned here is canonically
encodable (str keys; str, int, bool, bytes or None values).

WARNING: a fingerprint describes, it does not enforce. Two machines with equal fingerprints can
still differ (a CPU microcode, a BLAS kernel chosen at run time); replay compares digests, not
fingerprints, to decide whether a run reproduced.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import getpass
import hashlib
import os
import platform
import site
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

KEY_PACKAGES = ("numpy", "scipy", "torch", "scikit-learn", "pandas", "threadpoolctl", "msgpack",
                "sqlalchemy", "reproducibility-ledger")
"""Packages whose installed version is recorded (when installed; never imported to find out)."""
DETERMINISM_ENV = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "CUBLAS_WORKSPACE_CONFIG")
"""Environment variables that change numeric results or their order; recorded, set or not."""
DIFF_TAG = b"ledger/code-diff/v1\x00"
_GIT_TIMEOUT = 10.0


def environment_fingerprint() -> dict[str, Any]:
    """The environment of this process: Python, key package versions, platform, CPU, BLAS, env.

    The static part is computed once per process; the determinism environment variables and the
    BLAS thread counts are read on every call (a program may change them after start-up).
    """
    fingerprint = dict(_static_fingerprint())
    fingerprint["env"] = {name: os.environ.get(name) for name in DETERMINISM_ENV}
    fingerprint["blas_threads"] = blas_threads()
    return fingerprint


def blas_threads() -> dict[str, int]:
    """Threads each OpenBLAS library loaded in this process uses now, by library file name.

    The thread count can change results: a matrix product split over more threads sums its
    terms in another order, so the low bits differ. Recorded with every run, so that a
    divergence can be traced to it. Empty when no OpenBLAS is loaded (or it cannot be asked).
    """
    return {name: int(getter()) for name, getter in _openblas_thread_getters()}


_OPENBLAS_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads")


def loaded_openblas_libraries() -> list[tuple[str, ctypes.CDLL]]:
    """(path, handle) of each OpenBLAS library this process has loaded, by path (found in
    /proc/self/maps: Linux only; elsewhere none). Nothing new is loaded (RTLD_NOLOAD)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({line.split()[-1] for line in maps.splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    libraries = []
    for path in paths:
        try:
            libraries.append((path, ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)))
        except OSError:
            continue
    return libraries


@functools.cache
def _openblas_thread_getters() -> tuple[tuple[str, Any], ...]:
    """(file name, thread-count getter) of the OpenBLAS libraries this process has loaded."""
    getters = []
    for path, library in loaded_openblas_libraries():
        for symbol in _OPENBLAS_GETTERS:
            getter = getattr(library, symbol, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                getters.append((Path(path).name, getter))
                break
    return tuple(getters)


@functools.cache
def _static_fingerprint() -> dict[str, Any]:
    return {
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "compiler": platform.python_compiler()},
        "packages": package_versions(),
        "platform": {"system": platform.system(), "release": platform.release(),
                     "platform": platform.platform(), "machine": platform.machine(),
                     "processor": platform.processor(), "byteorder": sys.byteorder,
                     "cpu_count": os.cpu_count() or 0},
        "blas": blas_info(),
    }


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (from package metadata; absent packages are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["numpy"] = np.__version__  # the one actually imported, even in odd installs
    return versions


def blas_info() -> dict[str, Any]:
    """BLAS/LAPACK numpy was built against, and threadpoolctl's view of the loaded libraries."""
    info: dict[str, Any] = {}
    config: Mapping[str, Any] | None  # its layout varies with the numpy version: read with care
    try:
        config = np.show_config(mode="dicts")
    except (TypeError, ValueError, KeyError):  # a build whose config cannot be read as dicts
        config = None
    if isinstance(config, dict):
        build = config.get("Build Dependencies", {})
        for role in ("blas", "lapack"):
            entry = build.get(role) or {}
            info[role] = {key: str(entry[key]) for key in ("name", "version",
                                                             "openblas configuration")
                          if key in entry}
        simd = config.get("SIMD Extensions", {})
        if isinstance(simd, dict):
            info["simd"] = {key: [str(item) for item in value] if isinstance(value, list)
                            else str(value) for key, value in simd.items()}
    try:
        from threadpoolctl import threadpool_info  # optional
    except ImportError:
        return info
    info["threadpools"] = [{key: str(pool.get(key)) for key in
                            ("user_api", "internal_api", "version", "num_threads", "architecture")}
                           for pool in threadpool_info()]
    return info


def code_version(start: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The version of the code: git commit, dirty flag and a digest of the uncommitted diff.

    ``start`` is any path inside the repository (default: the main script's folder, else the
    current folder). Outside a git repository, or without git, returns ``{"vcs": None}``; so it
    does for code installed into a package folder (``site-packages``: :func:`installed_code`),
    which no commit describes — not even that of a repository holding the virtualenv — adding
    ``"distribution": {"name", "version"}`` of the distribution that installed it, when one
    did: the code's version then is that release's.
    ``diff_digest`` is the SHA-256 (tag ``ledger/code-diff/v1``) of ``git diff HEAD`` — tracked
    changes only; ``untracked`` counts files git does not track, which the digest cannot cover.
    """
    folder = Path(start) if start is not None else _main_folder()
    if folder.is_file():
        folder = folder.parent
    if installed_code(folder):
        distribution = installed_distribution(folder)
        return {"vcs": None} if distribution is None else {"vcs": None,
                                                           "distribution": distribution}
    # One git process for the commit and the changes: porcelain v2 heads its entries with
    # "# branch.oid <commit>" ("(initial)" before the first commit).
    status = _git(folder, "status", "--porcelain=v2", "--branch", "--untracked-files=normal")
    if status is None:
        return {"vcs": None}
    lines = status.splitlines()
    commit = next((line.split(" ", 2)[2] for line in lines
                   if line.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return {"vcs": None}
    entries = [line for line in lines if line.strip() and not line.startswith("#")]
    untracked = sum(1 for line in entries if line.startswith("? "))
    diff_digest = None
    if any(not line.startswith("? ") for line in entries):
        diff = _git_bytes(folder, "diff", "HEAD", "--binary")
        diff_digest = None if diff is None else hashlib.sha256(DIFF_TAG + diff).digest()
    return {"vcs": "git", "commit": commit.strip(), "dirty": bool(entries),
            "diff_digest": diff_digest, "untracked": untracked}


PACKAGE_FOLDER_NAMES = frozenset({"site-packages", "dist-packages"})
"""Names of the folders installers put packages in (``dist-packages``: Debian's Python)."""


def installed_code(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` lies in a folder packages are installed into: the running
    interpreter's ``purelib``/``platlib`` (and user site), or any folder named
    ``site-packages`` or ``dist-packages``. Code there came from a distribution (a wheel), not
    from a checkout: a repository around it — a project whose ``.venv`` it is — does not
    version it, and its version is the distribution's (recorded with the environment)."""
    resolved = Path(path).resolve()
    if PACKAGE_FOLDER_NAMES.intersection(resolved.parts):
        return True
    return any(resolved.is_relative_to(folder) for folder in _package_folders())


def installed_distribution(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The distribution that installed the code at ``path`` (in a package folder, see
    :func:`installed_code`): ``{"name": "reproducibility-ledger", "version": "0.1.0"}``, by the
    top-level package ``path`` lies in and the installed distributions of that folder that own
    it (their ``top_level.txt``, else their file list). None when no distribution owns it."""
    resolved = Path(path).resolve()
    for root in _package_roots(resolved):
        parts = resolved.relative_to(root).parts
        if not parts:
            continue  # the package folder itself: a module of its own, not a package
        top = parts[0]
        for distribution in metadata.distributions(path=[str(root)]):
            if top in _top_level_names(distribution):
                return {"name": str(distribution.metadata["Name"]),
                        "version": str(distribution.version)}
    return None


def recorded_distribution(code: object) -> tuple[str, str] | None:
    """The name and version of the distribution a recorded code version names (see
    :func:`code_version`), or None when it names none — or names one with values that are not
    text: whoever can write a ledger can record anything there, and readers quote only text."""
    distribution = code.get("distribution") if isinstance(code, Mapping) else None
    if not isinstance(distribution, Mapping):
        return None
    name, version = distribution.get("name"), distribution.get("version")
    if isinstance(name, str) and isinstance(version, str):
        return name, version
    return None


def _package_roots(path: Path) -> list[Path]:
    """The package folders ``path`` lies in, innermost first."""
    roots = [folder for folder in _package_folders() if path.is_relative_to(folder)]
    roots += [parent for parent in path.parents if parent.name in PACKAGE_FOLDER_NAMES]
    return sorted(dict.fromkeys(roots), key=lambda root: len(root.parts), reverse=True)


def _top_level_names(distribution: metadata.Distribution) -> set[str]:
    """The top-level packages and modules a distribution installs."""
    listed = distribution.read_text("top_level.txt")
    if listed:
        return set(listed.split())
    names = set()
    for file in distribution.files or []:
        first = file.parts[0] if file.parts else ""
        if first and not first.endswith((".dist-info", ".egg-info", ".data")) \
                and first != "..":
            names.add(first.removesuffix(".py"))
    return names


@functools.lru_cache(maxsize=1)
def _package_folders() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    folders = [paths[key] for key in ("purelib", "platlib") if key in paths]
    with contextlib.suppress(AttributeError):  # a site module without them (embedded Python)
        folders += [*site.getsitepackages(), site.getusersitepackages()]
    return tuple(dict.fromkeys(Path(folder).resolve() for folder in folders))


def _main_folder() -> Path:
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main_file).resolve().parent if main_file else Path.cwd()


def _git(folder: Path, *args: str) -> str | None:
    output = _git_bytes(folder, *args)
    return None if output is None else output.decode("utf-8", "replace")


def _git_bytes(folder: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              timeout=_GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def entrypoint() -> dict[str, Any]:
    """How this process was started: the main module (for ``python -m``) and the command line."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_file = getattr(main, "__file__", None)
    return {"module": getattr(spec, "name", None), "script": main_file,
            "argv": [str(arg) for arg in sys.argv]}


def current_user() -> str | None:
    """Who runs this process, recorded as an observed fact; None when the OS has no name for
    the user (a container's ``--user 1000`` without a passwd entry) — which must never stop a
    run, a replay or a report."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
