"""Replay of the batches recorded by :mod:`ledger.integrations.torch` (PyTorch DataLoaders).

Their ``epoch_reset`` and ``worker_spawned`` events replay through the built-in replayers (the
same derivations). Their ``augmentation_batch`` events — recognised by ``params["loader"]`` —
are re-executed here: the epoch's global order, the rank's share of it (``params["sampler"]``),
the batch's indices, the samples from the re-loaded dataset, and the user's transform rebuilt
by declared name and version from ``params["transform"]`` — with the very function the
DataLoader workers ran (:func:`ledger.integrations.torch.make_batch`). Every other
``augmentation_batch`` goes to the built-in replayer.

Importing this module needs no torch; replaying such a batch does (exit 3 without it), and so
does the transform's module, registered by a ``ledger.replayers`` plug-in or ``--trust MODULE``.
"""

from __future__ import annotations

from typing import Any

from ledger.batches import batch_input_digest, fast_array_digest
from ledger.canonical import canonical
from ledger.errors import BadInputError, CannotReplayError
from ledger.events import AUGMENTATION_BATCH
from ledger.integrations.sharding import (INTEGRATION, check_replicas, rank_augment_path,
                                          rank_share)
from ledger.sampling import batch_indices
from replay.context import ReplayContext
from replay.registry import Redraw, register_replayer
from replay.replayers import _order, _params, check_draw_path
from replay.replayers import replay_augmentation_batch as _builtin_augmentation_batch

_SHARES_KEPT = 4


def _torch():  # noqa: ANN202 - the integration module
    try:
        from ledger.integrations import torch as integration
    except ImportError:
        raise CannotReplayError("this run's batches were made by a PyTorch DataLoader: install "
                                "torch (the 'torch' extra, torch==2.13.0) to replay them") from None
    return integration


def _share(context: ReplayContext, epoch: int, length: int, shuffle: bool, sampler: Any) -> Any:
    if not isinstance(sampler, dict):
        raise CannotReplayError(f"malformed sampler params {sampler!r}")
    try:
        replicas, rank = check_replicas(sampler.get("num_replicas"), sampler.get("rank"))
    except BadInputError as error:
        raise CannotReplayError(f"malformed sampler params: {error}") from None
    drop = sampler.get("even_shares") == "drop"
    key = ("torch-share", epoch, length, bool(shuffle), replicas, rank, drop)
    share = context.cache.get(key)
    if share is None:
        kept = [k for k in context.cache if isinstance(k, tuple) and k[0] == "torch-share"]
        for stale in kept[:max(0, len(kept) - _SHARES_KEPT + 1)]:
            del context.cache[stale]
        share = context.cache[key] = rank_share(_order(context, epoch, length, shuffle),
                                                replicas, rank, drop)
    return share


def replay_torch_batch(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """Re-make one recorded DataLoader batch and digest it."""
    epoch, batch, batch_size, shuffle, dataset_digest, spec, sampler = _params(
        body, "epoch", "batch", "batch_size", "shuffle", "dataset_digest", "transform", "sampler")
    integration = _torch()
    dataset = context.dataset(dataset_digest)
    share = _share(context, epoch, len(dataset.features), shuffle, sampler)
    indices = batch_indices(share, batch, batch_size)
    key = ("torch-transform", canonical(spec))
    transform = context.cache.get(key)
    if transform is None:
        transform = context.cache[key] = integration.RecordedTransform.from_spec(spec)
    x, _ = integration.make_batch(dataset.features, None, indices, transform, context.root,
                                  tuple(body["path"]))
    check_draw_path(body, rank_augment_path(sampler["num_replicas"], sampler["rank"], epoch,
                                            batch))
    return Redraw(input=batch_input_digest(dataset_digest, fast_array_digest(indices)),
                  output=integration.tensor_digest(x))


@register_replayer(AUGMENTATION_BATCH)
def replay_augmentation_batch(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """DataLoader batches here, every other augmentation batch by the built-in replayer."""
    params = body["params"]
    if isinstance(params, dict) and params.get("loader") == INTEGRATION:
        return replay_torch_batch(context, body)
    return _builtin_augmentation_batch(context, body)
