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


@pytest.mark.parametrize(("field", "value"), [
    ("seq", 2**63 - 1), ("seq", 0), ("t", 2**63 - 1), ("t", -(2**63)),
])
def test_make_event_accepts_seq_and_t_up_to_the_signed_64_bit_bounds(field: str,
                                                                     value: int) -> None:
    """The store keeps seq and t in signed 64-bit columns: every value in that range is a
    valid field, up to both bounds included."""
    assert getattr(build({**EXAMPLE, field: value}), field) == value


@pytest.mark.parametrize("t", [-(2**63) - 1, -(2**64), -(3**63)])
def test_make_event_refuses_a_time_below_the_signed_64_bit_range(t: int) -> None:
    """A t below -2**63 does not fit the signed 64-bit column: refused as a bad field."""
    with pytest.raises(BadInputError, match="64-bit"):
        build({**EXAMPLE, "t": t})


def test_the_main_and_audit_stream_names_are_the_recorded_ones() -> None:
    """Stream names are stored data: ``main`` (DESIGN §3) and ``audit`` (where replays and
    report exports are written) must stay these names for existing ledgers to read back."""
    from ledger.events import AUDIT_STREAM, MAIN_STREAM
    assert (MAIN_STREAM, AUDIT_STREAM) == ("main", "audit")
    assert check_stream(MAIN_STREAM) == "main" and check_stream(AUDIT_STREAM) == "audit"


def _nested_map(levels: int) -> dict[str, Any]:
    """A map ``levels`` containers deep (maps and lists alternating, a map outermost)."""
    value: Any = 1
    for level in range(levels - 1):
        value = {"k": value} if level % 2 else [value]
    return {"k": value}


def test_params_are_accepted_exactly_as_deep_as_a_body_that_verifies(tmp_path: Any) -> None:
    """Whatever ``make_event`` accepts must re-encode to its own body bytes: verification
    recomputes ``canonical(body)``, where params sit one level down. Params one level short of
    MAX_DEPTH are the deepest a body holds: accepted, and the run verifies. Params MAX_DEPTH
    deep used to be accepted too — and the run then failed verification for ever ("body is
    not in canonical form"); they are refused when recorded, and nothing is written."""
    from ledger import ExperimentManager, verify
    from ledger.canonical import MAX_DEPTH
    deepest, too_deep = _nested_map(MAX_DEPTH - 1), _nested_map(MAX_DEPTH)
    event = make_event("exp-0123456789ab", "main", 1, "custom", params=deepest,
                       prev=ZERO_DIGEST, t=0)
    assert canonical(event.body_map()) == event.body
    with pytest.raises(EncodingError, match="nested deeper"):
        make_event("exp-0123456789ab", "main", 1, "custom", params=too_deep, prev=ZERO_DIGEST,
                   t=0)
    with pytest.raises(EncodingError, match="nested deeper"):
        make_event("exp-0123456789ab", "main", 1, "custom", meta=too_deep, prev=ZERO_DIGEST,
                   t=0)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("deep", seed=1) as experiment:
            experiment.record("custom", path=("a",), params=deepest)
            with pytest.raises(EncodingError):
                experiment.record("custom", path=("b",), params=too_deep)
        kinds = [kind for _s, _q, kind, _b in manager.store.iter_run_bodies(experiment.id)]
    assert kinds.count("custom") == 1
    assert verify(url).ok


def test_a_body_over_the_size_limit_is_refused_when_recorded_not_when_verified(
        tmp_path: Any) -> None:
    """Verification refuses a stored body over MAX_BODY_BYTES as malformed; the writer used to
    store one (the run then failed verification for ever). It is refused when recorded, with a
    remedy; a body just under the limit is written and verifies."""
    from ledger import ExperimentManager, verify
    from ledger.events import MAX_BODY_BYTES
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("big", seed=1) as experiment:
            with pytest.raises(BadInputError, match="bytes, but the limit is 16,777,216"):
                experiment.record("custom", path=("big",),
                                  params={"blob": b"x" * MAX_BODY_BYTES})
            experiment.record("custom", path=("fits",),
                              params={"blob": b"x" * (MAX_BODY_BYTES - 4096)})
        kinds = [kind for _s, _q, kind, _b in manager.store.iter_run_bodies(experiment.id)]
    assert kinds.count("custom") == 1
    assert verify(url).ok


