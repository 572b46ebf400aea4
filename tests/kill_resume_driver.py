"""A child process for the kill-and-resume properties: it trains a tiny logistic regression on a
recorded run, checkpointing as a trainer would, and resumes the run if it already exists.

Run as ``python kill_resume_driver.py URL DATA_DIR WORKDIR EXP CONFIG_JSON``. ``CONFIG_JSON``
holds the run's settings; what may differ from one process of the run to the next comes from the
environment, so that the recorded entrypoint (argv) does not: ``KILL_RESUME_WORKERS`` (worker
processes, default 0), ``KILL_RESUME_PAUSE_AT`` and ``KILL_RESUME_FLUSH_AT_PAUSE`` (see below).
The driver creates experiment ``EXP`` (root seed ``config["seed"]``) if the ledger does not
hold it, else continues it with ``resume_experiment`` from ``WORKDIR/checkpoint.msgpack`` (from
the start when there is none). Every ``checkpoint_every`` batches (and at each epoch's end with
``epoch_checkpoint``) it logs a checkpoint (with ``log_checkpoints``), takes ``state_dict()``
and writes weights, iterator state and loop position atomically to that file. It logs the
epoch's mean ``loss`` per epoch and, with ``batch_metric``, each batch's ``batch_loss``
(``"per-epoch"``, or ``"per-run"`` without an epoch); with ``dropout``, each step draws a mask
from ``exp.generator("dropout", epoch, batch)``; with ``flush_every``, it flushes the run's
events every that many batches. At the end it logs a ``final`` checkpoint and writes
``WORKDIR/final.npy`` before it leaves the ``with`` block.

It prints one line per step, flushed, for the harness that kills it:
``exp EXP created|resumed|complete``; ``workers PID...`` once its worker pool has handed out a
batch (the pool's start-up is over); ``point N LABEL`` at each point of the training loop
(N counts from 1 in this process); ``done`` at the end. With ``KILL_RESUME_PAUSE_AT=N``, it
prints ``paused`` after point N and waits to be killed there (having flushed the run's events,
with ``KILL_RESUME_FLUSH_AT_PAUSE=1``).

Inside the store (for PostgreSQL's kill points), ``KILL_RESUME_DB_AT=HOOK:N`` prints
``db HOOK N`` at the N-th time this process reaches ``HOOK`` — each one inside an open write
transaction, see :data:`DB_HOOKS` — and with ``KILL_RESUME_DB_PAUSE=1`` then prints ``paused``
and waits there to be killed. ``KILL_RESUME_HOLD=SECONDS`` first forks a child that keeps the
process's TCP connections — its database connections — open for that long after the driver is
killed, as a forked worker still ending or a network that has not told the server does: the
server's backend then goes on holding the transaction's locks with no client behind it. It
prints ``holder PID``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ledger.augment import DataAugmenter
from ledger.canonical import canonical
from ledger.durable_files import write_file_durably
from ledger.errors import UnknownExperimentError
from ledger.experiment import Experiment, ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.store import Store

CHECKPOINT = "checkpoint.msgpack"
FINAL = "final.npy"
DB_HOOKS = {
    "claim": "a claim or release of a stream inserted, not yet committed",
    "exclusive-lock": ("an exclusive lock taken: a take-over's on the stream (its claim not yet "
                       "inserted), or run_completed's on the experiment (not yet written)"),
    "batch-lock": "a batch's shared stream lock taken, its claim not yet checked",
    "in-copy": "a COPY begun (the server waiting for its rows), no row written yet",
    "copy-half": "half of a batch's rows sent with COPY, the rest not yet",
    "copied": "a batch's rows all sent with COPY, not yet committed",
}
"""Where ``KILL_RESUME_DB_AT`` can stop the driver: each inside an open write transaction."""


def sample_data(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The run's dataset: a fixed function of the config (not drawn from the ledger)."""
    rng = np.random.default_rng(config["data_seed"])
    features = rng.normal(size=(config["rows"], config["features"]))
    truth = rng.normal(size=config["features"])
    labels = (features @ truth + rng.normal(scale=0.5, size=config["rows"]) > 0).astype(np.float64)
    return features, labels


