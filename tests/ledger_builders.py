"""Small recorded experiments for tests, written with the StreamWriter directly.

``record_experiment`` writes what a real run writes — ``experiment_created`` on main seq 0, a
dataset, one stream per worker, shuffles, augmentation batches, metrics and (unless asked not to)
a correct ``run_completed`` — so that verification, ``ledger show`` and the store reads have
something realistic to work on. The tampering helpers edit rows with raw SQL, as an attacker who
dropped the append-only triggers would.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, inspect, text

from ledger.canonical import canonical
from ledger.digests import ZERO_DIGEST, array_digest, event_hash_of_bytes, value_digest
from ledger.events import Event, decode_body, make_event, new_experiment_id, path_bytes
from ledger.seeds import derive_bytes, generator, root_seed_to_bytes
from ledger.store import Store, StreamWriter

EVENT_COLUMNS = ("exp", "stream", "seq", "kind", "path", "seed", "input", "output", "prev", "hash",
                 "t", "body")


@dataclass
class Recorded:
    """What ``record_experiment`` wrote: every event of every stream, in seq order."""

    exp: str
    name: str
    root: int
    created_t: int
    streams: dict[str, list[Event]] = field(default_factory=dict)

    @property
    def main(self) -> list[Event]:
        return self.streams["main"]

    @property
    def completed(self) -> Event | None:
        last = self.main[-1]
        return last if last.kind == "run_completed" else None

    @property
    def head(self) -> bytes | None:
        """The run's head (hash of run_completed), None when incomplete."""
        return None if self.completed is None else self.completed.hash

    def counts_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for events in self.streams.values():
            for event in events:
                counts[event.kind] = counts.get(event.kind, 0) + 1
        return counts

    def event_count(self) -> int:
        return sum(len(events) for events in self.streams.values())


def completion_params(writers: dict[str, StreamWriter], status: str = "ok") -> dict[str, Any]:
    """The params of a correct run_completed, to be appended next on ``writers['main']``.

    For main the count is the seq run_completed gets and the head its prev; for every other
    stream, its count and the hash of its last event.
    """
    return {"status": status,
            "streams": {name: {"count": writer.next_seq, "head": writer.head}
                        for name, writer in sorted(writers.items())}}


def record_experiment(store: Store, exp: str | None = None, *, name: str = "fraud-test",
                      root: int = 42, workers: int = 2, epochs: int = 2, batches: int = 2,
                      complete: bool = True, status: str = "ok",
                      created_t: int = 1_700_000_000 * 10**9,
                      batch_size: int = 7, extra_params: dict[str, Any] | None = None
                      ) -> Recorded:
    """Record one small experiment through StreamWriters and return what was written.

    ``batch_size`` is small on purpose, so recording goes through several batched transactions.
    """
    exp = exp or new_experiment_id()
    clock = itertools.count(created_t + 1).__next__
    created = make_event(exp, "main", 0, "experiment_created", params={
        "name": name, "model": "logistic-regression", "root_seed": root_seed_to_bytes(root),
        "root_seed_source": "user", "hyperparams": {"lr": 0.1, "epochs": epochs},
        "entrypoint": "tests.ledger_builders:record_experiment", "code": "test-0",
        **(extra_params or {})}, meta={"pid": 1}, prev=ZERO_DIGEST, t=created_t)
    store.insert_experiment(exp, name, created)
    recorded = Recorded(exp, name, root, created_t, {"main": [created]})
    writers = {"main": StreamWriter(store, exp, "main", batch_size=batch_size,
                                    flush_interval=None, clock=clock)}
    for k in range(workers):
        writers[f"worker-{k}"] = StreamWriter(store, exp, f"worker-{k}", batch_size=batch_size,
                                              flush_interval=None, clock=clock)
        recorded.streams[f"worker-{k}"] = []

    def append(stream: str, kind: str, **fields: Any) -> Event:
        event = writers[stream].append(kind, **fields)
        recorded.streams[stream].append(event)
        return event

    append("main", "dataset_registered", params={"name": "transactions", "length": 64},
           output=value_digest("transactions-64"))
    for k in range(workers):
        path = ("worker", k)
        state = generator(root, path).integers(0, 2**32, size=4)
        append(f"worker-{k}", "worker_spawned", path=path, seed=derive_bytes(root, path),
               params={"worker": k, "start_method": "spawn"}, output=array_digest(state),
               meta={"pid": 100 + k})
    for epoch in range(epochs):
        path = ("epoch", epoch, "shuffle")
        permutation = generator(root, path).permutation(64)
        append("main", "epoch_reset", path=path, seed=derive_bytes(root, path),
               params={"epoch": epoch, "length": 64, "shuffle": True},
               output=array_digest(permutation))
        for batch in range(batches):
            stream = f"worker-{batch % workers}" if workers else "main"
            path = ("epoch", epoch, "batch", batch, "augment")
            noise = generator(root, path).normal(size=(2, 3))
            indices = permutation[batch * 8:(batch + 1) * 8]
            append(stream, "augmentation_batch", path=path, seed=derive_bytes(root, path),
                   params={"epoch": epoch, "batch": batch, "augmenter": "gaussian_noise/1",
                           "indices": array_digest(indices)},
                   input=array_digest(indices), output=array_digest(noise))
        append("main", "metric", params={"epoch": epoch, "name": "val_auc",
                                         "value": 0.5 + epoch / 10},
               output=value_digest(0.5 + epoch / 10))
    for name_, writer in writers.items():
        if name_ != "main":
            writer.close()
    if complete:
        append("main", "run_completed", params=completion_params(writers, status))
    writers["main"].close()
    return recorded


