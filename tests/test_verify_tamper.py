"""Verification (issue item 4) against an attacker who can write to the database.

Each tamper first drops the append-only triggers with raw SQL, as an attacker would, then edits
rows. Verification must name the right (exp, stream, seq) and say what is wrong. Runs on every
backend with the default segment size, and on SQLite with tiny segments too (so that every chain
is stitched from many segments; stitching does not depend on the backend).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.canonical import canonical
from ledger.digests import ZERO_DIGEST, event_hash_of_bytes
from ledger.events import decode_body
from ledger.errors import InvalidIdError, UnknownExperimentError
from ledger.store import Store, StreamWriter
from ledger.verify import Finding, verify
from ledger_builders import (Recorded, completion_params, delete_event, drop_append_only_triggers,
                             execute, flip_byte, forged_row, insert_row, record_experiment, rows)

verify_module = importlib.import_module("ledger.verify")  # `ledger.verify` is the function
A, B = "exp-aaaaaaaaaaaa", "exp-bbbbbbbbbbbb"
# Layout of each recorded run (2 workers, 2 epochs, 2 batches per epoch):
#   main:     0 experiment_created, 1 dataset_registered, 2 epoch_reset, 3 metric,
#             4 epoch_reset, 5 metric, 6 run_completed
#   worker-k: 0 worker_spawned, 1 augmentation_batch (epoch 0), 2 augmentation_batch (epoch 1)
MAIN_LAST = 6
PACK = msgpack.Packer(use_bin_type=True).pack


@dataclass
class Ledger:
    store: Store
    a: Recorded
    b: Recorded

    def row(self, exp: str, stream: str, seq: int) -> dict:
        (found,) = [row for row in rows(self.store, exp, stream) if row["seq"] == seq]
        return found

    def replace(self, exp: str, stream: str, seq: int, row: dict) -> None:
        delete_event(self.store, exp, stream, seq)
        insert_row(self.store, row)


@pytest.fixture
def ledger_(store: Store) -> Ledger:
    return recorded_ledger(store)


@pytest.fixture
def sqlite_ledger(sqlite_url: str) -> Iterator[Ledger]:
    with Store.open(sqlite_url, create=True) as store:
        yield recorded_ledger(store)


def recorded_ledger(store: Store) -> Ledger:
    """Two complete runs, A and B, verified clean; then the append-only triggers are dropped."""
    a = record_experiment(store, A, name="run-a", root=1, created_t=1_000)
    b = record_experiment(store, B, name="run-b", root=2, created_t=2_000)
    assert len(a.main) == MAIN_LAST + 1 and a.main[MAIN_LAST].kind == "run_completed"
    assert verify(store).ok
    drop_append_only_triggers(store)
    return ledger_with(store, a, b)


def ledger_with(store: Store, a: Recorded, b: Recorded) -> Ledger:
    return Ledger(store, a, b)


@pytest.fixture(params=["default-segments", "2-event-segments", "1-event-segments"])
def segments(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Verify with the default segments, and with segments of two events, or of one, stitched
    together (a segment of one event starts at every seq, seq 1 included)."""
    if request.param != "default-segments":
        monkeypatch.setattr(verify_module, "plan_segments",
                            functools.partial(verify_module.plan_segments,
                                              size=int(request.param[0])))
    return request.param


# -- the tampers ---------------------------------------------------------------------------------
# Each edits the ledger and returns the finding expected first: (exp, stream, seq, problem).

Expected = tuple[str, str | None, int | None, str]


