"""Array, value and event digests (DESIGN §2–3): what changes them and what must not."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ledger.batches import fast_array_digest
from ledger.canonical import canonical
from ledger.digests import (ARRAY_TAG, EVENT_TAG, VALUE_TAG, array_digest, event_hash,
                            event_hash_of_bytes, hex_digest, value_digest)
from ledger.errors import EncodingError

dtypes = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                   hnp.floating_dtypes(), hnp.complex_number_dtypes(),
                   hnp.datetime64_dtypes(), hnp.byte_string_dtypes(min_len=1),
                   hnp.unicode_string_dtypes(min_len=1))
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
arrays = hnp.arrays(dtypes, shapes)
nonempty_arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1,
                                                      max_side=5))


def reference_digest(array: np.ndarray) -> bytes:
    """DESIGN §2 written out independently of ledger.digests."""
    little = array.dtype.newbyteorder("<")
    header = msgpack.packb([little.str, list(array.shape)], use_bin_type=True)
    return hashlib.sha256(b"ledger/array/v1\x00" + header
                          + array.astype(little).tobytes(order="C")).digest()


def with_byte_flipped(array: np.ndarray, index: int) -> np.ndarray:
    changed = np.ascontiguousarray(array).copy()
    changed.reshape(-1).view(np.uint8)[index] ^= 0x01
    return changed


@given(arrays)
def test_array_digest_follows_the_design_formula(array: np.ndarray) -> None:
    assert array_digest(array) == reference_digest(array)
    assert len(array_digest(array)) == 32


@given(arrays)
def test_memory_order_and_byte_order_do_not_matter(array: np.ndarray) -> None:
    digest = array_digest(array)
    assert array_digest(array.copy(order="F")) == digest
    if array.ndim >= 1:  # numpy's asfortranarray turns a 0-d array into shape (1,)
        assert array_digest(np.asfortranarray(array)) == digest
    assert array_digest(array.astype(array.dtype.newbyteorder(">"))) == digest
    assert array_digest(array.astype(array.dtype.newbyteorder("<"))) == digest
    assert array_digest(array.copy()) == digest


@given(hnp.arrays(hnp.floating_dtypes(), hnp.array_shapes(min_dims=2, max_dims=3, min_side=2)))
def test_views_digest_like_their_contiguous_copies(array: np.ndarray) -> None:
    for view in (array[::2], array.T, array[..., ::-1], np.swapaxes(array, 0, -1)):
        assert array_digest(view) == array_digest(np.ascontiguousarray(view))


@given(nonempty_arrays, st.data())
def test_any_single_byte_changes_the_digest(array: np.ndarray, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=array.nbytes - 1))
    assert array_digest(with_byte_flipped(array, index)) != array_digest(array)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3)), st.data())
def test_the_dtype_changes_the_digest(array: np.ndarray, data: st.DataObject) -> None:
    other = data.draw(st.sampled_from([np.int32, np.uint32, np.dtype("<U1")]))
    same_bytes = array.view(other)
    assert same_bytes.tobytes() == array.tobytes()
    assert array_digest(same_bytes) != array_digest(array)


@pytest.mark.parametrize("dtype", ["i1", "u1", "i8", "f8", "f2", "?", "c8"])
def test_same_values_other_dtype_give_another_digest(dtype: str) -> None:
    values = np.arange(4).astype(dtype)
    assert array_digest(values) != array_digest(np.arange(4, dtype="i4"))


@given(hnp.arrays(np.uint8, st.integers(min_value=1, max_value=24)), st.data())
def test_the_shape_changes_the_digest(array: np.ndarray, data: st.DataObject) -> None:
    size = array.size
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    rows = data.draw(st.sampled_from(divisors))
    reshaped = array.reshape(rows, size // rows)
    assert reshaped.tobytes() == array.tobytes()
    assert array_digest(reshaped) != array_digest(array)
    assert array_digest(array[np.newaxis]) != array_digest(array)


def test_empty_arrays_differ_by_shape_and_dtype() -> None:
    assert array_digest(np.zeros((0, 5), np.float32)) != array_digest(np.zeros((5, 0), np.float32))
    assert array_digest(np.zeros(0, np.float32)) != array_digest(np.zeros(0, np.float64))


def test_a_zero_dimensional_array_is_not_a_one_element_array() -> None:
    assert array_digest(np.float32(3)) == array_digest(np.array(3, np.float32))
    assert array_digest(np.float32(3)) != array_digest(np.array([3], np.float32))


@pytest.mark.parametrize("array", [
    np.array([1, "a"], dtype=object), np.array([None]), np.empty(3, dtype=object),
    np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), np.zeros(2, dtype="V4"),
    np.zeros(2, dtype=[("inner", object)]),
])
def test_object_structured_and_void_arrays_are_refused(array: np.ndarray) -> None:
    with pytest.raises(EncodingError, match="dtype"):
        array_digest(array)


LONGDOUBLE_IS_PADDED = np.dtype(np.longdouble).itemsize > 8


@pytest.mark.skipif(not LONGDOUBLE_IS_PADDED, reason="longdouble is float64 on this platform")
@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_extended_precision_is_refused_by_both_digests(dtype: type) -> None:
    # x86's 80-bit longdouble is padded with whatever the memory held: the same values used to
    # digest differently from one process to the next (a checkpoint that never compared equal)
    values = np.arange(6, dtype=dtype) / 3
    for digest in (array_digest, fast_array_digest):
        with pytest.raises(EncodingError, match="padding"):
            digest(values)


def test_array_likes_are_digested_as_arrays() -> None:
    assert array_digest([1, 2, 3]) == array_digest(np.array([1, 2, 3]))
    with pytest.raises(EncodingError):
        array_digest([1, "a", None])


@given(st.one_of(st.integers(min_value=0, max_value=2**63), st.text(), st.binary()))
def test_value_digest_is_tagged_sha256_of_canonical_bytes(value: object) -> None:
    assert value_digest(value) == hashlib.sha256(VALUE_TAG + canonical(value)).digest()


def test_domain_tags_are_distinct_and_keep_hashes_apart() -> None:
    tags = {ARRAY_TAG, EVENT_TAG, VALUE_TAG, b"ledger/seed/v1\x00"}
    assert len(tags) == 4
    assert all(tag.startswith(b"ledger/") and tag.endswith(b"/v1\x00") for tag in tags)
    payload = canonical({"x": 1})
    assert value_digest({"x": 1}) != event_hash_of_bytes(payload)
    assert event_hash({"x": 1}) == event_hash_of_bytes(payload) == hashlib.sha256(
        EVENT_TAG + payload).digest()


def test_hex_digest_is_lowercase_hex() -> None:
    digest = array_digest(np.arange(3))
    shown = hex_digest(digest)
    assert shown == digest.hex() and len(shown) == 64 and shown == shown.lower()
    assert hex_digest(None) is None


@given(arrays)
def test_digest_does_not_change_the_input(array: np.ndarray) -> None:
    before = array.copy()
    flags = array.flags.writeable
    array_digest(array)
    np.testing.assert_array_equal(array, before)
    assert array.flags.writeable == flags


@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1)))
def test_a_bool_array_digests_by_its_values_whatever_bytes_hold_true(raw: np.ndarray) -> None:
    # A bool view of other bytes holds 2..255 for True; numpy compares it equal to a plain bool
    # array, and so must the digest (else replay would call the same data "input differs").
    viewed = raw.view(np.bool_)
    plain = raw != 0
    assert np.array_equal(viewed, plain)
    assert array_digest(viewed) == array_digest(plain) == reference_digest(plain)
    assert fast_array_digest(viewed) == array_digest(plain)
