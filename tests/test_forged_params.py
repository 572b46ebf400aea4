"""Forged draw params and dataset files never decide how much replay allocates, nor crash it.

A forger can write any params into a ledger that still verifies (see forgery.py). Replay must
answer such a ledger with one line and exit 3 (cannot replay) or 1 (a divergence) — never an
internal error, a memory blow-up or an allocation sized by the forger.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import run_cli
from forgery import copy_run
from ledger.augment import DataAugmenter
from ledger.datasets import read_npz
from ledger.errors import BadInputError, CannotReplayError
from ledger.events import decode_body
from ledger.integrations.sharding import rank_share, share_size
from ledger.seeds import derive_bytes, root_seed_from_bytes
from ledger.store import Store
from ledger.verify import verify
import replay.engine
from replay.engine import replay_run
from replay.npz import read_npz_arrays
from replay_helpers import record_run


def _forged(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> tuple[str, str]:
    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    exp = record_run(honest, tmp_path / "data", epochs=1)
    with Store.open(honest) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp, target, change)
    return forged, exp


def _set(kind: str, **params: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        if body["kind"] == kind:
            body["params"].update(params)
    return change


@pytest.mark.parametrize("kind,params,message", [
    ("epoch_reset", {"length": 10**12}, "records 1000000000000 samples, but its dataset holds"),
    ("epoch_reset", {"length": "x"}, "records 'x' samples"),
    ("augmentation_batch", {"batch": "x"}, "cannot be re-executed from its recorded params "
                                           "(TypeError"),
    ("augmentation_batch", {"batch_size": None}, "cannot be re-executed"),
    ("augmentation_batch", {"dataset_digest": "abc"}, "cannot be re-executed"),
    ("augmentation_batch", {"epoch": [0]}, "cannot be re-executed"),
    ("dataset_registered", {"length": 10**6},
     "dataset 'dataset-small' records length 1000000, but its data has 600"),
    ("dataset_registered", {"features": {"dtype": "<f4", "shape": [10**6, 6]}},
     "records features {'dtype': '<f4', 'shape': [1000000, 6]}, but its data has {'dtype': "
     "'<f4', 'shape': [600, 6]}"),
    # seeds this program cannot derive: neither certified nor declared divergent
    ("experiment_created", {"seed_scheme": "other-scheme/v9"},
     "derives seeds with 'other-scheme/v9'; this program knows"),
    ("experiment_created", {"root_seed": b"\x01" * 8}, "has no recorded root seed"),
    ("experiment_created", {"root_seed": 42}, "has no recorded root seed")],
    ids=["huge-length", "text-length", "text-batch", "none-batch-size", "text-digest",
         "list-epoch", "dataset-length", "dataset-shape", "unknown-seed-scheme",
         "short-root-seed", "integer-root-seed"])
def test_forged_params_are_refused_with_exit_3(tmp_path: Path, kind: str,
                                               params: dict[str, Any], message: str) -> None:
    forged, exp = _forged(tmp_path, _set(kind, **params))
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    result = run_cli("--db", forged, "replay", exp, "--no-record",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "internal error" not in result.stderr


def _epoch_reset_params(params: Callable[[dict[str, Any]], Any]
                        ) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "epoch_reset":
            body["params"] = params(body["params"])
    return change


@pytest.mark.parametrize("params,message", [
    (lambda old: {key: value for key, value in old.items() if key != "shuffle"},
     "epoch_reset main#2 lacks params ['shuffle']"),
    (lambda old: {}, "epoch_reset main#2 lacks params ['epoch', 'length', 'shuffle']")],
    ids=["one-missing", "empty"])
def test_a_draw_whose_params_lack_a_name_is_refused_naming_it(
        tmp_path: Path, params: Callable[[dict[str, Any]], Any], message: str) -> None:
    """A draw is re-executed from its params: params without a name the replayer needs are
    exit 3 naming the event and exactly the names it lacks."""
    forged, exp = _forged(tmp_path, _epoch_reset_params(params))
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    result = run_cli("--db", forged, "replay", exp, "--no-record",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("loader,message", [
    (lambda _old, _outside: "npz", "dataset 'dataset-small' has no loader spec"),
    (lambda old, _outside: {**old, "kind": ["npz"]}, "dataset 'dataset-small' has no loader spec"),
    (lambda old, _outside: {**old, "path": None}, "dataset loader spec has no usable path: None"),
    (lambda old, _outside: {**old, "path": "x\x00.npz"}, "dataset loader spec has no usable path"),
    (lambda old, _outside: {**old, "features": ["features"]}, "has no array ['features']"),
    (lambda old, _outside: {**old, "path": "../outside.npz"},
     "dataset path '../outside.npz' leaves the data folder"),
    (lambda old, outside: {**old, "path": str(outside)}, "' leaves the data folder")],
    ids=["not-a-map", "list-kind", "no-path", "nul-in-path", "list-key", "dot-dot", "absolute"])
def test_a_forged_loader_spec_is_refused_with_exit_3(
        tmp_path: Path, loader: Callable[[dict[str, Any], Path], Any], message: str) -> None:
    """A dataset's loader spec is ledger content: one that is no spec, names no usable file,
    reads arrays under a key of another type, or leaves the data folder (here for a copy of the
    data kept beside it) is exit 3 naming the problem — never an internal error, never a
    certificate."""
    outside = tmp_path / "outside.npz"

    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "dataset_registered":
            body["params"]["loader"] = loader(body["params"]["loader"], outside)

    forged, exp = _forged(tmp_path, change)
    (stored,) = (tmp_path / "data").rglob("*.npz")
    outside.write_bytes(stored.read_bytes())
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    result = run_cli("--db", forged, "replay", exp, "--no-record",
                     "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_dataset_recorded_without_its_description_is_checked_by_its_content(
        tmp_path: Path) -> None:
    """The ``length``, ``features`` and ``labels`` descriptions are compared only when recorded
    (a writer may omit them): without them the dataset is checked by its content alone and
    the run certified — never an internal error over a missing key."""
    from replay import replay_run

    def undescribed(body: dict[str, Any]) -> None:
        if body["kind"] == "dataset_registered":
            for key in ("length", "features", "labels"):
                del body["params"][key]

    forged, exp = _forged(tmp_path, undescribed)
    with Store.open(forged) as store:
        report = replay_run(store, exp, data_dir=tmp_path / "data")
    assert report.certified and report.compared["dataset_registered"] == 1


def test_batches_recorded_as_unshuffled_from_a_shuffled_epoch_are_not_certified(
        tmp_path: Path) -> None:
    """Every batch's params flipped to ``shuffle: False`` (what reports show), the samples and
    digests kept from the shuffled epoch: each batch is re-executed from its own params, so its
    input is not the recorded one — never the epoch_reset's shuffled order reused."""
    from replay import replay_run

    forged, exp = _forged(tmp_path, _set("augmentation_batch", shuffle=False))
    with Store.open(forged) as store:
        report = replay_run(store, exp, data_dir=tmp_path / "data")
    divergence = report.first_divergence
    assert divergence is not None and not report.certified
    assert (divergence.path, divergence.field) == (["epoch", 0, "batch", 0, "augment"], "input")


