"""``ledger verify`` and ``ledger diff`` on runs of odd shapes and on hostile, consistent ledgers.

A forger who encodes bodies without the library's checks can make every hash and link agree;
verification must still refuse a body whose fields are not of the v1 types (DESIGN §3), naming
the field, because every reader relies on them. Diff must align runs whatever their shape —
repeated metric names, failed or incomplete runs — say each run's status, name the right cause
in the right words, and print one valid JSON document whatever values the runs recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from ledger.digests import EVENT_TAG, ZERO_DIGEST, value_digest
from ledger.errors import CheckFailedError
from ledger.events import decode_body
from ledger.experiment import ExperimentManager
from ledger.store import Store
from ledger.verify import verify
from ledger_builders import drop_append_only_triggers, execute, insert_row, record_experiment
from ledger.recorded_differences import ABSENT
from replay.causes import differences, explain_output
from replay.diff import diff_runs

SEED = bytes(16)
DIGEST = bytes(32)
USER_DRAW = {"kind": "user_draw", "path": ["init"], "seed": SEED}


# -- tools ---------------------------------------------------------------------------------------

def _pack(value: Any) -> bytes:
    """msgpack laid out as canonical encoding does (maps' keys sorted) but without the
    library's checks of types: what a careful forger writes."""
    return msgpack.packb(_keys_sorted(value), use_bin_type=True)


def _keys_sorted(value: Any) -> Any:
    """``value`` with the keys of its maps (and their maps) sorted; lists left as they are."""
    if isinstance(value, dict):
        return {key: _keys_sorted(value[key])
                for key in sorted(value, key=lambda key: (type(key).__name__, key))}
    return value


def forge_run(store: Store, exp: str, events: list[dict[str, Any]], *,
              created: dict[str, Any] | None = None, streams: Any = None) -> None:
    """Write a whole run by raw SQL — experiment row, experiment_created, ``events`` and a
    run_completed — with every hash, link and count consistent, whatever the bodies hold.

    Each event is a map of body fields (stream defaults to main); ``streams`` replaces the
    stream table run_completed records.
    """
    heads: dict[str, tuple[int, bytes]] = {}
    t = 1_700_000_000 * 10**9

    def append(fields: dict[str, Any]) -> None:
        nonlocal t
        stream = fields.get("stream", "main")
        seq, prev = heads.get(stream, (0, ZERO_DIGEST))
        t += 1
        body = {"v": 1, "exp": exp, "stream": stream, "seq": seq, "path": [], "seed": None,
                "params": {}, "input": None, "output": None, "meta": {}, "prev": prev, "t": t,
                **fields}
        body_bytes = _pack(body)
        digest = hashlib.sha256(EVENT_TAG + body_bytes).digest()
        insert_row(store, {"exp": exp, "stream": stream, "seq": seq, "kind": body["kind"],
                           "path": _pack(body["path"]), "seed": body["seed"],
                           "input": body["input"], "output": body["output"], "prev": prev,
                           "hash": digest, "t": body["t"], "body": body_bytes})
        heads[stream] = (seq + 1, digest)

    params = {"name": "forged", "root_seed": SEED, **(created or {})}
    append({"kind": "experiment_created", "params": params})
    execute(store, "INSERT INTO ledger_experiments (exp, name, created_t) "
                   "VALUES (:exp, :name, :t)", exp=exp, name=params["name"], t=t)
    for event in events:
        append(event)
    table = {name: {"count": count, "head": head} for name, (count, head) in heads.items()}
    append({"kind": "run_completed",
            "params": {"status": "ok", "streams": table if streams is None else streams}})


def clean(result: subprocess.CompletedProcess[str], code: int) -> None:
    """The documented exit code, no traceback, at most one stderr line (a diff that finds the
    runs differ says so on stdout alone)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 1, result.stderr


def strict_json(text: str) -> Any:
    """Parse exactly one JSON document, refusing NaN and infinities (not JSON)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def url(tmp_path: Path) -> str:
    address = f"sqlite:///{tmp_path / 'ledger.db'}"
    Store.open(address, create=True).close()
    return address


# -- verify: consistent chains of bodies that are not v1 bodies ---------------------------------

WRONG_FIELDS = {
    "params a list": ({"params": [1, 2]}, "params"),
    "params keyed by bytes": ({"params": {b"name": "x"}}, "params"),
    "meta a string": ({"meta": "pid 1"}, "meta"),
    "path label a map": ({"path": [{"a": 1}]}, "path"),
    "path label a list": ({"path": [[1]]}, "path"),
    "path label negative": ({"path": ["init", -1]}, "path"),
    "path label a float": ({"path": ["init", 1.5]}, "path"),
    "path label a bool": ({"path": ["init", True]}, "path"),
    "path a string": ({"path": "init"}, "path"),
    "seed of 3 bytes": ({"seed": b"abc"}, "seed"),
    "seed a string": ({"seed": "0" * 16}, "seed"),
    "output of 5 bytes": ({"output": b"short"}, "output"),
    "input of 33 bytes": ({"input": bytes(33)}, "input"),
    "kind with an escape": ({"kind": "user_draw\x1b[2J"}, "kind"),
    # equal (==) to the integer columns, so only their type gives them away
    "seq a float": ({"seq": 1.0}, "seq"),
    "seq a bool": ({"seq": True}, "seq"),
    "t a float": ({"t": float(2**60)}, "t"),
}


@pytest.mark.parametrize("case", WRONG_FIELDS)
def test_a_body_with_a_field_of_the_wrong_type_is_a_named_finding(url: str, case: str) -> None:
    changes, field_name = WRONG_FIELDS[case]
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [{**USER_DRAW, **changes}])
        report = verify(store, "exp-forged")
    assert [(f.stream, f.seq) for f in report.findings] == [("main", 1)]
    assert f"body field {field_name}" in report.findings[0].problem
    result = run_cli("--db", url, "verify")
    clean(result, 1)
    assert f"main seq 1: body field {field_name}" in result.stderr
    # Nothing downstream reads it: diff and replay refuse with the finding, not a crash.
    for command in (["diff", "exp-forged", "exp-forged"], ["replay", "exp-forged"]):
        clean(run_cli("--db", url, *command), 1)


