"""Seed derivation (DESIGN §1): deterministic, unambiguous, by hashing a named path."""

from __future__ import annotations

import enum
import hashlib

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import generic_timedelta
from ledger.errors import BadInputError
from ledger.seeds import (SEED_SCHEME, SEED_TAG, check_path, derive, derive_bytes, draw_root_seed,
                          generator, root_seed_from_bytes, root_seed_to_bytes)

roots = st.integers(min_value=0, max_value=2**128 - 1)
labels = st.one_of(st.text(max_size=12), st.integers(min_value=0, max_value=2**64 - 1))
paths = st.lists(labels, max_size=6).map(tuple)


def reference_derive(root: int, path: tuple) -> bytes:
    """DESIGN §1 written out independently: msgpack of plain labels is already canonical."""
    payload = msgpack.packb([root.to_bytes(16, "big"), list(path)], use_bin_type=True)
    return hashlib.sha256(b"ledger/seed/v1\x00" + payload).digest()[:16]


@given(roots, paths)
def test_derivation_follows_the_design_formula(root: int, path: tuple) -> None:
    expected = reference_derive(root, path)
    assert derive_bytes(root, path) == expected
    assert derive(root, path) == int.from_bytes(expected, "big")


@given(roots, paths)
def test_derivation_is_deterministic_and_in_range(root: int, path: tuple) -> None:
    first = derive(root, path)
    assert derive(root, list(path)) == first  # a list names the same path as a tuple
    assert derive(root, path) == first
    assert 0 <= first < 2**128
    assert len(derive_bytes(root, path)) == 16


@given(roots, paths, paths)
def test_distinct_paths_give_distinct_seeds(root: int, a: tuple, b: tuple) -> None:
    if a != b:
        assert derive(root, a) != derive(root, b)
    else:
        assert derive(root, a) == derive(root, b)


@given(roots, roots, paths)
def test_distinct_roots_give_distinct_seeds(a: int, b: int, path: tuple) -> None:
    if a != b:
        assert derive(a, path) != derive(b, path)


@pytest.mark.parametrize(("a", "b"), [
    (("a", "bc"), ("ab", "c")),
    ((1,), ("1",)),
    ((), ("",)),
    (("a",), ("a", "")),
    ((0,), ()),
    (("worker", 1), ("worker1",)),
    (("worker", 1), ("worker", "1")),
    (("epoch", 0, "shuffle"), ("epoch", "0", "shuffle")),
    (("rank", 0, "worker", 1), ("rank", 1, "worker", 0)),
    (("a", "b"), ("b", "a")),
])
def test_no_ambiguity_between_similar_paths(a: tuple, b: tuple) -> None:
    for root in (0, 42, 2**128 - 1):
        assert derive(root, a) != derive(root, b)


def test_no_arithmetic_relation_between_neighbouring_roots() -> None:
    # The classic mistake base + worker_id makes these two equal.
    assert derive(42, ("worker", 1)) != derive(43, ("worker", 0))
    assert derive(42, ("epoch", 1, "shuffle")) != derive(43, ("epoch", 0, "shuffle"))


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_numpy_integer_labels_name_the_same_path_as_python_ints(k: int) -> None:
    assert derive(7, ("worker", np.int64(k))) == derive(7, ("worker", k))
    assert derive(7, ("worker", np.uint64(k))) == derive(7, ("worker", k))
    assert derive(np.uint64(k), ()) == derive(k, ())


@pytest.mark.parametrize("path", [
    (-1,), (2**64,), (True,), (False,), (1.0,), (None,), (b"worker",), (("nested",),),
    ("worker", [0]), "worker", b"worker", (generic_timedelta(3),), (np.timedelta64(3, "D"),),
    bytearray(b"worker"), memoryview(b"worker"),
])
def test_bad_paths_are_refused(path: object) -> None:
    with pytest.raises(BadInputError):
        derive(0, path)


@pytest.mark.parametrize("root", [-1, 2**128, True, 1.0, "42", None, b"\x00" * 16,
                                  generic_timedelta(42)])
def test_bad_root_seeds_are_refused(root: object) -> None:
    with pytest.raises(BadInputError):
        derive(root, ())


def test_largest_labels_and_roots_are_accepted() -> None:
    assert derive(2**128 - 1, (2**64 - 1, "")) == int.from_bytes(
        reference_derive(2**128 - 1, (2**64 - 1, "")), "big")


@given(roots, paths)
def test_generator_is_pcg64_of_the_derived_seed(root: int, path: tuple) -> None:
    expected = np.random.Generator(np.random.PCG64(derive(root, path))).integers(0, 2**63, 8)
    assert generator(root, path).integers(0, 2**63, 8).tolist() == expected.tolist()
    assert generator(root, path).random(4).tolist() == generator(root, path).random(4).tolist()


