"""The PyTorch integration: recorded sampler, worker seeding, transforms and the recorded
DataLoader — bit-identical across runs, num_workers, start methods and persistent workers, and
certified by replay."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import torch_helpers  # noqa: E402 - registers the test transforms
from conftest import ROOT, readme_python_block, run_cli  # noqa: E402
from ledger.errors import BadInputError, CannotReplayError  # noqa: E402
from ledger.events import decode_body  # noqa: E402
from ledger.experiment import ExperimentManager, state_digest  # noqa: E402
from ledger.integrations.torch import (RecordedDataLoader, RecordedSampler,  # noqa: E402
                                       RecordedTransform, SeedWorkers, manual_seed,
                                       path_generator, recorded_dataloader, state_arrays,
                                       torch_generator)
from ledger.integrations.transforms import _registry, register_transform  # noqa: E402
from ledger.sampling import epoch_order  # noqa: E402
from ledger.seeds import derive_bytes  # noqa: E402
from ledger.verify import verify  # noqa: E402
from ledger.worker_seeding import (expected_state_digest_at, seed_process_at,  # noqa: E402
                                   states_digest)
from replay.diff import diff_runs  # noqa: E402
from replay.engine import replay_run  # noqa: E402

SEED = 1234


def events(manager: ExperimentManager, exp: str) -> list[dict]:
    return [decode_body(body) for _s, _q, _k, body in manager.store.iter_run_bodies(exp)]


def record(url: str, tmp_path: Path, *, epochs: int = 2, seed: int = SEED, **options: object
           ) -> tuple[str, list[str]]:
    """Record one run of a RecordedDataLoader; return its id and the digest of each epoch."""
    options.setdefault("transform", RecordedTransform("jitter", std=0.5))
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("torch-loader", seed=seed) as exp:
            dataset = exp.register_dataset("fraud", *torch_helpers.fraud_arrays(200))
            loader = RecordedDataLoader(exp, dataset, 16, **options)
            digests = torch_helpers.batches_digest(loader, epochs)
        return exp.id, digests


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


# -- the sampler ---------------------------------------------------------------------------------

def test_each_epoch_is_the_permutation_of_its_derived_path(url: str) -> None:
    with ExperimentManager(url) as manager, manager.create_experiment("s", seed=SEED) as exp:
        sampler = RecordedSampler(100, exp)
        first, second = list(sampler), list(sampler)  # each pass starts the next epoch
        assert first == epoch_order(SEED, 0, 100, True).tolist()
        assert second == epoch_order(SEED, 1, 100, True).tolist() and first != second
        sampler.set_epoch(0)
        assert list(sampler) == first and sampler.epoch == 0
    resets = [e for e in events(manager, exp.id) if e["kind"] == "epoch_reset"]
    assert [e["path"] for e in resets] == [["epoch", 0, "shuffle"], ["epoch", 1, "shuffle"]]
    assert resets[0]["seed"] == derive_bytes(SEED, ("epoch", 0, "shuffle"))


def test_a_loader_made_afresh_each_epoch_is_refused_unless_set_epoch_chose(
        url: str, tmp_path: Path) -> None:
    """A new loader per epoch would start at epoch 0 each time — the bug report's repeated
    order, which the ledger (a draw recorded once) would not show: refused, naming the fix.
    A new loader told its epoch with set_epoch goes on; so does one in an attached rank."""
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        with manager.create_experiment("fresh", seed=SEED) as exp:
            dataset = exp.register_dataset("fraud", *torch_helpers.fraud_arrays(64))
            first = [y.tolist() for _x, y in RecordedDataLoader(exp, dataset, 16)]
            again = RecordedDataLoader(exp, dataset, 16)
            with pytest.raises(BadInputError, match="already drew epoch 0: it would repeat"):
                list(again)
            chosen = RecordedDataLoader(exp, dataset, 16)
            chosen.set_epoch(1)
            second = [y.tolist() for _x, y in chosen]
            assert second != first and len(second) == len(first)
            with pytest.raises(BadInputError, match="set_epoch"):
                list(RecordedSampler(dataset, exp))
    resets = [e["path"] for e in events(manager, exp.id) if e["kind"] == "epoch_reset"]
    assert resets == [["epoch", 0, "shuffle"], ["epoch", 1, "shuffle"]]


def test_a_resumed_run_refuses_a_fresh_loader_repeating_an_epoch_the_lost_attempt_drew(
        url: str, tmp_path: Path) -> None:
    """In a resumed run the first loader may start over at epoch 0 (redoing the lost attempt's
    epochs); once one has started, a loader made afresh starting at epoch 0 again is refused, as
    in any run — it used to pass, the lost attempt rather than this process having drawn epoch
    0, silently repeating that order. A loader told its epoch with set_epoch still goes on."""
    with ExperimentManager(url, data_dir=tmp_path / "data") as manager:
        exp = manager.create_experiment("resumed-loader", seed=SEED)
        arrays = torch_helpers.fraud_arrays(64)
        dataset = exp.register_dataset("fraud", *arrays)
        loader = RecordedDataLoader(exp, dataset, 16)
        lost = [[y.tolist() for _x, y in loader] for _epoch in range(3)]
        exp.suspend()
        resumed = manager.resume_experiment(exp.id)
        dataset = resumed.register_dataset("fraud", *arrays)
        chosen = RecordedDataLoader(resumed, dataset, 16)
        chosen.set_epoch(2)
        assert [y.tolist() for _x, y in chosen] == lost[2]
        with pytest.raises(BadInputError, match="already drew epoch 0: it would repeat"):
            list(RecordedDataLoader(resumed, dataset, 16))
        resumed.suspend()
        resumed = manager.resume_experiment(exp.id)
        dataset = resumed.register_dataset("fraud", *arrays)
        over = RecordedDataLoader(resumed, dataset, 16)
        assert [y.tolist() for _x, y in over] == lost[0]  # the first loader starts over
        assert [y.tolist() for _x, y in over] == lost[1]  # and goes on
        resumed.close()
        assert verify(manager.store).ok


def test_set_epoch_chooses_only_the_next_pass(url: str, tmp_path: Path) -> None:
    """A second loader told set_epoch(0) redoes epoch 0 (the same batches, recorded once);
    its next pass starts epoch 1 by itself, which the first loader drew: refused."""
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("chosen", seed=SEED) as exp:
            dataset = exp.register_dataset("fraud", *torch_helpers.fraud_arrays(64))
            first = RecordedDataLoader(exp, dataset, 16)
            epochs = [[y.tolist() for _x, y in first] for _epoch in range(2)]
            again = RecordedDataLoader(exp, dataset, 16)
            again.set_epoch(0)
            assert [y.tolist() for _x, y in again] == epochs[0]
            with pytest.raises(BadInputError, match="already drew epoch 1: it would repeat"):
                list(again)
    resets = [e["path"] for e in events(manager, exp.id) if e["kind"] == "epoch_reset"]
    assert resets == [["epoch", 0, "shuffle"], ["epoch", 1, "shuffle"]]


def test_an_iterator_never_started_starts_no_epoch() -> None:
    sampler = RecordedSampler(10, seed=SEED)
    iter(sampler)
    iter(sampler)  # what a DataLoader does when it builds a multi-process iterator
    assert list(sampler) == epoch_order(SEED, 0, 10, True).tolist()


@pytest.mark.parametrize("length", [1, 7, 10, 33])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shares_are_those_of_distributed_sampler(length: int, replicas: int,
                                                 drop_last: bool) -> None:
    data = list(range(length))
    for rank in range(replicas):
        theirs = torch.utils.data.DistributedSampler(data, num_replicas=replicas, rank=rank,
                                                     shuffle=False, drop_last=drop_last)
        ours = RecordedSampler(data, num_replicas=replicas, rank=rank, shuffle=False,
                               drop_last=drop_last, seed=SEED)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


def test_ranks_share_one_permutation_and_only_rank_0_records_it(url: str) -> None:
    with ExperimentManager(url) as manager, manager.create_experiment("s", seed=SEED) as exp:
        shares = [list(RecordedSampler(50, exp, num_replicas=2, rank=rank)) for rank in (0, 1)]
    order = epoch_order(SEED, 0, 50, True).tolist()
    assert shares == [order[0::2], order[1::2]]
    assert [e["kind"] for e in events(manager, exp.id)].count("epoch_reset") == 1


def test_sampler_refuses_bad_arguments(url: str) -> None:
    with pytest.raises(BadInputError, match="root seed"):
        RecordedSampler(10)
    with pytest.raises(BadInputError, match="rank"):
        RecordedSampler(10, seed=1, num_replicas=2, rank=2)
    with ExperimentManager(url) as manager, manager.create_experiment("s", seed=SEED) as exp:
        with pytest.raises(BadInputError, match="root seed"):
            RecordedSampler(10, exp, seed=SEED + 1)


def test_without_a_process_group_rank_defaults_to_0_and_num_replicas_to_1() -> None:
    order = epoch_order(SEED, 0, 10, True).tolist()
    assert list(RecordedSampler(10, seed=SEED, num_replicas=3)) == order[0::3]
    assert list(RecordedSampler(10, seed=SEED, rank=0)) == order


def test_epoch_is_minus_1_before_the_first_pass_then_the_epoch_of_the_latest() -> None:
    sampler = RecordedSampler(10, seed=SEED)
    assert sampler.epoch == -1
    list(sampler)
    assert sampler.epoch == 0
    sampler.set_epoch(5)  # chooses the next pass, which has not started
    assert sampler.epoch == 0
    list(sampler)
    assert sampler.epoch == 5


def test_indices_of_an_epoch_are_what_its_pass_yields() -> None:
    sampler = RecordedSampler(11, seed=SEED, num_replicas=2, rank=1, drop_last=True)
    assert len(sampler) == 5 and sampler.indices(0).tolist() == list(sampler)


@pytest.mark.parametrize(("replicas", "rank", "match"), [
    (0, 0, "got num_replicas=0, but must be an int >= 1"),
    (True, 0, "got num_replicas=True, but must be an int >= 1"),
    (2, -1, "got rank=-1, but must be an int >= 0"),
    (2, False, "got rank=False, but must be an int >= 0"),
    (2.0, 0, "got num_replicas=2.0")])
def test_replicas_and_rank_must_be_ints_in_range(replicas: object, rank: object,
                                                 match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        RecordedSampler(10, seed=SEED, num_replicas=replicas, rank=rank)  # type: ignore[arg-type]


# -- workers ---------------------------------------------------------------------------------------

def test_seed_workers_seeds_every_global_rng_from_the_worker_path() -> None:
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        SeedWorkers(SEED, num_replicas=2, rank=1)(3)
        states = states_digest(random.getstate(), np.random.get_state(legacy=True),
                               torch.random.get_rng_state().numpy())
        assert states == expected_state_digest_at(SEED, ("rank", 1, "worker", 3))
        assert SeedWorkers(SEED).path(3) == ("worker", 3)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


def test_manual_seed_and_torch_generator_seed_torch_as_a_worker_is_seeded_at_the_path(
        url: str) -> None:
    """One derived seed gives torch one seed, whoever seeds it: manual_seed and torch_generator
    at a path seed torch as seed_process_at (a DataLoader worker's seeding) does there."""
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        with ExperimentManager(url) as manager, manager.create_experiment("s", seed=SEED) as exp:
            returned = manual_seed(exp, "model", "init")
            drawn = torch.rand(4)
            generator = torch_generator(exp, "data", "noise")
        seed_process_at(SEED, ("model", "init"))
        assert torch.initial_seed() == returned and torch.equal(torch.rand(4), drawn)
        seed_process_at(SEED, ("data", "noise"))
        assert generator.initial_seed() == torch.initial_seed()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


def test_path_generator_is_the_generator_a_transform_gets_for_its_sample() -> None:
    seen: list[int] = []

    def spy(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(generator.initial_seed())
        return x

    register_transform("test_generator_spy", 1)(spy)
    batch_path = ("epoch", 2, "batch", 3, "augment")
    RecordedTransform("test_generator_spy").apply(torch.zeros(2, 3), SEED, batch_path)
    assert seen == [path_generator(SEED, (*batch_path, position)).initial_seed()
                    for position in (0, 1)]
    assert seen[0] != seen[1]


def test_a_global_rng_transform_finds_torch_seeded_from_its_sample_s_path() -> None:
    seen: list[int] = []

    def spy(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(torch.initial_seed())
        return x

    register_transform("test_global_spy", 1, global_rng=True)(spy)
    batch_path = ("epoch", 0, "batch", 1, "augment")
    RecordedTransform("test_global_spy").apply(torch.zeros(2, 3), SEED, batch_path)
    assert seen == [path_generator(SEED, (*batch_path, position)).initial_seed()
                    for position in (0, 1)]


def test_per_sample_calls_a_transform_on_each_sample_and_per_batch_once_on_the_batch() -> None:
    shapes: list[tuple] = []

    def spy(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return x

    register_transform("test_shape_spy", 1)(spy)
    batch = torch.zeros(3, 2)
    for per in ("sample", "batch"):
        spec = RecordedTransform("test_shape_spy", per=per).spec
        rebuilt = RecordedTransform.from_spec(spec)  # as replay rebuilds it
        assert rebuilt.spec == spec
        rebuilt.apply(batch, SEED, ("epoch", 0, "batch", 0, "augment"))
    assert shapes == [(2,), (2,), (2,), (3, 2)]


# -- the recorded DataLoader -----------------------------------------------------------------------

def test_batches_and_events_are_the_same_for_0_and_2_workers(url: str, tmp_path: Path) -> None:
    single, single_digests = record(url, tmp_path, num_workers=0)
    forked, forked_digests = record(url, tmp_path, num_workers=2,
                                    multiprocessing_context="fork")
    assert single_digests == forked_digests and single_digests[0] != single_digests[1]
    with ExperimentManager(url) as manager:
        report = diff_runs(manager.store, single, forked)
        assert report.identical, report.first_divergence
        kinds = [e["kind"] for e in events(manager, forked)]
        assert kinds.count("worker_spawned") == 2 and kinds.count("augmentation_batch") == 26
        spawned = [e for e in events(manager, forked) if e["kind"] == "worker_spawned"]
        assert [e["path"] for e in spawned] == [["worker", 0], ["worker", 1]]
        assert all(e["output"] == expected_state_digest_at(SEED, e["path"]) for e in spawned)
        assert verify(manager.store).ok


def test_spawn_and_persistent_workers_give_the_same_batches(url: str, tmp_path: Path) -> None:
    _exp, reference = record(url, tmp_path, epochs=3, num_workers=0)
    spawned, digests = record(url, tmp_path, epochs=3, num_workers=2,
                              multiprocessing_context="spawn", persistent_workers=True)
    assert digests == reference
    with ExperimentManager(url) as manager:
        spawned_events = [e for e in events(manager, spawned) if e["kind"] == "worker_spawned"]
        assert {e["params"]["start_method"] for e in spawned_events} == {"spawn"}
        assert all(e["params"]["persistent"] for e in spawned_events)


def test_the_same_seed_gives_the_same_run_and_another_seed_another(url: str,
                                                                   tmp_path: Path) -> None:
    first, digests = record(url, tmp_path)
    second, again = record(url, tmp_path)
    other, different = record(url, tmp_path, seed=SEED + 1)
    assert digests == again and digests[0] != different[0]
    with ExperimentManager(url) as manager:
        assert diff_runs(manager.store, first, second).identical
        assert not diff_runs(manager.store, first, other).identical


@pytest.mark.parametrize("transform", [RecordedTransform("feature_dropout", per="batch", p=0.3),
                                       RecordedTransform("sign_flip", p=0.5), None],
                         ids=["per-batch", "global-rng", "none"])
def test_replay_certifies_a_recorded_loader(url: str, tmp_path: Path, transform: object) -> None:
    exp, _digests = record(url, tmp_path, num_workers=2, transform=transform)
    with ExperimentManager(url) as manager:
        report = replay_run(manager.store, exp, data_dir=tmp_path / "data")
    assert report.certified, report.first_divergence
    expected = {"augmentation_batch": 26} if transform is not None else {}
    assert dict(report.compared) == {"dataset_registered": 1, "epoch_reset": 2,
                                     "worker_spawned": 2, **expected}


def test_a_global_rng_transform_leaves_the_global_rng_alone(url: str, tmp_path: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    record(url, tmp_path, transform=RecordedTransform("sign_flip"))
    assert torch.equal(torch.rand(3), expected)


def test_replay_rebuilds_each_loader_s_own_transform(url: str, tmp_path: Path) -> None:
    """Two loaders of one run with different transforms (one a rank-1 share): replay re-makes
    each batch with the transform its event names."""
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("two", seed=SEED) as exp:
            dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(64))
            list(RecordedDataLoader(exp, dataset, 16, transform=RecordedTransform("jitter")))
            list(RecordedDataLoader(exp, dataset, 16, num_replicas=2, rank=1,
                                    transform=RecordedTransform("feature_dropout", per="batch")))
        report = replay_run(manager.store, exp.id, data_dir=tmp_path)
    assert report.certified, report.first_divergence
    assert report.compared["augmentation_batch"] == 4 + 2


def _forge_batches(url: str, tmp_path: Path, exp: str, **fields: object) -> str:
    """A copy of run ``exp`` whose first augmentation_batch has ``fields`` (``path`` or
    params) replaced, re-chained so that it verifies; return its URL."""
    from forgery import copy_run
    from ledger.store import Store

    forged = f"sqlite:///{tmp_path / 'forged.db'}"
    done: list[bool] = []

    def change(body: dict) -> None:
        if body["kind"] == "augmentation_batch" and not done:
            done.append(True)
            for name, value in fields.items():
                (body if name == "path" else body["params"])[name] = value

    with Store.open(url) as source, Store.open(forged, create=True) as target:
        copy_run(source, exp, target, change)
    return forged


@pytest.mark.parametrize(("fields", "match"), [
    ({"sampler": "pad"}, "malformed sampler params 'pad'"),
    ({"sampler": {"num_replicas": 2, "rank": 2, "even_shares": "pad"}},
     "malformed sampler params: got rank 2, but must be below num_replicas=2"),
    ({"path": ["rank", 0, "epoch", 0, "batch", 0, "augment"]},
     r"is recorded at path \['rank', 0, 'epoch', 0, 'batch', 0, 'augment'\]")],
    ids=["sampler-text", "sampler-rank", "path"])
def test_replay_refuses_a_torch_batch_with_forged_params(url: str, tmp_path: Path,
                                                         fields: dict, match: str) -> None:
    exp, _digests = record(url, tmp_path, epochs=1)
    forged = _forge_batches(url, tmp_path, exp, **fields)
    with ExperimentManager(forged) as manager:
        assert verify(manager.store, exp).ok
        with pytest.raises(CannotReplayError, match=match):
            replay_run(manager.store, exp, data_dir=tmp_path / "data")


def test_replay_names_a_transform_that_ignores_its_generator(url: str, tmp_path: Path) -> None:
    exp, _digests = record(url, tmp_path, transform=RecordedTransform("leaky_noise"))
    with ExperimentManager(url) as manager:
        report = replay_run(manager.store, exp, data_dir=tmp_path / "data")
    divergence = report.first_divergence
    assert divergence is not None and divergence.kind == "augmentation_batch"
    assert divergence.path == ["epoch", 0, "batch", 0, "augment"]
    assert divergence.cause.value == "same seed, different output"


def test_ledger_replay_runs_a_registered_transform_only_when_trusted(url: str,
                                                                     tmp_path: Path) -> None:
    exp, _digests = record(url, tmp_path)
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "LEDGER_DATA_DIR": str(tmp_path / "data")}
    refused = run_cli("--db", url, "replay", exp, "--no-record", env=env)
    assert refused.returncode == 3 and "transform 'jitter' version 1" in refused.stderr
    certified = run_cli("--db", url, "replay", exp, "--trust", "torch_helpers", env=env)
    assert certified.returncode == 0, certified.stderr
    assert "CERTIFIED" in certified.stdout


def test_a_dataset_without_labels_yields_features(url: str, tmp_path: Path) -> None:
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("x", seed=SEED) as exp:
            dataset = exp.register_dataset("x", np.arange(40, dtype=np.float32).reshape(20, 2))
            batches = list(RecordedDataLoader(exp, dataset, 8, shuffle=False))
    assert [tuple(b.shape) for b in batches] == [(8, 2), (8, 2), (4, 2)]
    assert torch.equal(torch.cat(batches), torch.from_numpy(dataset.features))


def test_the_one_call_helper_registers_a_torch_dataset(url: str, tmp_path: Path) -> None:
    features, labels = torch_helpers.fraud_arrays(64)
    data = torch.utils.data.TensorDataset(torch.from_numpy(features), torch.from_numpy(labels))
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("helper", seed=SEED) as exp:
            loader = recorded_dataloader(exp, data, 16, name="fraud", transform="jitter",
                                         drop_last=True)
            assert len(loader) == 4 and len(list(loader)) == 4
        report = replay_run(manager.store, exp.id, data_dir=tmp_path)
    assert report.certified and report.compared["augmentation_batch"] == 4


def test_the_one_call_helper_registers_a_pair_of_arrays(url: str, tmp_path: Path) -> None:
    features, labels = torch_helpers.fraud_arrays(64)
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("arrays", seed=SEED) as exp:
            loader = recorded_dataloader(exp, (features, labels), 16, name="fraud",
                                         shuffle=False)
            x, y = next(iter(loader))
    assert loader.ledger_dataset.name == "fraud"
    assert torch.equal(x, torch.from_numpy(features[:16]))
    assert torch.equal(y, torch.from_numpy(labels[:16]))


def test_record_false_gives_the_same_batches_and_records_none(url: str, tmp_path: Path) -> None:
    _exp, recorded = record(url, tmp_path)
    quiet, unrecorded = record(url, tmp_path, record=False)
    assert unrecorded == recorded
    with ExperimentManager(url) as manager:
        assert set(manager.store.counts_by_kind(quiet)) == {
            "experiment_created", "dataset_registered", "run_completed"}


@pytest.mark.parametrize(("options", "match"), [
    ({"transform": "no_such_transform"}, "unknown transform"),
    ({"transform": lambda x: x}, "RecordedTransform"),
    ({"collate_fn": None}, "sets them itself"),
    ({"in_order": False}, "in order"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 40, "drop_last": True}, "every epoch would be empty"),
    ({"batch_size": 2**64}, r"batch_size=18446744073709551616, but must be at most 2\*\*63"),
    ({"prefetch_factor": 2**63, "num_workers": 1}, "prefetch_factor=9223372036854775808"),
])
def test_bad_loader_options_are_refused(url: str, tmp_path: Path, options: dict,
                                        match: str) -> None:
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("bad", seed=SEED) as exp:
            dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(32))
            batch_size = options.pop("batch_size", 8)
            with pytest.raises(BadInputError, match=match):
                RecordedDataLoader(exp, dataset, batch_size, **options)


def test_an_unregistered_dataset_is_refused(url: str, tmp_path: Path) -> None:
    from ledger.datasets import in_memory_dataset

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("bad", seed=SEED) as exp:
            with pytest.raises(BadInputError, match="not registered"):
                RecordedDataLoader(exp, in_memory_dataset("d", np.zeros((4, 2))), 2)


def test_a_transform_is_registered_once_per_name_and_version() -> None:
    with pytest.raises(BadInputError, match="already registered"):
        register_transform("jitter", 1)(lambda x, generator: x)
    with pytest.raises(BadInputError, match=r"\(x, generator"):
        register_transform("odd", 1)(lambda x: x)
    with pytest.raises(BadInputError, match="unknown parameter"):
        RecordedTransform("jitter", sigma=1.0)
    with pytest.raises(BadInputError, match="per="):
        RecordedTransform("jitter", per="row")
    assert ("jitter", 1) in _registry


# -- checkpoints -------------------------------------------------------------------------------------

def test_log_checkpoint_takes_a_state_dict(url: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with ExperimentManager(url) as manager, manager.create_experiment("ckpt", seed=SEED) as exp:
        event = exp.log_checkpoint("model", model.state_dict(), epoch=0)
    arrays = state_arrays(model.state_dict())
    assert event.output == state_digest(arrays)
    assert event.params["arrays"]["1.num_batches_tracked"] == {"dtype": "<i8", "shape": []}
    widened = state_arrays({"w": torch.ones(2, dtype=torch.bfloat16, requires_grad=True)})
    assert widened["w"].dtype == np.float32


# -- the README ------------------------------------------------------------------------------------

def test_the_readme_pytorch_example_runs_and_replays(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_python_block("## PyTorch and many machines")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_DATA_DIR", raising=False)
    monkeypatch.delenv("LEDGER_URL", raising=False)
    threads = torch.get_num_threads()
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    finally:
        torch.set_num_threads(threads)
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}") as manager:
        [row] = manager.store.experiments()
        assert row.status == "ok"
        report = replay_run(manager.store, row.exp)
    assert report.certified, report.first_divergence
    assert report.compared["augmentation_batch"] == 3 * 2048 // 64



def test_the_readme_distributed_example_runs_as_one_rank(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's distributed block, run as written in a one-rank gloo job (torchrun's
    environment set by hand): rank 0 records the run to ``$LEDGER_URL``, which completes."""
    import re
    import socket

    import torch.distributed as dist

    first = readme_python_block("## PyTorch and many machines")
    imports_and_transform = first[:re.search(r"@register_transform.*?\n\n\n", first,
                                             re.DOTALL).end()]
    exec(compile(imports_and_transform, "README.md", "exec"),  # noqa: S102 - as the block above
         {"__name__": "readme_example"})  # registers the transform the distributed block uses
    code = readme_python_block("### Distributed ranks", "distributed_experiment")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "1", "LEDGER_URL": ledger_url,
                        "LEDGER_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    features, labels = torch_helpers.fraud_arrays(256)
    namespace = {"torch": torch, "features": features, "labels": labels,
                 "make_model": lambda: torch.nn.Linear(features.shape[1], 2)}
    try:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    with ExperimentManager(ledger_url) as manager:
        [row] = manager.store.experiments()
        assert (row.name, row.status) == ("fraud-ddp", "ok")
        assert len(namespace["loader"]) == 256 // 64

# -- distributed_experiment without a process group ---------------------------------------------------

def test_without_a_process_group_distributed_experiment_is_one_experiment(url: str,
                                                                        tmp_path: Path) -> None:
    from ledger.experiment import Experiment
    from ledger.integrations.torch import distributed_experiment, register_dataset

    with distributed_experiment("solo", url=url, seed=SEED, data_dir=tmp_path) as run:
        assert isinstance(run, Experiment)
        data = register_dataset(run, "d", *torch_helpers.fraud_arrays(64))
        assert len(list(RecordedDataLoader(run, data, 16))) == 4
    assert run.status == "ok"
    with pytest.raises(RuntimeError, match="boom"):
        with distributed_experiment("solo", url=url, seed=SEED) as failed:
            raise RuntimeError("boom")
    assert failed.status == "failed"
    with ExperimentManager(url) as manager:
        assert {row.status for row in manager.store.experiments()} == {"ok", "failed"}
        assert verify(manager.store).ok
        completed = manager.store.first_event_body(failed.id, "run_completed")["params"]
    assert completed["error"] == "RuntimeError: boom"


def recording_run(manager: ExperimentManager, exp: object, attached: bool
                  ) -> tuple[object, object]:
    """(run, dataset) to record a loader into: the experiment itself, or a rank-1 AttachedRun
    of it with the dataset registered there too."""
    from ledger.integrations.runs import AttachedRun

    dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(100))
    exp.flush()
    if not attached:
        return exp, dataset
    run = AttachedRun(manager.store, exp.id, "rank-1")
    return run, run.register_dataset("d", *torch_helpers.fraud_arrays(100))


def test_a_model_seeded_on_every_rank_is_certified(url: str, tmp_path: Path) -> None:
    """Every rank of a DDP job seeding its model from one path records the same user draw in its
    own stream: one draw, certified; another seed or output at the path in a stream is not."""
    from ledger.integrations.runs import AttachedRun

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        runs = {}
        for name, forged in (("honest", False), ("forged", True)):
            with manager.create_experiment(name, seed=SEED) as exp:
                with AttachedRun(manager.store, exp.id, "rank-1") as rank_1:
                    manual_seed(exp, "model", "init")
                    if forged:
                        rank_1.record_draw("user_draw", ("model", "init"), seed=bytes(16),
                                           params={"generator": "torch.manual_seed"})
                    else:
                        manual_seed(rank_1, "model", "init")
            runs[name] = exp.id
        assert replay_run(manager.store, runs["honest"], data_dir=tmp_path).certified
        with pytest.raises(CannotReplayError, match=r"user_draw at path \['model', 'init'\] "
                                                    r"is recorded more than once"):
            replay_run(manager.store, runs["forged"], data_dir=tmp_path)


def test_replay_certifies_the_padded_shares_of_two_ranks(url: str, tmp_path: Path) -> None:
    """Two ranks' loaders over 101 samples (rank 0 in the experiment, rank 1 attached): each
    rank's share is padded to 51 as DistributedSampler pads it, so rank 1's last batch holds
    3 samples, and replay re-makes every batch of both ranks."""
    from ledger.integrations.runs import AttachedRun

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("ranks", seed=SEED) as exp:
            exp.register_dataset("d", *torch_helpers.fraud_arrays(101))
            exp.flush()
            with AttachedRun(manager.store, exp.id, "rank-1") as rank_1:
                shares = []
                for rank, run in enumerate((exp, rank_1)):
                    data = run.register_dataset("d", *torch_helpers.fraud_arrays(101))
                    loader = RecordedDataLoader(run, data, 16, num_replicas=2, rank=rank,
                                                transform=RecordedTransform("jitter"))
                    shares.append([len(y) for _x, y in loader])
        report = replay_run(manager.store, exp.id, data_dir=tmp_path)
    assert shares == [[16, 16, 16, 3], [16, 16, 16, 3]]
    assert report.certified, report.first_divergence
    assert report.compared["augmentation_batch"] == 8


# -- event order --------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("attached", [False, True], ids=["experiment", "attached-run"])
def test_events_follow_the_order_batches_were_handed_out(url: str, tmp_path: Path,
                                                         workers: int, attached: bool) -> None:
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("order", seed=SEED) as exp:
            run, dataset = recording_run(manager, exp, attached)
            loader = RecordedDataLoader(run, dataset, 10, num_workers=workers,
                                        transform=RecordedTransform("jitter"),
                                        num_replicas=2 if attached else 1,
                                        rank=1 if attached else 0)
            for step, _batch in enumerate(loader):
                run.record("user_note", path=("note", step), params={"step": step})
            iterator = iter(loader)
            next(iterator)  # a pass left in the middle: its batches are recorded all the same
            next(iterator)
            if attached:
                run.close()  # records what is pending
        recorded = [(e["kind"], e["params"].get("batch", e["params"].get("step")))
                    for e in events(manager, exp.id)
                    if e["kind"] in ("augmentation_batch", "user_note")]
        steps = 5 if attached else 10
        assert recorded[:2 * steps] == [item for step in range(steps) for item in (
            ("augmentation_batch", step), ("user_note", step))]
        assert recorded[2 * steps:] == [("augmentation_batch", 0), ("augmentation_batch", 1)]
        assert verify(manager.store, exp.id).ok


# -- the fast recording path ------------------------------------------------------------------------

@pytest.mark.parametrize("attached", [False, True], ids=["experiment", "attached-run"])
def test_batch_events_take_the_fast_path_with_normalised_params(
        url: str, tmp_path: Path, attached: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """record_normalised_draw writes params as given: the loader's must be exactly what
    normalise() makes of the params it always recorded (key order included), so the fast path
    writes the bytes the validating one did; every body stays canonical and the run verifies."""
    from ledger.canonical import canonical, normalise, pack_normalised
    from ledger.integrations.sharding import INTEGRATION

    transform = RecordedTransform("jitter", std=0.2)
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("fast", seed=SEED) as exp:
            run, dataset = recording_run(manager, exp, attached)
            params: list[dict] = []
            fast = run.record_normalised_draw

            def spy(kind: str, path: tuple, **fields: object) -> bool:
                params.append(fields["params"])  # type: ignore[arg-type]
                return fast(kind, path, **fields)  # type: ignore[arg-type]

            monkeypatch.setattr(run, "record_normalised_draw", spy)
            replicas, rank = (2, 1) if attached else (1, 0)
            loader = RecordedDataLoader(run, dataset, 16, transform=transform,
                                        num_replicas=replicas, rank=rank)
            for _batch in loader:
                pass
            if attached:
                run.close()
        assert len(params) == len(loader)
        for batch, recorded in enumerate(params):
            assert pack_normalised(recorded) == canonical(recorded)
            assert recorded == normalise({
                "epoch": 0, "batch": batch, "rows": recorded["rows"],
                "indices_digest": recorded["indices_digest"], "batch_size": 16,
                "drop_last": False, "shuffle": True, "dataset": "d",
                "dataset_digest": dataset.digest, "transform": transform.spec,
                "sampler": {"num_replicas": replicas, "rank": rank, "even_shares": "pad"},
                "loader": INTEGRATION})
        bodies = [body for _s, _q, _k, body in manager.store.iter_run_bodies(exp.id)]
        assert all(canonical(decode_body(body)) == body for body in bodies)
        assert verify(manager.store, exp.id).ok


# -- what is recorded ------------------------------------------------------------------------------

def test_the_recorded_params_describe_the_loader(url: str, tmp_path: Path) -> None:
    from ledger.batches import batch_input_digest, fast_array_digest
    from ledger.integrations.sharding import INTEGRATION

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("params", seed=SEED) as exp:
            dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(100))
            list(RecordedDataLoader(exp, dataset, 16, drop_last=True, transform="jitter"))
    recorded = events(manager, exp.id)
    [reset] = [e["params"] for e in recorded if e["kind"] == "epoch_reset"]
    batches = [e["params"] for e in recorded if e["kind"] == "augmentation_batch"]
    order = epoch_order(SEED, 0, 100, True)
    assert [e["input"] for e in recorded if e["kind"] == "augmentation_batch"] == [
        batch_input_digest(dataset.digest, fast_array_digest(order[b * 16:(b + 1) * 16]))
        for b in range(6)]
    assert reset == {"epoch": 0, "length": 100, "shuffle": True, "num_replicas": 1,
                     "even_shares": "pad", "sampler": INTEGRATION, "batch_size": 16,
                     "drop_last": True, "batches": 6, "dataset": "d",
                     "dataset_digest": dataset.digest}
    assert [(b["batch"], b["rows"], b["drop_last"]) for b in batches] == [
        (batch, 16, True) for batch in range(6)]


def test_a_user_worker_init_fn_runs_in_each_worker_after_the_seeding(url: str,
                                                                    tmp_path: Path) -> None:
    def note(worker: int) -> None:
        (tmp_path / f"worker-{worker}").write_text(repr(random.random()))

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("init", seed=SEED) as exp:
            dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(64))
            list(RecordedDataLoader(exp, dataset, 16, num_workers=2, worker_init_fn=note,
                                    multiprocessing_context="fork"))
    for worker in (0, 1):
        seed = derive_bytes(SEED, ("worker", worker))
        expected = random.Random(int.from_bytes(seed, "big")).random()
        assert (tmp_path / f"worker-{worker}").read_text() == repr(expected)
    spawned = [e["params"] for e in events(manager, exp.id) if e["kind"] == "worker_spawned"]
    assert len(spawned) == 2 and not any("rank" in params for params in spawned)


def test_workers_of_rank_1_are_seeded_and_recorded_at_its_paths(url: str,
                                                               tmp_path: Path) -> None:
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("workers", seed=SEED) as exp:
            run, dataset = recording_run(manager, exp, attached=True)
            list(RecordedDataLoader(run, dataset, 10, num_workers=2, num_replicas=2, rank=1,
                                    multiprocessing_context="fork"))
            run.close()
        spawned = [e for e in events(manager, exp.id) if e["kind"] == "worker_spawned"]
    assert [e["path"] for e in spawned] == [["rank", 1, "worker", 0], ["rank", 1, "worker", 1]]
    assert all(e["output"] == expected_state_digest_at(SEED, e["path"]) for e in spawned)
    assert all((e["params"]["rank"], e["params"]["num_replicas"]) == (1, 2) for e in spawned)
    pids = {e["meta"]["pid"] for e in spawned}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_worker_whose_rng_states_are_not_its_seed_s_is_refused(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose seeding did not take (here: reports other states) stops the pass."""
    import ledger.integrations.torch as integration
    from ledger.integrations import torch_workers

    monkeypatch.setattr(torch_workers, "seed_process_at", lambda root, path: bytes(32))
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("unseeded", seed=SEED) as exp:
            dataset = exp.register_dataset("d", *torch_helpers.fraud_arrays(64))
            loader = RecordedDataLoader(exp, dataset, 16, num_workers=1,
                                        multiprocessing_context="fork")
            with pytest.raises(integration.WorkerSeedingError,
                               match="DataLoader worker 0 reports RNG states 0000000000000000"):
                list(loader)
    assert "worker_spawned" not in [e["kind"] for e in events(manager, exp.id)]


def test_a_pass_over_a_loader_dropped_right_after_is_recorded(url: str, tmp_path: Path) -> None:
    import gc

    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("dropped", seed=SEED) as exp:
            run, dataset = recording_run(manager, exp, attached=True)
            for _batch in RecordedDataLoader(run, dataset, 10, num_replicas=2, rank=1,
                                             transform=RecordedTransform("jitter")):
                pass
            gc.collect()
            run.close()
    assert [e["kind"] for e in events(manager, exp.id)].count("augmentation_batch") == 5


def test_record_false_needs_no_registered_dataset(url: str, tmp_path: Path) -> None:
    from ledger.datasets import in_memory_dataset

    data = in_memory_dataset("eval", np.arange(8, dtype=np.float32).reshape(4, 2))
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("eval", seed=SEED) as exp:
            batches = list(RecordedDataLoader(exp, data, 2, shuffle=False, record=False))
    assert torch.equal(torch.cat(batches), torch.from_numpy(data.features))