def test_a_stream_name_no_writer_could_use_is_a_named_finding(url: str) -> None:
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [{**USER_DRAW, "stream": "../etc"}])
        report = verify(store)
    assert report.findings[0].stream == "../etc"
    assert "body field stream is not a valid stream name" in report.findings[0].problem


def test_an_experiment_id_no_writer_could_use_is_a_named_finding(url: str) -> None:
    """An id with path separators, consistent in the experiment row, the columns and every
    body, is no id a writer makes (readers put ids in file names): verify names it."""
    with Store.open(url) as store:
        forge_run(store, "../forged", [USER_DRAW])
        report = verify(store)
    first = report.findings[0]
    assert (first.exp, first.stream, first.seq) == ("../forged", "main", 0)
    assert "body field exp is not a valid exp name" in first.problem


def test_a_forged_run_of_valid_types_still_verifies(url: str) -> None:
    """The type checks refuse only what DESIGN §3 excludes: params may hold anything."""
    odd_params = {"epoch": [1], "value": 2**64 - 1, "nested": {"k": [b"\x00", None, 1.5]}}
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [{**USER_DRAW, "params": odd_params},
                                        {**USER_DRAW, "path": ["init", 2**64 - 1],
                                         "stream": "rank-1/worker-0"}])
        assert verify(store).ok


def test_a_stream_table_keyed_by_bytes_is_a_finding_not_a_crash(url: str) -> None:
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [USER_DRAW],
                  streams={b"main": {"count": 2, "head": DIGEST}, "worker-0": {}})
        report = verify(store)
    assert [(f.stream, f.seq) for f in report.findings] == [("main", 2)]
    assert report.findings[0].problem == ("body is not in canonical form (dict key b'main' is "
                                          "a bytes, but keys must be str)")
    clean(run_cli("--db", url, "verify", "exp-forged"), 1)
    clean(run_cli("--db", url, "diff", "exp-forged", "exp-forged"), 1)


def test_a_recorded_count_of_another_type_is_shown_as_recorded(url: str) -> None:
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [USER_DRAW], streams={"main": {"count": "2"}})
        report = verify(store)
    assert "run_completed records '2' events, 2 are stored" in report.findings[0].problem


def test_a_stream_entry_that_is_not_a_map_is_a_finding_not_a_crash(url: str) -> None:
    """A stream table whose entry for main is a bare number records neither count nor head:
    verify names the stream as not listed rather than failing on it."""
    with Store.open(url) as store:
        forge_run(store, "exp-forged", [USER_DRAW], streams={"main": 2})
        report = verify(store)
    assert [(f.stream, f.seq) for f in report.findings] == [("main", None)]
    assert "stream not listed in run_completed" in report.findings[0].problem


# -- diff: runs of odd shapes ----------------------------------------------------------------

def _run_with_steps(url: str, data_dir: Path, losses: list[float], status: str = "ok",
                    error: str | None = None) -> str:
    """A run logging ``loss`` once per step, without an epoch: one identity, many events."""
    with ExperimentManager(url, data_dir=data_dir) as manager:
        exp = manager.create_experiment("steps", seed=7)
        exp.generator("init")
        for loss in losses:
            exp.log_metric("loss", loss)
        exp.close(status=status, error=error)
    return exp.id


def test_a_metric_logged_at_every_step_aligns_step_for_step(url: str, tmp_path: Path) -> None:
    first = _run_with_steps(url, tmp_path / "data", [1.0, 0.5, 0.25])
    rerun = _run_with_steps(url, tmp_path / "data", [1.0, 0.5, 0.25])
    changed = _run_with_steps(url, tmp_path / "data", [1.0, 0.5, 0.3])
    with Store.open(url) as store:
        same = diff_runs(store, first, rerun)
        assert same.identical, same.first_divergence
        assert same.compared_by_kind["metric"] == 3
        other = diff_runs(store, first, changed)
    assert (other.differing, other.missing_in_b, other.extra_in_b) == (1, 0, 0)
    divergence = other.first_divergence
    assert divergence.occurrence == 3 and divergence.a.seq == 4
    assert "[loss/None, occurrence 3]" in divergence.describe()
    result = run_cli("--db", url, "diff", first, changed, "--json")
    clean(result, 1)
    assert strict_json(result.stdout)["first_divergence"]["occurrence"] == 3


