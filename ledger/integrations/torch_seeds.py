"""Seeds and digests of the PyTorch integration, and the user draws seeded through torch.

A derived 16-byte seed becomes a torch seed by its first 8 bytes (:func:`torch_seed`), in
workers, transforms and user draws alike; tensors are digested as the arrays they hold
(:func:`tensor_digest`). Part of :mod:`ledger.integrations.torch`, which re-exports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ledger.batches import fast_array_digest
from ledger.errors import BadInputError
from ledger.events import USER_DRAW
from ledger.experiment import RESERVED_LABELS, Experiment
from ledger.integrations.runs import AttachedRun
from ledger.integrations.torch_distributed import Run
from ledger.seeds import check_path, derive_bytes
from ledger.text import error_text


def check_run(run: Any) -> Run:
    """``run`` when it is an Experiment or AttachedRun; BadInputError naming what it is not."""
    if not isinstance(run, (Experiment, AttachedRun)):
        raise BadInputError(f"got run of type {type(run).__name__}, but must be the Experiment "
                            f"(manager.create_experiment) or an AttachedRun")
    return run


def torch_seed(seed: bytes) -> int:
    """The torch seed of a derived 16-byte seed: its first 8 bytes, big-endian (as workers)."""
    return int.from_bytes(seed[:8], "big")


def path_generator(root: int, path: Sequence[Any]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``path`` under ``root``."""
    return torch.Generator().manual_seed(torch_seed(derive_bytes(root, path)))


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """``array_digest`` of a CPU copy of ``tensor`` (dtype, shape, C-ordered little-endian
    bytes)."""
    if tensor.is_meta:
        raise BadInputError(f"cannot digest a meta tensor (shape {tuple(tensor.shape)}, no "
                            f"data): only a tensor holding values can be recorded")
    try:
        if tensor.is_cpu and not tensor.requires_grad:
            array = tensor.numpy()  # a view; fast_array_digest copies only if not C-contiguous
        else:
            array = tensor.detach().cpu().contiguous().numpy()
    except (TypeError, RuntimeError) as error:  # a dtype numpy lacks, say
        raise BadInputError(f"cannot digest a tensor of dtype {tensor.dtype}: {error}") from None
    return fast_array_digest(array)


def state_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``state_dict`` as numpy arrays for ``exp.log_checkpoint``: detached CPU copies, bfloat16
    widened to float32 (exactly). A plain float CPU ``state_dict`` can be logged as it is."""
    if not isinstance(state, Mapping):
        raise BadInputError(f"got {type(state).__name__}, but state_arrays takes a state_dict "
                            f"(a map of names to tensors): pass model.state_dict()")
    arrays = {}
    for key, value in state.items():
        try:
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                if value.dtype == torch.bfloat16:
                    value = value.float()
                value = value.numpy()
            arrays[key] = np.asarray(value)
        except (TypeError, RuntimeError, ValueError) as error:
            raise BadInputError(f"cannot read {key!r} of the state_dict as an array: "
                                f"{error_text(error, 200)}") from None
    return arrays


def _user_path(path: Sequence[Any]) -> tuple:
    labels = check_path(path)
    if not labels or labels[0] in RESERVED_LABELS:
        raise BadInputError(f"got path {list(labels)}, but a user draw path must be non-empty "
                            f"and not start with {sorted(RESERVED_LABELS)}")
    return labels


def manual_seed(run: Run, *path: Any) -> int:
    """Seed torch's global RNG from the user path ``path`` (e.g. ``("model", "init")``) and
    record it as a ``user_draw``; return the torch seed. For model initialisation."""
    labels = _user_path(path)
    seed = derive_bytes(check_run(run).root_seed, labels)
    run.record_draw(USER_DRAW, labels, seed=seed, params={"generator": "torch.manual_seed"})
    torch.manual_seed(torch_seed(seed))
    return torch_seed(seed)


def torch_generator(run: Run, *path: Any) -> torch.Generator:
    """A ``torch.Generator`` for the user path ``path``, recorded as a ``user_draw``."""
    labels = _user_path(path)
    seed = derive_bytes(check_run(run).root_seed, labels)
    run.record_draw(USER_DRAW, labels, seed=seed, params={"generator": "torch.Generator"})
    return torch.Generator().manual_seed(torch_seed(seed))
