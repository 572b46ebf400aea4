"""Sharing out a run's draws between the processes of a parallel replay, a chunk at a time.

The draws ``[0, total)`` are claimed in chunks from both ends of what is left: the main process
takes chunks from the front, worker processes from the back. Each process therefore re-executes
long contiguous runs of batches (an epoch's sample order is computed once per process, not once
per chunk), and whoever is faster — the main process also verifies the chains and digests the
datasets — simply takes more chunks: no static split to get wrong on a busy machine.

A process that fails at draw ``i`` lowers the shared *limit* to ``i``: no chunk at or beyond it is
handed out any more (the earliest failure in recorded order is the one replay reports, so draws
after it are not needed), while every draw before it still is.
"""

from __future__ import annotations

from multiprocessing.context import BaseContext

CHUNK_DRAWS = 8
"""Draws per claim: about a millisecond of augmentation batches, so the ends meet evenly."""


class Claims:
    """Two-ended chunk claiming over ``[0, total)`` in memory shared with forked workers."""

    def __init__(self, context: BaseContext, total: int, chunk: int = CHUNK_DRAWS) -> None:
        self._lock = context.Lock()
        self._front = context.RawValue("q", 0)
        self._back = context.RawValue("q", total)
        self._limit = context.RawValue("q", total)
        self.total = total
        self.chunk = chunk

    def from_front(self) -> range | None:
        """The next chunk from the front, or None when nothing below the limit is left."""
        with self._lock:
            end = min(self._back.value, self._limit.value)
            start = self._front.value
            if start >= end:
                return None
            stop = self._front.value = min(start + self.chunk, end)
        return range(start, stop)

    def from_back(self) -> range | None:
        """The next chunk from the back, or None when nothing below the limit is left."""
        with self._lock:
            stop = self._back.value = min(self._back.value, self._limit.value)
            if stop <= self._front.value:
                return None
            start = self._back.value = max(stop - self.chunk, self._front.value)
        return range(start, stop)

    def stop_at(self, index: int) -> None:
        """Hand out nothing at or beyond ``index`` any more (a draw there failed)."""
        with self._lock:
            self._limit.value = min(self._limit.value, index)

    def claimed(self) -> int:
        """How many draws have been handed out so far (for progress)."""
        with self._lock:
            return self._front.value + self.total - self._back.value