def test_a_metric_that_differs_between_runs_of_other_root_seeds_is_put_down_to_them(
        url: str, tmp_path: Path) -> None:
    """Runs that record no seeded draw, only metrics: between root seeds 1 and 2 the differing
    metric is *seed derivation differs* (it was "same seed, different output — nondeterministic
    code", of runs whose seeds differ); under one root seed it stays *same seed*."""
    def run(seed: int, loss: float) -> str:
        with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
            with manager.create_experiment("metrics-only", seed=seed) as exp:
                exp.log_metric("loss", loss, epoch=0)
        return exp.id

    first, other_seed, same_seed = run(1, 0.5), run(2, 0.7), run(1, 0.7)
    with Store.open(url) as store:
        seeds = diff_runs(store, first, other_seed).first_divergence
        output = diff_runs(store, first, same_seed).first_divergence
    assert seeds.cause.value == "seed derivation differs" and "root seeds" in seeds.detail
    assert output.cause.value == "same seed, different output"
    assert "nondeterministic code" in output.detail


def test_diff_says_when_a_run_failed_or_is_incomplete(url: str, tmp_path: Path) -> None:
    """A run that failed is not the same run as one that completed ok, however alike their
    events (DESIGN §5: exit 1, runs differ): diff said IDENTICAL, exit 0, with a note — a CI
    check of ``ledger diff BASELINE RERUN`` passed a rerun that crashed. Two runs that failed
    alike are identical."""
    ok = _run_with_steps(url, tmp_path / "data", [1.0])
    failed = _run_with_steps(url, tmp_path / "data", [1.0], status="failed",
                             error="OSError: upload failed")
    failed_too = _run_with_steps(url, tmp_path / "data", [1.0], status="failed",
                                 error="OSError: upload failed")
    with Store.open(url) as store:
        incomplete = record_experiment(store, workers=0, complete=False).exp
        completed = record_experiment(store, workers=0).exp
        ended = diff_runs(store, completed, incomplete)
    assert not ended.identical and ended.compared == ended.identical_events > 0
    assert ended.first_divergence.describe().endswith(
        f"status differs — {completed} completed ok, {incomplete} is incomplete (no "
        f"run_completed): every event both recorded agrees")
    assert ended.first_divergence.b is None  # no run_completed to point at
    result = run_cli("--db", url, "diff", ok, failed)
    clean(result, 1)
    assert result.stdout.startswith(f"DIFFERENT: {ok} vs {failed}\n")
    assert (f"run_completed [-]: status differs — {ok} completed ok, {failed} failed "
            f"(OSError: upload failed): every event both recorded agrees") in result.stdout
    assert "status differs" in result.stderr
    assert f'{failed} completed with status "failed"' in result.stdout
    result = run_cli("--db", url, "diff", ok, failed, "--json")
    clean(result, 1)
    document = strict_json(result.stdout)
    assert document["status"] == {"a": "ok", "b": "failed"} and document["identical"] is False
    assert (document["first_divergence"]["cause"], document["first_divergence"]["field"]) == (
        "status differs", "status")
    assert (document["differing"], document["missing_in_b"], document["extra_in_b"]) == (0, 0, 0)
    result = run_cli("--db", url, "diff", failed, failed_too)
    clean(result, 0)
    assert result.stdout.startswith("IDENTICAL")
    result = run_cli("--db", url, "diff", incomplete, ok)
    clean(result, 1)
    assert f"{incomplete} is incomplete (no run_completed)" in result.stdout
    assert strict_json(run_cli("--db", url, "diff", incomplete, incomplete, "--json").stdout
                       )["status"] == {"a": "incomplete", "b": "incomplete"}


# -- diff: the cause, in the right words -------------------------------------------------------

def _changed_copy(store: Store, exp: str, target: str, change: Any) -> None:
    """``exp`` re-recorded consistently as ``target`` with ``change`` applied to every body."""
    bodies = [decode_body(body) for _stream, _seq, _kind, body in store.iter_run_bodies(exp)]
    for body in bodies:
        change(body)
    fields = ("stream", "kind", "path", "seed", "params", "input", "output", "meta")
    forge_run(store, target, [{name: body[name] for name in fields} for body in bodies[1:]
                              if body["kind"] != "run_completed"], created=bodies[0]["params"])


def _first_batch(body: dict[str, Any]) -> bool:
    return body["kind"] == "augmentation_batch" and body["path"] == ["epoch", 0, "batch", 0,
                                                                     "augment"]


def _other_numpy(body: dict[str, Any]) -> None:
    if body["kind"] == "experiment_created":
        body["params"]["environment"] = {"packages": {"numpy": "2.4.6"}}
    if _first_batch(body):
        body["output"] = hashlib.sha256(b"other").digest()


def _other_seed(body: dict[str, Any]) -> None:
    if _first_batch(body):
        body["seed"] = bytes(range(16))
        body["output"] = hashlib.sha256(b"other").digest()


def _other_input(body: dict[str, Any]) -> None:
    if _first_batch(body):
        body["input"] = hashlib.sha256(b"other").digest()
        body["output"] = hashlib.sha256(b"other").digest()


def _other_dataset(body: dict[str, Any]) -> None:
    if body["kind"] == "dataset_registered":
        body["output"] = hashlib.sha256(b"other").digest()


CAUSES = {
    "same seed, other numpy": (_other_numpy, "augmentation_batch", "same seed, different output",
                               "environments differ: numpy 1.26.0 in exp-a, 2.4.6 in exp-b"),
    "another seed": (_other_seed, "augmentation_batch", "seed derivation differs",
                     "different seeds"),
    "another input": (_other_input, "augmentation_batch", "input differs", "different data"),
    "another dataset": (_other_dataset, "dataset_registered", "input differs",
                        "datasets' contents differ"),
}