class Progress:
    """Numbered progress lines; waits to be killed after point ``pause_at``, having flushed the
    run's events first with ``flush_at_pause`` (as the writer's own flush, once a second, would
    have done in a longer run)."""

    def __init__(self, pause_at: int | None, flush_at_pause: bool) -> None:
        self.count = 0
        self.pause_at = pause_at
        self.flush_at_pause = flush_at_pause
        self.experiment: Experiment | None = None

    def point(self, label: str) -> None:
        self.count += 1
        print(f"point {self.count} {label}", flush=True)
        if self.count == self.pause_at:
            if self.flush_at_pause and self.experiment is not None:
                self.experiment.flush()
            print("paused", flush=True)
            time.sleep(600)


def install_db_hook(spec: str, pause: bool, hold: float | None) -> None:
    """Announce (and with ``pause``, wait to be killed at) the N-th time this process reaches
    the store hook ``spec`` (``HOOK:N``, see :data:`DB_HOOKS`)."""
    import weakref

    import psycopg
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    hook, _, nth = spec.partition(":")
    if hook not in DB_HOOKS:
        raise SystemExit(f"unknown hook {hook!r}: one of {sorted(DB_HOOKS)}")
    target, seen = int(nth), [0]

    def reached(name: str) -> None:
        if name != hook:
            return
        seen[0] += 1
        if seen[0] != target:
            return
        print(f"db {hook} {target}", flush=True)
        if not pause:
            return
        if hold:
            holder = os.fork()
            if holder == 0:
                _keep_only_network_sockets()
                time.sleep(hold)
                os._exit(0)
            print(f"holder {holder}", flush=True)
        print("paused", flush=True)
        time.sleep(600)

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(_connection, _cursor, statement, *_args):  # noqa: ANN001, ANN202
        sql = " ".join(statement.split()).lower()
        if sql.startswith("insert into ledger_stream_claims"):
            reached("claim")
        elif sql.startswith("select pg_advisory_xact_lock("):
            reached("exclusive-lock")
        elif sql.startswith("select pg_advisory_xact_lock_shared("):
            reached("batch-lock")

    copy_rows = Store._copy_rows

    def _copy(self: Store, connection: Any, rows: Any) -> None:
        half = len(rows) // 2
        if half:
            copy_rows(self, connection, rows[:half])
        reached("copy-half")
        copy_rows(self, connection, rows[half:])
        reached("copied")

    Store._copy_rows = _copy  # type: ignore[method-assign]
    write_row, begun = psycopg.Copy.write_row, weakref.WeakSet[Any]()

    def _write_row(self: Any, row: Any) -> None:
        if self not in begun:
            begun.add(self)
            reached("in-copy")
        write_row(self, row)

    psycopg.Copy.write_row = _write_row  # type: ignore[method-assign]


def _keep_only_network_sockets() -> None:
    """In the holder: close every inherited file but the TCP sockets (the database
    connections). The harness's pipes, the worker pool's and its resource tracker's must not be
    kept open: they would keep the harness reading, or the pool's helpers running."""
    import socket

    for name in os.listdir("/proc/self/fd"):
        descriptor = int(name)
        try:
            probe = socket.socket(fileno=descriptor)
        except OSError:  # not a socket (or the listing's own, closed already)
            try:
                os.close(descriptor)
            except OSError:
                pass
            continue
        family = probe.family
        probe.detach()
        if family not in (socket.AF_INET, socket.AF_INET6):
            os.close(descriptor)


def sgd_step(weights: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float,
             keep: np.ndarray | None = None) -> float:
    """One mini-batch step of logistic regression (weights[-1] is the bias), in place, updating
    only the weights ``keep`` selects (a dropout mask); the batch's mean log loss before it."""
    logits = x @ weights[:-1] + weights[-1]
    p = 1.0 / (1.0 + np.exp(-logits))
    eps = 1e-12
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    error = (p - y) / len(y)
    gradient = x.T @ error
    weights[:-1] -= lr * (gradient if keep is None else gradient * keep)
    weights[-1] -= lr * float(error.sum())
    return loss


