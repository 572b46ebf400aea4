"""A recording training run for the crash-safety harness: the demo's model and data, 2 workers.

Run as ``python crash_driver.py URL DATA_DIR``. It prints ``exp <id>`` once the experiment
exists, ``durable <seq>`` each time a flush has returned (the writer's acknowledgement that every
event up to that seq is durable), and ``done`` at the end. The harness kills it at random moments.
"""

from __future__ import annotations

import sys

from examples.fraud.dataset import load_fraud_data
from examples.fraud.model import FraudMLP
from ledger.augment import DataAugmenter
from ledger.experiment import ExperimentManager
from ledger.iterator import TrainingDataIterator

TRANSACTIONS = 20_000
EPOCHS = 4
FLUSH_EVERY = 10


def main(url: str, data_dir: str) -> None:
    data = load_fraud_data(TRANSACTIONS)
    with ExperimentManager(url, data_dir=data_dir) as manager:
        with manager.create_experiment("fraud-detection-v3", seed=42,
                                       hyperparams={"lr": 0.05, "epochs": EPOCHS}) as exp:
            print(f"exp {exp.id}", flush=True)
            train = exp.register_dataset("dataset-fraud-2024Q1", data.train_x, data.train_y)
            model = FraudMLP(data.train_x.shape[1], exp.generator("model", "init"), (16,))
            batches = TrainingDataIterator(train, 256, num_workers=2, experiment=exp,
                                           augmenter=DataAugmenter(noise_std=0.1, mask_prob=0.1))
            with batches:
                for epoch in range(EPOCHS):
                    for step, (x, y) in enumerate(batches):
                        model.train_step(x, y, 0.05, 5.0)
                        if step % FLUSH_EVERY == 0:
                            print(f"durable {exp.flush()}", flush=True)
                    exp.log_metric("epoch_done", epoch, epoch=epoch)
            exp.log_checkpoint("final", model.weights)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