@pytest.mark.parametrize("case", CAUSES)
def test_diff_names_the_cause_of_each_constructed_divergence(url: str, case: str) -> None:
    change, kind, cause, words = CAUSES[case]
    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=2, extra_params={
            "environment": {"packages": {"numpy": "1.26.0"}}})
        _changed_copy(store, "exp-a", "exp-b", change)
        report = diff_runs(store, "exp-a", "exp-b")
    divergence = report.first_divergence
    assert (divergence.kind, divergence.cause.value) == (kind, cause)
    assert words in divergence.detail
    assert (report.differing, report.missing_in_b, report.extra_in_b) == (1, 0, 0)
    result = run_cli("--db", url, "diff", "exp-a", "exp-b")
    clean(result, 1)
    assert cause in result.stdout and "recorded," not in result.stdout


@pytest.mark.parametrize("case", CAUSES)
def test_diff_text_names_each_run_position_and_digest_of_the_first_divergence(
        url: str, case: str) -> None:
    """DESIGN §5: the first divergent event with its exp, stream, seq, kind, path and the
    expected and actual digests. The text gave one stream#seq and no digest at all (only
    --json had them): now each run's position and the digest each run recorded."""
    change, kind, cause, _words = CAUSES[case]
    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=2, extra_params={
            "environment": {"packages": {"numpy": "1.26.0"}}})
        _changed_copy(store, "exp-a", "exp-b", change)
    document = run_cli("--db", url, "diff", "exp-a", "exp-b", "--json")
    clean(document, 1)
    divergence = strict_json(document.stdout)["first_divergence"]
    field = divergence["field"]
    a, b = divergence["a"], divergence["b"]
    assert a[field] != b[field] and None not in (a[field], b[field])
    result = run_cli("--db", url, "diff", "exp-a", "exp-b")
    clean(result, 1)
    line = next(text for text in result.stdout.splitlines() if "first divergence:" in text)
    assert (f"exp-a {a['stream']}#{a['seq']} / exp-b {b['stream']}#{b['seq']} {kind} ["
            in line)
    assert f"{cause} ({field} {a[field]} in exp-a, {b[field]} in exp-b)" in line
    assert line.removeprefix("  first divergence: ") in result.stderr


def test_diff_text_tells_one_run_id_in_two_ledgers_apart(url: str, tmp_path: Path) -> None:
    """``--db-b`` compares a run with its copy in another ledger under the same id: the text
    names each side (A) and (B), not the one id twice."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with Store.open(url) as store, Store.open(other, create=True) as target:
        record_experiment(store, "exp-a", workers=0)
        bodies = [decode_body(body) for _s, _q, _k, body in store.iter_run_bodies("exp-a")]
        for body in bodies:
            _other_seed(body)
        fields = ("stream", "kind", "path", "seed", "params", "input", "output", "meta")
        forge_run(target, "exp-a", [{name: body[name] for name in fields} for body in bodies[1:]
                                    if body["kind"] != "run_completed"],
                  created=bodies[0]["params"])
    result = run_cli("--db", url, "diff", "exp-a", "exp-a", "--db-b", other)
    clean(result, 1)
    assert "in exp-a (B)) — " in result.stdout and "exp-a (A) main#" in result.stdout
    assert bytes(range(16)).hex() + " in exp-a (B)" in result.stdout
    # the summary lines too (they read "exp-a vs exp-a" and "0 missing in exp-a")
    assert result.stdout.startswith("DIFFERENT: exp-a (A) vs exp-a (B)\n")
    assert " missing in exp-a (B), " in result.stdout


def test_a_custom_kind_drawn_with_other_params_is_parameters_differ(url: str) -> None:
    """A custom kind is a user draw point, re-executed from its params: two runs drawing it with
    the same seed and another ``scale`` split there as *parameters differ* naming it — it read
    *same seed, different output — nondeterministic code*, as user draws once did. A
    worker_spawned's params (the start method) are not compared: fork and spawn draw alike."""
    def noise(scale: float, output: bytes) -> dict[str, Any]:
        return {"kind": "my_noise", "path": ["noise", 0], "seed": SEED, "output": output,
                "params": {"scale": scale}}

    def worker(method: str) -> dict[str, Any]:
        return {"kind": "worker_spawned", "path": ["worker", 0], "seed": SEED, "output": DIGEST,
                "params": {"worker": 0, "start_method": method}}

    with Store.open(url) as store:
        forge_run(store, "exp-a", [worker("fork"), noise(1.0, DIGEST)])
        forge_run(store, "exp-b", [worker("spawn"), noise(2.0, hashlib.sha256(b"x").digest())])
        forge_run(store, "exp-c", [worker("spawn"), noise(1.0, DIGEST)])
        report = diff_runs(store, "exp-a", "exp-b")
        assert diff_runs(store, "exp-a", "exp-c").identical
    divergence = report.first_divergence
    assert (divergence.kind, divergence.cause.value) == ("my_noise", "parameters differ")
    assert "other params (scale)" in divergence.detail
    assert (report.differing, report.identical_events) == (1, 1)


