"""Checking one segment of one chain: the inner loop of verification.

A segment is the events of one (experiment, stream) with seq in ``[lo, hi)``. Checking it needs
nothing outside it, so segments of one chain can be checked in parallel processes and stitched
afterwards: each segment reports the ``prev`` of its first event and the hash of its last one.

The per-row work is kept lean — rows come a fetch batch at a time, and most bodies are accepted
by :class:`~ledger.body_check.ChainBodyCheck` without decoding — because it is most of what
``ledger verify`` costs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import msgpack

from ledger.body_check import FAST_COLUMNS, ChainBodyCheck
from ledger.canonical import canonical
from ledger.digests import EVENT_TAG
from ledger.errors import EncodingError, LedgerError
from ledger.events import (AUDIT_KINDS, AUDIT_STREAM, BODY_FIELDS, EVENT_VERSION,
                           EXPERIMENT_CREATED, MAIN_STREAM, MAX_BODY_BYTES, RUN_COMPLETED,
                           check_experiment_id, check_kind, check_stream)
from ledger.store.store import Store

_FIELDS = frozenset(BODY_FIELDS)
_MIN_SEQ = -(2**63)
_COLUMNS_OF_BODY = itemgetter("exp", "stream", "seq", "kind", "seed", "input", "output", "prev",
                              "t")
SEGMENT_COLUMNS = FAST_COLUMNS
FETCH_ROWS = 500
"""Rows fetched at a time: small enough that a batch is still in the CPU cache when checked
(5000 rows cost 0.4 µs more per event)."""
_PACK = msgpack.Packer(use_bin_type=True).pack
"""Decoded values are canonical already: packing the decoded path gives its canonical bytes."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Events of one chain with seq in [lo, hi); the first segment (lo 0) also reads seq < 0."""

    exp: str
    stream: str
    lo: int
    hi: int


@dataclass(slots=True)
class SegmentResult:
    """What one segment showed: its ends for stitching, its first problem, facts it carries."""

    segment: Segment
    count: int = 0
    first_prev: bytes | None = None
    last_hash: bytes | None = None
    problem: tuple[int, str] | None = None
    """(seq, what is wrong) of the first bad event, if any."""
    created: tuple[int, Any, Any] | None = None
    """(seq, recorded name, t) of experiment_created, when this segment holds it."""
    completed: tuple[int, dict[str, Any], bytes] | None = None
    """(seq, params, prev) of run_completed, when this segment holds it."""
    last_seq: int = -1


def _stop(result: SegmentResult, seq: int, problem: str) -> SegmentResult:
    result.problem = (seq, problem)
    return result


def check_segment(store: Store, segment: Segment) -> SegmentResult:
    """Re-hash and check every event of ``segment``; stop at its first bad event.

    A body shaped like one that already passed the full check in this segment is checked
    against its columns by :class:`ChainBodyCheck`; every other body is decoded in full, which
    finds and words any problem.
    """
    result = SegmentResult(segment)
    exp, stream = segment.exp, segment.stream
    expected_seq = segment.lo
    head: bytes | None = None
    sha256 = hashlib.sha256
    shapes = ChainBodyCheck()
    fast_accepts = shapes.accepts
    full_checks = 0
    audit = stream == AUDIT_STREAM
    # A chain's first segment also reads seqs below 0: a row inserted there is reported, not
    # skipped.
    lo = segment.lo if segment.lo > 0 else _MIN_SEQ
    for batch in store.iter_segment_batches(exp, stream, lo, segment.hi, SEGMENT_COLUMNS,
                                            batch_size=FETCH_ROWS):
        for row in batch:
            seq, kind, _path, _seed, _input, _output, prev, stored_hash, _t, body_bytes = row
            if seq != expected_seq:
                return _stop(result, *_misplaced(seq, expected_seq))
            try:
                digest = sha256(EVENT_TAG + body_bytes).digest()
            except TypeError:  # a database that holds e.g. TEXT where the body's bytes belong
                return _stop(result, seq, f"stored body is {type(body_bytes).__name__}, "
                                          f"not bytes")
            if digest != stored_hash:
                return _stop(result, seq, "stored body does not hash to the stored hash "
                                          "(body or hash altered)")
            if audit and kind not in AUDIT_KINDS:
                return _stop(result, seq, f"{kind!r} in the audit stream, which holds only "
                                          f"replay and report records (replay skips it)")
            if kind in AUDIT_KINDS and not audit:
                # Read by nobody (the report and replay look for them in the audit stream): a
                # forged record, named rather than left to look like a certificate.
                return _stop(result, seq, f"{kind!r} outside the audit stream, the only one "
                                          f"that holds replay and report records")
            body = None
            if not fast_accepts(row):
                problem, body = full_check(exp, stream, row)
                if problem is not None:
                    return _stop(result, seq, problem)
                shapes.learn(row, hits=expected_seq - segment.lo - full_checks)
                full_checks += 1
            if head is None:
                result.first_prev = prev
            elif prev != head:
                return _stop(result, seq, "prev is not the hash of the event before it "
                                          "(an event was inserted, removed or reordered)")
            if body is not None:  # the fast check accepts no kind whose facts are kept
                if kind == EXPERIMENT_CREATED and (seq != 0 or stream != MAIN_STREAM):
                    # A second creation (its own root seed) would be read by whoever asks for
                    # the first experiment_created, and another by whoever reads main's.
                    return _stop(result, seq, "experiment_created outside main seq 0 (a run is "
                                              "created once)")
                _note_facts(result, seq, kind, prev, body)
            head = digest
            expected_seq += 1
            result.count += 1
    result.last_hash = head
    result.last_seq = expected_seq - 1
    return result


