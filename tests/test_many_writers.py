"""Many writers, one experiment, every backend: 4 processes append 50,000 events each to their
own stream — nothing lost, nothing duplicated, every chain verifies — and a second writer that
opens a stream someone holds is refused at open, never forked."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import threading
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
import sqlalchemy
from sqlalchemy import text

from conftest import ROOT
from ledger.errors import BadInputError, StoreError, StreamClaimedError
from ledger.events import decode_body
from ledger.experiment import ExperimentManager
from ledger.integrations.runs import AttachedRun
from ledger.seeds import derive_bytes
from ledger.store import Store, StreamWriter
from ledger.verify import verify
from ledger_builders import drop_append_only_triggers, execute, record_experiment

WRITERS = 4
EVENTS = 50_000
ROOT_SEED = 2024


def append_stream(url: str, exp: str, rank: int, count: int) -> tuple[str, int, bytes]:
    """In a fresh process: attach to ``exp`` as ``rank-<rank>`` and append ``count`` draws."""
    with AttachedRun.open(url, exp, f"rank-{rank}") as run:
        for index in range(count):
            epoch, batch = divmod(index, 1000)
            path = ("rank", rank, "epoch", epoch, "batch", batch, "augment")
            indices = hashlib.sha256(f"{rank}/{index}".encode()).digest()
            run.record_draw("augmentation_batch", path, seed=derive_bytes(run.root_seed, path),
                            params={"epoch": epoch, "batch": batch, "batch_size": 256,
                                    "dataset": "fraud-2024Q1", "indices_digest": indices},
                            input=indices, output=hashlib.sha256(indices).digest())
        last = run._writer.head
    return run.stream, count, last


def test_four_processes_append_to_one_experiment(store_url: str, tmp_path) -> None:  # noqa: ANN001
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = manager.create_experiment("many-writers", seed=ROOT_SEED)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WRITERS, mp_context=context) as pool:
            futures = [pool.submit(append_stream, store_url, exp.id, rank, EVENTS)
                       for rank in range(1, WRITERS + 1)]
            reported = {stream: (count, head) for stream, count, head in
                        (future.result() for future in futures)}
        completed = exp.close()
        store = manager.store
        heads = store.stream_heads(exp.id)
        assert {name: (head.count, head.head) for name, head in heads.items()
                if name != "main"} == reported
        assert completed.params["streams"] == {
            name: {"count": head.count, "head": head.head} for name, head in heads.items()
            if name != "main"} | {"main": {"count": completed.seq,
                                           "head": completed.prev}}
        for _exp, stream, count, max_seq in store.chain_sizes(exp.id):
            if stream != "main":
                assert (count, max_seq) == (EVENTS, EVENTS - 1)  # nothing lost or duplicated
        with store.engine.connect() as connection:
            distinct = connection.execute(text(
                "SELECT COUNT(DISTINCT hash), COUNT(*) FROM ledger_events WHERE exp = :exp"),
                {"exp": exp.id}).one()
        assert distinct[0] == distinct[1] == WRITERS * EVENTS + completed.seq + 1
        report = verify(store, exp.id, jobs=2)
        assert report.ok, report.findings[:3]
        assert report.events == distinct[1]


# -- one writer per stream --------------------------------------------------------------------------

HOLDER = """
import sys
from ledger.store import Store, StreamWriter
store = Store.open(sys.argv[1])
writer = StreamWriter(store, sys.argv[2], sys.argv[3], flush_interval=None)
print("open", flush=True)
if sys.stdin.readline().strip() == "die":
    import os
    os._exit(9)  # killed: the claim is never released
