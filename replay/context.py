"""What replayers share: the run's root seed, its datasets (re-loaded and checked), its caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ledger.errors import CannotReplayError
from ledger.seeds import Label, derive_bytes


@dataclass(slots=True)
class LoadedDataset:
    """A dataset as replay re-loaded it (its digest is checked apart: see replay.datasets)."""

    name: str
    recorded_digest: bytes
    features: np.ndarray
    labels: np.ndarray | None


@dataclass(slots=True)
class ReplayContext:
    """Shared state of one replay: root seed, data folder, datasets by recorded digest."""

    root: int
    data_dir: Path | None
    datasets: dict[bytes, LoadedDataset] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)
    _last_seed: tuple[tuple[Label, ...], bytes] | None = None

    def seed(self, path: list[Label] | tuple[Label, ...]) -> bytes:
        """``derive_bytes(root, path)``, remembered for the last path: the engine checks a
        draw's recorded seed and its replayer then seeds from it, at the price of one
        derivation."""
        key = tuple(path)
        last = self._last_seed
        if last is not None and last[0] == key:
            return last[1]
        derived = derive_bytes(self.root, key)
        self._last_seed = (key, derived)
        return derived

    def generator(self, path: list[Label] | tuple[Label, ...]) -> np.random.Generator:
        """The numpy Generator a draw at ``path`` used (as :func:`ledger.seeds.generator`)."""
        return np.random.Generator(np.random.PCG64(int.from_bytes(self.seed(path), "big")))

    def dataset(self, recorded_digest: bytes) -> LoadedDataset:
        """The dataset the run registered with ``recorded_digest``."""
        loaded = self.datasets.get(recorded_digest)
        if loaded is None:
            raise CannotReplayError(f"the run uses dataset {recorded_digest.hex()[:16]}… that "
                                    f"it never registered")
        return loaded