def test_a_dataset_registered_under_another_name_is_said_to_be_renamed(url: str) -> None:
    """The same content registered under another name read only "event missing — the other run
    has no such event", as if the runs had trained on other data; the detail now names the
    other run's name for that content. A dataset with other content stays plain missing."""
    def renamed(body: dict[str, Any]) -> None:
        if body["kind"] == "dataset_registered":
            body["params"]["name"] = "renamed"

    def renamed_and_changed(body: dict[str, Any]) -> None:
        renamed(body)
        _other_dataset(body)

    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=0)
        _changed_copy(store, "exp-a", "exp-b", renamed)
        _changed_copy(store, "exp-a", "exp-c", renamed_and_changed)
        forward = diff_runs(store, "exp-a", "exp-b").first_divergence
        backward = diff_runs(store, "exp-b", "exp-a").first_divergence
        changed = diff_runs(store, "exp-a", "exp-c").first_divergence
    assert (forward.kind, forward.cause.value) == ("dataset_registered", "event missing")
    assert forward.detail.endswith("; exp-b registered the same content as 'renamed': a "
                                   "dataset renamed")
    assert backward.detail.endswith("; exp-a registered the same content as "
                                    f"{forward.identity[1]!r}: a dataset renamed")
    assert changed.detail == "the other run has no such event"


def test_a_changed_dataset_is_listed_with_each_run_on_its_own_side(url: str) -> None:
    """The dataset differences list run A's digest first and run B's second, as every other
    difference of a diff does (a, b) — swapping them would blame the wrong run's data."""
    other = hashlib.sha256(b"other").digest()
    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=0)
        _changed_copy(store, "exp-a", "exp-b", _other_dataset)
        forward = diff_runs(store, "exp-a", "exp-b").datasets
        backward = diff_runs(store, "exp-b", "exp-a").datasets
    [(name, a, b)] = forward
    assert b == other and a != other
    assert backward == [(name, other, a)]


def test_environments_are_listed_with_each_run_on_its_own_side(url: str) -> None:
    """Environment differences read (key, run A's value, run B's value), like the detail
    ``numpy 1.26.0 in exp-a, 2.4.6 in exp-b`` beside them."""
    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=0, extra_params={
            "environment": {"packages": {"numpy": "1.26.0"}}})
        _changed_copy(store, "exp-a", "exp-b", _other_numpy)
        assert diff_runs(store, "exp-a", "exp-b").environment == [
            ("packages.numpy", "1.26.0", "2.4.6")]
        assert diff_runs(store, "exp-b", "exp-a").environment == [
            ("packages.numpy", "2.4.6", "1.26.0")]


def _other_worker_state(body: dict[str, Any]) -> None:
    if body["kind"] == "worker_spawned" and body["path"] == ["worker", 1]:
        body["output"] = hashlib.sha256(b"other").digest()


def test_worker_spawned_events_both_runs_recorded_are_compared(url: str) -> None:
    """Only a worker_spawned event one run lacks is passed over (worker counts may differ);
    one both runs recorded is compared like any draw, so a worker seeded differently is named."""
    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=2)
        _changed_copy(store, "exp-a", "exp-b", lambda body: None)
        _changed_copy(store, "exp-a", "exp-c", _other_worker_state)
        same_run = diff_runs(store, "exp-a", "exp-b")
        report = diff_runs(store, "exp-a", "exp-c")
    assert same_run.identical and same_run.compared_by_kind["worker_spawned"] == 2
    assert (report.differing, report.missing_in_b, report.extra_in_b) == (1, 0, 0)
    divergence = report.first_divergence
    assert (divergence.kind, divergence.identity) == ("worker_spawned", ("worker_spawned",
                                                                         "worker", 1))
    assert divergence.cause.value == "same seed, different output"


def test_workers_only_the_first_run_spawned_are_not_differences(url: str) -> None:
    """A run with a worker and one without compare identical in both directions (DESIGN §1:
    outputs do not depend on the number of workers); only the draws are counted as compared."""
    worker = {"kind": "worker_spawned", "path": ["worker", 0], "seed": SEED, "output": DIGEST,
              "params": {"worker": 0, "start_method": "fork"}}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [worker, USER_DRAW])
        forge_run(store, "exp-b", [USER_DRAW])
        reports = [diff_runs(store, "exp-a", "exp-b"), diff_runs(store, "exp-b", "exp-a")]
    for report in reports:
        assert report.identical, report.first_divergence
        assert (report.compared, report.identical_events) == (1, 1)
        assert dict(report.compared_by_kind) == {"user_draw": 1}


@pytest.mark.parametrize("change", [{"batch_size": 16, "batches": 7}, {"drop_last": True}],
                         ids=["batch_size", "drop_last"])
def test_an_epoch_batched_with_other_settings_is_a_difference(url: str, change: dict) -> None:
    """An epoch_reset's output is the order's digest, which batch_size and drop_last do not
    change: two runs training on other batches of one order used to compare identical."""
    params = {"epoch": 0, "length": 100, "shuffle": True, "batch_size": 32, "drop_last": False,
              "batches": 4, "dataset": "d", "dataset_digest": DIGEST}
    reset = {"kind": "epoch_reset", "path": ["epoch", 0, "shuffle"], "seed": SEED,
             "output": DIGEST, "params": params}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [reset])
        forge_run(store, "exp-b", [{**reset, "params": params | change}])
        forge_run(store, "exp-c", [dict(reset)])
        report = diff_runs(store, "exp-a", "exp-b")
        assert diff_runs(store, "exp-a", "exp-c").identical
    assert not report.identical
    assert report.first_divergence.cause.value == "parameters differ"