def flip_body_byte(led: Ledger) -> Expected:
    row = led.row(A, "main", 3)
    execute(led.store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND stream = 'main' "
            "AND seq = 3", body=flip_byte(row["body"], len(row["body"]) // 2), exp=A)
    return A, "main", 3, "does not hash to the stored hash"


def flip_body_byte_and_rehash(led: Ledger) -> Expected:
    # A careful attacker re-hashes the edited body: the next event's prev gives it away.
    forged = forged_row(led.row(A, "worker-0", 1), meta={"pid": 666})
    led.replace(A, "worker-0", 1, forged)
    return A, "worker-0", 2, "prev is not the hash of the event before"


def rehash_last_event_of_a_stream(led: Ledger) -> Expected:
    # Nothing follows the edited event in its stream: run_completed recorded its head.
    led.replace(A, "worker-1", 2, forged_row(led.row(A, "worker-1", 2), t=1))
    return A, "worker-1", 2, "head differs from the head recorded by run_completed"


def change_column(column: str, value: object) -> Callable[[Ledger], Expected]:
    def tamper(led: Ledger) -> Expected:
        execute(led.store, f"UPDATE ledger_events SET {column} = :value WHERE exp = :exp "
                "AND stream = 'main' AND seq = 2", value=value, exp=A)
        if column == "hash":
            return A, "main", 2, "does not hash to the stored hash"
        return A, "main", 2, f"column {column} differs from the body"
    tamper.__name__ = f"change_column_{column}"
    return tamper


def change_two_columns(led: Ledger) -> Expected:
    # The finding names the first differing column in the body's field order.
    execute(led.store, "UPDATE ledger_events SET input = :value, output = :value WHERE "
            "exp = :exp AND stream = 'worker-0' AND seq = 1", value=b"\x07" * 32, exp=A)
    return A, "worker-0", 1, "column input differs from the body"


def change_seq_column(led: Ledger) -> Expected:
    execute(led.store, "UPDATE ledger_events SET seq = 1000 WHERE exp = :exp AND stream = 'main' "
            "AND seq = 2", exp=A)
    return A, "main", 2, "missing"


def change_seq_to_the_largest_integer(led: Ledger) -> Expected:
    # Segments once reached up to the largest seq: this one planned 2**63 / 50,000 of them.
    execute(led.store, "UPDATE ledger_events SET seq = :seq WHERE exp = :exp AND stream = 'main' "
            "AND seq = 2", seq=2**63 - 1, exp=A)
    return A, "main", 2, "missing"


def move_to_another_stream(led: Ledger) -> Expected:
    execute(led.store, "UPDATE ledger_events SET stream = 'worker-9' WHERE exp = :exp "
            "AND stream = 'main' AND seq = 2", exp=A)
    return A, "main", 2, "missing"


def delete_in_the_middle(led: Ledger) -> Expected:
    delete_event(led.store, A, "main", 3)
    return A, "main", 3, "missing"


def delete_the_first_event(led: Ledger) -> Expected:
    delete_event(led.store, A, "worker-0", 0)
    return A, "worker-0", 0, "missing"


def delete_experiment_created(led: Ledger) -> Expected:
    delete_event(led.store, A, "main", 0)
    return A, "main", 0, "missing"


def delete_the_tail_of_a_stream(led: Ledger) -> Expected:
    delete_event(led.store, A, "worker-1", 2)
    delete_event(led.store, A, "worker-1", 1)
    return A, "worker-1", 1, "run_completed records 3 events, 1 are stored"


def delete_a_whole_stream(led: Ledger) -> Expected:
    for seq in range(3):
        delete_event(led.store, A, "worker-0", seq)
    return A, "worker-0", 0, "run_completed records 3 events, 0 are stored"


def delete_the_tail_of_main_before_run_completed(led: Ledger) -> Expected:
    delete_event(led.store, A, "main", MAIN_LAST - 1)
    return A, "main", MAIN_LAST - 1, "missing"


def insert_after_run_completed(led: Ledger) -> Expected:
    completed = led.row(A, "main", MAIN_LAST)
    insert_row(led.store, forged_row(completed, seq=MAIN_LAST + 1, kind="metric",
                                     params={"name": "auc", "value": 0.99}, prev=completed["hash"]))
    return A, "main", MAIN_LAST + 1, "after run_completed"


def insert_at_the_end_of_a_worker_stream(led: Ledger) -> Expected:
    last = led.row(A, "worker-0", 2)
    insert_row(led.store, forged_row(last, seq=3, prev=last["hash"]))
    return A, "worker-0", 3, "run_completed records 3 events, 4 are stored"


def insert_in_the_middle_shifting_the_rest(led: Ledger) -> Expected:
    # The forged event links to seq 2; the old events move one seq up (re-hashed, same prev).
    originals = [led.row(A, "main", seq) for seq in range(3, MAIN_LAST + 1)]
    for row in reversed(originals):
        delete_event(led.store, A, "main", row["seq"])
    insert_row(led.store, forged_row(originals[0], kind="metric", params={"forged": True}))
    for row in originals:
        insert_row(led.store, forged_row(row, seq=row["seq"] + 1))
    return A, "main", 4, "prev is not the hash of the event before"


def insert_in_the_middle_rechaining_the_stream(led: Ledger) -> Expected:
    # Every later event is re-linked; only run_completed's stream table gives it away.
    originals = rows(led.store, A, "worker-1")
    for row in reversed(originals):
        delete_event(led.store, A, "worker-1", row["seq"])
    chain = originals[:1] + [forged_row(originals[0], seq=1, kind="user_draw", path=["x"])]
    chain += [dict(row, seq=row["seq"] + 1) for row in originals[1:]]
    prev = ZERO_DIGEST
    for seq, row in enumerate(chain):
        forged = forged_row(row, seq=seq, prev=prev)
        insert_row(led.store, forged)
        prev = forged["hash"]
    return A, "worker-1", 3, "run_completed records 3 events, 4 are stored"


def insert_with_a_negative_seq(led: Ledger) -> Expected:
    insert_row(led.store, forged_row(led.row(A, "main", 3), seq=-1, prev=ZERO_DIGEST))
    return A, "main", -1, "seq"


def a_stream_of_only_negative_seqs(led: Ledger) -> Expected:
    # No seq 0 to start from: the chain still gets checked, and its first row named.
    insert_row(led.store, forged_row(led.row(A, "worker-0", 0), stream="worker-7", seq=-1))
    return A, "worker-7", -1, "seq -1 out of place"


def swap_rows_keeping_bodies(led: Ledger) -> Expected:
    two, three = led.row(A, "main", 2), led.row(A, "main", 3)
    delete_event(led.store, A, "main", 2)
    delete_event(led.store, A, "main", 3)
    insert_row(led.store, dict(three, seq=2))
    insert_row(led.store, dict(two, seq=3))
    return A, "main", 2, "column seq differs from the body"


def swap_events_rewriting_their_seq(led: Ledger) -> Expected:
    one, two = led.row(A, "worker-0", 1), led.row(A, "worker-0", 2)
    delete_event(led.store, A, "worker-0", 1)
    delete_event(led.store, A, "worker-0", 2)
    insert_row(led.store, forged_row(two, seq=1))
    insert_row(led.store, forged_row(one, seq=2))
    return A, "worker-0", 1, "prev is not the hash of the event before"


def copy_from_another_experiment(led: Ledger) -> Expected:
    led.replace(A, "main", 2, dict(led.row(B, "main", 2), exp=A))
    return A, "main", 2, "column exp differs from the body"


def copy_from_another_experiment_rewriting_it(led: Ledger) -> Expected:
    led.replace(A, "main", 2, forged_row(led.row(B, "main", 2), exp=A))
    return A, "main", 2, "prev is not the hash of the event before"


def copy_a_stream_from_another_experiment(led: Ledger) -> Expected:
    # A self-consistent chain of one event: only run_completed shows it was not in the run.
    insert_row(led.store, forged_row(led.row(B, "worker-0", 0), exp=A, stream="worker-5"))
    return A, "worker-5", None, "not listed in run_completed"


def copy_a_whole_experiment_in(led: Ledger) -> Expected:
    for stream in led.b.streams:
        for row in rows(led.store, B, stream):
            insert_row(led.store, forged_row(row, exp="exp-cccccccccccc") if row["seq"] == 0
                       else dict(row, exp="exp-cccccccccccc"))
    return "exp-cccccccccccc", "main", 1, "column exp differs from the body"


def rename_the_experiment_row(led: Ledger) -> Expected:
    execute(led.store, "UPDATE ledger_experiments SET name = 'renamed' WHERE exp = :exp", exp=A)
    return A, None, None, "differs from the recorded name"


def change_the_experiment_rows_creation_time(led: Ledger) -> Expected:
    execute(led.store, "UPDATE ledger_experiments SET created_t = 5 WHERE exp = :exp", exp=A)
    return A, None, None, "created_t 5 differs from the time experiment_created recorded"


def delete_the_experiment_row(led: Ledger) -> Expected:
    execute(led.store, "DELETE FROM ledger_experiments WHERE exp = :exp", exp=A)
    return A, None, None, "no row for"


def add_an_experiment_row_without_events(led: Ledger) -> Expected:
    execute(led.store, "INSERT INTO ledger_experiments (exp, name, created_t) "
            "VALUES ('exp-000000000000', 'ghost', 5)")
    return "exp-000000000000", None, None, "without any events"


def _rewrite_last_worker_event(led: Ledger, body_bytes: bytes) -> None:
    """Replace worker-1's last event of A by ``body_bytes``, hashed and chained as a careful
    forger would, and re-record run_completed with the new head: only the bytes' form is
    left to give it away."""
    old = led.row(A, "worker-1", 2)
    forged = dict(old, body=body_bytes, hash=event_hash_of_bytes(body_bytes))
    led.replace(A, "worker-1", 2, forged)
    completed = decode_body(led.row(A, "main", MAIN_LAST)["body"])
    streams = dict(completed["params"]["streams"])
    streams["worker-1"] = dict(streams["worker-1"], head=forged["hash"])
    led.replace(A, "main", MAIN_LAST, forged_row(led.row(A, "main", MAIN_LAST),
                                                 params=dict(completed["params"],
                                                             streams=streams)))


def experiment_created_again_in_main(led: Ledger) -> Expected:
    # A second creation (its own root seed) where main's metric was: named where it stands,
    # before the broken link after it.
    led.replace(A, "main", 3, forged_row(led.row(A, "main", 3), kind="experiment_created",
                                         params={"name": "run-a", "root_seed": bytes(16)}))
    return A, "main", 3, "experiment_created outside main seq 0"


def experiment_created_opening_a_worker_stream(led: Ledger) -> Expected:
    # At seq 0, but of another stream: replay reading that stream would take its root seed.
    led.replace(A, "worker-0", 0, forged_row(led.row(A, "worker-0", 0),
                                             kind="experiment_created",
                                             params={"name": "run-a", "root_seed": bytes(16)}))
    return A, "worker-0", 0, "experiment_created outside main seq 0"


def non_canonical_key_order(led: Ledger) -> Expected:
    # The same body with its params keys in reverse order: it decodes to the same map, but
    # its hash is not SHA-256 of canonical(body), so an independent verifier would differ.
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    body["params"] = dict(sorted(body["params"].items(), reverse=True))
    _rewrite_last_worker_event(led, PACK(dict(sorted(body.items()))))
    return A, "worker-1", 2, "not in canonical form"


def non_canonical_integer_width(led: Ledger) -> Expected:
    # t written as uint64 although it fits in fewer bytes
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    encoded = PACK(dict(sorted(body.items())))
    minimal = b"\xa1t" + PACK(body["t"])
    assert encoded.count(minimal) == 1 and PACK(body["t"])[0] != 0xCF
    _rewrite_last_worker_event(led, encoded.replace(
        minimal, b"\xa1t\xcf" + body["t"].to_bytes(8, "big")))
    return A, "worker-1", 2, "not in canonical form"


def ext_type_in_params(led: Ledger) -> Expected:
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    body["params"] = dict(body["params"], when=msgpack.ExtType(1, b"\x00"))
    _rewrite_last_worker_event(led, PACK(canonical_order(body)))
    return A, "worker-1", 2, "not in canonical form (cannot encode a value of type ExtType"


def body_with_an_extra_field(led: Ledger) -> Expected:
    # A 14th field no reader knows of, in key order, hashed, chained and counted.
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    _rewrite_last_worker_event(led, PACK(dict(sorted({**body, "note": "x"}.items()))))
    return A, "worker-1", 2, "body is not a v1 event body"


def body_of_another_version(led: Ledger) -> Expected:
    # v 2 is no format this verifier knows: its fields may mean other things.
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    _rewrite_last_worker_event(led, PACK(dict(sorted({**body, "v": 2}.items()))))
    return A, "worker-1", 2, "body is not a v1 event body"


def body_not_a_map(led: Ledger) -> Expected:
    # The body's values as an array: valid msgpack, hashed and chained, but no event body.
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    _rewrite_last_worker_event(led, PACK([body[key] for key in sorted(body)]))
    return A, "worker-1", 2, "body is not a v1 event body"


def short_prev_opening_a_stream(led: Ledger) -> Expected:
    # Every chain opens on the 32-byte zero digest; 16 zero bytes are no digest at all.
    led.replace(A, "worker-0", 0, forged_row(led.row(A, "worker-0", 0), prev=bytes(16)))
    return A, "worker-0", 0, "body field prev is not a 32-byte digest"


def params_keyed_by_an_integer(led: Ledger) -> Expected:
    # msgpack can key a map by an integer; a v1 body cannot (DESIGN §2: str keys).
    body = decode_body(led.row(A, "worker-1", 2)["body"])
    body["params"] = {1: "one"}
    _rewrite_last_worker_event(led, PACK(dict(sorted(body.items()))))
    return A, "worker-1", 2, "body is not valid msgpack (ValueError)"


def canonical_order(value: object) -> object:
    """``value`` with every map's keys sorted, leaving other values (an ExtType) as they are."""
    if isinstance(value, dict):
        return {key: canonical_order(value[key]) for key in sorted(value)}
    return value


TAMPERS = [
    non_canonical_key_order, non_canonical_integer_width, ext_type_in_params,
    body_with_an_extra_field, body_of_another_version, body_not_a_map,
    params_keyed_by_an_integer, short_prev_opening_a_stream,
    flip_body_byte, flip_body_byte_and_rehash, rehash_last_event_of_a_stream,
    change_column("kind", "metric"), change_column("t", 12345),
    change_column("seed", b"\x07" * 16), change_column("input", b"\x07" * 32),
    change_column("output", b"\x07" * 32), change_column("prev", b"\x07" * 32),
    change_column("path", canonical(["epoch", 9, "shuffle"])), change_column("hash", b"\x07" * 32),
    change_two_columns, change_seq_column, change_seq_to_the_largest_integer,
    move_to_another_stream,
    delete_in_the_middle, delete_the_first_event, delete_experiment_created,
    delete_the_tail_of_a_stream, delete_a_whole_stream,
    delete_the_tail_of_main_before_run_completed,
    insert_after_run_completed, insert_at_the_end_of_a_worker_stream,
    insert_in_the_middle_shifting_the_rest, insert_in_the_middle_rechaining_the_stream,
    insert_with_a_negative_seq, a_stream_of_only_negative_seqs,
    swap_rows_keeping_bodies, swap_events_rewriting_their_seq,
    copy_from_another_experiment, copy_from_another_experiment_rewriting_it,
    copy_a_stream_from_another_experiment, copy_a_whole_experiment_in,
    rename_the_experiment_row, change_the_experiment_rows_creation_time,
    delete_the_experiment_row, add_an_experiment_row_without_events,
    experiment_created_again_in_main, experiment_created_opening_a_worker_stream,
]


def assert_named(findings: list[Finding], expected: Expected) -> None:
    exp, stream, seq, problem = expected
    assert findings, f"tamper not detected; expected {expected}"
    mine = [f for f in findings if f.exp == exp]
    assert mine, f"no finding for {exp}: {findings}"
    first = mine[0]
    assert (first.exp, first.stream, first.seq) == (exp, stream, seq), findings
    assert problem in first.problem, findings


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda tamper: tamper.__name__)
def test_verify_names_the_tampered_event(ledger_: Ledger,
                                         tamper: Callable[[Ledger], Expected]) -> None:
    check_detection(ledger_, tamper)


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda tamper: tamper.__name__)
def test_verify_names_the_tampered_event_across_small_segments(
        sqlite_ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
        tamper: Callable[[Ledger], Expected]) -> None:
    monkeypatch.setattr(verify_module, "plan_segments",
                        functools.partial(verify_module.plan_segments, size=2))
    check_detection(sqlite_ledger, tamper)