def _relabelled_epoch_reset() -> Callable[[dict[str, Any]], None]:
    """Epoch 1's shuffle recorded as epoch 0's permutation, under epoch 1's path and seed."""
    first: dict[str, Any] = {}

    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "epoch_reset":
            if body["params"]["epoch"] == 0:
                first.update(params=dict(body["params"]), output=body["output"])
            else:
                body["params"], body["output"] = dict(first["params"]), first["output"]
    return change


def _repeated_batch() -> Callable[[dict[str, Any]], None]:
    """Every batch of an epoch recorded with batch 0's params and digests, under its own path
    and seed (the augmenter draws nothing, so the seed changes nothing)."""
    first: dict[int, dict[str, Any]] = {}

    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "augmentation_batch":
            epoch = body["params"]["epoch"]
            if body["params"]["batch"] == 0:
                first[epoch] = {key: body[key] for key in ("params", "input", "output")}
            else:
                body.update(first[epoch])
    return change


def _epoch_reset_one_label_deeper() -> Callable[[dict[str, Any]], None]:
    """Epoch 0's shuffle recorded at ``['epoch', 0, 'shuffle', 0]``, its seed re-derived there:
    a path that only starts with the one its params name."""
    root: dict[str, int] = {}

    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "experiment_created":
            root["seed"] = root_seed_from_bytes(body["params"]["root_seed"])
        if body["kind"] == "epoch_reset" and body["params"]["epoch"] == 0:
            body["path"] = [*body["path"], 0]
            body["seed"] = derive_bytes(root["seed"], body["path"])
    return change


