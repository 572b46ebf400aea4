"""Forging ledgers as a careful attacker would: re-record a run with changes, consistently."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger.digests import ZERO_DIGEST
from ledger.events import decode_body, make_event
from ledger.store import Store, StreamWriter


def copy_run(source: Store, exp: str, target: Store,
             change: Callable[[dict[str, Any]], list[dict[str, Any]] | None]) -> None:
    """Re-record ``exp`` into ``target`` with ``change`` applied to every body: a forged ledger
    that is internally consistent (hashes, chains, run_completed all recomputed). Bodies that
    ``change`` returns are recorded after the changed one, each in its ``stream``."""
    writers: dict[str, StreamWriter] = {}
    heads: dict[str, tuple[int, bytes]] = {}
    for _stream, _seq, _kind, body_bytes in source.iter_run_bodies(exp):
        body = decode_body(body_bytes)
        for body in [body, *(change(body) or [])]:
            _record(body, exp, target, writers, heads)
    for writer in writers.values():
        writer.close()


def _record(body: dict[str, Any], exp: str, target: Store, writers: dict[str, StreamWriter],
            heads: dict[str, tuple[int, bytes]]) -> None:
    stream, kind = body["stream"], body["kind"]
    if kind == "run_completed":
        for name, writer in writers.items():
            if name != "main":
                writer.flush()
        body["params"]["streams"] = {
            name: {"count": writer.next_seq, "head": writer.head}
            for name, writer in writers.items()}
    if kind == "experiment_created" and stream == "main":
        first = make_event(exp, "main", 0, kind, path=body["path"], seed=body["seed"],
                           params=body["params"], input=body["input"],
                           output=body["output"], meta=body["meta"], prev=ZERO_DIGEST,
                           t=body["t"])
        target.insert_experiment(exp, body["params"]["name"], first)
        heads["main"] = (0, first.hash)
        return
    writer = writers.get(stream)
    if writer is None:
        writer = writers[stream] = StreamWriter(target, exp, stream, flush_interval=None,
                                                _head=heads.get(stream))
    writer.append(kind, path=body["path"], seed=body["seed"], params=body["params"],
                  input=body["input"], output=body["output"], meta=body["meta"], t=body["t"])