@pytest.mark.parametrize("value", ["abc", 2.5, b"\x02"], ids=["text", "real", "blob"])
def test_a_seq_that_is_not_an_integer_is_reported_as_a_gap(sqlite_ledger: Ledger,
                                                          value: object) -> None:
    # SQLite stores whatever a tamperer writes into an INTEGER column.
    execute(sqlite_ledger.store, "UPDATE ledger_events SET seq = :value WHERE exp = :exp "
            "AND stream = 'main' AND seq = 2", value=value, exp=A)
    check_detection(sqlite_ledger, lambda _led: (A, "main", 2, "missing"))


def check_detection(ledger_: Ledger, tamper: Callable[[Ledger], Expected]) -> None:
    expected = tamper(ledger_)
    report = verify(ledger_.store)
    assert not report.ok
    assert_named(report.findings, expected)
    assert not [f for f in report.findings if f.exp == B]  # the other run is untouched
    assert all(f.describe().startswith(f.exp) for f in report.findings)
    assert report.to_json()["ok"] is False


@pytest.mark.parametrize("tamper", [flip_body_byte, delete_in_the_middle,
                                    insert_after_run_completed, copy_from_another_experiment],
                         ids=lambda tamper: tamper.__name__)
def test_verify_of_one_experiment_sees_only_it(ledger_: Ledger,
                                               tamper: Callable[[Ledger], Expected]) -> None:
    expected = tamper(ledger_)
    assert verify(ledger_.store, B).ok
    report = verify(ledger_.store, A)
    assert_named(report.findings, expected)
    assert report.experiments == 1


