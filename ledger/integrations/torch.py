"""PyTorch: DataLoaders whose every draw is derived and recorded, on one process or many ranks.

Install the ``torch`` extra (``torch==2.13.0``). The pieces, each usable alone:

- :class:`RecordedSampler` — a ``DistributedSampler``-compatible sampler: epoch e's order is the
  permutation of ``("epoch", e, "shuffle")`` (the same on every rank), recorded once as
  ``epoch_reset``; rank r takes its ``DistributedSampler``-style share. Each pass starts the next
  epoch by itself (``set_epoch`` still works), so forgetting ``set_epoch`` cannot repeat an order.
- :class:`SeedWorkers` — a ``worker_init_fn`` seeding ``random``, numpy's global RNG and torch in
  DataLoader worker k from ``("worker", k)`` (``("rank", r, "worker", k)`` on rank r), instead of
  PyTorch's ``base_seed + worker_id``.
- :func:`register_transform` / :class:`RecordedTransform` — a user's random transform, by declared
  name and version, given a ``torch.Generator`` seeded from its sample's path
  ``(*batch path, position)`` or, with ``per="batch"``, its batch's path
  ``("epoch", e, "batch", b, "augment")``.
- :class:`RecordedDataLoader` — the one-call helper: a real ``torch.utils.data.DataLoader`` over a
  registered dataset that uses all three. Workers make whole batches, digest them and send the
  digests back with the batch; the main process records ``worker_spawned`` and
  ``augmentation_batch`` in the order it consumes batches, so the events, like the batches, are
  the same for any ``num_workers``, start method and ``persistent_workers``. Its
  ``state_dict()`` / ``load_state_dict()`` let a trainer preempted mid-epoch continue at the
  next batch handed out, in a fresh loader and process (see :mod:`.torch_loader_state`).
- :func:`distributed_experiment` — one experiment for all ranks of a ``torch.distributed`` job:
  rank 0 creates it and records to ``main``, rank r attaches with stream ``rank-r``, and rank 0
  records ``run_completed`` after every rank has flushed; ``resume=EXP`` continues a run whose
  job died (a torchrun restart), and :func:`flush_ranks` before each checkpoint file keeps the
  files from running ahead of the ledger.

``ledger replay`` re-executes all of it: the built-in replayers for ``epoch_reset`` and
``worker_spawned``, and :mod:`replay.torch_replayers` for the batches (the transform must be
registered by an installed plug-in or a module named with ``--trust``).

WARNING: a batch's content depends on the root seed, the epoch, the dataset, ``batch_size``,
``shuffle``, ``drop_last``, ``num_replicas`` and the rank, and the transform's name, version and
parameters — all recorded. Worker-global RNGs are re-seeded identically each time a worker
starts (each epoch, unless ``persistent_workers``): draw a transform's randomness from its
``generator``, which differs per epoch, batch and sample.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401 - the clear message below when it is missing
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("ledger.integrations.torch needs PyTorch: pip install "
                      "'reproducibility-ledger[torch]' (torch==2.13.0)") from error

from ledger.integrations.runs import AttachedRun
from ledger.integrations.sharding import INTEGRATION
from ledger.integrations.torch_distributed import (Run, barrier, distributed_experiment,
                                                   flush_ranks, rank_stream, register_dataset)
from ledger.integrations.torch_loader import (RECORD_EVERY, RecordedDataLoader,
                                              recorded_dataloader, register_torch_dataset)
from ledger.integrations.torch_sampler import BatchRequest, RecordedSampler
from ledger.integrations.torch_seeds import (manual_seed, path_generator, state_arrays,
                                             tensor_digest, torch_generator, torch_seed)
from ledger.integrations.torch_transform import RecordedTransform, make_batch
from ledger.integrations.torch_workers import SeedWorkers, WorkerSeedingError
from ledger.integrations.transforms import (PER, lookup_transform, register_transform,
                                            registered_transforms)

__all__ = ["AttachedRun", "BatchRequest", "INTEGRATION", "PER", "RECORD_EVERY",
           "RecordedDataLoader", "RecordedSampler", "RecordedTransform", "Run", "SeedWorkers",
           "WorkerSeedingError", "barrier", "distributed_experiment", "flush_ranks",
           "lookup_transform",
           "make_batch", "manual_seed", "path_generator", "rank_stream", "recorded_dataloader",
           "register_dataset", "register_torch_dataset", "register_transform",
           "registered_transforms", "state_arrays", "tensor_digest", "torch_generator",
           "torch_seed"]
