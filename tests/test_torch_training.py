"""A real model trained on a recorded DataLoader (CPU, a few hundred steps): the same seed gives
the same loss curve and weights, with 0 or 2 workers; replay certifies the run."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the 'torch' extra)")

import torch_helpers  # noqa: E402
from ledger.experiment import ExperimentManager, state_digest  # noqa: E402
from ledger.integrations.torch import RecordedDataLoader, RecordedTransform  # noqa: E402
from replay.diff import diff_runs  # noqa: E402
from replay.engine import replay_run  # noqa: E402

EPOCHS = 5
BATCH = 16  # 1024 samples: 64 steps an epoch, 320 steps in all


def train_run(url: str, data_dir: Path, seed: int, num_workers: int
              ) -> tuple[str, list[float], bytes]:
    """Train from scratch; return the run's id, its loss curve and its weights' digest."""
    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("mlp", seed=seed, hyperparams={"lr": 0.05}) as exp:
            dataset = exp.register_dataset("fraud", *torch_helpers.fraud_arrays(1024))
            loader = RecordedDataLoader(exp, dataset, BATCH, num_workers=num_workers,
                                        transform=RecordedTransform("jitter", std=0.05),
                                        persistent_workers=num_workers > 0)
            losses, model = torch_helpers.train(exp, loader, EPOCHS)
            exp.log_checkpoint("model", model.state_dict(), epoch=EPOCHS - 1)
        return exp.id, losses, state_digest(model.state_dict())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: intra-op threads would only wait for each other
    try:
        return _train_all(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_all(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("training")
    url = f"sqlite:///{folder / 'ledger.db'}"
    return {"url": url, "data": folder / "data",
            "first": train_run(url, folder / "data", 42, 0),
            "again": train_run(url, folder / "data", 42, 0),
            "workers": train_run(url, folder / "data", 42, 2),
            "other": train_run(url, folder / "data", 43, 0)}


def test_training_learns_something(runs: dict) -> None:
    _exp, losses, _weights = runs["first"]
    assert len(losses) == EPOCHS * 1024 // BATCH
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20


def test_the_same_seed_gives_the_same_loss_curve_and_weights(runs: dict) -> None:
    assert runs["again"][1:] == runs["first"][1:]


def test_two_workers_give_the_same_loss_curve_and_weights_as_none(runs: dict) -> None:
    assert runs["workers"][1:] == runs["first"][1:]


def test_another_seed_gives_another_curve(runs: dict) -> None:
    assert runs["other"][1] != runs["first"][1] and runs["other"][2] != runs["first"][2]


def test_the_runs_diff_identical_and_replay_certifies(runs: dict) -> None:
    with ExperimentManager(runs["url"]) as manager:
        for name in ("again", "workers"):
            report = diff_runs(manager.store, runs["first"][0], runs[name][0])
            assert report.identical, report.first_divergence
        differing = diff_runs(manager.store, runs["first"][0], runs["other"][0])
        assert not differing.identical
        certificate = replay_run(manager.store, runs["workers"][0], data_dir=runs["data"])
    assert certificate.certified, certificate.first_divergence
    assert certificate.compared["augmentation_batch"] == EPOCHS * 1024 // BATCH
    assert certificate.compared["user_draw"] == 1  # the model's initialisation