@pytest.mark.parametrize("change,message", [
    (_relabelled_epoch_reset, "epoch_reset main#14 is recorded at path ['epoch', 1, 'shuffle'] "
                              "but its params are those of ['epoch', 0, 'shuffle']"),
    (_epoch_reset_one_label_deeper, "epoch_reset main#2 is recorded at path ['epoch', 0, "
                                    "'shuffle', 0] but its params are those of ['epoch', 0, "
                                    "'shuffle']"),
    (_repeated_batch, "augmentation_batch main#4 is recorded at path ['epoch', 0, 'batch', 1, "
                      "'augment'] but its params are those of ['epoch', 0, 'batch', 0, "
                      "'augment']")], ids=["epoch-reset", "deeper-path", "batch"])
def test_a_draw_whose_params_name_another_path_is_not_certified(
        tmp_path: Path, change: Callable[[], Callable[[dict[str, Any]], None]],
        message: str) -> None:
    """Replay re-executes a draw from its params and seeds it from its path: a forger who
    records the same samples under every path (each digest recomputed) must not be certified."""
    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    exp = record_run(honest, tmp_path / "data", epochs=2, augmenter=DataAugmenter())
    with Store.open(honest) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp, target, change())
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    for jobs in ("1", "2"):
        result = run_cli("--db", forged, "replay", exp, "--no-record", "--jobs", jobs,
                         "--data-dir", str(tmp_path / "data"))
        assert result.returncode == 3, result.stdout + result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "CERTIFIED" not in result.stdout