def test_an_extra_event_does_not_hide_an_earlier_divergence(url: str) -> None:
    """The first divergence is the first in run A's recording order; an event only run B has is
    named first only when nothing of run A differs."""
    other = {**USER_DRAW, "output": hashlib.sha256(b"other").digest()}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [{**USER_DRAW, "output": DIGEST}])
        forge_run(store, "exp-b", [other, {**USER_DRAW, "path": ["dropout"]}])
        report = diff_runs(store, "exp-a", "exp-b")
    assert (report.differing, report.missing_in_b, report.extra_in_b) == (1, 0, 1)
    divergence = report.first_divergence
    assert divergence.identity == ("user_draw", "init")
    assert divergence.cause.value == "same seed, different output"


def test_a_replay_certificate_in_the_audit_stream_is_not_a_difference(url: str) -> None:
    """The audit stream records what was done to a run afterwards (a replay's certificate),
    not the run: a replayed run and its unreplayed twin still compare identical."""
    from ledger.audit import record_audit

    with Store.open(url) as store:
        record_experiment(store, "exp-a", workers=0)
        _changed_copy(store, "exp-a", "exp-b", lambda body: None)
        record_audit(store, "exp-a", "replay_recorded", {"verdict": "certified"},
                     output=DIGEST)
        reports = [diff_runs(store, "exp-a", "exp-b"), diff_runs(store, "exp-b", "exp-a")]
    for report in reports:
        assert report.identical, report.first_divergence
        assert "replay_recorded" not in report.compared_by_kind


def test_a_draw_one_run_lacks_is_named_missing_or_extra_by_side(url: str) -> None:
    """A draw only run A recorded is *event missing* (in B); one only run B recorded is *event
    extra* — each counted once, with the side that has the event filled in and the other None."""
    dropout = {**USER_DRAW, "path": ["dropout"]}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW, dropout])
        forge_run(store, "exp-b", [USER_DRAW])
        missing = diff_runs(store, "exp-a", "exp-b")
        extra = diff_runs(store, "exp-b", "exp-a")
    assert (missing.differing, missing.missing_in_b, missing.extra_in_b) == (0, 1, 0)
    divergence = missing.first_divergence
    assert (divergence.cause.value, divergence.identity) == ("event missing",
                                                             ("user_draw", "dropout"))
    assert divergence.b is None and (divergence.a.stream, divergence.a.seq) == ("main", 2)
    assert (extra.differing, extra.missing_in_b, extra.extra_in_b) == (0, 0, 1)
    divergence = extra.first_divergence
    assert (divergence.cause.value, divergence.identity) == ("event extra",
                                                             ("user_draw", "dropout"))
    assert divergence.a is None and (divergence.b.stream, divergence.b.seq) == ("main", 2)
    assert not missing.identical and not extra.identical
    assert (missing.compared, missing.identical_events) == (2, 1)  # a missing draw is compared
    # the line names the digest the one run recorded, not "none" for the run without the event
    assert divergence.field == "seed"
    assert (f"event extra (seed {SEED.hex()} in exp-a) — exp-a has this event, exp-b does not"
            in divergence.describe())
    # each run's side of it: where the one run recorded it, "none" for the other (the side
    # was left out, where the README promised "none")
    assert divergence.describe().startswith("exp-b none / exp-a main#2 user_draw [dropout]: ")
    assert missing.first_divergence.describe().startswith(
        "exp-a main#2 / exp-b none user_draw [dropout]: ")


def test_a_run_that_trained_on_is_split_where_its_extra_epoch_starts(url: str) -> None:
    """Run B trained an epoch more, then both saved their weights: B's extra epoch comes
    before the checkpoints that differ because of it, so it is the first divergence (*event
    extra*) — the checkpoint was named, as *same seed, different output — nondeterministic
    code*, though the split is where B went on. Diffed the other way round it is *event
    missing* at the same epoch; an extra event after A's first divergence still does not hide
    it (see test_an_extra_event_does_not_hide_an_earlier_divergence)."""
    reset = {"kind": "epoch_reset", "seed": SEED, "output": DIGEST, "params": {}}
    epochs = [{**reset, "path": ["epoch", epoch, "shuffle"]} for epoch in range(3)]
    checkpoint = {"kind": "checkpoint", "params": {"name": "final", "epoch": None}}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [*epochs[:2], {**checkpoint, "output": DIGEST}])
        forge_run(store, "exp-b", [*epochs, {**checkpoint,
                                             "output": hashlib.sha256(b"other").digest()}])
        longer = diff_runs(store, "exp-a", "exp-b")
        shorter = diff_runs(store, "exp-b", "exp-a")
    assert (longer.differing, longer.missing_in_b, longer.extra_in_b) == (1, 0, 1)
    divergence = longer.first_divergence
    assert (divergence.cause.value, divergence.identity) == ("event extra",
                                                             ("epoch_reset", "epoch", 2,
                                                              "shuffle"))
    assert divergence.a is None and (divergence.b.stream, divergence.b.seq) == ("main", 3)
    divergence = shorter.first_divergence
    assert (divergence.cause.value, divergence.identity) == ("event missing",
                                                             ("epoch_reset", "epoch", 2,
                                                              "shuffle"))
    result = run_cli("--db", url, "diff", "exp-a", "exp-b", "--json")
    clean(result, 1)
    assert strict_json(result.stdout)["first_divergence"]["cause"] == "event extra"
    assert "event extra" in result.stderr