def main(url: str, data_dir: str, workdir: str, exp_id: str, config: dict[str, Any],
         workers: int, pause_at: int | None, flush_at_pause: bool) -> None:
    folder = Path(workdir)
    progress = Progress(pause_at, flush_at_pause)
    with Store.open(url, create=True) as store:
        try:
            status: str | None = store.experiment(exp_id).status
        except UnknownExperimentError:
            status = None
    if status not in (None, "incomplete"):
        print(f"exp {exp_id} complete", flush=True)
        print("done", flush=True)
        return
    features, labels = sample_data(config)
    with ExperimentManager(url, data_dir=data_dir) as manager:
        if status is None:
            exp = manager.create_experiment("kill-resume", seed=config["seed"], exp_id=exp_id,
                                            hyperparams={"lr": config["lr"]})
        else:
            exp = manager.resume_experiment(exp_id)
        progress.experiment = exp
        with exp:
            print(f"exp {exp_id} {'created' if status is None else 'resumed'}", flush=True)
            progress.point("start")
            data = exp.register_dataset("kill-resume-data", features, labels)
            batches = TrainingDataIterator(
                data, config["batch_size"], num_workers=workers, experiment=exp,
                start_method="fork",
                augmenter=DataAugmenter(noise_std=config["noise_std"],
                                        mask_prob=config["mask_prob"]))
            saved_path = folder / CHECKPOINT
            if status is not None and saved_path.exists():
                saved = msgpack.unpackb(saved_path.read_bytes(), raw=False)
                weights = np.frombuffer(saved["weights"], dtype=np.float64).copy()
                batches.load_state_dict(saved["iterator"])
                epoch, loss_sum, step = saved["epoch"], saved["loss_sum"], saved["step"]
                progress.point("restored")
            else:
                weights = exp.generator("model", "init").normal(
                    scale=0.1, size=config["features"] + 1)
                epoch, loss_sum, step = 0, 0.0, 0

            def save(name: str) -> None:
                if config["log_checkpoints"]:
                    exp.log_checkpoint(name, weights, epoch=epoch)
                    progress.point(f"checkpoint-logged {name}")
                state = batches.state_dict()
                progress.point("state-taken")
                saved = canonical({"weights": weights.tobytes(), "iterator": state,
                                   "epoch": epoch, "loss_sum": loss_sum, "step": step})
                write_file_durably(saved_path, lambda file: file.write(saved))
                progress.point("checkpoint-saved")

            announced = False
            with batches:
                while epoch < config["epochs"]:
                    # A state saved at the epoch's last batch has the epoch finished: its
                    # metric still to log, no batch left to train on.
                    if batches.next_epoch == epoch:
                        for x, y in batches:
                            if not announced and batches.worker_pids:
                                print("workers " + " ".join(map(str, batches.worker_pids)),
                                      flush=True)
                                announced = True
                            batch = batches.batch - 1
                            progress.point(f"batch {epoch} {batch}")
                            keep = (exp.generator("dropout", epoch, batch).random(
                                config["features"]) >= 0.2 if config["dropout"] else None)
                            loss = sgd_step(weights, x, y, config["lr"], keep)
                            loss_sum += loss
                            step += 1
                            if config["batch_metric"]:  # per epoch, or one series for the run
                                exp.log_metric("batch_loss", loss, epoch=(
                                    epoch if config["batch_metric"] == "per-epoch" else None))
                            progress.point("stepped")
                            if config["flush_every"] and step % config["flush_every"] == 0:
                                exp.flush()  # a trainer's own flush (the writer's, in effect)
                            if step % config["checkpoint_every"] == 0:
                                save("periodic")
                    exp.log_metric("loss", loss_sum / len(batches), epoch=epoch)
                    progress.point(f"metric {epoch}")
                    epoch, loss_sum = epoch + 1, 0.0
                    if config["epoch_checkpoint"]:
                        save("epoch")
            exp.log_checkpoint("final", weights)
            progress.point("final-logged")
            write_file_durably(folder / FINAL, lambda file: file.write(weights.tobytes()))
            progress.point("weights-written")
    print("done", flush=True)


if __name__ == "__main__":
    pause = os.environ.get("KILL_RESUME_PAUSE_AT")
    if os.environ.get("KILL_RESUME_DB_AT"):
        hold = os.environ.get("KILL_RESUME_HOLD")
        install_db_hook(os.environ["KILL_RESUME_DB_AT"],
                        os.environ.get("KILL_RESUME_DB_PAUSE") == "1",
                        float(hold) if hold else None)
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]),
         int(os.environ.get("KILL_RESUME_WORKERS", "0")), int(pause) if pause else None,
         os.environ.get("KILL_RESUME_FLUSH_AT_PAUSE") == "1")
