"""Hypothesis strategies for event fields, shared by the event and recording tests."""

from __future__ import annotations

from hypothesis import strategies as st

labels = st.one_of(st.text(max_size=8), st.integers(min_value=0, max_value=2**64 - 1))
"""Seed-path labels: str, or int in [0, 2**64)."""
digests32 = st.none() | st.binary(min_size=32, max_size=32)
"""An optional 32-byte digest (input, output)."""
plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
              st.floats(allow_nan=False), st.text(max_size=10), st.binary(max_size=10)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                      children, max_size=3),
    max_leaves=10)
"""Any canonically encodable value."""
maps = st.dictionaries(st.text(max_size=8), plain, max_size=4)
"""Event params and meta."""