def test_a_metric_only_the_second_run_logs_does_not_move_the_split(url: str) -> None:
    """An extra metric (B logs a validation loss A does not) changes no draw, so the checkpoint
    that differs after it stays the first divergence; only an extra draw moves the split."""
    metric = {"kind": "metric", "params": {"name": "val_loss", "epoch": 0, "value": 0.5},
              "output": value_digest(0.5)}
    checkpoint = {"kind": "checkpoint", "params": {"name": "final", "epoch": None}}
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW, {**checkpoint, "output": DIGEST}])
        forge_run(store, "exp-b", [USER_DRAW, metric,
                                   {**checkpoint, "output": hashlib.sha256(b"other").digest()}])
        report = diff_runs(store, "exp-a", "exp-b")
    assert (report.differing, report.missing_in_b, report.extra_in_b) == (1, 0, 1)
    divergence = report.first_divergence
    assert (divergence.cause.value, divergence.identity) == ("same seed, different output",
                                                             ("checkpoint", "final", None))


def test_replay_keeps_its_recorded_and_now_wording() -> None:
    detail = explain_output({"packages": {"numpy": "1.26.0"}}, {"packages": {"numpy": "2.4.6"}})
    assert detail == ("environment differs from the recorded one: numpy 1.26.0 recorded, "
                      "2.4.6 now")


# -- diff: whatever the runs recorded, one valid JSON document that matches the text ----------

def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


ODD_VALUES = {
    "bytes in a list": ([b"\x00\x01"], [b"\x00\x02"], '["0001"] vs ["0002"]'),
    "bytes": (b"\x01\xff", b"\x02", "01ff vs 02"),
    "infinity": (math.inf, 1.0, "Infinity vs 1.0"),
    "nested 60 deep": (_deep(60), 1, "[[[["),
    # written as JSON, as the rest of the CLI writes values (it was Python's repr: True, None,
    # {'a': 1}, '1')
    "a flag and nothing": (True, None, "x: true vs null"),
    "maps in a list": ([{"a": 1, "b": "é"}], [], 'x: [{"a": 1, "b": "é"}] vs []'),
    "text against a number": ("1", 1, 'x: "1" vs 1'),
}
NOT_CANONICAL = {
    "an ext type": (msgpack.ExtType(5, b"x"), "no ext types"),
    # msgpack before 1.2 packs at most 511 levels (the 100,000-deep body of
    # test_hostile_inputs is written as bytes).
    "nested 200 deep": (_deep(200), "nested deeper than 64 levels"),
    "a map keyed by bytes": ({b"k": 1, "j": 2}, "dict key b'k' is a bytes"),
}
"""Values canonical encoding refuses (DESIGN §2): a run recording one fails verification."""


@pytest.mark.parametrize("case", NOT_CANONICAL)
def test_a_value_canonical_encoding_refuses_fails_verification_before_diff(
        url: str, case: str) -> None:
    value, why = NOT_CANONICAL[case]
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW], created={"hyperparams": {"x": value}})
        forge_run(store, "exp-b", [USER_DRAW], created={"hyperparams": {"x": 1}})
    for arguments in (["verify", "exp-a"], ["diff", "exp-a", "exp-b"]):
        result = run_cli("--db", url, *arguments)
        clean(result, 1)
        assert "exp-a stream main seq 0: body is not in canonical form" in result.stderr
        assert why in result.stderr


@pytest.mark.parametrize("case", ODD_VALUES)
def test_odd_recorded_values_give_one_json_document_and_the_same_text(url: str,
                                                                     case: str) -> None:
    a, b, shown = ODD_VALUES[case]
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW], created={"hyperparams": {"x": a}})
        forge_run(store, "exp-b", [USER_DRAW], created={"hyperparams": {"x": b}})
    text = run_cli("--db", url, "diff", "exp-a", "exp-b")
    clean(text, 0)
    assert "configuration differs" in text.stdout and shown in text.stdout
    # identical events, other hyperparameters: IDENTICAL says why the differences don't count
    assert text.stdout.splitlines()[1:3] == [
        "  every event agrees: the differences below changed nothing either run recorded",
        "  configuration differs:"]
    document = run_cli("--db", url, "diff", "exp-a", "exp-b", "--json")
    clean(document, 0)
    rows = strict_json(document.stdout)["differences"]["config"]
    assert rows and all(row["key"].startswith("hyperparams.x") for row in rows)


def test_a_nan_recorded_by_both_runs_is_not_a_difference(url: str) -> None:
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW], created={"hyperparams": {"x": math.nan}})
        forge_run(store, "exp-b", [USER_DRAW], created={"hyperparams": {"x": math.nan}})
        assert diff_runs(store, "exp-a", "exp-b").config == []


def test_a_code_version_recorded_as_one_string_is_listed_under_its_name(url: str) -> None:
    with Store.open(url) as store:
        forge_run(store, "exp-a", [USER_DRAW], created={"code": "v1"})
        forge_run(store, "exp-b", [USER_DRAW], created={"code": "v2"})
        assert diff_runs(store, "exp-a", "exp-b").code == [("code", "v1", "v2")]


