"""Choosing how to start helper processes (verification segments, replay chunks)."""

from __future__ import annotations

import os
import threading


def pool_start_method() -> str:
    """``fork`` when it is safe, else ``spawn``.

    fork starts workers instantly and shares what the parent already loaded; with other threads
    alive it could copy a lock one of them holds, so then (and off POSIX) spawn is used.
    """
    return "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
