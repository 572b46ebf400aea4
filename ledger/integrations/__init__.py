"""Integrations of the ledger with training frameworks, and recording from more than one process.

- :mod:`ledger.integrations.torch` — PyTorch: a recorded sampler (``DistributedSampler``
  compatible), a ``worker_init_fn`` that seeds DataLoader workers by derivation, transforms
  registered by declared name and version, a one-call recorded ``DataLoader``, and
  ``torch.distributed`` ranks recording into one experiment. Needs the ``torch`` extra. Import
  from it; its parts live in ``torch_seeds`` (seeds, digests, user draws), ``torch_transform``,
  ``torch_sampler``, ``torch_workers`` (worker seeding), ``torch_loader`` (the DataLoader) and
  ``torch_distributed`` (ranks).
- :mod:`ledger.integrations.runs` — :class:`~ledger.integrations.runs.AttachedRun`: one more
  stream of an existing experiment, for a distributed rank or a separate process (no torch).
- :mod:`ledger.integrations.transforms` — the registry of transforms (no torch).
- :mod:`ledger.integrations.sharding` — how an epoch's order is split between ranks (no torch).

Nothing here is imported by ``import ledger``: the library works without torch installed.
"""