# -- raw access, as an attacker (or a test) sees the database ---------------------------------

def table_names(url: str) -> list[str]:
    """The tables of the database at ``url`` (its schema's, for a test PostgreSQL URL), read
    without the ledger's code: what a command left there."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return inspect(connection).get_table_names()
    finally:
        engine.dispose()


def is_postgres(store: Store) -> bool:
    return store.backend == "postgresql"


def execute(store: Store, sql: str, **params: Any) -> None:
    """Run one raw SQL statement in its own transaction."""
    with store.engine.begin() as connection:
        connection.execute(text(sql), params)


def drop_append_only_triggers(store: Store) -> None:
    """What an attacker with write access does first: remove every append-only trigger."""
    with store.engine.begin() as connection:
        if is_postgres(store):
            names = connection.execute(text(
                "SELECT tgname, relname FROM pg_trigger JOIN pg_class ON pg_class.oid = tgrelid "
                "WHERE NOT tgisinternal AND relname LIKE 'ledger_%' "
                "AND relnamespace = current_schema()::regnamespace")).all()
            for trigger, table in names:
                connection.exec_driver_sql(f'DROP TRIGGER "{trigger}" ON "{table}"')
        else:
            names = connection.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars().all()
            for trigger in names:
                connection.exec_driver_sql(f'DROP TRIGGER "{trigger}"')
    assert names, "expected append-only triggers to drop"


def rows(store: Store, exp: str, stream: str) -> list[dict[str, Any]]:
    """Every stored row of one chain, in seq order, as column maps (bytes as bytes)."""
    with store.engine.connect() as connection:
        result = connection.execute(text(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM ledger_events "
            "WHERE exp = :exp AND stream = :stream ORDER BY seq"), {"exp": exp, "stream": stream})
        return [{name: bytes(value) if isinstance(value, memoryview) else value
                 for name, value in row._mapping.items()} for row in result]


def delete_event(store: Store, exp: str, stream: str, seq: int) -> None:
    execute(store, "DELETE FROM ledger_events WHERE exp = :exp AND stream = :stream AND seq = :seq",
            exp=exp, stream=stream, seq=seq)


def insert_row(store: Store, row: dict[str, Any]) -> None:
    names = ", ".join(EVENT_COLUMNS)
    values = ", ".join(f":{name}" for name in EVENT_COLUMNS)
    execute(store, f"INSERT INTO ledger_events ({names}) VALUES ({values})",
            **{name: row[name] for name in EVENT_COLUMNS})


def forged_row(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A row whose body is rewritten with ``changes``, re-hashed, columns consistent with it.

    This is a careful attacker, who encodes bodies without the library's validation: every event
    it produces is internally consistent; only the chain (prev links, run_completed) can give it
    away.
    """
    body = decode_body(row["body"])
    body.update(changes)
    body_bytes = canonical(body)
    return {"exp": body["exp"], "stream": body["stream"], "seq": body["seq"],
            "kind": body["kind"], "path": path_bytes(body["path"]), "seed": body["seed"],
            "input": body["input"], "output": body["output"], "prev": body["prev"],
            "hash": event_hash_of_bytes(body_bytes), "t": body["t"], "body": body_bytes}


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]
