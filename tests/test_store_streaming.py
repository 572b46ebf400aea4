"""Streamed reads (verification's and replay's row sources) on every backend: plain tuples, in
bounded batches, the same rows everywhere, and driver errors as StoreError."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ledger.errors import StoreError
from ledger.store import Store
from ledger_builders import execute, record_experiment, rows

COLUMNS = ("seq", "kind", "path", "seed", "input", "output", "prev", "hash", "t", "body")


def test_segment_batches_are_bounded_lists_of_plain_tuples(store: Store) -> None:
    recorded = record_experiment(store, epochs=2, batches=5)
    batches = list(store.iter_segment_batches(recorded.exp, "worker-0", 0, 10**6, COLUMNS,
                                              batch_size=3))
    assert batches and all(1 <= len(batch) <= 3 for batch in batches)
    got = [row for batch in batches for row in batch]
    assert all(type(row) is tuple for row in got)
    stored = rows(store, recorded.exp, "worker-0")
    assert got == [tuple(row[name] for name in COLUMNS) for row in stored]
    assert [type(value) for value in got[0]] == [int, str, bytes, bytes, type(None), bytes,
                                                  bytes, bytes, int, bytes]


def test_run_bodies_stream_in_recording_order(store: Store) -> None:
    recorded = record_experiment(store)
    streamed = list(store.iter_run_bodies(recorded.exp, batch_size=2))
    assert all(type(row) is tuple for row in streamed)
    assert sorted(body for *_rest, body in streamed) == sorted(
        event.body for events in recorded.streams.values() for event in events)
    with store.engine.connect() as connection:  # the order rows were inserted in, batch by batch
        inserted = [tuple(row) for row in connection.execute(text(
            "SELECT stream, seq FROM ledger_events WHERE exp = :exp ORDER BY id"),
            {"exp": recorded.exp})]
    assert [(stream, seq) for stream, seq, *_rest in streamed] == inserted
    kinds = ["epoch_reset", "augmentation_batch"]
    assert list(store.iter_kind_bodies(recorded.exp, kinds, batch_size=2)) == [
        row for row in streamed if row[2] in kinds]


def test_a_driver_error_while_streaming_is_a_store_error(store: Store) -> None:
    recorded = record_experiment(store)
    execute(store, "DROP TABLE ledger_events" + (" CASCADE" if store.backend == "postgresql"
                                                 else ""))
    with pytest.raises(StoreError, match="cannot read") as refused:
        list(store.iter_segment_batches(recorded.exp, "main", 0, 10, COLUMNS))
    assert "\n" not in str(refused.value)  # the driver's first line, not SQLAlchemy's dump