writer.append("metric", params={"who": "holder"})
writer.close()
print("closed", flush=True)
"""


def _holder(url: str, exp: str, stream: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, url, exp, stream], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "open"
    return process


def test_a_second_process_opening_a_held_stream_is_refused(store: Store, store_url: str) -> None:
    recorded = record_experiment(store, workers=1, complete=False)
    holder = _holder(store_url, recorded.exp, "worker-0")
    try:
        with pytest.raises(StreamClaimedError, match=rf"worker-0 .*pid {holder.pid}\b"):
            StreamWriter(store, recorded.exp, "worker-0")
        with pytest.raises(StreamClaimedError):
            AttachedRun(store, recorded.exp, "worker-0")
        holder.stdin.write("append\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
    finally:
        holder.communicate()
    with StreamWriter(store, recorded.exp, "worker-0", flush_interval=None) as after:
        assert after.next_seq == len(recorded.streams["worker-0"]) + 1
        after.append("metric", params={"who": "after"})
    assert verify(store, recorded.exp).ok


def test_a_claim_left_by_a_killed_process_is_taken_over(store: Store, store_url: str) -> None:
    recorded = record_experiment(store, workers=1, complete=False)
    holder = _holder(store_url, recorded.exp, "worker-0")
    holder.communicate("die\n")
    assert holder.returncode == 9
    with StreamWriter(store, recorded.exp, "worker-0", flush_interval=None) as writer:
        writer.append("metric")
    with store.engine.connect() as connection:
        claims = connection.execute(text(
            "SELECT attempt, action, pid FROM ledger_stream_claims WHERE exp = :exp AND "
            "stream = 'worker-0' ORDER BY id"), {"exp": recorded.exp}).all()
    mine = os.getpid()
    # the builder's claim and release, the killed holder's claim, then ours: taking over
    # releases the dead claim first
    assert [tuple(row) for row in claims[2:]] == [(1, "claim", holder.pid), (1, "release", mine),
                                                  (2, "claim", mine), (2, "release", mine)]
    assert verify(store, recorded.exp).ok


def test_claims_are_append_only(store: Store) -> None:
    record_experiment(store, workers=0)
    for statement in ("UPDATE ledger_stream_claims SET pid = 1",
                      "DELETE FROM ledger_stream_claims"):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            execute(store, statement)


def test_a_ledger_without_the_claims_table_gets_it_on_first_write(store: Store,
                                                                  store_url: str) -> None:
    """A version-1 ledger made before claims existed: read as it is, the table added (with its
    triggers) the first time a writer opens it."""
    recorded = record_experiment(store, workers=0, complete=False)
    drop_append_only_triggers(store)
    execute(store, "DROP TABLE ledger_stream_claims")
    with Store.open(store_url) as old:
        assert old.schema_version == 1 and verify(old).ok
        with StreamWriter(old, recorded.exp, "main", flush_interval=None) as writer:
            writer.append("metric")
        with pytest.raises(StreamClaimedError):
            with StreamWriter(old, recorded.exp, "audit", flush_interval=None):
                StreamWriter(old, recorded.exp, "audit", flush_interval=None)
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"):
            execute(old, "DELETE FROM ledger_stream_claims")
        assert verify(old).ok


# -- attaching to an experiment -------------------------------------------------------------------

def test_attached_streams_are_listed_by_run_completed(store_url: str, tmp_path) -> None:  # noqa: ANN001
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = manager.create_experiment("attached", seed=ROOT_SEED)
        features = [[0.0, 1.0], [2.0, 3.0]]
        dataset = exp.register_dataset("d", features, [0, 1])
        exp.flush()
        with AttachedRun.open(store_url, exp.id, "rank-1") as run:
            assert run.root_seed == ROOT_SEED and run.name == "attached"
            assert run.register_dataset("d", features, [0, 1]).loader == dataset.loader
            with pytest.raises(BadInputError, match="no such dataset"):
                run.register_dataset("d", features, [1, 0])
            with pytest.raises(BadInputError, match="and role 'train', but .* no such dataset"):
                run.register_dataset("d", features, [0, 1], role="train")
            path = ("rank", 1, "custom")
            assert run.record_draw("user_draw", path, seed=None, params={}) is not None
            assert run.record_draw("user_draw", path, seed=None, params={}) is None
            with pytest.raises(BadInputError, match="once per run"):
                run.record_draw("user_draw", path, seed=None, params={}, output=bytes(32))
        completed = exp.close()
        assert set(completed.params["streams"]) == {"main", "rank-1"}
        assert verify(manager.store, exp.id).ok
        with pytest.raises(BadInputError, match="already completed"):
            AttachedRun.open(store_url, exp.id, "rank-2")
        with pytest.raises(BadInputError, match="main stream"):
            AttachedRun(manager.store, exp.id, "main")
        bodies = [decode_body(body) for _s, _q, _k, body in
                  manager.store.iter_run_bodies(exp.id)]
        assert [b["stream"] for b in bodies if b["kind"] == "user_draw"] == ["rank-1"]


def test_an_attached_run_refuses_a_draw_it_already_recorded(store: Store) -> None:
    """As an experiment's record: a second draw at one (kind, path) would leave a run replay
    refuses; metrics are not draws."""
    recorded = record_experiment(store, workers=0, complete=False)
    with AttachedRun(store, recorded.exp, "rank-1") as run:
        path = ("rank", 1, "model", "init")
        run.record("user_draw", path=path, seed=derive_bytes(42, path),
                   params={"generator": "numpy.PCG64"})
        with pytest.raises(BadInputError, match="recorded once per run"):
            run.record("user_draw", path=list(path), seed=derive_bytes(42, path),
                       params={"generator": "numpy.PCG64"})
        assert run.record_draw("user_draw", path, seed=derive_bytes(42, path),
                               params={"generator": "numpy.PCG64"}) is None
        other = ("rank", 1, "model", "head")
        with pytest.raises(BadInputError, match="output but no registered draw"):
            run.record("user_draw", path=other, seed=derive_bytes(42, other),
                       params={"generator": "numpy.PCG64"}, output=b"\x01" * 32)
        run.record("metric", params={"n": 1})
        run.record("metric", params={"n": 1})
    kinds = [decode_body(body)["kind"] for stream, _q, _k, body in
             store.iter_run_bodies(recorded.exp) if stream == "rank-1"]
    assert kinds == ["user_draw", "metric", "metric"]


def test_appending_after_close_is_refused(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    run = AttachedRun(store, recorded.exp, "rank-1")
    run.close()
    run.close()
    with pytest.raises(StoreError, match="closed"):
        run.record("metric")


# -- verifying while others record ---------------------------------------------------------------

def test_an_experiment_created_while_verify_reads_is_no_finding(
        store_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Verification reads the chains and the experiment rows in one snapshot: a run another
    machine creates between the two reads is neither 'a row without events' nor 'events
    without a row' (found on PostgreSQL: 3 of 12 verifies during creations failed)."""
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        with manager.create_experiment("first", seed=1):
            pass
        other = ExperimentManager(store_url, data_dir=tmp_path)
        created: list[str] = []
        chain_sizes = Store._chain_sizes

        def then_create(connection, exp):  # noqa: ANN001, ANN202
            sizes = chain_sizes(connection, exp)
            with other.create_experiment("created-meanwhile", seed=2) as meanwhile:
                created.append(meanwhile.id)
            return sizes

        monkeypatch.setattr(Store, "_chain_sizes", staticmethod(then_create))
        report = verify(manager.store)
        monkeypatch.undo()
        other.close()
        assert created and report.ok, report.findings
        assert report.experiments == 1  # the one in the snapshot
        assert verify(manager.store).experiments == 2


