"""What a group of processes holds: read from Linux's /proc, for the crash tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def group_shared_memory(group: int) -> set[str]:
    """Names of the /dev/shm blocks (not yet unlinked) that the processes of ``group`` hold
    open (Linux /proc). Only these may be removed: /dev/shm is the machine's, and a block that
    merely appeared meanwhile may be another program's (another test suite's workers)."""
    names: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
        names.update(target.removeprefix("/dev/shm/") for target in targets
                     if target.startswith("/dev/shm/") and not target.endswith(" (deleted)"))
    return names


def tcp_client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the TCP connections process ``pid`` has open to ``server_port`` (Linux
    /proc): how a database server names a client's sessions (``client_port``). Empty once the
    process has ended."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    inodes = set()
    for descriptor in descriptors:
        with contextlib.suppress(OSError):  # closed since the listing: not a connection now
            inodes.add(os.readlink(descriptor).removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