def test_verify_of_an_experiment_whose_events_are_all_gone_names_it(ledger_: Ledger) -> None:
    """An experiment row left without events is a finding of ``verify(store, exp)``, not an
    unknown experiment: the ledger says the run existed."""
    expected = add_an_experiment_row_without_events(ledger_)
    report = verify(ledger_.store, expected[0])
    assert_named(report.findings, expected)
    assert len(report.findings) == 1


def test_progress_counts_every_event_read(ledger_: Ledger,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger verify`` shows how many events it has read: the count grows segment by segment
    to every event, or, past a broken chain's first bad event (read too), stops counting it."""
    seen: list[int] = []
    with monkeypatch.context() as patched:
        patched.setattr(verify_module, "plan_segments",
                        functools.partial(verify_module.plan_segments, size=2))
        report = verify(ledger_.store, on_progress=seen.append)
    assert seen == sorted(seen) and seen[0] == 2 and seen[-1] == report.events
    flip_body_byte(ledger_)  # main seq 3 of A: one segment per chain, read up to seq 3
    seen.clear()
    report = verify(ledger_.store, on_progress=seen.append)
    assert seen[-1] == report.intact + 1


def test_a_stream_column_that_is_not_text_is_one_finding_showing_it(
        sqlite_ledger: Ledger) -> None:
    """SQLite keeps a blob written to the stream column, which no query can name: verify makes
    the stream's events one finding that shows the bytes, instead of failing to read them."""
    execute(sqlite_ledger.store, "UPDATE ledger_events SET stream = X'ff' WHERE exp = :exp "
            "AND stream = 'worker-0'", exp=A)
    report = verify(sqlite_ledger.store)
    unreadable = [f for f in report.findings if "not text" in f.problem]
    assert [(f.exp, f.stream, f.seq, f.problem) for f in unreadable] == [
        (A, "b'\\xff'", None, "3 event(s) whose stream column is not text (b'\\xff'): "
                              "edited outside the ledger")]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_flipped_byte_of_any_body_is_named(ledger_: Ledger, data: st.DataObject) -> None:
    recorded = data.draw(st.sampled_from([ledger_.a, ledger_.b]))
    stream = data.draw(st.sampled_from(sorted(recorded.streams)))
    event = data.draw(st.sampled_from(recorded.streams[stream]))
    index = data.draw(st.integers(min_value=0, max_value=len(event.body) - 1))
    where = "WHERE exp = :exp AND stream = :stream AND seq = :seq"
    keys = {"exp": recorded.exp, "stream": stream, "seq": event.seq}
    execute(ledger_.store, f"UPDATE ledger_events SET body = :body {where}",
            body=flip_byte(event.body, index), **keys)
    try:
        report = verify(ledger_.store)
        assert [(f.exp, f.stream, f.seq) for f in report.findings] == [
            (recorded.exp, stream, event.seq)]
        assert "does not hash" in report.findings[0].problem
        total = ledger_.a.event_count() + ledger_.b.event_count()
        cut = len(recorded.streams[stream]) - event.seq  # the bad event and those after it
        assert (report.events, report.intact) == (total, total - cut)
    finally:
        execute(ledger_.store, f"UPDATE ledger_events SET body = :body {where}", body=event.body,
                **keys)
    assert verify(ledger_.store).ok


@pytest.mark.parametrize("seq", [0, 1, 4, 5])
def test_the_intact_count_stops_at_the_first_bad_event_across_small_segments(
        sqlite_ledger: Ledger, monkeypatch: pytest.MonkeyPatch, seq: int) -> None:
    monkeypatch.setattr(verify_module, "plan_segments",
                        functools.partial(verify_module.plan_segments, size=2))
    main = sqlite_ledger.a.main
    execute(sqlite_ledger.store, "UPDATE ledger_events SET body = :body WHERE exp = :exp AND "
            "stream = 'main' AND seq = :seq", body=flip_byte(main[seq].body, 3), exp=A, seq=seq)
    report = verify(sqlite_ledger.store, A)
    assert (report.events, report.intact) == (sqlite_ledger.a.event_count(),
                                              sqlite_ledger.a.event_count() - len(main) + seq)
    assert report.incomplete == []  # a broken run is not called incomplete: its finding rules


def test_a_finding_names_its_event_in_one_line() -> None:
    """The line ``ledger verify`` prints names the experiment, the stream and the seq, seq 0
    included, so that an auditor can find the event; whole-run findings name the run alone."""
    assert Finding(A, "main", 0, "event missing").describe() == (
        f"{A} stream main seq 0: event missing")
    assert Finding(A, None, None, "experiment row without any events").describe() == (
        f"{A}: experiment row without any events")


def test_a_clean_ledger_verifies(ledger_: Ledger, segments: str) -> None:
    report = verify(ledger_.store)
    assert report.ok and report.findings == []
    assert report.experiments == 2
    assert report.chains == 6
    assert report.events == ledger_.a.event_count() + ledger_.b.event_count()
    assert report.to_json() == {"ok": True, "experiments": 2, "chains": 6,
                                "events": report.events, "intact": report.events,
                                "incomplete": [], "findings": []}


def test_stored_row_order_does_not_matter(ledger_: Ledger) -> None:
    # Rows re-inserted in reverse: new ids, same chain. Not tampering.
    originals = rows(ledger_.store, A, "main")
    for row in originals:
        delete_event(ledger_.store, A, "main", row["seq"])
    for row in reversed(originals):
        insert_row(ledger_.store, row)
    assert verify(ledger_.store).ok


def test_an_incomplete_run_verifies(store: Store, segments: str) -> None:
    recorded = record_experiment(store, complete=False)
    report = verify(store, recorded.exp)
    assert report.ok
    assert report.events == report.intact == recorded.event_count()
    assert report.incomplete == [recorded.exp]


def test_an_empty_ledger_verifies(store: Store) -> None:
    report = verify(store)
    assert report.ok and (report.experiments, report.chains, report.events) == (0, 0, 0)


def test_events_appended_after_run_completed_are_flagged(store: Store, segments: str) -> None:
    recorded = record_experiment(store, workers=1)
    with StreamWriter(store, recorded.exp, "main", flush_interval=None) as main:
        main.append("metric", params={"name": "late"})
    report = verify(store)
    assert_named(report.findings, (recorded.exp, "main", len(recorded.main),
                                   "after run_completed"))


def test_a_second_run_completed_does_not_hide_events_after_the_first(store: Store,
                                                                     segments: str) -> None:
    recorded = record_experiment(store, workers=1)
    writers = {"main": StreamWriter(store, recorded.exp, "main", flush_interval=None),
               "worker-0": StreamWriter(store, recorded.exp, "worker-0", flush_interval=None)}
    writers["main"].append("metric", params={"name": "late"})
    writers["main"].append("run_completed", params=completion_params(writers))
    for writer in writers.values():
        writer.close()
    assert_named(verify(store).findings, (recorded.exp, "main", len(recorded.main),
                                          "after run_completed"))


def test_only_replay_and_report_records_verify_in_the_audit_stream(store: Store,
                                                                 segments: str) -> None:
    """Replay and diff skip the audit stream: a draw a forger writes there would be seen by
    nobody, so verify names it, while the replay records that belong there verify."""
    recorded = record_experiment(store, workers=1)
    with StreamWriter(store, recorded.exp, "audit", flush_interval=None) as audit:
        audit.append("replay_recorded", params={"certified": True})
        audit.append("report_exported", params={"format": "json"})
    assert verify(store).ok
    with StreamWriter(store, recorded.exp, "audit", flush_interval=None) as audit:
        draw = audit.append("augmentation_batch", path=["epoch", 0, "batch", 0, "augment"],
                            params={"epoch": 0})
    report = verify(store)
    assert_named(report.findings, (recorded.exp, "audit", draw.seq,
                                   "'augmentation_batch' in the audit stream"))
    assert len(report.findings) == 1


@pytest.mark.parametrize("kind", ["replay_recorded", "report_exported"])
def test_replay_and_report_records_outside_the_audit_stream_are_flagged(store: Store,
                                                                        kind: str) -> None:
    """The library writes replay and report records only to the audit stream, where the report
    and replay read them: one in another stream is a forgery that nobody would read, so verify
    names it rather than pass it."""
    recorded = record_experiment(store, workers=1, complete=False)
    with StreamWriter(store, recorded.exp, "worker-0", flush_interval=None) as worker:
        forged = worker.append(kind, params={"verdict": "certified"})
    report = verify(store)
    assert_named(report.findings, (recorded.exp, "worker-0", forged.seq,
                                   f"'{kind}' outside the audit stream"))
    assert len(report.findings) == 1


def test_run_completed_outside_main_is_flagged(store: Store) -> None:
    recorded = record_experiment(store, workers=1, complete=False)
    with StreamWriter(store, recorded.exp, "worker-0", flush_interval=None) as worker:
        event = worker.append("run_completed", params={"status": "ok", "streams": {}})
    report = verify(store)
    assert_named(report.findings, (recorded.exp, "worker-0", event.seq,
                                   "run_completed outside the main stream"))
    assert report.incomplete == []  # it has a run_completed, though misplaced: its finding rules


def test_a_run_completed_that_records_wrong_counts_is_flagged(store: Store) -> None:
    recorded = record_experiment(store, workers=1, complete=False)
    writers = {"main": StreamWriter(store, recorded.exp, "main", flush_interval=None),
               "worker-0": StreamWriter(store, recorded.exp, "worker-0", flush_interval=None)}
    params = completion_params(writers)
    params["streams"]["worker-0"]["count"] += 1
    writers["main"].append("run_completed", params=params)
    for writer in writers.values():
        writer.close()
    assert_named(verify(store).findings, (recorded.exp, "worker-0", len(
        recorded.streams["worker-0"]), "run_completed records"))


def test_a_run_completed_without_a_stream_table_is_flagged(store: Store) -> None:
    recorded = record_experiment(store, workers=0, complete=False)
    with StreamWriter(store, recorded.exp, "main", flush_interval=None) as main:
        event = main.append("run_completed", params={"status": "ok"})
    assert_named(verify(store).findings, (recorded.exp, "main", event.seq, "no stream table"))


def test_an_unknown_or_malformed_experiment_is_refused(store: Store) -> None:
    record_experiment(store, workers=0)
    with pytest.raises(UnknownExperimentError, match="exp-ffffffffffff"):
        verify(store, "exp-ffffffffffff")
    for malformed in ("../x", "x'; DROP TABLE ledger_events; --", "x" * 10_240):
        with pytest.raises(InvalidIdError):
            verify(store, malformed)


def test_duplicate_seqs_are_flagged_when_the_unique_constraint_is_dropped(
        postgres_url: str) -> None:
    with Store.open(postgres_url, create=True) as store:
        record_experiment(store, A, workers=0)
        drop_append_only_triggers(store)
        execute(store, "ALTER TABLE ledger_events DROP CONSTRAINT ledger_events_chain_position")
        original = [row for row in rows(store, A, "main") if row["seq"] == 2][0]
        insert_row(store, forged_row(original, params={"forged": True}))
        assert_named(verify(store).findings, (A, "main", 2, "seq"))


def test_an_in_memory_ledger_is_verified_in_this_process_whatever_the_jobs() -> None:
    """No other process can open an in-memory SQLite ledger (a worker would open an empty one
    and call every chain cut short), so verify checks it here even when given jobs."""
    with Store.open("sqlite://", create=True) as store:
        recorded = record_experiment(store, A)
        report = verify(store, jobs=2)
    assert report.ok and report.events == recorded.event_count()


def test_parallel_verification_finds_the_same(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "plan_segments",
                        functools.partial(verify_module.plan_segments, size=2))
    with Store.open(f"sqlite:///{tmp_path / 'ledger.db'}", create=True) as store:
        a = record_experiment(store, A, root=1)
        b = record_experiment(store, B, root=2)
        assert verify(store, jobs=2).ok
        drop_append_only_triggers(store)
        led = ledger_with(store, a, b)
        expected = [delete_in_the_middle(led), flip_body_byte_and_rehash(led)]
        serial = verify(store, jobs=1).findings
        parallel = verify(store, jobs=2).findings
    assert parallel == serial
    assert {(f.exp, f.stream, f.seq) for f in parallel} == {e[:3] for e in expected}