def test_a_rank_batch_cannot_slip_in_between_the_completion_counts_and_run_completed(
        store_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A rank still flushing while rank 0 completes the run: its batch either is counted by
    run_completed or is refused after it — never committed in between (found on PostgreSQL:
    5 of 5 such runs stopped verifying, for ever)."""
    with ExperimentManager(store_url, data_dir=tmp_path) as manager:
        exp = manager.create_experiment("completion-race", seed=ROOT_SEED)
        run = AttachedRun.open(store_url, exp.id, "rank-1")
        run.record_draw("user_draw", ("rank", 1, "first"), seed=None, params={})
        run.flush()
        run.record_draw("user_draw", ("rank", 1, "late"), seed=None, params={})  # buffered
        outcome: dict[str, object] = {}
        flushing: list[threading.Thread] = []
        heads_in = Store.stream_heads_in

        def flush_rank() -> None:
            try:
                outcome["flushed"] = run.flush()
            except StoreError as error:
                outcome["refused"] = error

        def counts_then_the_rank_flushes(connection, exp_id):  # noqa: ANN001, ANN202
            heads = heads_in(connection, exp_id)
            flushing.append(threading.Thread(target=flush_rank))
            flushing[0].start()
            flushing[0].join(1.0)  # time enough to commit, were it not held back
            outcome["held_back"] = flushing[0].is_alive()
            return heads

        monkeypatch.setattr(Store, "stream_heads_in", staticmethod(counts_then_the_rank_flushes))
        completed = exp.close()
        monkeypatch.undo()
        flushing[0].join(60)
        assert outcome["held_back"] is True and "flushed" not in outcome
        assert "is already completed" in str(outcome["refused"])
        assert completed.params["streams"]["rank-1"]["count"] == 1
        assert verify(manager.store, exp.id).ok
        run.close()  # its failure was raised to its flush already
        assert [head.count for name, head in manager.store.stream_heads(exp.id).items()
                if name == "rank-1"] == [1]


def _record_rank_1(run: AttachedRun, batches: int, salt: bytes = b"") -> None:
    """Record the first ``batches`` batch draws of rank 1 (``salt`` changes their outputs)."""
    for batch in range(batches):
        path = ("rank", 1, "epoch", 0, "batch", batch, "augment")
        indices = hashlib.sha256(f"1/{batch}".encode()).digest()
        run.record_draw("augmentation_batch", path, seed=derive_bytes(run.root_seed, path),
                        params={"epoch": 0, "batch": batch, "batch_size": 8,
                                "dataset": "fraud-2024Q1", "indices_digest": indices},
                        input=indices, output=hashlib.sha256(indices + salt).digest())


def _attach_record_and_die(url: str, exp: str) -> None:
    """In a fresh process: attach as rank-1, record 3 draws durably, then die unclosed."""
    run = AttachedRun.open(url, exp, "rank-1")
    _record_rank_1(run, 3)
    run.flush()
    os._exit(9)


def test_a_rank_attached_again_after_a_kill_records_each_draw_once(store: Store,
                                                                    store_url: str) -> None:
    """A rank killed and started again attaches to its stream once more (the dead claim is
    taken over) and redoes its draws: those the stream holds are checked against the record,
    not recorded a second time (they were: every draw twice, and replay refused the run)."""
    recorded = record_experiment(store, workers=0, complete=False)
    killed = multiprocessing.get_context("spawn").Process(
        target=_attach_record_and_die, args=(store_url, recorded.exp))
    killed.start()
    killed.join()
    assert killed.exitcode == 9
    with AttachedRun(store, recorded.exp, "rank-1") as run:
        _record_rank_1(run, 5)  # the 3 recorded before the kill, then 2 more
        with pytest.raises(BadInputError, match="recorded once"):
            _record_rank_1(run, 1, salt=b"other data")
    paths = [tuple(decode_body(body)["path"]) for stream, _seq, _kind, body
             in store.iter_run_bodies(recorded.exp) if stream == "rank-1"]
    assert paths == [("rank", 1, "epoch", 0, "batch", batch, "augment") for batch in range(5)]
    assert verify(store, recorded.exp).ok
