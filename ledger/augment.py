"""DataAugmenter: a composition of registered ops whose randomness comes from a derived seed.

Each batch b of epoch e is augmented with the generator of path ``("epoch", e, "batch", b,
"augment")`` under the run's root seed, so its output depends only on (root seed, epoch, batch,
the batch's samples, the spec) — not on which process or worker computed it, nor on what came
before. The spec (the ops, by declared name and version, with every parameter) is recorded in
each ``augmentation_batch`` event and rebuilds the augmenter with :meth:`DataAugmenter.from_spec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ledger.augment_ops import OpInfo, lookup_op, register_op, registered_ops
from ledger.errors import BadInputError
from ledger.seeds import check_root_seed, generator
from ledger.text import error_text

__all__ = ["DataAugmenter", "augment_path", "register_op", "registered_ops"]


def augment_path(epoch: int, batch: int) -> tuple[str, int, str, int, str]:
    """The seed path of batch ``batch`` of epoch ``epoch``:
    ``("epoch", e, "batch", b, "augment")``."""
    return ("epoch", epoch, "batch", batch, "augment")


class DataAugmenter:
    """Composable augmentation for vector and tabular data (samples along axis 0).

    ``DataAugmenter(noise_std=0.1, mask_prob=0.1)`` builds, in this fixed order, the ops
    ``scale_jitter`` (if ``scale_jitter`` is given), ``gaussian_noise`` (``noise_std``) and
    ``feature_mask`` (``mask_prob``, ``mask_fill``); ``ops=[{"op": name, **params}, ...]`` appends
    any registered ops (built-in or :func:`register_op`) after them, in the order given.

    ``seed`` is the root seed used when the augmenter runs without an experiment. Inside an
    experiment the experiment's root seed is used, and an augmenter seed that differs from it is
    refused rather than silently ignored.

    WARNING: the output of a batch changes with the root seed, the epoch and batch numbers, the
    op list and order, every parameter, and each op's version — all of which are recorded.
    """

    def __init__(self, noise_std: float | None = None, mask_prob: float | None = None, *,
                 scale_jitter: float | None = None, mask_fill: float | None = None,
                 ops: Iterable[Mapping[str, Any]] | None = None, seed: int | None = None) -> None:
        specs: list[Mapping[str, Any]] = []
        if scale_jitter is not None:
            specs.append({"op": "scale_jitter", "jitter": scale_jitter})
        if noise_std is not None:
            specs.append({"op": "gaussian_noise", "std": noise_std})
        if mask_prob is not None:
            specs.append({"op": "feature_mask", "prob": mask_prob,
                          "fill": 0.0 if mask_fill is None else mask_fill})
        elif mask_fill is not None:
            raise BadInputError("got mask_fill without mask_prob, but the fill is only used by "
                                "the feature mask: give mask_prob too")
        if ops is not None:
            if isinstance(ops, (Mapping, str, bytes)) or not isinstance(ops, Iterable):
                raise BadInputError(f"ops must be a list of op specs, got "
                                    f"{type(ops).__name__}")
            specs.extend(ops)
        self._ops: list[tuple[OpInfo, dict[str, Any]]] = []
        self._spec: list[dict[str, Any]] = []
        for spec in specs:
            info, full = _resolve(spec)
            self._ops.append((info, {k: v for k, v in full.items() if k not in ("op", "version")}))
            self._spec.append(full)
        self.seed = None if seed is None else check_root_seed(seed)

    @classmethod
    def from_spec(cls, spec: Sequence[Mapping[str, Any]], *, seed: int | None = None
                  ) -> "DataAugmenter":
        """Rebuild an augmenter from a recorded spec (the list in ``augmentation_batch`` params)."""
        if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence):
            raise BadInputError(f"an augmenter spec is a list of op specs, got "
                                f"{type(spec).__name__}")
        return cls(ops=list(spec), seed=seed)

    @property
    def spec(self) -> list[dict[str, Any]]:
        """The recorded form: ``[{"op": name, "version": v, **params}, ...]`` (a copy)."""
        return [dict(op) for op in self._spec]

    @property
    def custom_modules(self) -> list[str]:
        """Modules defining the non-built-in ops: worker processes import them before starting."""
        return sorted({info.function.__module__ for info, _ in self._ops if not info.builtin})

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Run every op on ``batch`` in place (it must be a private copy) drawing from ``rng``."""
        for info, params in self._ops:
            try:
                result = info.function(batch, rng, **params)
            except Exception as error:  # the op's own: say which op, keep its type
                error.add_note(f"raised by augmenter op {info.name!r} version {info.version}")
                raise
            if result is not None and result is not batch:
                result = _op_result(info.name, result)
                if result.shape != batch.shape or result.dtype != batch.dtype:
                    raise BadInputError(f"op {info.name!r} returned shape {result.shape} "
                                        f"{result.dtype}, but must return {batch.shape} "
                                        f"{batch.dtype}")
                batch[...] = result
        return batch

    def __call__(self, batch: Any, *, epoch: int = 0, batch_index: int = 0,
                 seed: int | None = None) -> np.ndarray:
        """Augment a copy of ``batch`` as batch ``batch_index`` of ``epoch`` under ``seed``.

        ``seed`` defaults to the augmenter's own; one of them must be given. This is the same
        computation the iterator performs for that batch.
        """
        root = seed if seed is not None else self.seed
        if root is None:
            raise BadInputError("got no seed, but augmenting outside an experiment needs one: "
                                "DataAugmenter(seed=...) or augmenter(batch, seed=...)")
        try:
            copy = np.array(batch, copy=True, order="C")
        except (TypeError, ValueError) as error:  # a ragged list, say
            raise BadInputError(f"cannot augment this batch: it is not an array of one shape "
                                f"({error_text(error, 120)})") from None
        if copy.ndim < 1:
            raise BadInputError("cannot augment a single value: a batch has samples along "
                                "axis 0")
        return self.apply(copy, generator(root, augment_path(epoch, batch_index)))

    def __len__(self) -> int:
        return len(self._ops)

    def __repr__(self) -> str:
        ops = ", ".join(f"{s['op']}@{s['version']}" for s in self._spec)
        return f"DataAugmenter([{ops}]{'' if self.seed is None else f', seed={self.seed}'})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataAugmenter) and (self._spec, self.seed) == (
            other._spec, other.seed)

    # None is how Python marks a class unhashable; typeshed types object.__hash__ as a method only.
    __hash__ = None  # type: ignore[assignment]


def _op_result(name: str, result: Any) -> np.ndarray:
    """An op's returned value as an array, or a BadInputError naming the op (a ragged list)."""
    try:
        return np.asarray(result)
    except (TypeError, ValueError) as error:
        raise BadInputError(f"op {name!r} returned a {type(result).__name__} that is not an "
                            f"array of one shape ({error_text(error, 120)})") from None


def _resolve(spec: Mapping[str, Any]) -> tuple[OpInfo, dict[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("op"), str):
        raise BadInputError(f"an op spec is a map with an 'op' name, got {spec!r} "
                            f"(registered ops: {registered_ops()})")
    if not all(isinstance(key, str) for key in spec):
        raise BadInputError(f"op {spec['op']!r}: parameter names must be str, got "
                            f"{sorted(repr(key) for key in spec if not isinstance(key, str))}")
    version = spec.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise BadInputError(f"op version must be an int, got {version!r}")
    info = lookup_op(spec["op"], version)
    params = {key: value for key, value in spec.items() if key not in ("op", "version")}
    return info, info.make_spec(params)
