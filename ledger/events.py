"""The event model (DESIGN §3): bodies, their canonical bytes and hash, kinds, ids.

An event's body is a map of thirteen fields; its hash is
``SHA-256(b"ledger/event/v1\\x00" + canonical(body))``. The stored body bytes are exactly the
bytes that were hashed. Events of one (experiment, stream) form a chain through ``prev``.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgpack

from ledger.canonical import canonical, normalise, pack_normalised
from ledger.digests import event_hash_of_bytes
from ledger.errors import BadInputError, InvalidIdError
from ledger.seeds import Label, Path, check_path

EVENT_VERSION = 1
BODY_FIELDS = ("v", "exp", "stream", "seq", "kind", "path", "seed", "params", "input", "output",
               "meta", "prev", "t")

EXPERIMENT_CREATED = "experiment_created"
DATASET_REGISTERED = "dataset_registered"
WORKER_SPAWNED = "worker_spawned"
EPOCH_RESET = "epoch_reset"
AUGMENTATION_BATCH = "augmentation_batch"
METRIC = "metric"
CHECKPOINT = "checkpoint"
RUN_COMPLETED = "run_completed"
USER_DRAW = "user_draw"
RUN_RESUMED = "run_resumed"
REPLAY_RECORDED = "replay_recorded"
REPORT_EXPORTED = "report_exported"
KINDS = frozenset({EXPERIMENT_CREATED, DATASET_REGISTERED, WORKER_SPAWNED, EPOCH_RESET,
                   AUGMENTATION_BATCH, METRIC, CHECKPOINT, RUN_COMPLETED, USER_DRAW,
                   RUN_RESUMED, REPLAY_RECORDED, REPORT_EXPORTED})
"""Kinds of format v1 (DESIGN §3), plus ``user_draw`` for draw points a user names,
``run_resumed`` where an interrupted run was continued, and the two audit kinds,
``replay_recorded`` and ``report_exported``, written to the ``audit`` stream."""
COMPLETION_STATUSES = ("ok", "failed")
"""The statuses ``run_completed`` records: the run ended normally, or by an exception."""

MAIN_STREAM = "main"
AUDIT_STREAM = "audit"
"""The stream where replays and report exports of an experiment are recorded, after the run:
a chain like any other (verified, append-only), but not part of the run, so ``run_completed``
does not list it."""
AUDIT_KINDS = frozenset({REPLAY_RECORDED, REPORT_EXPORTED})
"""The kinds the audit stream holds, and all it may hold: replay and diff skip that stream."""
NOT_DRAWS = frozenset({EXPERIMENT_CREATED, METRIC, CHECKPOINT, RUN_COMPLETED, RUN_RESUMED})
"""Kinds with nothing to re-execute from the ledger alone (compared by ``replay --full``).
Every other kind of a run but ``dataset_registered`` is a draw: identified by (kind, path), once
per run (DESIGN §3)."""
LIBRARY_KINDS = frozenset({EXPERIMENT_CREATED, RUN_RESUMED, RUN_COMPLETED}) | AUDIT_KINDS
"""Kinds only the library records, each at its one place (main seq 0, a resumption, main last,
the audit stream): ``record`` refuses them, since one anywhere else breaks the run's chain."""
_EXP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,3}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
"""Range of seq and t: the store keeps them in signed 64-bit columns."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest event body read back; a larger one is refused as malformed, not loaded."""


def new_experiment_id() -> str:
    """A fresh experiment id: ``exp-`` and 12 random hex digits."""
    return "exp-" + secrets.token_hex(6)


