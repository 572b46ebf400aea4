"""The built-in replayers: worker seeding, epoch shuffles, augmentation batches, user draws.

Each re-executes one recorded draw from its params and the run's root seed alone — with the very
functions the trainer used (``ledger.sampling``, ``ledger.batches``, ``ledger.augment``,
``ledger.worker_seeding``) — and returns the digests that replay compares with the record.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

from ledger.augment import DataAugmenter, augment_path
from ledger.batches import batch_input_digest, fast_array_digest
from ledger.canonical import pack_normalised
from ledger.errors import BadInputError, CannotReplayError
from ledger.events import AUGMENTATION_BATCH, EPOCH_RESET, USER_DRAW, WORKER_SPAWNED
from ledger.processes import physical_memory
from ledger.sampling import batch_indices, epoch_order, shuffle_path
from ledger.text import quoted
from ledger.user_draws import lookup_draw, result_digest
from ledger.worker_seeding import expected_state_digest_at, is_worker_path
from replay.context import ReplayContext
from replay.registry import Redraw, hint, register_replayer

_ORDERS_KEPT = 4


def _params(body: dict[str, Any], *names: str) -> tuple[Any, ...]:
    """The values of ``names`` in the body's params (at least two names), in that order."""
    params = body["params"]
    if isinstance(params, dict):
        try:
            return itemgetter(*names)(params)
        except KeyError:
            pass
    missing = [name for name in names if not isinstance(params, dict) or name not in params]
    raise CannotReplayError(f"{body['kind']} {body['stream']}#{body['seq']} lacks params "
                            f"{missing}")


def check_draw_path(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    """Refuse a draw recorded at another path than the one its params name.

    Replay re-executes a draw from its params but seeds it from its path, so a forged batch at
    ``("epoch", 1, "batch", 3, "augment")`` with the params of epoch 0's batch 0 would re-execute
    to its record and be certified: raise CannotReplayError (labels compared with their types,
    since ``True`` would derive another seed than ``1``).
    """
    path = body["path"]
    if len(path) != len(expected) or any(type(label) is not type(want) or label != want
                                         for label, want in zip(path, expected)):
        raise CannotReplayError(f"{body['kind']} {body['stream']}#{body['seq']} is recorded at "
                                f"path {quoted(path)} but its params are those of "
                                f"{quoted(list(expected))}: a draw is re-executed from its "
                                f"params, so they must name its path")


def _order(context: ReplayContext, epoch: int, length: int, shuffle: bool) -> np.ndarray:
    """The sample order of an epoch, cached: every batch of the epoch needs it."""
    key = ("order", epoch, length, bool(shuffle))
    order = context.cache.get(key)
    if order is None:
        orders = [k for k in context.cache if isinstance(k, tuple) and k[0] == "order"]
        for stale in orders[:max(0, len(orders) - _ORDERS_KEPT + 1)]:
            del context.cache[stale]
        order = context.cache[key] = epoch_order(context.root, epoch, length, bool(shuffle))
    return order


@register_replayer(WORKER_SPAWNED)
def replay_worker_spawned(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """The digest of the RNG states a worker's derived seed gives (random, numpy, torch), for
    ``("worker", k)`` and ``("rank", r, "worker", k)``."""
    path = body["path"]
    if not is_worker_path(path):
        raise CannotReplayError(f"worker_spawned with path {path} is not a worker path this "
                                f"version replays")
    return Redraw(output=expected_state_digest_at(context.root, path))


@register_replayer(EPOCH_RESET)
def replay_epoch_reset(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """The digest of the epoch's permutation (or of ``arange`` with shuffle off)."""
    epoch, length, shuffle = _params(body, "epoch", "length", "shuffle")
    params = body["params"]
    if "dataset_digest" in params:
        samples = len(context.dataset(params["dataset_digest"]).features)
        if length != samples:
            raise CannotReplayError(f"epoch_reset {body['stream']}#{body['seq']} records "
                                    f"{length!r} samples, but its dataset holds {samples}")
    elif type(length) is int and length * np.dtype(np.int64).itemsize > physical_memory():
        raise CannotReplayError(f"epoch_reset {body['stream']}#{body['seq']} records a "
                                f"permutation of {length:,} samples, more than this machine's "
                                f"memory holds")
    order = _order(context, epoch, length, shuffle)
    check_draw_path(body, shuffle_path(epoch))
    return Redraw(output=fast_array_digest(order))


def _augmenter(context: ReplayContext, spec: Any) -> DataAugmenter:
    # Decoded msgpack holds plain types already; packing keeps 1, 1.0 and True apart.
    key = ("augmenter", pack_normalised(spec))
    augmenter = context.cache.get(key)
    if augmenter is None:
        try:
            augmenter = context.cache[key] = DataAugmenter.from_spec(spec)
        except BadInputError as error:
            raise CannotReplayError(f"cannot rebuild the augmenter {spec!r}: {error}; {hint()}"
                                    ) from None
    return augmenter


@register_replayer(AUGMENTATION_BATCH)
def replay_augmentation_batch(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """Gather the batch's samples from the re-loaded dataset and augment them again."""
    epoch, batch, batch_size, shuffle, dataset_digest, spec = _params(
        body, "epoch", "batch", "batch_size", "shuffle", "dataset_digest", "augmenter")
    dataset = context.dataset(dataset_digest)
    order = _order(context, epoch, len(dataset.features), shuffle)
    indices = batch_indices(order, batch, batch_size)
    indices_digest = fast_array_digest(indices)
    x = np.take(dataset.features, indices, axis=0)
    _augmenter(context, spec).apply(x, context.generator(body["path"]))
    check_draw_path(body, augment_path(epoch, batch))
    return Redraw(input=batch_input_digest(dataset_digest, indices_digest),
                  output=fast_array_digest(x))


@register_replayer(USER_DRAW)
def replay_user_draw(context: ReplayContext, body: dict[str, Any]) -> Redraw:
    """Rerun a registered user draw; a bare ``exp.generator`` draw has only its seed to check
    (and records no output: one that does has nothing to check it, and is not certified)."""
    params = body["params"] if isinstance(body["params"], dict) else {}
    if "draw" not in params:
        if body["output"] is not None:
            raise CannotReplayError(f"user_draw {body['stream']}#{body['seq']} at "
                                    f"{body['path']} records an output but no registered draw "
                                    f"in its params: nothing can rerun it to check that output")
        return Redraw(output=None)
    name, version, arguments = _params(body, "draw", "version", "params")
    function = lookup_draw(name, version)
    return Redraw(output=result_digest(function(context.generator(body["path"]),
                                                **arguments)))


# Batches of PyTorch DataLoaders (ledger.integrations.torch): built in, torch imported only when
# such a batch is replayed. Imported last, so that it wraps the augmentation replayer above.
import replay.torch_replayers  # noqa: E402,F401
