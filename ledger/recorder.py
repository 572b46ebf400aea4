"""Recording augmentation batches on a background thread, in the order they were handed out.

Hashing a batch (SHA-256 releases the GIL) and building its event overlap with the making of
the next batch (numpy's generators release the GIL too), so recording costs little wall time.
Order is kept: one thread, one FIFO queue, and every other event of the experiment first waits
for the queue to drain (:meth:`~ledger.experiment.Experiment.record` does that), so the order of
a run's events never depends on timing.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ledger.augment import augment_path
from ledger.batches import BatchDigests, batch_input_digest, fast_array_digest
from ledger.events import AUGMENTATION_BATCH
from ledger.seeds import derive_bytes

if TYPE_CHECKING:
    from ledger.datasets import Dataset
    from ledger.experiment import Experiment

_STOP = object()


class BatchRecorder:
    """Records one iterator's ``augmentation_batch`` events (see the module docstring)."""

    def __init__(self, experiment: Experiment, dataset: Dataset, *, augment_seed: int,
                 batch_size: int, drop_last: bool, shuffle: bool,
                 augmenter_spec: list[dict[str, Any]]) -> None:
        self.experiment = experiment
        self.dataset_name = dataset.name
        self.dataset_digest = dataset.digest
        self.augment_seed = augment_seed
        self.constant = {"batch_size": batch_size, "drop_last": drop_last, "shuffle": shuffle,
                         "dataset": dataset.name, "dataset_digest": dataset.digest,
                         "augmenter": augmenter_spec}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submitted = 0
        self._done = 0
        self._idle = threading.Condition()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, epoch: int, batch: int, digests: BatchDigests,
               indices: np.ndarray | None = None, output: np.ndarray | None = None) -> None:
        """Queue the event of batch ``batch`` of ``epoch``.

        Digests missing from ``digests`` are computed on the thread from ``indices`` (the
        batch's sample indices) and ``output`` (a private copy of the augmented features).
        """
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-batch-recorder",
                                            daemon=True)
            self._thread.start()
        self._submitted += 1
        self._queue.put((epoch, batch, digests, indices, output))

    def drain(self) -> None:
        """Wait until every queued event is appended; raise what the thread failed with."""
        if self._done != self._submitted:
            with self._idle:
                self._idle.wait_for(lambda: self._done == self._submitted)
        self._raise_failure()

    def stop_soon(self) -> None:
        """Let the thread finish what is queued and end, without waiting (for finalizers)."""
        if self._thread is not None:
            self._queue.put(_STOP)

    def close(self) -> None:
        """Drain, then stop the thread. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._record(*item)
                except BaseException as error:  # handed to the owner on its next call
                    self._error = error
            with self._idle:
                self._done += 1
                self._idle.notify_all()

    def _record(self, epoch: int, batch: int, digests: BatchDigests,
                indices: np.ndarray | None, output: np.ndarray | None) -> None:
        indices_digest = digests.indices if digests.indices is not None else fast_array_digest(
            indices)
        output_digest = digests.output if digests.output is not None else fast_array_digest(
            output)
        path = augment_path(epoch, batch)
        self.experiment._append_draw(
            AUGMENTATION_BATCH, path, seed=derive_bytes(self.augment_seed, path),
            params={"epoch": epoch, "batch": batch, "rows": digests.rows,
                    "indices_digest": indices_digest, **self.constant},
            input=batch_input_digest(self.dataset_digest, indices_digest), output=output_digest)