def _first_batch_again_in(stream: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    def change(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["kind"] == "augmentation_batch" and body["path"][3] == 0:
            return [{**body, "stream": stream}]  # the same draw, recorded a second time
        return []
    return change


def test_a_draw_recorded_twice_is_not_certified(tmp_path: Path) -> None:
    """A draw (kind, path) is recorded once per run: the same batch recorded again in another
    stream re-executes to its record as well, and must not make a certified run."""
    forged, exp = _forged(tmp_path, _first_batch_again_in("worker-9"))
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    for jobs in ("1", "2"):
        result = run_cli("--db", forged, "replay", exp, "--no-record", "--jobs", jobs,
                         "--data-dir", str(tmp_path / "data"))
        assert result.returncode == 3, result.stdout + result.stderr
        assert ("augmentation_batch at path ['epoch', 0, 'batch', 0, 'augment'] is recorded "
                "more than once (") in result.stderr
        assert "main#3" in result.stderr and "worker-9#0" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "CERTIFIED" not in result.stdout


def _registered_again(copies: int) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """The run's dataset registered ``copies`` times more, under other names and spellings of
    its file's path."""
    def change(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["kind"] != "dataset_registered":
            return []
        spelt = ("./" + body["params"]["loader"]["path"], body["params"]["loader"]["path"])
        return [{**body, "params": {**body["params"], "name": f"copy-{copy}", "loader": {
            **body["params"]["loader"], "path": spelt[copy % 2]}}} for copy in range(copies)]
    return change


def test_a_dataset_file_registered_many_times_is_read_and_digested_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay held a copy of the arrays per dataset_registered event: a forged run naming one
    20 MB file 300 times needed 6 GB (an internal MemoryError under a 3 GB limit). The same
    file, however its path is spelt, is read and digested once."""
    import replay.datasets

    forged, exp = _forged(tmp_path, _registered_again(50))
    calls = {"read": 0, "digest": 0}

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return function(*args)
        return call

    monkeypatch.setattr(replay.datasets, "read_npz_arrays",
                        counted("read", replay.datasets.read_npz_arrays))
    monkeypatch.setattr(replay.engine, "dataset_redraw",
                        counted("digest", replay.engine.dataset_redraw))
    with Store.open(forged) as store:
        report = replay_run(store, exp, data_dir=tmp_path / "data")
    assert report.certified and report.compared["dataset_registered"] == 51
    assert calls == {"read": 1, "digest": 1}


def _roles(copies: int) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """The run's dataset registered ``copies`` times more as training data and as test data."""
    def change(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["kind"] != "dataset_registered":
            return []
        return [{**body, "params": {**body["params"], "name": f"{role}-{copy}", "role": role}}
                for copy in range(copies) for role in ("train", "test")]
    return change


@pytest.mark.parametrize("copies", [60, 101])
def test_a_report_checks_datasets_named_many_times_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        copies: int) -> None:
    """R5 re-loaded and re-digested both datasets of every (training, test) pair: 6 copies of
    each role of a 20 MB file took 13 s, 100 would take an hour. Each content is now loaded and
    digested once, and more than MAX_PAIRS pairs are not checked."""
    import report.data_checks
    from report_helpers import report_of

    forged, exp = _forged(tmp_path, _roles(copies))
    loads = []
    load = report.data_checks.load_dataset
    monkeypatch.setattr(report.data_checks, "load_dataset",
                        lambda *args: loads.append(args) or load(*args))
    check = report_of(forged, exp, data_dir=str(tmp_path / "data"))["R5"]["independence"]
    if copies ** 2 <= 10_000:  # MAX_PAIRS
        assert check["status"] == "failed" and len(check["pairs"]) == copies ** 2
        assert check["pairs"][-1] == {"train": f"train-{copies - 1}",
                                      "test": f"test-{copies - 1}", "overlap": 600,
                                      "test_records": 600}
        assert len(loads) == 1
    else:
        assert check["status"] == "not_checked" and not check["pairs"] and not loads
        assert check["reason"] == ("101 training and 101 test datasets: more than 10,000 "
                                   "pairs to check")


def test_a_metric_value_edited_under_its_old_digest_is_not_identical(tmp_path: Path) -> None:
    """diff (and replay --full, which diffs) compared a metric by its recorded digest only: a
    run whose values were all raised to 0.999 — what show and the reports display — with the
    honest digests kept and the chain recomputed was 'identical' to the honest run."""
    forged, exp = _forged(tmp_path, _set("metric", value=0.999))
    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    result = run_cli("--db", forged, "diff", exp, exp, "--db-b", honest)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "metric [batch_sum/0]" in result.stdout
    assert run_cli("--db", honest, "diff", exp, exp, "--db-b", honest).returncode == 0


def test_a_path_label_of_another_type_is_not_the_params_path() -> None:
    from replay.replayers import check_draw_path

    body = {"kind": "epoch_reset", "stream": "main", "seq": 3, "path": ["epoch", True, "shuffle"]}
    with pytest.raises(Exception, match="is recorded at path"):
        check_draw_path(body, ("epoch", 1, "shuffle"))  # True derives another seed than 1
    check_draw_path({**body, "path": ["epoch", 1, "shuffle"]}, ("epoch", 1, "shuffle"))


def test_a_worker_spawned_at_a_path_no_worker_is_seeded_from_cannot_replay() -> None:
    """A worker_spawned event is re-executed by seeding a worker at its path: at a path the
    library never seeds a worker from (a forger's), replay refuses it (exit 3) rather than
    certify the states that path would give; a rank's worker is re-seeded at its own path."""
    from ledger.errors import CannotReplayError
    from ledger.worker_seeding import expected_state_digest_at
    from replay.context import ReplayContext
    from replay.replayers import replay_worker_spawned

    body = {"kind": "worker_spawned", "stream": "main", "seq": 4, "path": ["epoch", 0, "shuffle"]}
    with pytest.raises(CannotReplayError, match="is not a worker path this version replays"):
        replay_worker_spawned(ReplayContext(1, None), body)
    rank_worker = {**body, "path": ["rank", 1, "worker", 2]}
    assert replay_worker_spawned(ReplayContext(1, None), rank_worker).output == (
        expected_state_digest_at(1, ["rank", 1, "worker", 2]))


def test_a_sampler_permutation_larger_than_memory_is_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from replay import replayers
    from replay.context import ReplayContext

    monkeypatch.setattr(replayers, "physical_memory", lambda: 8 * 1000)
    body = {"kind": "epoch_reset", "stream": "main", "seq": 3, "path": ["epoch", 0, "shuffle"],
            "params": {"epoch": 0, "length": 1001, "shuffle": True}}
    with pytest.raises(Exception, match="more than this machine's memory"):
        replayers.replay_epoch_reset(ReplayContext(1, None), body)
    body["params"]["length"] = 1000
    assert replayers.replay_epoch_reset(ReplayContext(1, None), body).output is not None


def test_replay_holds_the_sample_orders_of_a_few_epochs_only() -> None:
    """An epoch's sample order is kept for its batches, but only the last _ORDERS_KEPT (4) of
    them: what replay holds does not grow with the epochs a run records (a forged run may
    record a million epochs of a large dataset)."""
    from replay import replayers
    from replay.context import ReplayContext

    context = ReplayContext(1, None)
    for epoch in range(10):
        replayers.replay_epoch_reset(context, {
            "kind": "epoch_reset", "stream": "main", "seq": 2 + epoch,
            "path": ["epoch", epoch, "shuffle"],
            "params": {"epoch": epoch, "length": 50, "shuffle": True}})
        kept = [key for key in context.cache if key[0] == "order"]
        assert len(kept) == min(epoch + 1, replayers._ORDERS_KEPT)
    assert [key[1] for key in kept] == [6, 7, 8, 9]  # the latest epochs


@given(length=st.integers(1, 60), replicas=st.integers(1, 70), drop_last=st.booleans(),
       data=st.data())
def test_a_ranks_share_is_the_padded_orders_slice(length: int, replicas: int, drop_last: bool,
                                                  data: st.DataObject) -> None:
    rank = data.draw(st.integers(0, replicas - 1))
    order = np.random.default_rng(length).permutation(length).astype(np.int64)
    total = share_size(length, replicas, drop_last) * replicas
    padded = np.resize(order, total) if total > length else order[:total]
    expected = padded[rank:total:replicas]  # DistributedSampler's rule, built in full
    assert np.array_equal(rank_share(order, replicas, rank, drop_last), expected)


def test_a_huge_replica_count_costs_one_index() -> None:
    share = rank_share(np.arange(10, dtype=np.int64), 2**62, 2**61, False)
    assert share.tolist() == [2**61 % 10]


def _npz_with_header(path: Path, shape: tuple[int, ...], payload: bytes,
                     compress: int = zipfile.ZIP_STORED) -> Path:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0))
    header["shape"] = shape
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("features.npy", buffer.getvalue() + payload)
    return path


@pytest.mark.parametrize("reader", [read_npz, read_npz_arrays], ids=["numpy", "fast"])
@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_an_npz_header_promising_terabytes_is_refused_before_allocating(
        tmp_path: Path, reader: Callable[..., Any], compress: int) -> None:
    path = _npz_with_header(tmp_path / "lie.npz", (10**12,), b"\0" * 64, compress)
    with pytest.raises(BadInputError, match="does not fill its"):
        reader(path, "features", None)


@pytest.mark.parametrize("reader", [read_npz, read_npz_arrays], ids=["numpy", "fast"])
def test_arrays_declaring_more_than_memory_are_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       reader: Callable[..., Any]) -> None:
    import ledger.npz_sizes

    path = tmp_path / "big.npz"
    np.savez_compressed(path, features=np.zeros((1000, 10)))  # 80 KB inflated, tiny on disk
    monkeypatch.setattr(ledger.npz_sizes, "physical_memory", lambda: 50_000)
    with pytest.raises(BadInputError, match="more than this machine's memory"):
        reader(path, "features", None)
    monkeypatch.setattr(ledger.npz_sizes, "physical_memory", lambda: 10**9)
    assert math.prod(reader(path, "features", None)[0].shape) == 10_000


