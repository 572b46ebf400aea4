"""Reproducibility Ledger: every random draw of a training run, derived and recorded.

The public API lives here; submodules are the implementation. See README.md.
"""

from ledger.canonical import canonical, normalise
from ledger.digests import array_digest, event_hash, hex_digest, value_digest
from ledger.errors import (AppendOnlyError, BadInputError, CannotReplayError, CheckFailedError,
                           ConcurrentWriteError, EncodingError, ForeignStateError,
                           InvalidIdError, LedgerError, ResourceError, StateAheadError,
                           StoreError, UnknownExperimentError)
from ledger.events import Event, make_event, new_experiment_id
from ledger.seeds import derive, derive_bytes, draw_root_seed, generator
from ledger.store import SCHEMA_VERSION, ExperimentRow, Store, StreamHead, StreamWriter
from ledger.verify import Finding, VerifyReport, verify
from ledger.augment import DataAugmenter, register_op
from ledger.datasets import Dataset, load_dataset
from ledger.experiment import Experiment, ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.workers import WorkerError
from ledger.jobs import job_entrypoint, register_job
from ledger.user_draws import register_draw
from ledger.errors import StreamClaimedError
from ledger.processes import background_threads_paused

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION", "AppendOnlyError", "BadInputError", "CannotReplayError", "CheckFailedError",
    "ConcurrentWriteError", "EncodingError", "Event", "ExperimentRow", "Finding",
    "ForeignStateError", "InvalidIdError", "LedgerError", "ResourceError", "StateAheadError", "Store", "StoreError",
    "StreamHead", "StreamWriter",
    "UnknownExperimentError", "VerifyReport", "__version__", "array_digest", "canonical",
    "derive", "derive_bytes", "draw_root_seed", "event_hash", "generator", "hex_digest",
    "make_event", "new_experiment_id", "normalise", "value_digest", "verify",
    "DataAugmenter", "Dataset", "Experiment", "ExperimentManager", "TrainingDataIterator",
    "WorkerError", "load_dataset", "register_op",
    "StreamClaimedError", "job_entrypoint", "register_draw", "register_job",
    "background_threads_paused",
]
