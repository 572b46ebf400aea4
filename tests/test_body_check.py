"""The fast body check (ledger.body_check) against the full check it stands in for.

The fast check may only ever say yes where the full check says yes (soundness: a hostile body or
column must never slip through), and it should say yes for the bodies a writer produces once
their shape is learnt (else it would not be fast). Segment checks must find the same first
problem, with the same words, whether the fast check is used or not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger.chain_check as chain_check
from ledger.body_check import (_CANONICAL_INT_RANGES, _NUMBER_TAGS, FREE_LEARNING,
                               LEARN_EVERY_HITS, MAX_TEMPLATE_BYTES, ChainBodyCheck, ShapeError,
                               _canonical_range, make_template)
from ledger.canonical import canonical
from ledger.events import MAX_BODY_BYTES
from ledger.chain_check import Segment, check_segment, full_check
from ledger.digests import EVENT_TAG, ZERO_DIGEST
from ledger.store import Store
from ledger.verify import verify
from ledger_builders import drop_append_only_triggers, execute, record_experiment

EXP, STREAM = "exp-bodycheck01", "worker-0"
PACK = msgpack.Packer(use_bin_type=True).pack
FIXINT_RANGES = [(0, 2**7), (-(2**5), 0)]
WIDE_INT_RANGES = [(2**7, 2**8), (2**8, 2**16), (2**16, 2**32), (2**32, 2**64),
                   (-(2**7), -(2**5)), (-(2**15), -(2**7)), (-(2**31), -(2**15)),
                   (-(2**63), -(2**31))]
INT_RANGES = FIXINT_RANGES + WIDE_INT_RANGES
"""Each range is what msgpack writes with one integer tag."""
settings.register_profile("body_check", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def encode(fields: dict[str, Any]) -> bytes:
    """A body as the writer lays it out: canonical (DESIGN §2), every map's keys sorted."""
    return canonical(fields)


def row_of(body: bytes) -> list[Any]:
    """The row a writer stores for ``body`` (FAST_COLUMNS order): columns repeat its values."""
    fields = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=False)
    return [fields["seq"], fields["kind"], PACK(fields["path"]), fields["seed"], fields["input"],
            fields["output"], fields["prev"], hashlib.sha256(EVENT_TAG + body).digest(),
            fields["t"], body]


def passes_full_check(row: list[Any]) -> bool:
    return full_check(EXP, STREAM, tuple(row))[0] is None


def learnt(body: bytes) -> ChainBodyCheck:
    shapes = ChainBodyCheck()
    row = row_of(body)
    assert passes_full_check(row)
    shapes.learn(tuple(row), hits=0)
    return shapes


def benchmark_body(seq: int, batch: int, epoch: int = 3, prev: bytes = ZERO_DIGEST) -> bytes:
    """A body like the benchmark's augmentation batches."""
    digest = hashlib.sha256(seq.to_bytes(8, "big")).digest()
    return encode({"v": 1, "exp": EXP, "stream": STREAM, "seq": seq, "kind": "augmentation_batch",
                   "path": ["epoch", epoch, "batch", batch, "augment"], "seed": digest[:16],
                   "params": {"augmenter": [{"op": "gaussian_noise", "std": 0.1, "version": 1}],
                              "batch": batch, "epoch": epoch, "indices_digest": digest},
                   "input": digest, "output": hashlib.sha256(digest).digest(),
                   "meta": {}, "prev": prev, "t": 1_700_000_000_000_000_000 + seq})


# -- strategies ----------------------------------------------------------------------------------

