"""The recording fast path (``StreamWriter.append_normalised``, used per batch) writes exactly
the rows the checked path (``StreamWriter.append``) writes: same canonical body, hash and columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.augment import DataAugmenter
from ledger.canonical import canonical, normalise
from ledger.digests import array_digest
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET, decode_body
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store, StreamWriter
from ledger.verify import verify
from event_strategies import digests32, labels, maps
from ledger_builders import rows
from replay import replay_run
from trainer_helpers import bodies


def fixed_clock() -> int:
    return 1_700_000_000_000_000_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(labels, max_size=5), seed=st.none() | st.binary(min_size=16, max_size=16),
       params=maps, meta=maps, input=digests32, output=digests32)
def test_the_fast_path_writes_the_rows_the_checked_path_writes(
        tmp_path_factory: pytest.TempPathFactory, path: list, seed: bytes | None, params: dict,
        meta: dict, input: bytes | None, output: bytes | None) -> None:
    stored = {}
    for how in ("checked", "fast"):
        url = f"sqlite:///{tmp_path_factory.mktemp(how) / 'ledger.db'}"
        with Store.open(url, create=True) as store:
            with StreamWriter(store, "exp-fast", "main", flush_interval=None,
                              clock=fixed_clock) as writer:
                for _ in range(2):  # two links: prev and seq advance the same way
                    if how == "checked":
                        writer.append("user_draw", path=path, seed=seed, params=params,
                                      input=input, output=output, meta=meta)
                    else:
                        writer.append_normalised("user_draw", list(path), seed=seed,
                                                 params=normalise(params), input=input,
                                                 output=output, meta=normalise(meta))
            stored[how] = rows(store, "exp-fast", "main")
    assert len(stored["fast"]) == 2
    assert stored["fast"] == stored["checked"]
    for row in stored["fast"]:
        assert canonical(decode_body(row["body"])) == row["body"]


def test_recorded_augmentation_batches_are_canonical_and_carry_every_param(tmp_path: Path
                                                                           ) -> None:
    features = np.arange(600, dtype=np.float32).reshape(100, 6)
    labels_ = (np.arange(100) % 3 == 0).astype(np.int8)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ExperimentManager(url, data_dir=tmp_path) as manager:
        with manager.create_experiment("fast-path", seed=7) as exp:
            data = exp.register_dataset("small", features, labels_)
            augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.2)
            with TrainingDataIterator(data, 16, augmenter=augmenter, experiment=exp) as batches:
                for _ in range(2):
                    for _batch in batches:
                        pass
        exp_id, digest = exp.id, data.digest
    with Store.open(url) as store:
        assert verify(store, exp_id).ok
        bodies = [decode_body(row["body"]) for row in rows(store, exp_id, "main")]
        raw = [row["body"] for row in rows(store, exp_id, "main")]
    batches_recorded = [b for b in bodies if b["kind"] == AUGMENTATION_BATCH]
    assert len(batches_recorded) == 2 * 7
    for body, stored in zip(bodies, raw):
        assert canonical(body) == stored  # sorted keys at every level
    first = batches_recorded[0]
    assert first["path"] == ["epoch", 0, "batch", 0, "augment"]
    assert first["params"] == {
        "augmenter": normalise(augmenter.spec), "batch": 0, "batch_size": 16,
        "dataset": "small", "dataset_digest": digest, "drop_last": False, "epoch": 0,
        "indices_digest": first["params"]["indices_digest"], "rows": 16, "shuffle": True}
    assert batches_recorded[-1]["params"]["rows"] == 100 - 6 * 16
    assert batches_recorded[-1]["path"] == ["epoch", 1, "batch", 6, "augment"]


def test_recorded_draws_carry_the_settings_given_and_replay_from_them(tmp_path: Path) -> None:
    """epoch_reset and augmentation_batch params are what replay recomputes the order and the
    batches from (length, shuffle, batch_size) and what an auditor reads the run's batching
    from: each setting as given (here not the defaults), the order's digest as the reset's
    output, and the run certifies."""
    features = np.arange(120, dtype=np.float32).reshape(30, 4)
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("resets", seed=3) as exp:
            data = exp.register_dataset("small", features)
            with TrainingDataIterator(data, 7, experiment=exp, shuffle=False, drop_last=True,
                                      augmenter=DataAugmenter(noise_std=0.1)) as batches:
                for _epoch in range(2):
                    assert len(list(batches)) == 4
        recorded = bodies(manager.store, exp.id)
        resets = [body for body in recorded if body["kind"] == EPOCH_RESET]
        assert [(reset["path"], reset["params"], reset["output"], reset["meta"])
                for reset in resets] == [
            (["epoch", epoch, "shuffle"],
             {"batch_size": 7, "batches": 4, "dataset": "small", "dataset_digest": data.digest,
              "drop_last": True, "epoch": epoch, "length": 30, "shuffle": False},
             array_digest(np.arange(30, dtype=np.int64)), {}) for epoch in range(2)]
        settings = [(body["params"]["shuffle"], body["params"]["drop_last"], body["params"]["rows"])
                    for body in recorded if body["kind"] == AUGMENTATION_BATCH]
        assert settings == [(False, True, 7)] * 8
        assert replay_run(manager.store, exp.id, data_dir=tmp_path).certified


@pytest.mark.parametrize("augmenter", [None, DataAugmenter()], ids=["none", "no-ops"])
def test_batches_that_are_not_augmented_record_no_batch_events(
        tmp_path: Path, augmenter: DataAugmenter | None) -> None:
    """Gathering a batch draws nothing: without augmentation (no augmenter, or one without ops)
    only each epoch's order is recorded, no augmentation_batch, and the run certifies."""
    features = np.arange(120, dtype=np.float32).reshape(30, 4)
    with ExperimentManager(f"sqlite:///{tmp_path / 'ledger.db'}", data_dir=tmp_path) as manager:
        with manager.create_experiment("plain", seed=3) as exp:
            data = exp.register_dataset("small", features)
            with TrainingDataIterator(data, 7, experiment=exp, augmenter=augmenter) as batches:
                for _epoch in range(2):
                    assert len(list(batches)) == 5
        kinds = [body["kind"] for body in bodies(manager.store, exp.id)]
        assert AUGMENTATION_BATCH not in kinds and kinds.count(EPOCH_RESET) == 2
        assert replay_run(manager.store, exp.id, data_dir=tmp_path).certified
