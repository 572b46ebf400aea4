"""Fast acceptance of event bodies shaped like one already checked: verification's hot path.

The full check of a body (:func:`ledger.chain_check.full_check`) decodes it into a map and
compares that with every indexed column — about half of verification's time. But the events of a
chain repeat a handful of *shapes*: the same keys, kinds, strings and structure, with only
digests, integers and floats changing from one event to the next. :class:`ChainBodyCheck`
remembers the shapes of bodies that passed the full check (templates) and accepts a later body
when

1. it has the same length and the same bytes as a template everywhere except in *free* bytes:
   the payloads of bin, integer and float values, and the value bits of fixints (which must stay
   fixints of the same sign) — one AND of the body, read as a big integer, with a mask; and
2. the bytes of each value an indexed column repeats equal that column: the digests (``input``,
   ``output``, ``prev``, ``seed``) byte for byte, ``seq`` and ``t`` as their minimal encoding,
   ``path`` as the column's bytes (which must be canonical, as the full check demands), ``kind``
   as the template's (its bytes are pinned); and
3. every other integer wider than a fixint still needs its width (a 5 written as uint16 is not
   canonical: DESIGN §2), so that the body stays the canonical encoding of what it decodes to,
   as the template was.

Why a yes is safe: with every type tag, length, string and key pinned, msgpack's decoder walks
the new body exactly as it walked the template (same boundaries, same depth, same limits), so it
decodes without error into a map of the same 13 keys, ``v`` pinned at 1, and values that equal
the columns. Free bytes only ever change a number or the contents of a bin, which nothing but
the column comparisons looks at. When it says no, the caller runs the full check, which finds
and words any problem exactly as before — the fast check never produces a finding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from ledger.events import EXPERIMENT_CREATED, RUN_COMPLETED

FAST_COLUMNS = ("seq", "kind", "path", "seed", "input", "output", "prev", "hash", "t", "body")
"""Order of the columns of a row given to :class:`ChainBodyCheck`."""
SLOW_KINDS = frozenset({EXPERIMENT_CREATED, RUN_COMPLETED})
"""Kinds whose params verification reads: never accepted here, always decoded in full."""
MAX_TEMPLATE_BYTES = 16 * 1024
"""Larger bodies are not learnt (a template holds two integers of the body's size)."""
MAX_TEMPLATES = 64
"""Templates kept per chain; when full, they are forgotten and learnt again."""
PER_LENGTH = 4
"""Templates kept per body length, most recently learnt first."""
FREE_LEARNING = 8
"""Templates learnt before learning must be paid for by hits (LEARN_EVERY_HITS each)."""
LEARN_EVERY_HITS = 256
"""A chain whose bodies never repeat a shape costs at most one learning per this many events."""

_PINNED, _POSITIVE_FIXINT, _NEGATIVE_FIXINT = 0xFF, 0x80, 0xE0
"""Mask bytes: a body byte must equal the template's under its mask byte (0 for free bytes;
the high bit for a positive fixint; the top three bits for a negative one)."""
_PINNED_FIELDS = ("exp", "stream", "kind", "v")
_DIGEST_FIELDS = ("input", "output", "prev", "seed")
_BODY_FIELDS = frozenset({"v", "exp", "stream", "seq", "kind", "path", "seed", "params", "input",
                          "output", "meta", "prev", "t"})
_UNPACK = {"raw": False, "strict_map_key": True, "use_list": False}
"""The decoder options of the full check."""
_PACK = msgpack.Packer(use_bin_type=True).pack
_BIN_TAGS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""bin8/16/32: bytes of the length that follows the tag."""
_NUMBER_TAGS = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4,
                0xD3: 8}
"""float32/64, uint8–64, int8–64: payload bytes after the tag."""
_INT_TAGS = frozenset(range(0xCC, 0xD4))
_CANONICAL_INT_RANGES = {0xCC: (2**7, 2**8), 0xCD: (2**8, 2**16), 0xCE: (2**16, 2**32),
                         0xCF: (2**32, 2**64), 0xD0: (-(2**7), -(2**5)),
                         0xD1: (-(2**15), -(2**7)), 0xD2: (-(2**31), -(2**15)),
                         0xD3: (-(2**63), -(2**31))}
"""Per wide integer tag, the values msgpack's packer writes with it (smaller ones get a
narrower tag; it writes non-negative values unsigned)."""
_FIXEXT_TAGS = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_EXT_TAGS = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_STR_TAGS = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_ARRAY_TAGS = {0xDC: 2, 0xDD: 4}
_MAP_TAGS = {0xDE: 2, 0xDF: 4}


class Template(NamedTuple):
    """The shape of a body that passed the full check, and where its column values lie."""

    mask: int
    """Which bits of a body are pinned: one mask byte per body byte, read big-endian."""
    pinned: int
    """The template body's pinned bits: ``body & mask`` of every body of this shape."""
    kind: Any
    input: slice | None
    """Payload of the input digest, or None when the template's input is nil."""
    output: slice | None
    prev: slice | None
    seed: slice | None
    seq: slice
    t: slice
    path: slice
    wide_ints: tuple[tuple[slice, bytes, bytes], ...]
    """(payload, lowest, highest) of each wide integer outside ``seq`` and ``t`` (which are
    compared with their columns' minimal encoding): the body stays canonical only while the
    payload is in [lowest, highest], i.e. the value needs this width (bytes of one length
    compare as their big-endian two's-complement values do within one sign)."""


