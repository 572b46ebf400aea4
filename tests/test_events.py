"""The event model (DESIGN §3): bodies, their bytes and hash, field validation, ids, decoding."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import canonical
from ledger.digests import ZERO_DIGEST, event_hash
from ledger.errors import BadInputError, EncodingError, InvalidIdError
from ledger.events import (BODY_FIELDS, KINDS, MAX_BODY_BYTES, Event, body_map,
                           check_experiment_id, check_kind, check_stream, decode_body, make_event,
                           new_experiment_id, path_bytes)
from event_strategies import digests32, labels, maps

exp_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}"
stream_names = st.from_regex(rf"{_NAME}(/{_NAME}){{0,3}}", fullmatch=True)
kinds = st.sampled_from(sorted(KINDS)) | st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
events = st.fixed_dictionaries({
    "exp": exp_ids, "stream": stream_names, "seq": st.integers(min_value=0, max_value=2**63 - 1),
    "kind": kinds, "path": st.lists(labels, max_size=5), "seed": st.none() | st.binary(
        min_size=16, max_size=16), "params": maps, "input": digests32, "output": digests32,
    "meta": maps, "prev": st.binary(min_size=32, max_size=32),
    "t": st.integers(min_value=-(2**63), max_value=2**63 - 1)})

EXAMPLE = {"exp": "exp-0123456789ab", "stream": "main", "seq": 3, "kind": "metric",
           "path": [], "seed": None, "params": {"name": "auc", "value": 0.5}, "input": None,
           "output": None, "meta": {}, "prev": bytes(range(32)), "t": 1_700_000_000_000_000_000}


def build(fields: dict[str, Any]) -> Event:
    fields = dict(fields)
    return make_event(fields.pop("exp"), fields.pop("stream"), fields.pop("seq"),
                      fields.pop("kind"), **fields)


def as_body(fields: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, **fields, "path": list(fields["path"])}


@given(events)
def test_body_bytes_are_the_canonical_bytes_of_the_body_map(fields: dict[str, Any]) -> None:
    event = build(fields)
    assert event.body == canonical(as_body(fields))
    assert event.body == canonical(event.body_map())
    assert event.hash == hashlib.sha256(b"ledger/event/v1\x00" + event.body).digest()
    assert event.hash == event_hash(as_body(fields))


@given(events)
def test_stored_body_decodes_to_the_fields(fields: dict[str, Any]) -> None:
    event = build(fields)
    decoded = decode_body(event.body)
    assert set(decoded) == set(BODY_FIELDS)
    assert decoded == as_body(fields)
    assert decoded == event.body_map()


@given(events)
def test_every_field_is_in_the_hash(fields: dict[str, Any]) -> None:
    original = build(fields)
    changed = dict(fields, seq=fields["seq"] ^ 1)
    assert build(changed).hash != original.hash
    changed = dict(fields, t=fields["t"] ^ 1)
    assert build(changed).hash != original.hash
    changed = dict(fields, meta={**fields["meta"], "observed": True})
    assert build(changed).hash != original.hash
    changed = dict(fields, prev=bytes([fields["prev"][0] ^ 1]) + fields["prev"][1:])
    assert build(changed).hash != original.hash


def test_params_and_meta_are_normalised_before_hashing() -> None:
    numpy_event = build({**EXAMPLE, "params": {"value": np.float32(0.5), "n": np.int64(3),
                                               "shape": (2, 3)}, "meta": {"pid": np.int32(7)}})
    plain_event = build({**EXAMPLE, "params": {"n": 3, "shape": [2, 3], "value": 0.5},
                         "meta": {"pid": 7}})
    assert numpy_event.hash == plain_event.hash
    assert type(numpy_event.params["n"]) is int
    assert numpy_event.path == ()


def test_numpy_integer_path_labels_are_normalised() -> None:
    assert build({**EXAMPLE, "path": ["worker", np.int64(2)]}).hash == build(
        {**EXAMPLE, "path": ["worker", 2]}).hash


def test_path_column_bytes_keep_int_and_str_labels_apart() -> None:
    assert path_bytes(("worker", 1)) == canonical(["worker", 1])
    assert path_bytes((1,)) != path_bytes(("1",))
    assert path_bytes(()) == bytes.fromhex("90")


@pytest.mark.parametrize(("field", "value"), [
    ("seed", b"\x00" * 15), ("seed", b"\x00" * 32), ("seed", "00" * 16),
    ("input", b"\x00" * 31), ("output", b"\x00" * 33), ("output", 5),
    ("prev", b"\x00" * 31), ("prev", None), ("prev", "00" * 32),
    ("params", [("a", 1)]), ("meta", "pid=1"), ("path", "worker"), ("path", [-1]),
    ("path", [True]), ("seq", -1), ("seq", True), ("seq", 1.0), ("seq", 2**63),
    ("t", 1.5), ("t", "now"), ("t", 2**63), ("t", None),
    ("kind", "Metric"), ("kind", ""), ("kind", "metric; DROP TABLE"), ("kind", 3),
    ("exp", "a/b"), ("exp", ""), ("exp", 7), ("stream", "/main"), ("stream", "main/"),
    ("stream", ""), ("stream", None),
])
def test_make_event_refuses_malformed_fields(field: str, value: Any) -> None:
    with pytest.raises(BadInputError):
        build({**EXAMPLE, field: value})


@pytest.mark.parametrize("params", [{1: "a"}, {"a": {1, 2}}, {"big": 2**64}, {"s": "\ud800"}])
def test_make_event_refuses_params_canonical_encoding_refuses(params: dict) -> None:
    with pytest.raises(EncodingError):
        build({**EXAMPLE, "params": params})


def test_event_is_immutable() -> None:
    event = build(EXAMPLE)
    with pytest.raises(AttributeError):
        event.seq = 4  # type: ignore[misc]


def test_body_map_has_exactly_the_v1_fields() -> None:
    body = body_map(*[EXAMPLE[name] for name in BODY_FIELDS if name != "v"])
    assert tuple(body) == BODY_FIELDS
    assert body["v"] == 1


# -- ids ---------------------------------------------------------------------------------------

def test_new_experiment_ids_are_fresh_and_valid() -> None:
    ids = {new_experiment_id() for _ in range(20)}
    assert len(ids) == 20
    for exp in ids:
        assert re.fullmatch(r"exp-[0-9a-f]{12}", exp)
        assert check_experiment_id(exp) == exp


@given(exp_ids)
def test_ids_of_the_documented_form_are_accepted(exp: str) -> None:
    assert check_experiment_id(exp) == exp
    assert check_stream(exp) == exp


@pytest.mark.parametrize("exp", [
    "", "-leading-dash", ".hidden", "_x", "a/b", "../etc/passwd", "a\\b",
    "x'; DROP TABLE ledger_events; --", "a b", "abc\n", "\nabc", "é", "a" * 65, "x" * 10_240, "a\x00b", None, 42, b"exp-1", ["exp-1"],
])
def test_malformed_experiment_ids_are_refused(exp: Any) -> None:
    with pytest.raises(InvalidIdError) as raised:
        check_experiment_id(exp)
    assert len(str(raised.value)) < 200  # a 10 KB id is not echoed back in full


@pytest.mark.parametrize("stream", ["main", "worker-3", "rank-1/worker-0", "a/b/c/d"])
def test_documented_stream_names_are_accepted(stream: str) -> None:
    assert check_stream(stream) == stream


@pytest.mark.parametrize("stream", ["", "/main", "main/", "a//b", "a/b/c/d/e", "wörker", "x" * 65,
                                    "main\n", None])
def test_malformed_stream_names_are_refused(stream: Any) -> None:
    with pytest.raises(InvalidIdError):
        check_stream(stream)


@pytest.mark.parametrize("kind", sorted(KINDS) + ["my_own_draw"])
def test_kinds_are_lower_case_identifiers(kind: str) -> None:
    assert check_kind(kind) == kind


# -- decoding stored bodies ------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_decode_body_never_fails_other_than_bad_input(data: bytes) -> None:
    try:
        body = decode_body(data)
    except BadInputError:
        return
    assert set(body) == set(BODY_FIELDS) and body["v"] == 1


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"v": 1}),
    msgpack.packb({**{name: None for name in BODY_FIELDS}, "v": 2}),
    msgpack.packb({**{name: None for name in BODY_FIELDS}, "extra": 1}),
    msgpack.packb({1: 2}), b"\x91" * 100_000, b"\xc6\xff\xff\xff\xff",
])
def test_decode_body_refuses_what_is_not_a_v1_body(data: bytes) -> None:
    with pytest.raises(BadInputError):
        decode_body(data)


def test_decode_body_refuses_oversized_bodies_without_decoding() -> None:
    with pytest.raises(BadInputError, match="size"):
        decode_body(b"\x00" * (MAX_BODY_BYTES + 1))


def test_first_event_prev_is_zero() -> None:
    assert ZERO_DIGEST == bytes(32)
    assert build({**EXAMPLE, "seq": 0, "prev": ZERO_DIGEST}).prev == bytes(32)
