"""Seeding DataLoader workers by derivation: worker k's ``random``, numpy and torch global RNGs
from ``("worker", k)`` (``("rank", r, "worker", k)`` on rank r), reported back with every batch
so that the main process can record and check it. Part of :mod:`ledger.integrations.torch`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ledger.errors import BadInputError
from ledger.integrations.sharding import check_replicas, rank_worker_path
from ledger.seeds import check_root_seed
from ledger.worker_seeding import seed_process_at


worker_report: tuple[int, bytes, int] | None = None
"""In a DataLoader worker seeded by SeedWorkers: (worker id, digest of the seeded RNG states,
pid), sent back with every batch the worker makes."""


class SeedWorkers:
    """``worker_init_fn`` seeding worker k's ``random``, numpy and torch global RNGs from
    ``("worker", k)``, or ``("rank", r, "worker", k)`` on rank r of ``num_replicas`` > 1.

    ``then`` is called afterwards with the worker id (a user's own ``worker_init_fn``). Picklable,
    so it works with the ``spawn`` and ``forkserver`` start methods.
    """

    def __init__(self, root: int, *, num_replicas: int = 1, rank: int = 0,
                 then: Callable[[int], None] | None = None) -> None:
        self.root = check_root_seed(root)
        self.num_replicas, self.rank = check_replicas(num_replicas, rank)
        if then is not None and not callable(then):
            raise BadInputError(f"got worker_init_fn of type {type(then).__name__}, but it must "
                                f"be a function of the worker id")
        self.then = then

    def path(self, worker: int) -> tuple:
        """The seed path of worker ``worker``."""
        return rank_worker_path(self.num_replicas, self.rank, worker)

    def __call__(self, worker: int) -> None:
        global worker_report
        states = seed_process_at(self.root, self.path(worker))
        worker_report = (worker, states, os.getpid())
        if self.then is not None:
            self.then(worker)


class WorkerSeedingError(BadInputError):
    """A DataLoader worker's RNG states are not those its derived seed gives."""
