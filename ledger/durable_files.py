"""Files written whole or not at all, and on disk before the ledger records them.

The ledger commits with ``synchronous=FULL``: an event it reports durable survives a power loss.
A file an event names — a stored dataset, an exported report — must be at least as durable, or
a crash could leave an event pointing at an empty or missing file. So a file is written to a
temporary beside its target, flushed to disk (``fsync``), renamed over the target, and the
folder is flushed so that the rename itself survives. A failed write removes its temporary: no
partial file is left under any name.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

FILE_MODE = 0o644
"""Files are readable by every user of the machine, as an auditor replaying another user's run
needs (``mkstemp`` alone makes them readable by their owner only)."""

_UNSYNCABLE_FOLDER = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM}
"""Errors of flushing a folder on file systems that do not support it (some network and FUSE
file systems): the file itself is flushed, which is all they offer."""


def in_device_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies under /dev or /proc, whose entries stand for devices, streams and
    processes: no place for a file the user means to keep (``/dev/null.key``), and renaming
    over one replaces the node."""
    return os.path.abspath(path).split(os.sep)[1:2] in (["dev"], ["proc"])


def flush_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        if error.errno in _UNSYNCABLE_FOLDER:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _UNSYNCABLE_FOLDER:
            raise
    finally:
        os.close(descriptor)


def stage_file(target: Path, fill: Callable[[BinaryIO], T]) -> tuple[str, T]:
    """Write a temporary beside ``target`` with ``fill`` and flush it to disk; return its path
    and what ``fill`` returned. The caller renames it into place (:func:`commit_file`) or
    removes it; on any failure here it is already removed. OSError propagates."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            outcome = fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, FILE_MODE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary, outcome


def commit_file(temporary: str, target: Path) -> None:
    """Rename a staged temporary over ``target`` and flush the folder. OSError propagates (the
    temporary is then left for the caller to remove)."""
    os.replace(temporary, target)
    flush_folder(target.parent)


def write_file_durably(target: Path, fill: Callable[[BinaryIO], T]) -> T:
    """Write ``target`` whole or not at all, durably (see the module docstring); return what
    ``fill`` returned. OSError propagates, with nothing left behind."""
    temporary, outcome = stage_file(target, fill)
    try:
        commit_file(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return outcome