def test_generators_of_different_paths_draw_different_numbers() -> None:
    a = generator(42, ("epoch", 0, "shuffle")).permutation(100)
    b = generator(42, ("epoch", 1, "shuffle")).permutation(100)
    assert a.tolist() != b.tolist()
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(100))


def test_drawn_root_seeds_are_128_bit_and_fresh() -> None:
    drawn = {draw_root_seed() for _ in range(8)}
    assert len(drawn) == 8
    assert all(0 <= seed < 2**128 for seed in drawn)
    assert any(seed >= 2**64 for seed in drawn)  # fails with probability 2**-512


@given(roots)
def test_root_seed_bytes_round_trip(root: int) -> None:
    recorded = root_seed_to_bytes(root)
    assert len(recorded) == 16
    assert recorded == root.to_bytes(16, "big")
    assert root_seed_from_bytes(recorded) == root


@pytest.mark.parametrize("recorded", [b"", b"\x00" * 15, b"\x00" * 17, "00" * 16, None])
def test_malformed_recorded_root_seed_is_refused(recorded: object) -> None:
    with pytest.raises(BadInputError):
        root_seed_from_bytes(recorded)


def test_the_recorded_seed_scheme_is_the_design_tag() -> None:
    """``experiment_created`` records SEED_SCHEME and replay refuses any other: it must name the
    DESIGN §1 derivation, ``ledger/seed/v1``, whose hash tag is that name and a NUL byte."""
    assert SEED_SCHEME == "ledger/seed/v1"
    assert SEED_TAG == SEED_SCHEME.encode() + b"\x00"


@pytest.mark.parametrize("label", [2**64, 2**64 + 1, 2**65 - 1, 3**64])
def test_check_path_itself_refuses_labels_beyond_64_bits(label: int) -> None:
    """``check_path`` (used by events and user draws before anything is encoded) refuses int
    labels outside [0, 2**64) with BadInputError, and keeps the largest one, 2**64 - 1."""
    with pytest.raises(BadInputError, match="2\\*\\*64"):
        check_path(("epoch", label))
    assert check_path(("epoch", 2**64 - 1)) == ("epoch", 2**64 - 1)


@pytest.mark.parametrize("path", [5, None, 1.5, object()])
def test_a_path_that_is_not_a_sequence_is_refused_with_a_clear_error(path: object) -> None:
    """A non-iterable path is a BadInputError naming what was given, not a TypeError or an
    internal error."""
    with pytest.raises(BadInputError, match="sequence of labels"):
        check_path(path)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="sequence of labels"):
        derive(0, path)  # type: ignore[arg-type]


def test_the_largest_label_is_accepted_on_the_numpy_path_too() -> None:
    """A path holding a numpy integer takes the slow check: there too 2**64 - 1 is accepted
    (as the same path as the Python int), 0 as well, and nothing beyond 64 bits."""
    largest = 2**64 - 1
    assert derive(7, ("x", np.uint64(largest))) == derive(7, ("x", largest))
    assert derive(7, (largest, np.int64(0))) == derive(7, (largest, 0))
    with pytest.raises(BadInputError):
        derive(7, (np.int64(-1),))


class _Colour(str, enum.Enum):
    RED = "red"


class _Shouting(str):
    def __str__(self) -> str:
        return self.upper()


@pytest.mark.parametrize("label", [_Colour.RED, _Shouting("red"), np.str_("red")])
def test_str_subclass_labels_name_the_path_of_their_text(label: str) -> None:
    # A label is its text, as canonical() encodes it: derive() hashes canonical([root, path]),
    # so a str subclass whose __str__ says something else ("_Colour.RED") names "red" still.
    assert check_path(("a", label)) == ("a", "red")
    assert type(check_path((label,))[0]) is str
    assert derive_bytes(7, ("a", label)) == derive_bytes(7, ("a", "red")) == reference_derive(
        7, ("a", "red"))


class _Int(int):
    def __int__(self) -> int:
        return 99

    def __index__(self) -> int:
        return 99


def test_int_subclass_labels_and_roots_are_their_value() -> None:
    # As canonical() encodes them: derive() hashes canonical([root, path]).
    assert check_path(("a", _Int(3))) == ("a", 3)
    assert derive_bytes(_Int(7), ("a", _Int(3))) == reference_derive(7, ("a", 3))


@pytest.mark.parametrize("path", [{"a", "b"}, frozenset({"a", "b"}), {"a": 1, "b": 2},
                                  {"a": 1}.keys()])
def test_unordered_paths_are_refused(path: object) -> None:
    # A set's order depends on PYTHONHASHSEED: its seed would change from one process to the
    # next, breaking the invariance promise (DESIGN §1). A path is an ordered sequence.
    with pytest.raises(BadInputError, match="sequence of labels"):
        check_path(path)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="sequence of labels"):
        derive(0, path)  # type: ignore[arg-type]
