"""Canonical encoding (DESIGN §2): one byte string per value, and refusal of everything else."""

from __future__ import annotations

import datetime
import decimal
import enum
import random
from collections import OrderedDict, namedtuple
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import generic_timedelta
from ledger.canonical import MAX_DEPTH, canonical, normalise, pack_normalised
from ledger.errors import EncodingError

INT_MIN, UINT_MAX = -(2**63), 2**64 - 1

ints = st.integers(min_value=INT_MIN, max_value=UINT_MAX)
floats = st.floats(allow_nan=False)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(), st.binary())
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=30)


def as_tuples(value: Any) -> Any:
    """The same value with every list a tuple: canonical encoding must not see a difference."""
    if isinstance(value, list):
        return tuple(as_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: as_tuples(item) for key, item in value.items()}
    return value


def reinserted(value: Any, rng: random.Random) -> Any:
    """The same value with every dict's keys inserted in a shuffled order."""
    if isinstance(value, list):
        return [reinserted(item, rng) for item in value]
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: reinserted(value[key], rng) for key in keys}
    return value


def sorted_dicts(value: Any) -> Any:
    if isinstance(value, list):
        return [sorted_dicts(item) for item in value]
    if isinstance(value, dict):
        return {key: sorted_dicts(value[key]) for key in sorted(value)}
    return value


@given(values)
def test_round_trip_of_plain_values(value: Any) -> None:
    encoded = canonical(value)
    assert msgpack.unpackb(encoded, raw=False, strict_map_key=False) == value
    assert encoded == msgpack.packb(sorted_dicts(value), use_bin_type=True)
    assert normalise(value) == value


@given(values, st.randoms(use_true_random=False))
def test_dict_insertion_order_does_not_matter(value: Any, rng: random.Random) -> None:
    assert canonical(reinserted(value, rng)) == canonical(value)


@given(st.dictionaries(st.text(), ints, min_size=2))
def test_dict_keys_are_sorted_in_the_bytes(mapping: dict[str, int]) -> None:
    decoded = msgpack.unpackb(canonical(mapping), raw=False, object_pairs_hook=list)
    keys = [key for key, _ in decoded]
    assert keys == sorted(mapping)
    assert [key.encode() for key in keys] == sorted(key.encode() for key in mapping)


@given(values)
def test_tuples_encode_as_lists(value: Any) -> None:
    assert canonical(as_tuples(value)) == canonical(value)


@given(st.integers(min_value=INT_MIN, max_value=2**63 - 1))
def test_numpy_signed_integers_encode_as_python_ints(number: int) -> None:
    expected = canonical(number)
    assert canonical(np.int64(number)) == expected
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= number <= info.max:
            assert canonical(dtype(number)) == expected


@given(st.integers(min_value=0, max_value=UINT_MAX))
def test_numpy_unsigned_integers_encode_as_python_ints(number: int) -> None:
    expected = canonical(number)
    assert canonical(np.uint64(number)) == expected
    for dtype in (np.uint8, np.uint16, np.uint32):
        if number <= np.iinfo(dtype).max:
            assert canonical(dtype(number)) == expected


@given(st.floats(allow_nan=False))
def test_numpy_floats_encode_as_python_float64(number: float) -> None:
    assert canonical(np.float64(number)) == canonical(number)
    encoded = canonical(number)
    assert encoded[0] == 0xCB and len(encoded) == 9  # always float64, never float32


@given(st.floats(allow_nan=False, width=32))
def test_float32_is_widened_to_float64(number: float) -> None:
    assert canonical(np.float32(number)) == canonical(number)
    assert len(canonical(np.float32(number))) == 9


@given(st.floats(allow_nan=False, width=16))
def test_float16_is_widened_to_float64(number: float) -> None:
    assert canonical(np.float16(number)) == canonical(number)


@pytest.mark.parametrize(("numpy_value", "python_value"), [
    (np.bool_(True), True), (np.bool_(False), False), (np.float16(0.5), 0.5),
    (np.float32(0.1), float(np.float32(0.1))), (np.int64(-1), -1), (np.uint8(255), 255),
])
def test_numpy_scalars_inside_containers(numpy_value: Any, python_value: Any) -> None:
    assert canonical({"a": [numpy_value, (numpy_value,)]}) == canonical({"a": [python_value,
                                                                               [python_value]]})
    plain = normalise({"a": numpy_value})["a"]
    assert type(plain) is type(python_value)


def test_bool_is_not_an_int() -> None:
    assert canonical(True) != canonical(1)
    assert canonical(np.bool_(False)) != canonical(0)


def test_float_zero_is_not_int_zero() -> None:
    assert canonical(0.0) != canonical(0)