labels = st.one_of(st.text(max_size=6), st.integers(0, 2**64 - 1))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                   st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=40))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
"""Every value canonical encoding accepts (DESIGN §2: no ext types, str keys)."""
kinds = st.sampled_from(["augmentation_batch", "metric", "user_draw", "epoch_reset"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Valid v1 bodies of every shape: any params and meta canonical encoding carries."""
    return encode({"v": 1, "exp": EXP, "stream": STREAM, "seq": draw(st.integers(0, 2**63 - 1)),
                   "kind": draw(kinds), "path": draw(st.lists(labels, max_size=5)),
                   "seed": draw(st.none() | st.binary(min_size=16, max_size=16)),
                   "params": draw(st.dictionaries(st.text(max_size=6), values, max_size=4)),
                   "input": draw(st.none() | st.binary(min_size=32, max_size=32)),
                   "output": draw(st.none() | st.binary(min_size=32, max_size=32)),
                   "meta": draw(st.dictionaries(st.text(max_size=4), values, max_size=2)),
                   "prev": draw(st.binary(min_size=32, max_size=32)),
                   "t": draw(st.integers(-(2**63), 2**63 - 1))})


column_values = st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
                          st.text(max_size=8), st.binary(max_size=40))


def mutate_free_bytes(data: st.DataObject, body: bytes) -> bytes:
    """``body`` with some of the bytes its template leaves free set to anything."""
    mask = make_template(body).mask.to_bytes(len(body))
    mutated = bytearray(body)
    free = [index for index, byte in enumerate(mask) if byte != 0xFF]
    for index in data.draw(st.lists(st.sampled_from(free), max_size=6) if free else st.just([])):
        mutated[index] = data.draw(st.integers(0, 255))
    return bytes(mutated)


def mutate_any_bytes(data: st.DataObject, body: bytes) -> bytes:
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    return bytes(mutated)


# -- soundness -----------------------------------------------------------------------------------


@settings(settings.get_profile("body_check"), max_examples=400)
@given(bodies(), st.data())
def test_the_fast_check_accepts_only_what_the_full_check_accepts(body: bytes,
                                                                  data: st.DataObject) -> None:
    shapes = learnt(body)
    mutation = data.draw(st.sampled_from(["free", "any", "both", "none"]))
    other = body
    if mutation in ("free", "both"):
        other = mutate_free_bytes(data, other)
    if mutation in ("any", "both"):
        other = mutate_any_bytes(data, other)
    try:
        row = row_of(other)  # columns consistent with the mutated body, where it decodes
    except Exception:
        row = row_of(body)[:-1] + [other]
    if data.draw(st.booleans()):  # and a hostile column
        row[data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8]))] = data.draw(column_values)
    if shapes.accepts(tuple(row)):
        assert passes_full_check(row), (body, other, row)


@settings(settings.get_profile("body_check"), max_examples=300)
@given(bodies(), st.data())
def test_every_column_is_compared(body: bytes, data: st.DataObject) -> None:
    shapes = learnt(body)
    row = row_of(body)
    assert shapes.accepts(tuple(row))
    column = data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8]))
    row[column] = data.draw(column_values.filter(lambda value: value != row[column]))
    assert not shapes.accepts(tuple(row)) or passes_full_check(row)


def test_a_column_the_fast_check_cannot_handle_is_a_no() -> None:
    """accepts never raises: a body that is text (as a TEXT column holds) or a t too wide for
    msgpack is a no, left to the full check, never a yes."""
    body = benchmark_body(1000, batch=7)
    shapes = learnt(body)
    assert shapes.accepts(tuple(row_of(body)))
    as_text = row_of(body)[:-1] + [body.decode("latin-1")]
    too_wide = row_of(body)
    too_wide[8] = 2**64
    for row in (as_text, too_wide):
        assert shapes.accepts(tuple(row)) is False


def test_non_canonical_paths_are_left_to_the_full_check() -> None:
    body = benchmark_body(300, batch=300)
    shapes = learnt(body)
    # batch 300 needs uint16; a uint16 holding 5 decodes fine but the path is not canonical
    tampered = body.replace(b"\xa5batch\xcd\x01\x2c\xa7augment", b"\xa5batch\xcd\x00\x05\xa7augment")
    assert tampered != body
    row = row_of(body)[:-1] + [tampered]
    row[2] = tampered[tampered.index(b"\xa4path") + 5:tampered.index(b"\xa4prev")]
    assert not shapes.accepts(tuple(row))
    assert full_check(EXP, STREAM, tuple(row))[0] == "column path differs from the body"


def test_pinned_values_cannot_change() -> None:
    body = benchmark_body(1000, batch=7)
    shapes = learnt(body)
    for old, new in ((b"\xa1v\x01", b"\xa1v\x02"), (b"\xa1v\x01", b"\xa1v\x00"),
                     (b"augmentation_batch", b"augmentation_batcx"),
                     (EXP.encode(), EXP[:-1].encode() + b"2")):
        tampered = body.replace(old, new)
        row = row_of(tampered)
        row[1] = "augmentation_batch"
        assert not shapes.accepts(tuple(row))


@pytest.mark.parametrize("value", [5, -3], ids=["positive", "negative"])
def test_a_fixint_can_only_change_its_value(value: int) -> None:
    """The fast check frees only the value bits of a fixint: a byte that is no fixint of the
    same sign any more (here 0xc1, which starts no msgpack value) goes to the full check."""
    fields = msgpack.unpackb(benchmark_body(1000, batch=7), raw=False)
    fields["params"]["level"] = value
    body = encode(fields)
    shapes = learnt(body)
    marker = b"\xa5level" + PACK(value)
    assert body.count(marker) == 1
    row = row_of(body)[:-1] + [body.replace(marker, b"\xa5level\xc1")]
    assert not passes_full_check(row)
    assert not shapes.accepts(tuple(row))


def test_a_negative_wide_integer_must_still_need_its_width() -> None:
    """-100 is an int8; an int8 payload of 0xff is -1, which canonical encoding writes as a
    fixint: not canonical, so the fast check must leave it to the full check."""
    fields = msgpack.unpackb(benchmark_body(1000, batch=7), raw=False)
    fields["params"]["level"] = -100
    body = encode(fields)
    shapes = learnt(body)
    marker = b"\xa5level\xd0" + (-100).to_bytes(1, signed=True)
    assert body.count(marker) == 1
    row = row_of(body)[:-1] + [body.replace(marker, b"\xa5level\xd0\xff")]
    assert not passes_full_check(row)
    assert not shapes.accepts(tuple(row))


@pytest.mark.parametrize("tag", sorted(_CANONICAL_INT_RANGES))
def test_the_integer_ranges_are_msgpacks(tag: int) -> None:
    """The canonical range the fast check holds for each integer tag is exactly where msgpack's
    packer uses that tag."""
    low, high = _CANONICAL_INT_RANGES[tag]
    for value in (low, low + 1, high - 1):
        assert PACK(value)[0] == tag
    for outside in (low - 1, high):
        if -(2**63) <= outside < 2**64:
            assert PACK(outside)[0] != tag


@pytest.mark.parametrize("tag", sorted(_CANONICAL_INT_RANGES))
def test_the_payload_bounds_are_the_integer_ranges(tag: int) -> None:
    """Comparing payload bytes with the bounds is comparing the integer with its range."""
    low, high = _CANONICAL_INT_RANGES[tag]
    size, signed = _NUMBER_TAGS[tag], tag >= 0xD0
    where, lowest, highest = _canonical_range(0, tag)
    assert where == slice(1, 1 + size)
    for value in (low - 1, low, low + 1, (low + high) // 2, high - 2, high - 1, high):
        try:
            payload = value.to_bytes(size, signed=signed)
        except OverflowError:  # not writable with this tag at all
            continue
        assert (lowest <= payload <= highest) == (low <= value < high), value


def test_no_body_of_a_template_can_exceed_the_body_limit() -> None:
    """check_segment tests the body size only when the fast check says no."""
    assert MAX_TEMPLATE_BYTES < MAX_BODY_BYTES


# -- completeness --------------------------------------------------------------------------------


@st.composite
def shapes_and_instances(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Two canonical bodies of one shape: same keys, strings and integer widths, any numbers
    and digests."""
    structure = draw(st.lists(st.tuples(st.text(max_size=5),
                                        st.sampled_from(["int", "float", "bin", "str", "none"]),
                                        st.sampled_from(INT_RANGES)), max_size=5))
    path_ranges = draw(st.lists(st.sampled_from([(0, 2**7)] + WIDE_INT_RANGES[:4]), max_size=3))
    kind, text = draw(kinds), draw(st.text(max_size=5))
    seq_range, t_range = draw(st.sampled_from(INT_RANGES[:1] + INT_RANGES[2:6])), \
        draw(st.sampled_from(INT_RANGES))
    digests = {name: draw(st.booleans()) for name in ("seed", "input", "output")}

    def instance() -> bytes:
        params = {}
        for key, leaf, (low, high) in structure:
            params[key] = {"int": st.integers(low, high - 1), "float": st.floats(),
                           "bin": st.binary(min_size=32, max_size=32), "str": st.just(text),
                           "none": st.none()}[leaf]
            params[key] = draw(params[key])
        fields = {"v": 1, "exp": EXP, "stream": STREAM, "kind": kind, "meta": {"host": text},
                  "seq": draw(st.integers(seq_range[0], seq_range[1] - 1)),
                  "t": draw(st.integers(t_range[0], t_range[1] - 1)),
                  "path": [draw(st.integers(low, high - 1)) for low, high in path_ranges] + [text],
                  "params": params, "prev": draw(st.binary(min_size=32, max_size=32))}
        for name, present in digests.items():
            size = 16 if name == "seed" else 32
            fields[name] = draw(st.binary(min_size=size, max_size=size)) if present else None
        return encode(fields)

    return instance(), instance()


@settings(settings.get_profile("body_check"), max_examples=300)
@given(shapes_and_instances())
def test_bodies_of_a_learnt_shape_are_accepted(pair: tuple[bytes, bytes]) -> None:
    first, second = pair
    shapes = learnt(first)
    row = row_of(second)
    assert passes_full_check(row)
    if len(first) == len(second):  # same shape; NaN floats or -0.0 do not change the shape
        assert shapes.accepts(tuple(row)) or PACK(msgpack.unpackb(second)) != second


def test_the_slow_kinds_are_never_learnt() -> None:
    for kind in ("experiment_created", "run_completed"):
        body = encode({"v": 1, "exp": EXP, "stream": "main", "seq": 0, "kind": kind, "path": [],
                       "seed": None, "params": {"name": "x"}, "input": None, "output": None,
                       "meta": {}, "prev": ZERO_DIGEST, "t": 5})
        shapes = ChainBodyCheck()
        shapes.learn(tuple(row_of(body)), hits=0)
        assert not shapes.accepts(tuple(row_of(body)))


def test_bodies_that_are_not_plain_maps_make_no_template() -> None:
    for body in (PACK([1, 2]), PACK({"v": 1}), benchmark_body(1, 1)[:-1], b"\xc1"):
        with pytest.raises((ShapeError, IndexError, ValueError)):
            make_template(body)


def test_learning_is_paid_for_by_hits() -> None:
    """A chain whose every body has a new shape does not pay for learning at every event."""
    shapes = ChainBodyCheck()

    def learn(index: int, hits: int) -> None:
        body = encode({"v": 1, "exp": EXP, "stream": STREAM, "seq": index, "kind": "metric",
                       "path": [], "seed": None, "params": {"name": "x" * index}, "input": None,
                       "output": None, "meta": {}, "prev": ZERO_DIGEST, "t": 5})
        shapes.learn(tuple(row_of(body)), hits=hits)

    def kept() -> int:
        return sum(len(templates) for templates in shapes._by_length.values())

    for index in range(FREE_LEARNING + 50):
        learn(index, hits=0)
    assert kept() == FREE_LEARNING
    learn(100, hits=LEARN_EVERY_HITS)
    learn(101, hits=LEARN_EVERY_HITS)
    assert kept() == FREE_LEARNING + 1


# -- segments: the same findings with and without the fast check ---------------------------------


class RowsStore:
    """Just enough of a Store for check_segment: rows of one chain, in seq order."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows

    def iter_segment_batches(self, exp: str, stream: str, lo: int, hi: int, columns: Any,
                             **_options: Any) -> Any:
        rows = [tuple(row) for row in self.rows if lo <= row[0] < hi]
        return iter([rows[:7], rows[7:]])


def chain_rows(count: int) -> list[list[Any]]:
    rows, prev = [], ZERO_DIGEST
    for seq in range(count):
        row = row_of(benchmark_body(seq, batch=seq % 5 + 200 * (seq > 20), prev=prev))
        rows.append(row)
        prev = row[7]
    return rows


def test_a_clean_chain_is_mostly_accepted_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    store = RowsStore(chain_rows(40))
    calls = []
    original = chain_check.full_check
    monkeypatch.setattr(chain_check, "full_check",
                        lambda *args: calls.append(args) or original(*args))
    result = check_segment(store, Segment(EXP, STREAM, 0, 40))  # type: ignore[arg-type]
    assert result.problem is None and result.count == 40
    assert len(calls) <= 4  # the first body of each shape (batch widths, seq widths)


def test_learning_in_a_segment_is_paid_for_by_its_fast_accepts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """check_segment pays for each template past FREE_LEARNING with LEARN_EVERY_HITS bodies
    accepted fast, not with bodies checked in full, nor with the segment's first seq: a chain of
    ever new shapes costs one learning per LEARN_EVERY_HITS events at most, and one that
    repeats its shapes still learns a new one."""
    lo, rows, prev = 10**6, [], ZERO_DIGEST
    # 8 shapes learnt for free, 248 never seen again, then c three times (too early to learn
    # it), shape 1 accepted fast LEARN_EVERY_HITS times, then e three times (learnt at once).
    names = [*range(1, 257), 300, 300, 300, *[1] * LEARN_EVERY_HITS, 301, 301, 301]
    assert FREE_LEARNING == 8 and len(names) == 8 + 248 + 3 + LEARN_EVERY_HITS + 3
    for index, width in enumerate(names):
        row = row_of(encode({"v": 1, "exp": EXP, "stream": STREAM, "seq": lo + index,
                             "kind": "metric", "path": [], "seed": None,
                             "params": {"name": "x" * width}, "input": None, "output": None,
                             "meta": {}, "prev": prev, "t": 10**6 + index}))
        rows.append(row)
        prev = row[7]
    checked: list[int] = []
    original = chain_check.full_check
    monkeypatch.setattr(chain_check, "full_check",
                        lambda *args: checked.append(args[2][0]) or original(*args))
    segment = Segment(EXP, STREAM, lo, lo + len(rows))
    result = check_segment(RowsStore(rows), segment)  # type: ignore[arg-type]
    assert (result.problem, result.count) == (None, len(rows))
    widths = [names[seq - lo] for seq in checked]
    assert (widths.count(300), widths.count(301), widths.count(1)) == (3, 1, 1)


@settings(settings.get_profile("body_check"), max_examples=300)
@given(st.data())
def test_a_tampered_chain_gets_the_same_finding_either_way(data: st.DataObject) -> None:
    rows = chain_rows(30)
    target = rows[data.draw(st.integers(10, 29))]
    how = data.draw(st.sampled_from(["body", "column", "both"]))
    if how in ("body", "both"):
        target[9] = mutate_any_bytes(data, target[9])
        target[7] = hashlib.sha256(EVENT_TAG + target[9]).digest()  # a careful attacker re-hashes
    if how in ("column", "both"):
        target[data.draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8]))] = data.draw(column_values)
    store, segment = RowsStore(rows), Segment(EXP, STREAM, 0, 30)
    fast = check_segment(store, segment)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(chain_check.ChainBodyCheck, "accepts", lambda self, row: False)
        slow = check_segment(store, segment)  # type: ignore[arg-type]
    assert fast == slow


def test_a_body_stored_as_text_is_a_finding(tmp_path: Path) -> None:
    """A database holding TEXT where a body's bytes belong is reported, not a crash."""
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}", create=True) as store:
        recorded = record_experiment(store)
        drop_append_only_triggers(store)
        execute(store, "UPDATE ledger_events SET body = 'hello' WHERE exp = :exp "
                "AND stream = 'worker-0' AND seq = 1", exp=recorded.exp)
        report = verify(store)
    assert [finding.describe() for finding in report.findings] == [
        f"{recorded.exp} stream worker-0 seq 1: stored body is str, not bytes"]


def test_a_body_of_exactly_the_size_limit_verifies() -> None:
    """The writer stores bodies of up to MAX_BODY_BYTES inclusive, so verification must accept
    one of exactly that size rather than call it over the limit."""
    rows = chain_rows(2)
    fields = msgpack.unpackb(benchmark_body(2, batch=2, prev=rows[1][7]), raw=False)
    fields["params"]["pad"] = b""  # bin8, 2 bytes; padded below to bin32, 5 bytes + payload
    fields["params"]["pad"] = bytes(MAX_BODY_BYTES - len(encode(fields)) - 3)
    body = encode(fields)
    assert len(body) == MAX_BODY_BYTES
    rows.append(row_of(body))
    result = check_segment(RowsStore(rows), Segment(EXP, STREAM, 0, 3))  # type: ignore[arg-type]
    assert (result.problem, result.count) == (None, 3)


def test_a_body_over_the_size_limit_is_refused_undecoded() -> None:
    rows = chain_rows(3)
    huge = b"\x00" * (MAX_BODY_BYTES + 1)
    rows[2][9], rows[2][7] = huge, hashlib.sha256(EVENT_TAG + huge).digest()
    result = check_segment(RowsStore(rows), Segment(EXP, STREAM, 0, 3))  # type: ignore[arg-type]
    assert result.problem == (2, f"body of {MAX_BODY_BYTES + 1:,} bytes exceeds the "
                                 f"{MAX_BODY_BYTES:,}-byte limit")
