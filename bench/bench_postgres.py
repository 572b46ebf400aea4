"""Append throughput to PostgreSQL: the library against raw psycopg COPY, 1 writer and 4 writers.

Each writer appends the same events to its own stream of one experiment: derive the seed of the
event's path, canonically encode the body, chain it with SHA-256 and store the row.

- library: a ``StreamWriter`` per writer (batches of 2,000 events, one transaction each);
- raw: a bare loop doing the same per-event work and streaming the rows into the same table
  with one ``COPY … FROM STDIN`` per writer (one transaction) — the fastest way psycopg has.

With 4 writers each is its own process (started before the clock, released together), so the
figure is the aggregate rate of concurrent writers. Rounds alternate which goes first; medians
are reported. Every table lives in a fresh schema that is dropped afterwards.

Run: ``.venv/bin/python -m bench.bench_postgres`` with ``LEDGER_BENCH_POSTGRES_URL`` (else
``LEDGER_TEST_POSTGRES_URL``) naming the server; ``BENCH_PG_EVENTS`` events per writer
(default 100,000), ``BENCH_PG_ROUNDS`` rounds (default 2).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

import sqlalchemy

from bench.bench_append import ROOT, event_params
from bench.results import result, save, show
from bench.settings import setting, standalone
from ledger.canonical import canonical
from ledger.digests import EVENT_TAG, ZERO_DIGEST
from ledger.events import AUGMENTATION_BATCH, EXPERIMENT_CREATED, make_event
from ledger.seeds import derive_bytes
from ledger.store import Store, StreamWriter
from ledger.store.store import ROW_COLUMNS

EXP = "exp-benchpostgres"
URL_ENVS = ("LEDGER_BENCH_POSTGRES_URL", "LEDGER_TEST_POSTGRES_URL")


def _schema_url(base: str, schema: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


def _event(index: int) -> tuple[tuple[Any, ...], dict[str, Any], bytes, bytes]:
    path, params = event_params(index)
    output = hashlib.sha256(params["indices_digest"]).digest()
    return path, params, params["indices_digest"], output


def write_library(url: str, stream: str, count: int) -> None:
    """Append ``count`` events to ``stream`` through StreamWriter."""
    with Store.open(url) as store, StreamWriter(store, EXP, stream) as writer:
        for index in range(count):
            path, params, input_digest, output = _event(index)
            writer.append(AUGMENTATION_BATCH, path=path, seed=derive_bytes(ROOT, path),
                          params=params, input=input_digest, output=output)


def write_raw(url: str, stream: str, count: int) -> None:
    """The baseline: the same rows, computed in a bare loop, streamed in by one COPY."""
    import psycopg

    dsn = sqlalchemy.engine.make_url(url).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False)) as connection:
        with connection.cursor() as cursor:
            head = ZERO_DIGEST
            with cursor.copy(f"COPY ledger_events ({', '.join(ROW_COLUMNS)}) FROM STDIN") as copy:
                for seq in range(count):
                    path, params, input_digest, output = _event(seq)
                    seed = derive_bytes(ROOT, path)
                    t = time.time_ns()
                    body = canonical({"v": 1, "exp": EXP, "stream": stream, "seq": seq,
                                      "kind": AUGMENTATION_BATCH, "path": list(path),
                                      "seed": seed, "params": params, "input": input_digest,
                                      "output": output, "meta": {}, "prev": head, "t": t})
                    digest = hashlib.sha256(EVENT_TAG + body).digest()
                    copy.write_row((EXP, stream, seq, AUGMENTATION_BATCH, canonical(list(path)),
                                    seed, input_digest, output, head, digest, t, body))
                    head = digest


def _worker(which: str, url: str, stream: str, count: int, barrier: Any) -> None:
    barrier.wait()
    (write_library if which == "library" else write_raw)(url, stream, count)


def _measure(which: str, url: str, writers: int, count: int) -> float:
    """Aggregate events per second of ``writers`` concurrent writers (processes when > 1)."""
    tag = uuid.uuid4().hex[:8]
    if writers == 1:
        start = time.perf_counter()
        (write_library if which == "library" else write_raw)(url, f"{which}-{tag}", count)
        return count / (time.perf_counter() - start)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers + 1)
    processes = [context.Process(target=_worker, args=(which, url, f"{which}-{tag}-{k}", count,
                                                       barrier)) for k in range(writers)]
    for process in processes:
        process.start()
    barrier.wait()  # every process is up and connected-to-be: start the clock
    start = time.perf_counter()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - start
    if any(process.exitcode for process in processes):
        raise RuntimeError(f"a {which} writer failed")
    return writers * count / elapsed


def run(count: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Measure library and raw, 1 and 4 writers; return the result record."""
    base = next((os.environ[name] for name in URL_ENVS if os.environ.get(name)), None)
    command = "python -m bench.bench_postgres"
    if base is None:
        return result("append_postgres", {"skipped": f"set {URL_ENVS[0]} to a PostgreSQL URL"},
                      {}, {}, {}, command)
    count = count or setting("BENCH_PG_EVENTS")
    rounds = rounds or setting("BENCH_PG_ROUNDS")
    schema = f"ledger_bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = _schema_url(base, schema)
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        with Store.open(url, create=True) as store:
            store.insert_experiment(EXP, "bench", make_event(
                EXP, "main", 0, EXPERIMENT_CREATED, params={"name": "bench"}, prev=ZERO_DIGEST,
                t=time.time_ns()))
        for round_index in range(rounds):
            order = ("library", "raw") if round_index % 2 == 0 else ("raw", "library")
            for writers in (1, 4):
                for which in order:
                    rates.setdefault((which, writers), []).append(
                        _measure(which, url, writers, count))
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    median = {key: statistics.median(values) for key, values in rates.items()}
    return result(
        "append_postgres",
        {"events_per_writer": count, "rounds": rounds,
         "library_1_writer_events_per_s": median[("library", 1)],
         "library_4_writers_events_per_s": median[("library", 4)],
         "library_rounds": {f"{w}_writers": [round(r) for r in rates[("library", w)]]
                            for w in (1, 4)}},
        {"raw_copy_1_writer_events_per_s": median[("raw", 1)],
         "raw_copy_4_writers_events_per_s": median[("raw", 4)],
         "raw_rounds": {f"{w}_writers": [round(r) for r in rates[("raw", w)]] for w in (1, 4)}},
        {"library_vs_raw_1_writer": median[("library", 1)] / median[("raw", 1)],
         "library_vs_raw_4_writers": median[("library", 4)] / median[("raw", 4)]},
        {"library_vs_raw_1_writer": ">= 0.5", "library_vs_raw_4_writers": ">= 0.5"},
        command)


if __name__ == "__main__":
    standalone(__doc__)
    record = run()
    show(record)
    save([record])