def check_experiment_id(exp: Any) -> str:
    """Return ``exp`` if it matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``, else raise
    InvalidIdError."""
    if not isinstance(exp, str) or not _EXP_ID.fullmatch(exp):
        shown = repr(exp) if len(repr(exp)) <= 80 else repr(exp)[:77] + "..."
        raise InvalidIdError(f"malformed experiment id {shown}: ids match "
                             f"[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    return exp


def check_stream(stream: Any) -> str:
    """Return ``stream`` if it is a valid stream name (``main``, ``worker-3``,
    ``rank-1/worker-0``)."""
    if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
        raise InvalidIdError(f"malformed stream name {stream!r}: e.g. main, worker-3, "
                             f"rank-1/worker-0")
    return stream


def check_kind(kind: Any) -> str:
    """Return ``kind`` if it is a lower-case identifier; custom kinds are allowed."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise BadInputError(f"malformed event kind {kind!r}: lower-case letters, digits and _")
    return kind


def path_bytes(path: Sequence[Label]) -> bytes:
    """The path's canonical bytes, as stored in the ``path`` column (str and int stay
    apart)."""
    return canonical(list(path))


class Event(NamedTuple):
    """One recorded event: its body fields, its canonical bytes and its hash (immutable)."""

    exp: str
    stream: str
    seq: int
    kind: str
    path: Path
    seed: bytes | None
    params: dict[str, Any]
    input: bytes | None
    output: bytes | None
    meta: dict[str, Any]
    prev: bytes
    t: int
    body: bytes
    hash: bytes

    def body_map(self) -> dict[str, Any]:
        """The body as the map that was hashed."""
        return body_map(self.exp, self.stream, self.seq, self.kind, self.path, self.seed,
                        self.params, self.input, self.output, self.meta, self.prev, self.t)


def body_map(exp: str, stream: str, seq: int, kind: str, path: Sequence[Label], seed: bytes | None,
             params: Mapping[str, Any], input: bytes | None, output: bytes | None,
             meta: Mapping[str, Any], prev: bytes, t: int) -> dict[str, Any]:
    """Assemble an event body map (DESIGN §3) from its fields."""
    return {"v": EVENT_VERSION, "exp": exp, "stream": stream, "seq": seq, "kind": kind,
            "path": list(path), "seed": seed, "params": dict(params), "input": input,
            "output": output, "meta": dict(meta), "prev": prev, "t": t}


def _check_digest(name: str, value: Any, size: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise BadInputError(f"event field {name} must be {size} bytes or None")
    return bytes(value)


def is_draw(kind: Any) -> bool:
    """Whether events of ``kind`` are draws, which replay re-executes and a run holds once per
    (kind, path): every kind but :data:`NOT_DRAWS`, ``dataset_registered`` and the audit kinds —
    custom kinds included."""
    return (isinstance(kind, str) and kind not in NOT_DRAWS and kind != DATASET_REGISTERED
            and kind not in AUDIT_KINDS)


def check_recordable(kind: Any, params: Any = None, output: bytes | None = None) -> None:
    """Refuse what a caller may not pass to a ``record`` method: a :data:`LIBRARY_KINDS` kind,
    and a ``user_draw`` with an output but no registered draw to rerun (``"draw"`` in params) —
    replay reruns a user draw only through its registered function, so nothing could check that
    output and the run could never be certified."""
    if isinstance(kind, str) and kind in LIBRARY_KINDS:
        raise BadInputError(f"got kind {kind!r}, but only the library records it (create, "
                            f"resume or close the run instead)")
    if kind == USER_DRAW and output is not None and not (isinstance(params, Mapping)
                                                         and "draw" in params):
        raise BadInputError("got a user_draw with an output but no registered draw in its "
                            "params, which replay could never check: use exp.draw(name, path, "
                            "...) with ledger.register_draw, or record no output (a bare "
                            "generator)")


@functools.lru_cache(maxsize=1024)
def check_names(exp: str, stream: str, kind: str) -> None:
    """Validate names once per (experiment, stream, kind): a writer repeats them at every event."""
    check_experiment_id(exp)
    check_stream(stream)
    check_kind(kind)


def _check_position(exp: Any, stream: Any, seq: Any, kind: Any, prev: Any, t: Any) -> None:
    if type(exp) is not str or type(stream) is not str or type(kind) is not str:
        check_experiment_id(exp)
        check_stream(stream)
        check_kind(kind)
    check_names(exp, stream, kind)
    if type(seq) is not int or not 0 <= seq <= _INT64_MAX:
        raise BadInputError(f"event seq must be an int in [0, 2**63), got {seq!r}")
    if type(t) is not int or not _INT64_MIN <= t <= _INT64_MAX:
        raise BadInputError(f"event time t must be an int of nanoseconds (64-bit), got {t!r}")
    if type(prev) is not bytes or len(prev) != 32:
        raise BadInputError("event field prev must be 32 bytes")


def make_event(exp: str, stream: str, seq: int, kind: str, *, path: Sequence[Label] = (),
               seed: bytes | None = None, params: Mapping[str, Any] | None = None,
               input: bytes | None = None, output: bytes | None = None,
               meta: Mapping[str, Any] | None = None, prev: bytes, t: int) -> Event:
    """Build, encode and hash one event. Validates every field so that no bad body is written."""
    _check_position(exp, stream, seq, kind, prev, t)
    labels = check_path(path)
    seed = _check_digest("seed", seed, 16)
    input = _check_digest("input", input, 32)
    output = _check_digest("output", output, 32)
    params = _normalise_map("params", params)
    meta = _normalise_map("meta", meta)
    body_bytes = encode_normalised_body(exp, stream, seq, kind, list(labels), seed, params, input,
                                        output, meta, prev, t)
    return Event(exp, stream, seq, kind, labels, seed, params, input, output, meta, prev, t,
                 body_bytes, event_hash_of_bytes(body_bytes))


def encode_normalised_body(exp: str, stream: str, seq: int, kind: str, path: list[Label],
                           seed: bytes | None, params: dict[str, Any], input: bytes | None,
                           output: bytes | None, meta: dict[str, Any], prev: bytes, t: int
                           ) -> bytes:
    """The canonical body bytes of fields that are already valid and normalised.

    Only the body's size is checked: this is the shared last step of :func:`make_event` and of
    the library's own hot loops (``StreamWriter.append_normalised``), whose fields are built
    from known-good values. ``params`` and ``meta`` must be outputs of :func:`ledger.canonical.normalise` (or
    built the same way: sorted str keys, plain values); ``path`` a list of valid labels.
    """
    # Keys in sorted order, values already canonical: the bytes equal canonical(body_map(...)).
    body = pack_normalised({"exp": exp, "input": input, "kind": kind, "meta": meta,
                            "output": output, "params": params, "path": path, "prev": prev,
                            "seed": seed, "seq": seq, "stream": stream, "t": t,
                            "v": EVENT_VERSION})
    if len(body) > MAX_BODY_BYTES:  # verification and decode_body refuse it: never write it
        raise BadInputError(f"got an event body of {len(body):,} bytes, but the limit is "
                            f"{MAX_BODY_BYTES:,}: store large values as files or datasets and "
                            f"record their digest")
    return body


def _normalise_map(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError(f"event {name} must be a map, got {type(value).__name__}")
    return normalise(dict(value), depth=1)  # a field of the body: one level down


_BODY_FIELD_SET = frozenset(BODY_FIELDS)


def decode_body(body_bytes: bytes) -> dict[str, Any]:
    """Decode stored body bytes into a map, refusing anything that is not a v1 event body.

    Hostile bytes (truncated, huge, deeply nested, wrong types) raise BadInputError; they are
    never trusted beyond what this function checks.
    """
    if (not isinstance(body_bytes, (bytes, bytearray, memoryview))
            or len(body_bytes) > MAX_BODY_BYTES):
        raise BadInputError("event body is not bytes of a sane size")
    try:
        body = msgpack.unpackb(body_bytes, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises many unrelated types for bad input
        raise BadInputError(f"event body is not valid msgpack ({type(error).__name__})") from None
    if not isinstance(body, dict) or body.keys() != _BODY_FIELD_SET:
        raise BadInputError("event body does not have exactly the v1 fields")
    if body["v"] != EVENT_VERSION:
        raise BadInputError(f"event body has unknown format version {body['v']!r}")
    return body


def draw_value(kind: str, params: Any, output: bytes | None) -> Any:
    """What a second recording of a draw must equal to be the same draw: its output — or, for a
    user draw that has none (a bare generator), which generator its path seeded, so that
    seeding torch at a path numpy already drew from is refused rather than silently dropped."""
    if output is None and kind == USER_DRAW and isinstance(params, Mapping):
        return ("generator", params.get("generator"))
    return output


def seen_draw(draws: dict[tuple[str, tuple], Any], kind: str, path: Sequence[Label],
              value: Any, hint: str = "") -> bool:
    """True when (kind, path) is in ``draws`` with this :func:`draw_value`: a draw is recorded
    once per run.

    Raises BadInputError when it is there with another value — two different draws cannot
    share an identity (DESIGN §3). ``hint`` is appended to that message.
    """
    recorded = draws.get((kind, tuple(path)), _ABSENT)
    if recorded is _ABSENT:
        return False
    if recorded == value:
        return True
    what = (f"for generator {value[1]!r} (recorded for {recorded[1]!r})"
            if isinstance(value, tuple) and isinstance(recorded, tuple) else "with another output")
    raise BadInputError(f"got a second {kind} at path {list(path)} {what}, but a draw (kind, "
                        f"path) is recorded once per run{hint}")


def refuse_second_draw(draws: dict[tuple[str, tuple], Any], kind: str, path: Path) -> None:
    """Refuse to record (kind, path) again with ``record``, which cannot skip it as
    :func:`seen_draw` lets ``record_draw`` do: a run holding a draw twice cannot be certified."""
    if (kind, path) in draws:
        raise BadInputError(f"got a second {kind} at path {list(path)}, but a draw (kind, path) "
                            f"is recorded once per run: give each its own path (record_draw "
                            f"records a draw once and skips it after)")


_ABSENT = object()