@pytest.mark.parametrize("config,message", [
    ({"workers": 2, "epochs": 10**9, "inject_nondeterminism": False}, "epochs=1000000000"),
    ({"workers": 100_000, "epochs": 1, "inject_nondeterminism": False}, "workers=100000"),
    ({"workers": 2, "epochs": 1, "inject_nondeterminism": False, "transactions": 7 * 10**9},
     "transactions=7000000000"),
    ({}, "is not one the demo writes"),
    ({"workers": "2", "epochs": 1, "inject_nondeterminism": False}, "workers='2'")],
    ids=["epochs", "workers", "transactions", "empty", "text"])
def test_full_replay_runs_only_a_config_the_demo_could_have_recorded(
        tmp_path: Path, config: dict[str, Any], message: str) -> None:
    def demo_job(body: dict[str, Any]) -> None:
        if body["kind"] == "experiment_created":
            body["params"]["entrypoint"] = {"job": "fraud-detection-v3-demo", "version": 1,
                                            "config": config}

    forged, exp = _forged(tmp_path, demo_job)
    result = run_cli("--db", forged, "replay", exp, "--full", "--no-record", timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


HOSTILE_TEXT = "n\x1b]0;PWNED\x07\x1b[2J\u202e\nCERTIFIED: forged line"


def test_text_from_a_ledger_cannot_drive_the_terminal_or_forge_lines(tmp_path: Path) -> None:
    def hostile_names(body: dict[str, Any]) -> None:
        if body["kind"] == "experiment_created":
            body["params"].update(name=HOSTILE_TEXT, model=HOSTILE_TEXT, purpose=HOSTILE_TEXT)
        if body["kind"] == "dataset_registered":
            body["params"]["name"] = HOSTILE_TEXT
        if body["kind"] == "run_completed":
            body["params"]["status"] = HOSTILE_TEXT

    forged, exp = _forged(tmp_path, hostile_names)
    other = record_run(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "data", epochs=1)
    results = [run_cli("--db", forged, *command)
               for command in (["list"], ["show", exp], ["verify", exp],
                               ["report", exp, "--no-record", "--format", "md"])]
    outputs = [result.stdout + result.stderr for result in results]
    outputs.append(run_cli("--db", forged, "diff", exp, other, "--db-b",
                           f"sqlite:///{tmp_path / 'other.db'}").stdout)
    for output in outputs:
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
        assert not any(line.startswith("CERTIFIED: forged") for line in output.splitlines())
    assert "\\x1b]0;PWNED" in outputs[0]  # shown, escaped


@pytest.mark.parametrize("value", [1.0, "text"], ids=["plotted", "not-plotted"])
def test_a_metric_name_cannot_drive_the_terminal_or_reorder_the_html_report(
        tmp_path: Path, value: Any) -> None:
    """The metric charts escaped HTML but not control characters: ``report --format html`` on a
    terminal printed a forged metric name's escape sequences raw."""
    forged, exp = _forged(tmp_path, _set("metric", name=HOSTILE_TEXT, value=value))
    result = run_cli("--db", forged, "report", exp, "--no-record", "--format", "html")
    assert result.returncode == 0, result.stderr
    assert not {"\x1b", "\x07", "\u202e"} & set(result.stdout)
    assert "n\\x1b]0;PWNED" in result.stdout  # shown, escaped


def _deep_user_draws(paths: int) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """User draws at ``[v]``, ``[u, v]``, ``[u, u, v]``…: a seed tree branching at every level."""
    def change(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["kind"] != "dataset_registered":
            return []
        return [{**body, "kind": "user_draw", "path": ["u"] * depth + ["v"], "seed": bytes(16),
                 "params": {"generator": "numpy.PCG64"}, "output": None}
                for depth in range(paths)]
    return change


def test_a_seed_tree_thousands_of_labels_deep_is_cut_in_the_html_report(tmp_path: Path) -> None:
    """The HTML seed tree nested one list per path label: paths 1,100 labels deep made
    ``report --format html`` an internal error (RecursionError), and no report was written."""
    forged, exp = _forged(tmp_path, _deep_user_draws(1100))
    target = tmp_path / "report.html"
    result = run_cli("--db", forged, "report", exp, "--no-record", "--format", "html",
                     "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert "/…</code> — user_draw, seed" in target.read_text()  # cut at MAX_DEPTH labels


def test_a_second_experiment_created_is_a_finding(tmp_path: Path) -> None:
    """A run is created once, at main seq 0. A second creation in a stream sorted before main
    (recorded first, it was the one replay and show read — with its own root seed — while the
    reports quote main's) passed verification: its facts were overwritten by main's."""
    def created_again(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body["kind"] != "experiment_created":
            return []
        return [{**body, "stream": "a", "params": {**body["params"],
                                                   "root_seed": (43).to_bytes(16, "big")}}]

    forged, exp = _forged(tmp_path, created_again)
    result = run_cli("--db", forged, "verify", exp)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"{exp} stream a seq 0: experiment_created outside main seq 0 (a run is created "
            f"once)") in result.stderr
    replayed = run_cli("--db", forged, "replay", exp, "--no-record",
                       "--data-dir", str(tmp_path / "data"))
    assert replayed.returncode == 1 and "fails verification" in replayed.stderr


def _drop_status(body: dict[str, Any]) -> None:
    if body["kind"] == "run_completed":
        del body["params"]["status"]


@pytest.mark.parametrize("change,shown", [
    (_set("run_completed", status="\x1b[32mok"), "'\\x1b[32mok'"),
    (_set("run_completed", status=5), "5"), (_drop_status, "None")],
    ids=["escape", "int", "missing"])
def test_a_forged_completion_status_is_a_finding_and_not_listed_as_ok(
        tmp_path: Path, change: Callable[[dict[str, Any]], None], shown: str) -> None:
    """run_completed records 'ok' or 'failed'; any other status (even in a chain recomputed to
    be consistent) is named by verify, and list/show call the run malformed, not complete."""
    forged, exp = _forged(tmp_path, change)
    with Store.open(forged) as store:
        assert store.experiments()[0].status == "malformed"
        report = verify(store, exp)
    assert not report.ok
    assert f"run_completed has status {shown}, not 'ok' or 'failed'" in report.findings[0].describe()


def _first_batch(field: str, value: bytes) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        if body["kind"] == "augmentation_batch" and body["path"][1:4] == [0, "batch", 0]:
            body[field] = value
    return change


@pytest.mark.parametrize("field,value,cause,detail", [
    ("seed", b"\x07" * 16, "seed derivation differs",
     "the recorded seed is not derive(root seed, path)"),
    ("input", b"\x07" * 32, "input differs", "the data this draw read changed")],
    ids=["seed", "input"])
def test_a_forged_seed_or_input_digest_is_the_first_divergence(
        tmp_path: Path, field: str, value: bytes, cause: str, detail: str) -> None:
    """The re-executed draw is seeded from its path and reads the re-loaded data, so its output
    still matches a record whose seed or input digest was forged: replay must compare the seed
    and input too (POLICY), and name that field and its cause at the forged batch."""
    from replay import replay_run

    forged, exp = _forged(tmp_path, _first_batch(field, value))
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    with Store.open(forged) as store:
        report = replay_run(store, exp, data_dir=tmp_path / "data")
    divergence = report.first_divergence
    assert divergence is not None and not report.certified and report.mismatched == 1
    assert (divergence.kind, divergence.path) == ("augmentation_batch",
                                                  ["epoch", 0, "batch", 0, "augment"])
    assert (divergence.field, divergence.expected) == (field, value)
    assert divergence.cause.value == cause and divergence.detail == detail
    # the actual digest is what the re-execution made — for a seed, the one its path derives
    # (the honest record's): it was None, shown as "got None"
    with Store.open(f"sqlite:///{tmp_path / 'honest.db'}") as honest:
        [honest_body] = [decode_body(body) for _s, _q, kind, body in honest.iter_run_bodies(exp)
                         if kind == "augmentation_batch"
                         and decode_body(body)["path"][1:4] == [0, "batch", 0]]
    assert divergence.actual == honest_body[field] and divergence.actual != value
    text = run_cli("--db", forged, "replay", exp, "--no-record", "--data-dir",
                   str(tmp_path / "data"))
    assert text.returncode == 1
    assert (f"({field} expected {value.hex()}, got {honest_body[field].hex()})"
            in text.stdout)


def test_a_bare_user_draw_forged_with_an_output_is_not_certified(tmp_path: Path) -> None:
    """A bare exp.generator draw records only its seed; replay cannot rerun it. An output digest
    written onto one (a consistent forgery, or another writer) is exit 3 naming the event —
    it used to be echoed back and certified unchecked."""
    from ledger.experiment import ExperimentManager

    honest = f"sqlite:///{tmp_path / 'honest.db'}"
    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    with ExperimentManager(honest, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("bare", seed=5) as exp:
            exp.generator("model", "init")

    def with_output(body: dict[str, Any]) -> None:
        if body["kind"] == "user_draw":
            body["output"] = b"\x01" * 32

    with Store.open(honest) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp.id, target, with_output)
    assert run_cli("--db", honest, "replay", exp.id, "--no-record").returncode == 0
    assert run_cli("--db", forged, "verify", exp.id).returncode == 0  # a consistent forgery
    result = run_cli("--db", forged, "replay", exp.id, "--no-record")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "user_draw main#1 at ['model', 'init'] records an output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_batch_recorded_without_its_input_digest_is_not_certified(tmp_path: Path) -> None:
    """Replay compared a batch's input only when one was recorded: a consistent forgery that
    dropped the input digest of a batch replayed CERTIFIED, its input never checked."""
    def drop_input(body: dict[str, Any]) -> None:
        if body["kind"] == "augmentation_batch" and body["path"][3] == 1:
            body["input"] = None

    forged, exp = _forged(tmp_path, drop_input)
    assert run_cli("--db", forged, "verify", exp).returncode == 0  # a consistent forgery
    for jobs in ("1", "2"):
        result = run_cli("--db", forged, "replay", exp, "--no-record", "--jobs", jobs,
                         "--data-dir", str(tmp_path / "data"), "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        divergence = json.loads(result.stdout)["first_divergence"]
        assert divergence["path"] == ["epoch", 0, "batch", 1, "augment"]
        assert divergence["field"] == "input" and divergence["expected"] is None
        assert divergence["detail"] == ("the record names no input for a draw that reads one: "
                                        "nothing vouches for it")


def test_a_draw_recorded_with_an_input_it_does_not_read_is_named_so(tmp_path: Path) -> None:
    """An epoch's shuffle reads no data: an input digest forged into its record is a
    divergence that says so, not "the data this draw read changed"."""
    def add_input(body: dict[str, Any]) -> None:
        if body["kind"] == "epoch_reset":
            body["input"] = b"\x02" * 32

    forged, exp = _forged(tmp_path, add_input)
    result = run_cli("--db", forged, "replay", exp, "--no-record", "--data-dir",
                     str(tmp_path / "data"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("epoch_reset [epoch/0/shuffle]: input differs (input expected " + "02" * 32
            + ", got None) — the record names an input for a draw that reads none"
            ) in result.stdout


def test_a_replay_that_cannot_go_on_gives_back_the_connection_it_was_reading_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay reads the run's draws through one streaming query. Raised out of mid-run, it
    kept that query's connection checked out for as long as the error lived (its traceback
    holds the reader): closing the store then left the connection open — Python 3.13 warns of
    it when garbage collection finds it — and a service catching the error kept it for good."""
    forged, exp = _forged(tmp_path, _set("augmentation_batch", batch="x"))
    monkeypatch.setattr(replay.engine, "WINDOW_DRAWS", 2)  # the query is read in several windows
    with Store.open(forged) as store:
        with pytest.raises(CannotReplayError, match="cannot be re-executed") as caught:
            replay_run(store, exp, data_dir=tmp_path / "data")
        assert caught.value.__traceback__ is not None  # the error, and its frames, still live
        assert store.engine.pool.checkedout() == 0