@pytest.mark.parametrize("number", [INT_MIN, -1, 0, 2**31, 2**32, 2**63 - 1, 2**63, UINT_MAX])
def test_edge_integers_round_trip(number: int) -> None:
    assert msgpack.unpackb(canonical(number)) == number
    assert msgpack.unpackb(canonical([number, {"n": number}])) == [number, {"n": number}]


@pytest.mark.parametrize("number", [INT_MIN - 1, UINT_MAX + 1, 2**128, -(2**100)])
def test_integers_beyond_64_bits_are_refused(number: int) -> None:
    with pytest.raises(EncodingError, match="64 bits"):
        canonical(number)
    with pytest.raises(EncodingError):
        canonical({"nested": [number]})


@pytest.mark.parametrize("size", [0, 1, 2**16, 2**20 + 3])
def test_empty_and_large_blobs_round_trip(size: int) -> None:
    blob = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 4096))) * (
        size // 4096 + 1)
    blob = blob[:size]
    assert msgpack.unpackb(canonical(blob)) == blob
    assert canonical(bytearray(blob)) == canonical(blob)
    assert canonical(memoryview(blob)) == canonical(blob)


@given(st.text())
def test_unicode_strings_round_trip(string: str) -> None:
    assert msgpack.unpackb(canonical(string), raw=False) == string
    assert msgpack.unpackb(canonical({string: string}), raw=False) == {string: string}


def test_strings_and_bytes_stay_apart() -> None:
    assert canonical("ab") != canonical(b"ab")


@pytest.mark.parametrize("string", ["\ud800", "ok\udfffok"])
def test_unencodable_strings_are_refused_with_an_encoding_error(string: str) -> None:
    with pytest.raises(EncodingError):
        canonical(string)
    with pytest.raises(EncodingError):
        canonical({string: 1})
    assert canonical(["after", "a refusal"]) == msgpack.packb(["after", "a refusal"])


@pytest.mark.parametrize("mapping", [
    {1: "a"}, {b"key": 1}, {("a",): 1}, {None: 1}, {1.5: 1}, {True: 1}, {"a": 1, 2: "b"},
    {"ok": {3: "nested"}},
])
def test_non_str_keys_are_refused(mapping: dict) -> None:
    with pytest.raises(EncodingError, match="key"):
        canonical(mapping)


class _Str(str):
    pass


class _Colour(str, enum.Enum):
    RED = "red"


class _Shouting(str):
    def __str__(self) -> str:
        return self.upper()


class _NeverEqual(str):
    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


@given(st.dictionaries(st.text(), ints))
def test_str_subclasses_encode_as_their_text_as_keys_and_as_values(mapping: dict[str, int]
                                                                   ) -> None:
    for kind in (_Str, np.str_, _Shouting):
        assert canonical({kind(key): value for key, value in mapping.items()}) == canonical(
            mapping)
        assert canonical([kind(key) for key in mapping]) == canonical(list(mapping))
        assert all(type(key) is str for key in normalise({kind(k): 1 for k in mapping}))


def test_a_str_subclass_is_its_text_not_what_its_str_says() -> None:
    # str(_Colour.RED) is "_Colour.RED" in Python 3.11, and _Shouting's __str__ shouts
    assert canonical(_Colour.RED) == canonical({"x": "red"}["x"])
    assert canonical({_Colour.RED: _Shouting("quiet")}) == canonical({"red": "quiet"})
    assert type(normalise(_Str("a"))) is str


class _Int(int):
    def __int__(self) -> int:
        return 99

    def __index__(self) -> int:
        return 99


class _Float(float):
    def __float__(self) -> float:
        return 2.0


def test_int_and_float_subclasses_are_their_value_not_what_their_conversion_says() -> None:
    # msgpack packs an int or float subclass by its value (3, 3.0); canonical() must agree,
    # whatever the subclass's __int__/__index__/__float__ return.
    assert canonical(_Int(3)) == canonical(3) == msgpack.packb(_Int(3))
    assert canonical(_Float(3.0)) == canonical(3.0) == msgpack.packb(_Float(3.0))
    assert canonical({"n": [_Int(3), _Float(3.0)]}) == canonical({"n": [3, 3.0]})
    assert type(normalise(_Int(3))) is int and type(normalise(_Float(3.0))) is float


def test_two_keys_with_the_same_text_are_refused() -> None:
    with pytest.raises(EncodingError, match="two keys with the same text"):
        canonical({_NeverEqual("a"): 1, _NeverEqual("a"): 2})


def test_dict_subclasses_encode_like_dicts() -> None:
    ordered = OrderedDict([("b", 1), ("a", 2)])
    assert canonical(ordered) == canonical({"a": 2, "b": 1})


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset(), object(), 1j, decimal.Decimal("1.5"), datetime.date(2024, 1, 1),
    np.array([1, 2]), np.complex128(1), np.datetime64("2024-01-01"), range(3), type,
    generic_timedelta(3), np.timedelta64(3, "D"), generic_timedelta("NaT"),
    np.timedelta64("NaT", "s"),
    lambda: None, msgpack.ExtType(1, b"x"),
    np.longdouble(1) if np.longdouble != np.float64 else {1},
])
def test_unknown_types_are_refused(value: Any) -> None:
    with pytest.raises(EncodingError, match="cannot encode"):
        canonical(value)
    with pytest.raises(EncodingError):
        canonical({"inside": [value]})


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value with ``depth`` levels of containers, alternating lists and dicts."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert msgpack.unpackb(canonical(nested(MAX_DEPTH))) == nested(MAX_DEPTH)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_over_deep_nesting_is_refused(depth: int) -> None:
    with pytest.raises(EncodingError, match="nested"):
        canonical(nested(depth))


