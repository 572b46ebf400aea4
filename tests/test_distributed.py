"""torch.distributed: 2 ranks on localhost (gloo), each with a recorded DataLoader of 2 workers,
train one DDP model into one PostgreSQL ledger (``LEDGER_URL``); ``ledger replay`` certifies the
run and a rerun with the same seed is ``ledger diff``-identical."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import torch_helpers  # noqa: E402
from conftest import ROOT, run_cli  # noqa: E402
from ledger.events import decode_body  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.verify import verify  # noqa: E402
from ledger.worker_seeding import expected_state_digest_at  # noqa: E402

WORLD = 2
EPOCHS = 2
SEED = 77


def launch(folder: Path, name: str) -> tuple[str, str, list[float]]:
    """Run the 2-rank job once; return the experiment id, weights digest and rank 0's losses."""
    out = folder / name
    out.mkdir()
    torch.multiprocessing.spawn(
        torch_helpers.distributed_rank, nprocs=WORLD, join=True,
        args=(WORLD, str(out / "process-group"), None, str(folder / "data"), str(out), SEED,
              EPOCHS))
    exp, weights, *losses = (out / "result").read_text().split()
    return exp, weights, [float(loss) for loss in losses]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = os.environ.get("LEDGER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("LEDGER_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against")
    from conftest import _postgres_schema_url

    import sqlalchemy

    url, schema = _postgres_schema_url(base)
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    folder = tmp_path_factory.mktemp("distributed")
    saved = os.environ.get("LEDGER_URL")
    os.environ["LEDGER_URL"] = url  # what every machine of a real job is given
    try:
        yield {"url": url, "data": folder / "data", "first": launch(folder, "first"),
               "rerun": launch(folder, "rerun")}
    finally:
        if saved is None:
            os.environ.pop("LEDGER_URL", None)
        else:
            os.environ["LEDGER_URL"] = saved
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def bodies(url: str, exp: str) -> list[dict]:
    """The run's events (not the audit stream, where a replay records itself)."""
    with Store.open(url) as store:
        return [decode_body(body) for stream, _q, _k, body in store.iter_run_bodies(exp)
                if stream != "audit"]


def test_every_rank_records_its_own_stream_of_one_experiment(runs: dict) -> None:
    exp = runs["first"][0]
    events = bodies(runs["url"], exp)
    streams = {event["stream"] for event in events}
    assert streams == {"main", "rank-1"}
    batches_per_rank = 512 // WORLD // 32
    for rank, stream in enumerate(("main", "rank-1")):
        mine = [e for e in events if e["stream"] == stream]
        spawned = [e["path"] for e in mine if e["kind"] == "worker_spawned"]
        assert spawned == [["rank", rank, "worker", 0], ["rank", rank, "worker", 1]]
        assert all(e["output"] == expected_state_digest_at(SEED, e["path"])
                   for e in mine if e["kind"] == "worker_spawned")
        paths = [e["path"] for e in mine if e["kind"] == "augmentation_batch"]
        assert paths == [["rank", rank, "epoch", epoch, "batch", batch, "augment"]
                         for epoch in range(EPOCHS) for batch in range(batches_per_rank)]
    assert [e["path"] for e in events if e["kind"] == "epoch_reset"] == [
        ["epoch", epoch, "shuffle"] for epoch in range(EPOCHS)]  # once, by rank 0
    assert all(e["stream"] == "main" for e in events if e["kind"] == "epoch_reset")
    identities = [(e["kind"], *e["path"]) for e in events if e["path"]]
    assert len(identities) == len(set(identities))
    completed = events[-1]
    assert completed["kind"] == "run_completed" and completed["params"]["status"] == "ok"
    assert set(completed["params"]["streams"]) == {"main", "rank-1"}
    with Store.open(runs["url"]) as store:
        assert verify(store, exp).ok


def test_ledger_replay_certifies_the_distributed_run(runs: dict) -> None:
    env = {"LEDGER_URL": runs["url"], "LEDGER_DATA_DIR": str(runs["data"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = run_cli("replay", runs["first"][0], "--trust", "torch_helpers", "--json", env=env)
    assert result.returncode == 0, result.stderr
    certificate = json.loads(result.stdout)
    assert certificate["verdict"] == "certified"
    batches = EPOCHS * 512 // 32
    assert certificate["compared"] == {"augmentation_batch": batches, "dataset_registered": 1,
                                       "epoch_reset": EPOCHS, "user_draw": 1,
                                       "worker_spawned": 2 * WORLD}


def test_a_rerun_with_the_same_seed_is_diff_identical(runs: dict) -> None:
    first, rerun = runs["first"], runs["rerun"]
    assert first[0] != rerun[0]
    assert first[1:] == rerun[1:]  # the same weights and rank 0 loss curve
    env = {"LEDGER_URL": runs["url"]}
    result = run_cli("diff", first[0], rerun[0], "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["identical"] is True