class ShapeError(ValueError):
    """The body cannot serve as a template (not a plain v1 body map)."""


class ChainBodyCheck:
    """Templates of one chain's bodies, learnt from bodies that passed the full check."""

    __slots__ = ("_by_length", "_learnt")

    def __init__(self) -> None:
        self._by_length: dict[int, list[Template]] = {}
        self._learnt = 0

    def accepts(self, row: tuple[Any, ...]) -> bool:
        """True when the body of ``row`` (FAST_COLUMNS order) has a learnt shape and agrees with
        every column, so that the full check would pass it; False means: run the full check.

        Never raises: a column or body that cannot be handled here is a False.
        """
        try:
            body = row[9]
            templates = self._by_length.get(len(body))
            if templates is None:
                return False
            bits = int.from_bytes(body)
            for template in templates:
                if bits & template.mask == template.pinned:
                    return self._columns_match(template, row)
            return False
        except Exception:  # a hostile column: the full check says what is wrong
            return False

    def _columns_match(self, template: Template, row: tuple[Any, ...]) -> bool:
        """The values of a body of ``template``'s shape equal the columns of ``row``."""
        seq, kind, path, seed, input_, output, prev, _hash, t, body = row
        (_mask, _pinned, template_kind, input_at, output_at, prev_at, seed_at, seq_at, t_at,
         path_at, wide_ints) = template
        if (body[input_at] != input_ if input_at is not None else input_ is not None) \
                or (body[output_at] != output if output_at is not None else output is not None) \
                or (body[prev_at] != prev if prev_at is not None else prev is not None) \
                or (body[seed_at] != seed if seed_at is not None else seed is not None):
            return False
        pack = _PACK
        if (kind != template_kind or body[seq_at] != pack(seq) or body[t_at] != pack(t)
                or body[path_at] != path):
            return False
        for where, lowest, highest in wide_ints:
            if not lowest <= body[where] <= highest:
                return False
        return True

    def learn(self, row: tuple[Any, ...], hits: int) -> None:
        """Remember the shape of the body of ``row``, which passed the full check, after
        ``hits`` bodies of this chain were accepted (the caller counts: it costs nothing there).

        Does nothing for the kinds verification reads in full, for large bodies, for bodies
        that are not plain v1 maps, and when learning has not been paid for by hits.
        """
        kind, body = row[1], row[-1]
        if (kind in SLOW_KINDS or type(body) is not bytes or len(body) > MAX_TEMPLATE_BYTES
                or self._learnt >= FREE_LEARNING + hits // LEARN_EVERY_HITS):
            return
        try:
            template = make_template(body)
        except Exception:  # not a plain v1 body map: such bodies keep taking the full check
            return
        self._learnt += 1
        if sum(len(kept) for kept in self._by_length.values()) >= MAX_TEMPLATES:
            self._by_length.clear()
        kept = self._by_length.setdefault(len(body), [])
        kept.insert(0, template)
        del kept[PER_LENGTH:]


def make_template(body: bytes) -> Template:
    """The template of ``body``, a v1 event body map that msgpack decodes without error.

    Raises ShapeError when the body is not a 13-key map whose digests are nil or bin, whose
    seq and t are integers and whose path is canonical.
    """
    mask = bytearray([_PINNED]) * len(body)
    entries, position = _container_header(body, 0, _MAP_TAGS, 0x80)
    spans: dict[str, tuple[int, int]] = {}
    wide_ints: list[tuple[int, int]] = []
    for _ in range(entries):
        key_end = _walk_value(body, position, mask)
        key = msgpack.unpackb(body[position:key_end], raw=False)
        spans[key] = (key_end, _walk_value(body, key_end, mask,
                                           None if key in ("seq", "t") else wide_ints,
                                           pin_floats=key == "path"))
        position = spans[key][1]
    if position != len(body) or spans.keys() != _BODY_FIELDS:
        raise ShapeError("not a v1 body map")
    for name in _PINNED_FIELDS:
        start, end = spans[name]
        mask[start:end] = bytes([_PINNED]) * (end - start)
    path = body[slice(*spans["path"])]
    if _PACK(msgpack.unpackb(path, **_UNPACK)) != path:
        raise ShapeError("the path is not in canonical form")
    kind_start, kind_end = spans["kind"]
    mask_bits = int.from_bytes(mask)
    kind = msgpack.unpackb(body[kind_start:kind_end], raw=False)
    input_, output, prev, seed = (_digest_payload(body, spans[name]) for name in _DIGEST_FIELDS)
    return Template(mask_bits, int.from_bytes(body) & mask_bits, kind, input_, output, prev, seed,
                    _integer(body, spans["seq"]), _integer(body, spans["t"]),
                    slice(*spans["path"]),
                    tuple(_canonical_range(position, tag) for position, tag in wide_ints))


def _canonical_range(position: int, tag: int) -> tuple[slice, bytes, bytes]:
    """(payload, lowest, highest) of the integer at ``position``: msgpack's packer writes a
    value with this tag exactly when its payload is in [lowest, highest]."""
    low, high = _CANONICAL_INT_RANGES[tag]
    size = _NUMBER_TAGS[tag]
    modulus = 2 ** (8 * size)
    return (slice(position + 1, position + 1 + size), (low % modulus).to_bytes(size),
            ((high - 1) % modulus).to_bytes(size))


def _digest_payload(body: bytes, span: tuple[int, int]) -> slice | None:
    start, end = span
    tag = body[start]
    if tag == 0xC0:
        return None
    if tag not in _BIN_TAGS:
        raise ShapeError("a digest that is neither nil nor bin")
    return slice(start + 1 + _BIN_TAGS[tag], end)


def _integer(body: bytes, span: tuple[int, int]) -> slice:
    tag = body[span[0]]
    if not (tag <= 0x7F or tag >= 0xE0 or tag in _INT_TAGS):
        raise ShapeError("seq or t is not an integer")
    return slice(*span)


def _container_header(body: bytes, position: int, wide_tags: dict[int, int], fix_base: int
                      ) -> tuple[int, int]:
    """(entries, position after the header) of the map or array whose header is at position."""
    tag = body[position]
    if fix_base <= tag <= fix_base + 0x0F:
        return tag & 0x0F, position + 1
    if tag in wide_tags:
        size = wide_tags[tag]
        return int.from_bytes(body[position + 1:position + 1 + size]), position + 1 + size
    raise ShapeError("not a map")


def _walk_value(body: bytes, position: int, mask: bytearray,
                ints: list[tuple[int, int]] | None = None, *, pin_floats: bool = False) -> int:
    """Walk one msgpack value from ``position``, freeing its free bytes in ``mask``; return its
    end. msgpack is prefix notation: counting the values still owed needs no recursion.

    With ``ints``, wide integers are listed there, for their range to be checked; with
    ``pin_floats`` (the path, whose bytes are compared with a column), floats stay pinned.
    """
    owed = 1
    while owed:
        owed -= 1
        tag = body[position]
        if tag <= 0x7F:
            mask[position] = _POSITIVE_FIXINT
            position += 1
        elif tag >= 0xE0:
            mask[position] = _NEGATIVE_FIXINT
            position += 1
        elif tag <= 0x8F:
            owed += 2 * (tag & 0x0F)
            position += 1
        elif tag <= 0x9F:
            owed += tag & 0x0F
            position += 1
        elif tag <= 0xBF:
            position += 1 + (tag & 0x1F)
        elif tag in (0xC0, 0xC2, 0xC3):
            position += 1
        elif tag in _NUMBER_TAGS:
            size = _NUMBER_TAGS[tag]
            if tag in _INT_TAGS or not pin_floats:
                mask[position + 1:position + 1 + size] = bytes(size)
            if ints is not None and tag in _INT_TAGS:
                ints.append((position, tag))
            position += 1 + size
        else:
            position, owed = _walk_sized(body, position, mask, tag, owed)
        if position > len(body):
            raise ShapeError("truncated")
    return position


def _walk_sized(body: bytes, position: int, mask: bytearray, tag: int, owed: int
                ) -> tuple[int, int]:
    """Tags followed by a length or count: bin (payload freed), str, ext, array16/32, map16/32."""
    if tag in _FIXEXT_TAGS:
        return position + 2 + _FIXEXT_TAGS[tag], owed
    for table in (_BIN_TAGS, _STR_TAGS, _EXT_TAGS, _ARRAY_TAGS, _MAP_TAGS):
        if tag in table:
            size = table[tag]
            break
    else:
        raise ShapeError(f"no msgpack value starts with byte {tag:#x}")
    length = int.from_bytes(body[position + 1:position + 1 + size])
    start = position + 1 + size
    if tag in _ARRAY_TAGS:
        return start, owed + length
    if tag in _MAP_TAGS:
        return start, owed + 2 * length
    if tag in _BIN_TAGS:
        mask[start:start + length] = bytes(length)
    if tag in _EXT_TAGS:
        start += 1  # the ext type byte
    return start + length, owed