def test_a_bytes_value_and_a_text_value_are_different_recorded_values() -> None:
    """A value recorded as bytes in one run and as text in the other is a difference: msgpack
    keeps bin and str apart (DESIGN §2), so the two runs did not record the same value."""
    assert differences({"code": b"v1"}, {"code": "v1"}) == [("code", b"v1", "v1")]
    assert differences("v1", b"v1", "code") == [("code", "v1", b"v1")]


def test_values_equal_in_python_but_encoded_apart_are_differences() -> None:
    """lr=1 against lr=1.0, a flag True against 1: the runs recorded different values (their
    canonical bytes and digests differ), so diff lists them — it listed nothing, Python's ==
    calling them equal. NaN still equals NaN."""
    rows = differences({"lr": 1, "flag": True, "same": 2.5, "nan": math.nan},
                       {"lr": 1.0, "flag": 1, "same": 2.5, "nan": math.nan})
    assert rows == [("flag", True, 1), ("lr", 1, 1.0)]
    assert value_digest(1) != value_digest(1.0) and value_digest(True) != value_digest(1)


def test_values_too_deeply_nested_to_compare_count_as_different() -> None:
    """Values nested deeper than Python can compare are listed as differing, never silently
    taken as equal (nor a RecursionError)."""
    def deep(leaf: int) -> Any:
        value: Any = leaf
        for _ in range(5000):
            value = [value]
        return value

    rows = differences({"x": deep(0)}, {"x": deep(1)})
    assert [key for key, _a, _b in rows] == ["x"]


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=6), st.binary(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=2)),
                                            inner, max_size=3)),
    max_leaves=12)


# too_slow: generating nested values is slow on a loaded machine, not a property of the code
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values, msgpack_values)
def test_differences_of_any_decoded_values_never_raise_and_a_value_equals_itself(
        a: Any, b: Any) -> None:
    decoded_a, decoded_b, again_a = (msgpack.unpackb(_pack(value), raw=False,
                                                     strict_map_key=False)
                                     for value in (a, a if b is None else b, a))
    differences(decoded_a, decoded_b, "whole")
    assert differences(decoded_a, again_a, "whole") == []


def test_a_key_recorded_as_null_differs_from_a_key_left_out() -> None:
    """Values the user gave (hyperparameters, draw params): ``{"dropout": None}`` against no
    dropout at all is a difference, its missing side ABSENT; environments keep comparing a
    missing key as null (a library not loaded, a version unknown)."""
    assert differences({"dropout": None, "lr": 1}, {"lr": 1}, keep_absent=True) == [
        ("dropout", None, ABSENT)]
    assert differences({}, {"x": {"y": None}}, keep_absent=True) == [("x.y", ABSENT, None)]
    assert differences({"dropout": None}, {}) == []
    assert differences({"lr": 1}, {"lr": 1}, keep_absent=True) == []


def test_diff_lists_a_hyperparameter_one_run_records_as_null_and_the_other_lacks(
        tmp_path: Path) -> None:
    """``ledger diff`` of two runs alike but for a hyperparameter ``None`` in one and absent in
    the other lists it, text ``null vs absent``; ``--json`` leaves the absent side out. A metric
    only one run logged shows as ``absent`` in the other, not ``null``."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ids = []
    with ExperimentManager(url) as manager:
        for hyperparams, metrics in (({"lr": 0.1, "dropout": None}, ("auc", "loss")),
                                     ({"lr": 0.1}, ("auc",))):
            with manager.create_experiment("model", seed=7, hyperparams=hyperparams) as exp:
                for name in metrics:
                    exp.log_metric(name, 0.5, epoch=0)
                ids.append(exp.id)
    text = run_cli("--db", url, "diff", *ids)
    clean(text, 1)
    assert "    hyperparams.dropout: null vs absent" in text.stdout
    assert "    loss: 0.5 vs absent" in text.stdout
    document = run_cli("--db", url, "diff", *ids, "--json")
    clean(document, 1)
    differences_found = strict_json(document.stdout)["differences"]
    assert differences_found["config"] == [{"key": "hyperparams.dropout", "a": None}]
    assert differences_found["metrics"] == [{"key": "loss", "a": 0.5}]


def test_a_run_whose_experiment_row_was_deleted_fails_verification_everywhere(
        tmp_path: Path) -> None:
    """With its row deleted, show, replay, diff and report called the run an unknown
    experiment (exit 2), as for a mistyped id, while its events were all still stored:
    ``verify`` named the tampering (exit 1). Each now says the ledger fails verification."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Store.open(url, create=True) as store:
        recorded = record_experiment(store, workers=0)
        drop_append_only_triggers(store)
        execute(store, "DELETE FROM ledger_experiments WHERE exp = :exp", exp=recorded.exp)
    exp = recorded.exp
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with pytest.raises(CheckFailedError, match="but no experiment row"):
            manager.resume_experiment(exp)
    for command in (["show", exp], ["replay", "--no-record", exp], ["diff", exp, exp],
                    ["report", "--no-record", exp]):
        done = run_cli("--db", url, *command)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.splitlines() == [
            f"ledger: error: {exp} has events in {url} but no experiment row: the ledger fails "
            f"verification (ledger verify {exp} names it)"], command
    assert run_cli("--db", url, "show", "exp-bbbbbbbbbbbb").returncode == 2  # unknown: as before
    assert run_cli("--db", url, "verify", exp).returncode == 1