def test_a_self_containing_value_is_refused_not_a_recursion_error() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(EncodingError):
        canonical(loop)


@given(values)
def test_a_refused_value_leaves_the_encoder_clean(value: Any) -> None:
    with pytest.raises(EncodingError):
        canonical([value, {1: "refused"}])
    assert canonical(value) == msgpack.packb(sorted_dicts(value), use_bin_type=True)


def test_nan_and_signed_zero_have_one_encoding_each() -> None:
    assert canonical(float("nan")) == canonical(np.float64("nan")) == bytes.fromhex(
        "cb7ff8000000000000")
    assert canonical(-0.0) != canonical(0.0)


class _List(list):
    """A list subclass: a container that takes the slow path of normalisation."""


_Pair = namedtuple("_Pair", "first second")


def test_list_and_tuple_subclasses_encode_as_the_list_of_their_items() -> None:
    """A list subclass and a namedtuple (a tuple) encode as plain lists of their items (DESIGN
    §2: tuples become lists), with their items normalised too."""
    assert canonical(_List([1, (2, 3)])) == canonical([1, [2, 3]])
    assert canonical(_Pair(np.int64(1), _List(["a"]))) == canonical([1, ["a"]])
    assert normalise({"k": _Pair(1, 2)}) == {"k": [1, 2]}
    assert type(normalise(_List([1]))) is list


class _Disguised(bytes):
    def __bytes__(self) -> bytes:
        return b"other"


class _OneKey(dict):
    def __iter__(self) -> Any:
        return iter(["a"])

    def keys(self) -> Any:
        return ["a"]


def test_bytes_and_dict_subclasses_encode_what_they_hold_as_msgpack_does() -> None:
    # msgpack packs a bytes or dict subclass by what it holds (its buffer, its entries); the
    # subclass's own __bytes__ or keys() must not make canonical() say otherwise.
    assert canonical(_Disguised(b"ab")) == canonical(b"ab") == msgpack.packb(
        _Disguised(b"ab"), use_bin_type=True)
    assert canonical(_OneKey(a=1, b=2)) == canonical({"a": 1, "b": 2}) == msgpack.packb(
        {"a": 1, "b": 2})
    assert msgpack.packb(_OneKey(a=1, b=2)) == msgpack.packb({"a": 1, "b": 2})
    assert canonical({"k": [_Disguised(b"x"), _OneKey(b=[2], a=1)]}) == canonical(
        {"k": [b"x", {"a": 1, "b": [2]}]})


def subclass_nested(depth: int) -> Any:
    """Like :func:`nested`, but every container a subclass (OrderedDict, list subclass)."""
    value: Any = 1
    for level in range(depth):
        value = _List([value]) if level % 2 else OrderedDict(k=value)
    return value


def test_the_nesting_limit_counts_container_subclasses_like_plain_containers() -> None:
    """Subclassed containers are nested levels like dicts and lists: MAX_DEPTH levels are
    accepted, one more is refused, and a very deep value is refused (not a RecursionError)."""
    assert canonical(subclass_nested(MAX_DEPTH)) == canonical(nested(MAX_DEPTH))
    for depth in (MAX_DEPTH + 1, 10_000):
        with pytest.raises(EncodingError, match="nested"):
            canonical(subclass_nested(depth))


def test_normalise_accepts_exactly_the_nesting_canonical_accepts() -> None:
    """``normalise`` (which event params and meta go through) has the same depth limit as
    ``canonical``: MAX_DEPTH levels pass, MAX_DEPTH + 1 are refused."""
    assert normalise(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    with pytest.raises(EncodingError, match="nested"):
        normalise(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("value", [object(), 2**64, -(2**63) - 1, {"k": {1, 2}}])
def test_pack_normalised_refuses_unencodable_values_with_an_encoding_error(value: Any) -> None:
    """The fast path for already-normalised values still refuses what msgpack cannot encode
    with EncodingError (not a bare TypeError/OverflowError, not a silent None), and stays
    usable afterwards."""
    with pytest.raises(EncodingError, match="cannot encode"):
        pack_normalised(value)
    assert pack_normalised([1, "a"]) == canonical([1, "a"])