@pytest.mark.parametrize("field", ["exp", "stream", "kind"])
@pytest.mark.parametrize("value", [["main"], {"main": 1}, bytearray(b"main")])
def test_unhashable_names_are_refused_as_bad_input(field: str, value: Any) -> None:
    """An exp, stream or kind that is not a str (even an unhashable one, which cannot reach the
    per-name cache) is refused with BadInputError naming the field, not a TypeError."""
    with pytest.raises(BadInputError, match=field):
        build({**EXAMPLE, field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("seed", b"\x00" * 15), ("input", b"\x00" * 31), ("output", 5), ("params", [("a", 1)]),
    ("meta", "pid=1"),
])
def test_a_malformed_field_is_named_in_the_error(field: str, value: Any) -> None:
    """The refusal of a malformed seed, digest or map names the field that is wrong."""
    with pytest.raises(BadInputError, match=rf"event (field )?{field} must"):
        build({**EXAMPLE, field: value})


def test_make_event_without_params_or_meta_records_empty_maps() -> None:
    """params and meta default to empty maps (DESIGN §3: both are maps), hashed exactly as if
    ``{}`` had been given."""
    fields = {name: value for name, value in EXAMPLE.items() if name not in ("params", "meta")}
    event = make_event(**fields)
    assert event.params == {} and event.meta == {}
    assert event.hash == build({**EXAMPLE, "params": {}, "meta": {}}).hash
    assert decode_body(event.body)["params"] == {}


@pytest.mark.parametrize("data", [None, 5, 1.5, object()])
def test_decode_body_refuses_what_is_not_bytes(data: Any) -> None:
    """A stored body that is not bytes at all (a hostile column) is BadInputError, not a
    TypeError."""
    with pytest.raises(BadInputError, match="not bytes"):
        decode_body(data)


def test_decode_body_accepts_a_body_of_exactly_the_size_limit() -> None:
    """MAX_BODY_BYTES is the largest body read back: one of exactly that size decodes."""
    def body_with_blob(size: int) -> bytes:
        return build({**EXAMPLE, "params": {"blob": b"\x00" * size}}).body
    overhead = len(body_with_blob(2**20)) - 2**20  # bin32 header from here on: constant
    body = body_with_blob(MAX_BODY_BYTES - overhead)
    assert len(body) == MAX_BODY_BYTES
    assert len(decode_body(body)["params"]["blob"]) == MAX_BODY_BYTES - overhead


def test_decode_body_refuses_non_str_keys_nested_in_the_body() -> None:
    """Map keys are str everywhere in a body (DESIGN §2): an int key inside params is refused
    at decoding, not handed to readers."""
    body = {**EXAMPLE, "v": 1, "params": {1: "a"}}
    with pytest.raises(BadInputError, match="msgpack"):
        decode_body(msgpack.packb(body, use_bin_type=True))


def test_a_bare_user_generator_is_identified_by_which_generator_its_path_seeded() -> None:
    """A user draw with no output (a bare generator) is the same draw only when the same
    generator was seeded: numpy then torch at one path is refused, naming both; a draw with an
    output, or of another kind, is identified by its output."""
    from ledger.events import USER_DRAW, draw_value, seen_draw
    output = bytes(range(32))
    numpy_gen = draw_value(USER_DRAW, {"generator": "numpy"}, None)
    torch_gen = draw_value(USER_DRAW, {"generator": "torch"}, None)
    assert numpy_gen == ("generator", "numpy") and numpy_gen != torch_gen
    assert draw_value(USER_DRAW, {"generator": "numpy"}, output) == output
    assert draw_value("metric", {"generator": "numpy"}, None) is None
    draws: dict[tuple[str, tuple], Any] = {}
    assert not seen_draw(draws, USER_DRAW, ("dropout", 1), numpy_gen)
    draws[(USER_DRAW, ("dropout", 1))] = numpy_gen
    assert seen_draw(draws, USER_DRAW, ["dropout", 1], numpy_gen)
    with pytest.raises(BadInputError, match=r"for generator 'torch' \(recorded for 'numpy'\)"
                                            r".*once per run$"):
        seen_draw(draws, USER_DRAW, ("dropout", 1), torch_gen)
