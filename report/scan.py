"""One streaming pass over a run's events: counts by kind, the seed tree, the NDJSON appendix.

The appendix (R7) has one line per event of the experiment — every stream, ``main`` first, the
audit stream last, each in seq order — with the fields an auditor needs to check a draw, all
taken from the indexed columns that verification proves equal to the hashed body::

    {"hash": hex, "input": hex|null, "kind": str, "output": hex|null, "path": [...],
     "seed": hex|null, "seq": int, "stream": str}

(keys sorted, no spaces; ``path`` is ``null`` when its stored bytes cannot be read). With
``bodies=True`` each line also has ``"body"``: the JSON view of the whole event body, as
``schemas/event.v1.json`` describes it. Rows are streamed in batches and lines written as they
come, so memory does not grow with the run. This is the report's hot loop (a million events
must take seconds), hence the inlined formatting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgpack

from ledger.events import AUDIT_STREAM, AUGMENTATION_BATCH, MAIN_STREAM, decode_body
from ledger.json_view import json_view
from ledger.store.store import Store
from report.seedtree import SeedTree

APPENDIX_FIELDS = ("hash", "input", "kind", "output", "path", "seed", "seq", "stream")
"""Keys of an appendix line (plus ``body`` with full bodies)."""
APPENDIX_MEDIA_TYPE = "application/x-ndjson"
_COLUMNS = ("seq", "kind", "path", "seed", "input", "output", "hash")
_FLUSH_LINES = 5000
_SEQ_MIN, _SEQ_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class AppendixInfo:
    """What was written: line count, byte count and SHA-256 of the appendix file."""

    lines: int
    size: int
    sha256: str
    bodies: bool


@dataclass(slots=True)
class ScanResult:
    """What one pass over the events found."""

    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    tree: SeedTree = field(default_factory=SeedTree)
    unreadable_paths: int = 0
    appendix: AppendixInfo | None = None


def stream_order(stream: str) -> tuple[int, str]:
    """Sort key of streams as reports list them: ``main``, the others, then ``audit``."""
    return (0 if stream == MAIN_STREAM else 2 if stream == AUDIT_STREAM else 1, stream)


def _body_view(raw: bytes) -> str:
    try:
        return json.dumps(json_view(decode_body(raw)), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
    except Exception:  # a damaged body: verification reports it
        return "null"


_LINE_BREAKS_ESCAPED = {ord(char): f"\\u{ord(char):04x}" for char in "\x85\u2028\u2029"}
"""Characters JSON may hold raw inside a string but that ``str.splitlines`` (and other readers)
split lines at; they can only occur inside strings here, so their escapes read back the same.
(json.dumps escapes every other line break: they are control characters.)"""


class _Writer:
    """Buffers lines, then encodes, hashes and writes them in blocks."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0
        self.lines: list[str] = []

    def flush(self) -> None:
        """Encode, hash and write the buffered lines."""
        text = "".join(self.lines)
        if not text.isascii():
            text = text.translate(_LINE_BREAKS_ESCAPED)
        data = text.encode("utf-8", "backslashreplace")  # a tampered kind
        self.lines.clear()
        self.hasher.update(data)
        self.size += len(data)
        self.target.write(data)


def scan_run(store: Store, exp: str, streams: Iterable[str], *,
             appendix: BinaryIO | None = None, bodies: bool = False) -> ScanResult:
    """Pass once over every event of ``exp``'s ``streams``: count kinds, fill the seed tree,
    and write the appendix to ``appendix`` when given."""
    result = ScanResult()
    counts = result.counts
    tree = result.tree
    batches: dict[int, list[Any]] = {}
    kinds: dict[str, str] = {}
    dumps, unpackb = json.dumps, msgpack.unpackb
    writer = _Writer(appendix) if appendix is not None else None
    lines = writer.lines if writer is not None else []
    append = lines.append
    columns = (*_COLUMNS, "body") if bodies else _COLUMNS
    augmentation, quote, null = AUGMENTATION_BATCH, '"', "null"
    events = 0
    for stream in sorted(streams, key=stream_order):
        stream_json = dumps(stream, ensure_ascii=False)
        for row in store.iter_segment_rows(exp, stream, _SEQ_MIN, _SEQ_MAX, columns):
            seq, kind, raw_path, seed, input_, output, digest = row[:7]
            events += 1
            counts[kind] = counts.get(kind, 0) + 1
            try:
                path = unpackb(raw_path)
            except Exception:  # a damaged column: verification names it; the appendix says null
                path = None
            path_json = None
            if (kind == augmentation and type(path) is list and len(path) == 5
                    and path[0] == "epoch" and path[2] == "batch" and path[4] == "augment"
                    and type(path[1]) is int and type(path[3]) is int and seed is not None):
                epoch, batch = path[1], path[3]
                path_json = f'["epoch",{epoch},"batch",{batch},"augment"]'
                entry = batches.get(epoch)
                if entry is None:
                    batches[epoch] = [1, batch, batch, seed]
                else:
                    entry[0] += 1
                    if batch < entry[1]:
                        entry[1] = batch
                    elif batch > entry[2]:
                        entry[2] = batch
            elif type(path) is not list or not all(type(label) in (str, int) for label in path):
                path = None
                result.unreadable_paths += 1
            elif seed is not None:
                tree.add(kind, tuple(path), seed)
            if writer is None:
                continue
            if path_json is None:
                path_json = null if path is None else dumps(path, ensure_ascii=False,
                                                            separators=(",", ":"))
            kind_json = kinds.get(kind)
            if kind_json is None:
                kind_json = kinds[kind] = dumps(kind, ensure_ascii=False)
            body_json = f'"body":{_body_view(row[7])},' if bodies else ""
            append(f'{{{body_json}"hash":"{digest.hex()}",'
                   f'"input":{null if input_ is None else quote + input_.hex() + quote},'
                   f'"kind":{kind_json},'
                   f'"output":{null if output is None else quote + output.hex() + quote},'
                   f'"path":{path_json},'
                   f'"seed":{null if seed is None else quote + seed.hex() + quote},'
                   f'"seq":{seq},"stream":{stream_json}}}\n')
            if not events % _FLUSH_LINES:
                writer.flush()
    for epoch in sorted(batches):
        count, low, high, seed = batches[epoch]
        tree.add_batches(AUGMENTATION_BATCH, epoch, count, low, high, seed)
    result.events = events
    if writer is not None:
        writer.flush()
        result.appendix = AppendixInfo(events, writer.size, writer.hasher.hexdigest(), bodies)
    return result