def _misplaced(seq: int, expected_seq: int) -> tuple[int, str]:
    """(first bad seq, problem) for a row whose seq is not the one expected next."""
    if seq > expected_seq:
        return expected_seq, f"event missing (seq gap): expected seq {expected_seq}, found {seq}"
    return seq, (f"seq {seq} out of place: expected seq {expected_seq} "
                 f"(an event inserted or duplicated)")


def full_check(exp: str, stream: str, row: tuple[Any, ...]
               ) -> tuple[str | None, dict[str, Any] | None]:
    """Decode the body of ``row`` (SEGMENT_COLUMNS order) of chain (exp, stream) and compare it
    with every column: (what is wrong or None, the decoded body when it is a v1 map).

    Bodies over MAX_BODY_BYTES are refused undecoded (the fast check accepts none that long).
    """
    seq, kind, path, seed, input_, output, prev, _hash, t, body_bytes = row
    if len(body_bytes) > MAX_BODY_BYTES:
        return (f"body of {len(body_bytes):,} bytes exceeds the {MAX_BODY_BYTES:,}-byte limit",
                None)
    try:
        body = msgpack.unpackb(body_bytes, raw=False, strict_map_key=True, use_list=False)
    except Exception as error:  # msgpack raises many unrelated types for bad input
        return f"body is not valid msgpack ({type(error).__name__})", None
    if type(body) is not dict or body.keys() != _FIELDS or body["v"] != EVENT_VERSION:
        return "body is not a v1 event body", None
    if (_COLUMNS_OF_BODY(body) != (exp, stream, seq, kind, seed, input_, output, prev, t)
            or _PACK(body["path"]) != path):
        return _which_column(body, exp, stream, row), body
    return field_problem(body) or _canonical_problem(body, body_bytes), body


def _canonical_problem(body: dict[str, Any], body_bytes: bytes) -> str | None:
    """What makes stored bytes other than ``canonical(body)`` (DESIGN §2, §3), or None.

    Keys out of order, a 5 written as uint16, a float32: bytes another writer could produce
    for the same body, whose hash then differs from the one the contract defines — an
    independent verifier re-encoding the body would call the chain broken where the stored
    hash alone does not."""
    try:
        if canonical(body) == body_bytes:
            return None
    except EncodingError as error:
        return f"body is not in canonical form ({error})"
    return ("body is not in canonical form: its bytes are not canonical(body), so its hash is "
            "not the event's")


_DIGEST_SIZES = (("seed", 16), ("input", 32), ("output", 32), ("prev", 32))


def field_problem(body: dict[str, Any]) -> str | None:
    """What makes a decoded 13-field body not a v1 event body (DESIGN §3), or None.

    A body a forger encoded without the library's checks can hash and link correctly and still
    carry fields of the wrong type — params that are not a map, a path label that is a map, a
    seed of 3 bytes. Every reader (show, diff, replay, report) relies on these types, so
    verification refuses them here, naming the field. The checks cover only what the fast check
    keeps pinned (type tags, bin lengths, the sign of path integers), so a body it accepts has
    passed them too.
    """
    for name, check in (("exp", check_experiment_id), ("stream", check_stream),
                        ("kind", check_kind)):
        try:
            check(body[name])
        except LedgerError:
            return f"body field {name} is not a valid {name} name"
    for name in ("seq", "t"):
        if type(body[name]) is not int:
            return f"body field {name} is {type(body[name]).__name__}, not an integer"
    path = body["path"]
    if type(path) not in (list, tuple) or not all(
            type(label) is str or (type(label) is int and 0 <= label < 2**64) for label in path):
        return "body field path is not a list of str or non-negative int labels"
    for name, size in _DIGEST_SIZES:
        value = body[name]
        if value is None and name != "prev":
            continue
        if type(value) is not bytes or len(value) != size:
            return f"body field {name} is not a {size}-byte digest"
    for name in ("params", "meta"):
        if type(body[name]) is not dict or not all(type(key) is str for key in body[name]):
            return f"body field {name} is not a map with str keys"
    return None


def _note_facts(result: SegmentResult, seq: int, kind: Any, prev: bytes,
                body: dict[str, Any]) -> None:
    """Keep what stitching needs from experiment_created and the first run_completed."""
    if kind == EXPERIMENT_CREATED:
        result.created = (seq, body["params"].get("name") if type(body["params"]) is dict
                          else None, body["t"])
    elif kind == RUN_COMPLETED and result.completed is None:  # events after it are flagged
        params = body["params"] if type(body["params"]) is dict else {}
        result.completed = (seq, params, prev)


def _which_column(body: dict[str, Any], exp: str, stream: str, row: tuple[Any, ...]) -> str:
    stored = dict(zip(SEGMENT_COLUMNS, row))
    stored.update(exp=exp, stream=stream)
    for name in ("exp", "stream", "seq", "kind", "seed", "input", "output", "prev", "t"):
        if body[name] != stored[name]:
            return f"column {name} differs from the body"
    return "column path differs from the body"
