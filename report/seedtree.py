"""The seed derivation tree of a run, aggregated so that its size does not grow with the run.

Every draw's seed is ``derive(root, path)``; the tree shows which paths a run drew from. Paths are
folded into patterns: a worker (``worker/k``) and an epoch's shuffle (``epoch/e/shuffle``) stay
one node each, an epoch's augmentation batches become one node ``epoch/e/batch/*/augment`` with
their count and index range, and in a user's own paths every integer label becomes ``*``.
``"*"`` in a pattern means "any integer". Past :data:`MAX_NODES` patterns, new paths fold further
(every integer becomes ``*``, then only the first label is kept, then none: ``…``), so memory
stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_NODES = 2000
"""Most patterns kept before new paths are folded more coarsely."""
WILDCARD = "*"
ELLIPSIS = "…"


@dataclass(slots=True)
class _Node:
    kind: str
    count: int
    seed: bytes | None
    low: int | None
    high: int | None


def _fine(path: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """The node pattern of a path, and the integer it folded (for the index range)."""
    if len(path) == 5 and path[0] == "epoch" and path[2] == "batch" and isinstance(path[3], int):
        return (path[0], path[1], path[2], WILDCARD, path[4]), path[3]
    if path and path[0] in ("worker", "epoch", "rank"):
        return path, None
    folded = None
    pattern = []
    for label in path:
        if isinstance(label, int):
            folded = label if folded is None else folded
            pattern.append(WILDCARD)
        else:
            pattern.append(label)
    return tuple(pattern), folded


def _coarse(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(WILDCARD if isinstance(label, int) else label for label in path)


class SeedTree:
    """Aggregates (kind, path, seed) of every draw into at most about MAX_NODES patterns."""

    def __init__(self, max_nodes: int = MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self._nodes: dict[tuple[str, tuple[Any, ...]], _Node] = {}
        self.folded = False

    def add(self, kind: str, path: tuple[Any, ...], seed: bytes | None) -> None:
        """Count one draw at ``path`` (recorded as ``kind`` with ``seed``)."""
        pattern, index = _fine(path)
        key = (kind, pattern)
        node = self._nodes.get(key)
        if node is None and len(self._nodes) >= self.max_nodes:
            self.folded = True
            key = (kind, _coarse(path))
            node = self._nodes.get(key)
            if node is None and len(self._nodes) >= self.max_nodes + 100:
                # a path of one label (or none) has nothing after its first label to fold
                key = (kind, (path[0], ELLIPSIS) if len(path) > 1 else _coarse(path))
                node = self._nodes.get(key)
                if node is None and len(self._nodes) >= self.max_nodes + 200:
                    key = (kind, (ELLIPSIS,))  # first labels that differ every time
                    node = self._nodes.get(key)
            if key[1] != pattern:  # a coarser pattern: its range would mix integers
                index = None
        if node is None:
            self._nodes[key] = _Node(kind, 1, seed, index, index)
            return
        node.count += 1
        node.seed = None
        if index is not None:
            node.low = index if node.low is None else min(node.low, index)
            node.high = index if node.high is None else max(node.high, index)

    def add_batches(self, kind: str, epoch: int, count: int, low: int, high: int,
                    seed: bytes | None) -> None:
        """Count ``count`` draws at ``epoch/e/batch/b/augment`` for b in [low, high] at once
        (``seed`` is the seed of the one draw when ``count`` is 1)."""
        key: tuple[str, tuple[Any, ...]] = (kind, ("epoch", epoch, "batch", WILDCARD, "augment"))
        if key not in self._nodes and len(self._nodes) >= self.max_nodes:
            self.folded = True
            key = (kind, ("epoch", WILDCARD, "batch", WILDCARD, "augment"))
        node = self._nodes.get(key)
        if node is None:
            self._nodes[key] = _Node(kind, count, seed if count == 1 else None, low, high)
            return
        node.count += count
        node.seed = None
        node.low = low if node.low is None else min(node.low, low)
        node.high = high if node.high is None else max(node.high, high)

    def nodes(self) -> list[dict[str, Any]]:
        """The patterns, sorted by path (integers numerically): path, kind, count, seed, range."""
        def order(item: tuple[tuple[str, tuple[Any, ...]], _Node]) -> tuple:
            (kind, pattern), _node = item
            return (tuple((0, label, "") if isinstance(label, int) else (1, 0, str(label))
                          for label in pattern), kind)

        rows = []
        for (kind, pattern), node in sorted(self._nodes.items(), key=order):
            rows.append({"path": list(pattern), "kind": kind, "count": node.count,
                         "seed": node.seed.hex() if node.count == 1 and node.seed else None,
                         "range": None if node.low is None or node.count == 1
                         else [node.low, node.high]})
        return rows
