"""The bug report, one test per symptom — and the invariances that make the fixes hold.

Report: the same training job run twice with ``seed: 42`` on the same data gave AUC 0.923 and
0.891. Found: the seed only affected the creating process; ``reset()`` never reshuffled;
``DataAugmenter`` ignored its seed; worker processes inherited no seed state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.fraud.dataset import load_fraud_data
from examples.fraud.train import train
from ledger import DataAugmenter, ExperimentManager, TrainingDataIterator
from ledger.events import CHECKPOINT, METRIC, WORKER_SPAWNED
from ledger.worker_seeding import expected_state_digest
from replay.diff import diff_runs
from trainer_helpers import bodies, draws, indexed_data, noisy_data, run_epochs, same_batches


@pytest.fixture(scope="module")
def fraud() -> object:
    return load_fraud_data(4_000)


@pytest.fixture
def manager(tmp_path: Path) -> ExperimentManager:
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def outputs(manager: ExperimentManager, exp: str, kind: str) -> list[tuple]:
    return [(b["params"].get("name"), b["params"].get("epoch"), b["output"])
            for b in bodies(manager.store, exp) if b["kind"] == kind]


def test_a_same_seed_gives_identical_metrics_and_identical_event_digests(
        fraud: object, manager: ExperimentManager) -> None:
    first = train(fraud, manager, seed=42, workers=2, epochs=2)
    second = train(fraud, manager, seed=42, workers=2, epochs=2)
    assert first.aucs == second.aucs and first.losses == second.losses
    assert draws(manager.store, first.exp) == draws(manager.store, second.exp)
    assert outputs(manager, first.exp, METRIC) == outputs(manager, second.exp, METRIC)
    assert outputs(manager, first.exp, CHECKPOINT) == outputs(manager, second.exp, CHECKPOINT)
    assert diff_runs(manager.store, first.exp, second.exp).identical
    other = train(fraud, manager, seed=43, workers=2, epochs=2)
    assert other.aucs != first.aucs


def test_b_successive_epochs_see_different_orders() -> None:
    batches = TrainingDataIterator(indexed_data(300), 30, seed=42)
    orders = [np.concatenate([y for _x, y in batches]) for _epoch in range(3)]
    batches.reset()  # the call the report named: it must start a newly shuffled epoch
    orders.append(np.concatenate([y for _x, y in batches]))
    assert all(sorted(order.tolist()) == list(range(300)) for order in orders)
    assert len({order.tobytes() for order in orders}) == 4


def test_c_augmentation_honours_its_seed() -> None:
    batch = noisy_data(rows=64)[0]
    same = [DataAugmenter(noise_std=0.1, mask_prob=0.1, seed=42)(batch, epoch=0, batch_index=0)
            for _ in range(2)]
    other = DataAugmenter(noise_std=0.1, mask_prob=0.1, seed=43)(batch, epoch=0, batch_index=0)
    assert np.array_equal(same[0], same[1])
    assert not np.array_equal(same[0], other)
    # and through the iterator, in worker processes too
    runs = [run_epochs(TrainingDataIterator(noisy_data(), 16, num_workers=workers,
                                            augmenter=DataAugmenter(noise_std=0.1, seed=seed)),
                       1) for seed, workers in ((42, 0), (42, 2), (43, 0))]
    assert same_batches(runs[0], runs[1]) and not same_batches(runs[0], runs[2])


def test_d_each_worker_process_gets_its_own_derived_seed(manager: ExperimentManager) -> None:
    with manager.create_experiment("workers", seed=42) as exp:
        data = exp.register_dataset("d", *noisy_data())
        with TrainingDataIterator(data, 16, experiment=exp, num_workers=4,
                                  augmenter=DataAugmenter(noise_std=0.1)) as batches:
            list(batches)
    spawned = [b for b in bodies(manager.store, exp.id) if b["kind"] == WORKER_SPAWNED]
    assert [b["output"] for b in spawned] == [expected_state_digest(42, k) for k in range(4)]
    assert len({b["seed"] for b in spawned}) == 4
    assert len({b["output"] for b in spawned}) == 4


def test_e_the_batch_order_is_identical_across_runs_with_the_same_seed(
        manager: ExperimentManager) -> None:
    orders = []
    for _run in range(2):
        with manager.create_experiment("order", seed=42) as exp:
            data = exp.register_dataset("d", *indexed_data(120))
            batches = TrainingDataIterator(data, 16, experiment=exp, num_workers=2)
            orders.append([y.tolist() for _epoch in range(3) for _x, y in batches])
    assert orders[0] == orders[1]
    assert orders[0][:8] != orders[0][8:16]  # and epochs still differ


# -- invariances ----------------------------------------------------------------------------------

def record(manager: ExperimentManager, workers: int, method: str | None = None,
           interrupt_after: int | None = None) -> list[tuple]:
    """Record 2 epochs (optionally stopped and resumed in a new run); return the draws."""
    features, labels = noisy_data(rows=150)
    augmenter = {"noise_std": 0.2, "mask_prob": 0.2}
    runs = []
    with manager.create_experiment("inv", seed=7) as exp:
        data = exp.register_dataset("d", features, labels)
        batches = TrainingDataIterator(data, 16, experiment=exp, num_workers=workers,
                                       start_method=method,
                                       augmenter=DataAugmenter(**augmenter))
        taken = 0
        for _epoch in range(2):
            for _batch in batches:
                taken += 1
                if taken == interrupt_after:
                    break
            if taken == interrupt_after:
                break
        state = batches.state_dict()
        runs.append(exp.id)
    if interrupt_after is not None:
        with manager.create_experiment("inv", seed=7, parent=runs[0]) as exp:
            data = exp.register_dataset("d", features, labels)
            batches = TrainingDataIterator(data, 16, experiment=exp, num_workers=2 - workers,
                                           augmenter=DataAugmenter(**augmenter))
            batches.load_state_dict(state)
            while batches.next_epoch < 2:
                list(batches)
            runs.append(exp.id)
    recorded = []
    for run in runs:
        recorded += [d for d in draws(manager.store, run) if d[0] != WORKER_SPAWNED]
    return recorded


def test_zero_and_two_workers_record_the_same_draws(manager: ExperimentManager) -> None:
    assert record(manager, 0) == record(manager, 2)


def test_fork_and_spawn_record_the_same_draws(manager: ExperimentManager) -> None:
    assert record(manager, 2, "fork") == record(manager, 2, "spawn")


@pytest.mark.parametrize("interrupt_after", [3, 10, 13])
def test_interrupted_and_resumed_records_what_the_uninterrupted_run_records(
        manager: ExperimentManager, interrupt_after: int) -> None:
    """Stopped mid-epoch (3, 13) or exactly at the first epoch's end (10 batches per epoch),
    resumed in a new run with another worker count: the union of draws is the same; the
    interrupted epoch's reset is recorded in both runs, with the same digest."""
    whole = record(manager, 0)
    resumed = record(manager, 0, interrupt_after=interrupt_after)
    assert sorted(set(resumed), key=resumed.index) == whole
    assert len(resumed) == len(whole) + (interrupt_after % 10 != 0)
