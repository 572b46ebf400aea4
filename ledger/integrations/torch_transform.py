"""A user's random transform, seeded from the path of what it transforms, and the batch that a
DataLoader worker makes with it (and replay remakes). Part of :mod:`ledger.integrations.torch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ledger.errors import BadInputError
from ledger.integrations.sharding import sample_path
from ledger.integrations.torch_seeds import torch_seed
from ledger.integrations.transforms import TransformInfo, lookup_transform, replay_transform
from ledger.seeds import derive_bytes


class RecordedTransform:
    """A registered transform with its parameters, seeded from the path of what it transforms.

    ``RecordedTransform("random_flip", p=0.3)`` uses the highest registered version;
    ``per="sample"`` (default) calls it on each sample with the generator of
    ``(*batch path, position)``, ``per="batch"`` on the whole batch of features with the
    generator of the batch's path.
    """

    def __init__(self, name: str, version: int | None = None, *, per: str = "sample",
                 **params: Any) -> None:
        info = lookup_transform(name, version)
        self._bind(info, info.spec(per, params))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "RecordedTransform":
        """Rebuild from a recorded spec (CannotReplayError when it is not registered here)."""
        info, per, params = replay_transform(dict(spec))
        transform = cls.__new__(cls)
        transform._bind(info, info.spec(per, params))
        return transform

    def _bind(self, info: TransformInfo, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.per = spec["per"]
        self._function = info.function
        self._params = spec["params"]
        self._global_rng = info.global_rng

    def apply(self, x: torch.Tensor, root: int, path: Sequence[Any]) -> torch.Tensor:
        """Transform the batch ``x`` (a private copy) of seed path ``path`` under ``root``."""
        if self.per == "batch":
            return self._rows_kept(self._call(x, root, tuple(path)), len(x))
        outputs = [self._call(sample, root, sample_path(tuple(path), position))
                   for position, sample in enumerate(x.unbind(0))]
        if not outputs:
            return x
        try:
            return torch.stack(outputs)
        except RuntimeError:
            shapes = sorted({str(tuple(output.shape)) for output in outputs})
            raise BadInputError(f"transform {self.spec['transform']!r} returned samples of "
                                f"different shapes {shapes[:3]}, but the samples of a batch must "
                                f"stack") from None

    def _rows_kept(self, result: torch.Tensor, rows: int) -> torch.Tensor:
        """Refuse a per-batch result that does not hold one row per sample: its rows would no
        longer match the batch's labels and recorded indices."""
        if result.dim() == 0 or result.shape[0] != rows:
            raise BadInputError(f"transform {self.spec['transform']!r} (per='batch') returned "
                                f"shape {tuple(result.shape)} for a batch of {rows} samples, but "
                                f"must return one row per sample")
        return result

    def _call(self, x: torch.Tensor, root: int, path: tuple) -> torch.Tensor:
        seed = torch_seed(derive_bytes(root, path))
        generator = torch.Generator().manual_seed(seed)
        if self._global_rng:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = self._function(x, generator, **self._params)
        else:
            result = self._function(x, generator, **self._params)
        if not isinstance(result, torch.Tensor):
            raise BadInputError(f"transform {self.spec['transform']!r} returned "
                                f"{type(result).__name__}, but must return a tensor")
        return result

    def __repr__(self) -> str:
        return (f"RecordedTransform({self.spec['transform']!r}@{self.spec['version']}, "
                f"per={self.per!r}, {self._params})")


def make_batch(features: np.ndarray, labels: np.ndarray | None, indices: np.ndarray,
               transform: RecordedTransform | None, root: int, path: Sequence[Any]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch ``indices`` of a dataset, transformed from seed path ``path``: what a DataLoader
    worker computes and what replay recomputes (one function, so the two cannot drift)."""
    x = torch.from_numpy(np.take(features, indices, axis=0))
    if transform is not None:
        x = transform.apply(x, root, path).contiguous()
    y = None if labels is None else torch.from_numpy(np.take(labels, indices, axis=0))
    return x, y
