"""Recording runs of random shape for the report properties, and what they should report.

:func:`record` records one small real run with the public API (``ExperimentManager``,
``TrainingDataIterator``, ``DataAugmenter``) as its :class:`RunShape` says — epochs, loader
workers, shuffle, ``drop_last``, augmentation, metrics, checkpoints, user draws, hyperparameters,
datasets with roles, and how it ends (ok, failed inside the ``with``, suspended and so left
incomplete, or suspended and resumed) — and returns an :class:`Oracle`: what the test itself
logged. :func:`stored_events` reads the run back with plain ``sqlite3`` and ``msgpack``, and
:func:`seed_of`, :func:`event_hash` and :func:`array_digest` re-implement DESIGN §1–3 here, so
the expectations the properties compare a report with owe nothing to the report code (nor to the
library's own hashing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from hypothesis import strategies as st

import divergence_ops
from ledger.augment import DataAugmenter
from ledger.experiment import Experiment, ExperimentManager
from ledger.iterator import TrainingDataIterator
from ledger.user_draws import register_draw

DRAW = "report_oracle_init"
"""A registered user draw (``exp.draw``) the runs make; replay re-executes it."""


@register_draw(DRAW, version=1)
def initial_weights(rng: np.random.Generator, *, size: int) -> np.ndarray:
    """A layer's initial weights from its own generator."""
    return rng.normal(size=size)


FAILURE = "RuntimeError: out of mémoire ✗"
"""How a failed run's error reads in its run_completed (the exception raised in its ``with``)."""
ENDINGS = ("ok", "failed", "suspended", "resumed")


@dataclass(frozen=True)
class RunShape:
    """The shape of one small recorded run."""

    rows: int
    batch_size: int
    epochs: int
    shuffle: bool
    drop_last: bool
    num_workers: int
    ops: dict[str, Any]
    """DataAugmenter's built-in ops; with ``marked`` also the test op of divergence_ops."""
    marked: bool
    metrics: str
    """``none``; ``epoch``: one value per epoch under its epoch; ``batch``: one per batch,
    without an epoch."""
    odd_values: tuple[int | float, ...]
    """Values of a metric ``odd`` logged once per epoch, cycling (none: not logged): any
    float, NaN and infinities included, and 64-bit integers."""
    checkpoints: bool
    state_map: bool
    """Checkpoints are a map of two arrays rather than one array."""
    user_draws: tuple[tuple[str | int, ...], ...]
    """Paths drawn with ``exp.generator``."""
    layers: int
    """How many layers' weights are drawn with the registered draw (``exp.draw``)."""
    hyperparams: dict[str, Any]
    seed: int | None
    """None: the library draws the root seed from the OS."""
    ending: str
    stop: int
    """The epoch after which a failed, suspended or resumed run stops (resumed: goes on)."""
    purpose: str | None
    name: str = "report-property"
    model: str | None = None
    exp_id: str | None = None
    """A user-given experiment id (the run's index is appended in a ledger of several)."""
    shared_test_rows: int | None = None
    """None: one dataset without a role; else a test dataset beside the training one, holding
    this many of its rows."""

    @property
    def batches(self) -> int:
        """Batches per epoch."""
        return self.rows // self.batch_size if self.drop_last else -(-self.rows // self.batch_size)

    @property
    def epochs_run(self) -> int:
        """How many epochs the run records."""
        return self.stop + 1 if self.ending in ("failed", "suspended") else self.epochs

    def augmenter(self) -> DataAugmenter | None:
        """The run's augmenter, or None when it augments nothing."""
        ops = [{"op": divergence_ops.OP}] if self.marked else None
        if not self.ops and ops is None:
            return None
        return DataAugmenter(**self.ops, ops=ops)


@dataclass
class Oracle:
    """What a recorded run holds, as the test that recorded it knows it."""

    url: str
    db: Path
    data_dir: Path
    exp: str
    shape: RunShape
    root_seed: int
    parent: str | None = None
    state: dict[str, Any] | None = None
    """The iterator's state where a suspended run stopped (see :func:`resume`)."""
    metrics: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    """(epoch, state digest) of each checkpoint of name ``model``, in order."""
    datasets: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)
    """name → (digest, records, role)."""


# -- strategies --------------------------------------------------------------------------------

labels = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                           min_size=1, max_size=6).filter(
    lambda text: text not in ("epoch", "worker", "rank")), st.integers(0, 2**40))
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                max_size=8))
hyperparameters = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
    st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8),
    max_size=4)


@st.composite
def run_shapes(draw: st.DrawFn, *, endings: tuple[str, ...] = ENDINGS,
               marked: bool | None = None) -> RunShape:
    """Small run shapes over every option the properties vary."""
    rows = draw(st.integers(1, 30))
    drop_last = draw(st.booleans())
    epochs = draw(st.integers(1, 3))
    ending = draw(st.sampled_from(endings))
    if ending == "resumed" and epochs == 1:
        epochs = 2
    return RunShape(
        rows=rows, batch_size=draw(st.integers(1, min(rows if drop_last else rows + 2, 10))),
        epochs=epochs, shuffle=draw(st.booleans()), drop_last=drop_last,
        num_workers=draw(st.sampled_from([0, 0, 2])),
        ops=draw(st.fixed_dictionaries({}, optional={
            "noise_std": st.sampled_from([0.05, 0.5]), "mask_prob": st.sampled_from([0.1, 0.5]),
            "scale_jitter": st.sampled_from([0.1, 0.3])})),
        marked=draw(st.booleans()) if marked is None else marked,
        metrics=draw(st.sampled_from(["none", "epoch", "batch"])),
        odd_values=tuple(draw(st.one_of(
            st.lists(st.one_of(st.floats(), st.integers(-2**63, 2**63 - 1)), max_size=3),
            st.just([1.7e308, -1.7e308])))),  # a loss swinging across the float range
        checkpoints=draw(st.booleans()), state_map=draw(st.booleans()),
        user_draws=tuple(draw(st.lists(st.lists(labels, min_size=1, max_size=3).map(tuple),
                                       max_size=3, unique=True))),
        layers=draw(st.integers(0, 2)), hyperparams=draw(hyperparameters),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**128 - 1))),
        ending=ending, stop=draw(st.integers(0, epochs - 2)) if epochs > 1 else 0,
        purpose=draw(st.one_of(st.none(), st.text(max_size=20))),
        name=draw(st.text(min_size=1, max_size=12).filter(str.strip)),
        model=draw(st.one_of(st.none(), st.text(max_size=12))),
        exp_id=draw(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}",
                                                       fullmatch=True))),
        shared_test_rows=draw(st.one_of(st.none(), st.integers(0, min(rows, 3)))))


# -- recording ---------------------------------------------------------------------------------

def dataset(shape: RunShape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The run's training features and labels."""
    rng = np.random.default_rng(seed * 1000 + shape.rows)
    return (rng.normal(size=(shape.rows, 3)).astype(np.float32),
            (rng.random(shape.rows) < 0.3).astype(np.int8))


def record(folder: Path, shape: RunShape, *, data_seed: int = 0, parent: str | None = None
           ) -> Oracle:
    """Record ``shape`` into the SQLite ledger ``folder/ledger.db`` (created, or added to);
    ``data_seed`` varies its data (and makes a user-given id unique in the ledger)."""
    db = folder / "ledger.db"
    url = f"sqlite:///{db}"
    features, targets = dataset(shape, data_seed)
    with ExperimentManager(url, data_dir=folder / "data") as manager:
        exp = manager.create_experiment(
            shape.name, seed=shape.seed, hyperparams=shape.hyperparams, purpose=shape.purpose,
            model=shape.model, parent=parent,
            exp_id=None if shape.exp_id is None else f"{shape.exp_id}.{data_seed}")
        oracle = Oracle(url, db, folder / "data", exp.id, shape, exp.root_seed, parent)
        state: dict[str, Any] | None = None
        try:
            with exp:
                state = _train(exp, shape, oracle, features, targets, range(shape.epochs))
        except RuntimeError as error:
            assert shape.ending == "failed" and FAILURE.endswith(str(error))
        oracle.state = state
        if shape.ending == "resumed":
            resume(oracle, data_seed)
    return oracle


def resume(run: Oracle, data_seed: int = 0) -> None:
    """Resume the suspended ``run`` and train its remaining epochs to the end."""
    assert run.state is not None
    features, targets = dataset(run.shape, data_seed)
    with ExperimentManager(run.url, data_dir=run.data_dir) as manager:
        with manager.resume_experiment(run.exp) as resumed:
            _train(resumed, run.shape, run, features, targets,
                   range(run.shape.stop + 1, run.shape.epochs), state=run.state)


def _train(exp: Experiment, shape: RunShape, oracle: Oracle, features: np.ndarray,
           targets: np.ndarray, epochs: range, state: dict[str, Any] | None = None
           ) -> dict[str, Any] | None:
    """The training loop of ``shape`` over ``epochs``; returns the iterator's state when it
    suspends the run."""
    registered = exp.register_dataset("train-rows", features, targets,
                                      role=None if shape.shared_test_rows is None else "train")
    oracle.datasets["train-rows"] = (registered.digest.hex(), shape.rows,
                                     None if shape.shared_test_rows is None else "train")
    if shape.shared_test_rows is not None and state is None:
        fresh = np.random.default_rng(99).normal(size=(4, 3)).astype(np.float32) + 100
        test = np.concatenate([fresh, features[:shape.shared_test_rows]])
        held = exp.register_dataset("test-rows", test, np.zeros(len(test), np.int8), role="test")
        oracle.datasets["test-rows"] = (held.digest.hex(), len(test), "test")
    if state is None:
        for path in shape.user_draws:
            exp.generator(*path).random()
        for layer in range(shape.layers):
            exp.draw(DRAW, ["layer", layer, "init"], size=layer + 2)
    batches = TrainingDataIterator(registered, shape.batch_size, augmenter=shape.augmenter(),
                                   experiment=exp, shuffle=shape.shuffle,
                                   drop_last=shape.drop_last, num_workers=shape.num_workers,
                                   start_method="fork")
    with batches:
        if state is not None:
            batches.load_state_dict(state)
        for epoch in epochs:
            total = 0.0
            for x, _y in batches:
                total += float(x.sum())
                if shape.metrics == "batch":
                    exp.log_metric("batch_sum", float(x.sum()))
                    oracle.metrics.setdefault("batch_sum", []).append((None, float(x.sum())))
            if shape.metrics == "epoch":
                exp.log_metric("epoch_sum", total, epoch=epoch)
                oracle.metrics.setdefault("epoch_sum", []).append((epoch, total))
            if shape.odd_values:
                value = shape.odd_values[epoch % len(shape.odd_values)]
                exp.log_metric("odd", value, epoch=epoch)
                oracle.metrics.setdefault("odd", []).append((epoch, value))
            if shape.checkpoints:
                weights = np.full(3, epoch + total, np.float64)
                if shape.state_map:
                    bias = np.arange(epoch + 1, dtype=np.int32)
                    exp.log_checkpoint("model", {"weights": weights, "bias": bias}, epoch=epoch)
                    digest = hashlib.sha256(b"ledger/value/v1\x00" + _packed(
                        ["ledger/state/v1", {"bias": array_digest(bias),
                                             "weights": array_digest(weights)}])).hexdigest()
                else:
                    exp.log_checkpoint("model", weights, epoch=epoch)
                    digest = array_digest(weights).hex()
                oracle.checkpoints.append((epoch, digest))
            if epoch == shape.stop and state is None:
                if shape.ending == "failed":
                    raise RuntimeError(FAILURE.split(": ", 1)[1])
                if shape.ending in ("suspended", "resumed"):
                    saved = batches.state_dict()
                    exp.suspend()
                    return saved
    return None


# -- the independent reading and hashing -------------------------------------------------------

def _packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def seed_of(root: int, path: tuple[Any, ...] | list[Any]) -> str:
    """DESIGN §1's derived seed of ``path``, in hex (labels are str or int: msgpack as is)."""
    digest = hashlib.sha256(b"ledger/seed/v1\x00" + _packed([root.to_bytes(16, "big"),
                                                              list(path)])).digest()
    return digest[:16].hex()


def array_digest(array: np.ndarray) -> bytes:
    """DESIGN §2's array digest of a little-endian C-contiguous numeric array."""
    return hashlib.sha256(b"ledger/array/v1\x00" + _packed([array.dtype.str, list(array.shape)])
                          + np.ascontiguousarray(array).tobytes()).digest()


def value_digest(value: Any) -> str:
    """SHA-256 of a JSON-like value under the value tag (keys sorted, as canonical sorts them)."""
    return hashlib.sha256(b"ledger/value/v1\x00" + _packed(_sorted(value))).hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(item) for item in value]
    return value


def json_of(value: Any) -> Any:
    """A decoded ledger value as JSON shows it (the event schema's view): bytes as lowercase
    hex, NaN and infinities as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: json_of(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_of(item) for item in value]
    return value


def event_hash(body: bytes) -> str:
    """DESIGN §3's event hash of stored body bytes."""
    return hashlib.sha256(b"ledger/event/v1\x00" + body).hexdigest()


@dataclass(frozen=True)
class StoredEvent:
    """One row of ``ledger_events``, its body decoded with msgpack."""

    stream: str
    seq: int
    kind: str
    raw: bytes
    body: dict[str, Any]

    @property
    def hash(self) -> str:
        """The hash of its stored body."""
        return event_hash(self.raw)


def stored_events(db: Path, exp: str) -> list[StoredEvent]:
    """Every event of ``exp`` in recording order, read with plain sqlite3."""
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT stream, seq, kind, body FROM ledger_events WHERE exp = ? "
                                  "ORDER BY id", (exp,)).fetchall()
    return [StoredEvent(stream, seq, kind, body, msgpack.unpackb(body, raw=False))
            for stream, seq, kind, body in rows]


def stream_heads(events: list[StoredEvent]) -> dict[str, tuple[int, str]]:
    """stream → (count, hash of its last event)."""
    heads: dict[str, tuple[int, str]] = {}
    for event in sorted(events, key=lambda e: (e.stream, e.seq)):
        heads[event.stream] = (heads.get(event.stream, (0, ""))[0] + 1, event.hash)
    return heads


def kinds(events: list[StoredEvent]) -> Counter[str]:
    """How many events of each kind."""
    return Counter(event.kind for event in events)


def with_shape(shape: RunShape, **changes: Any) -> RunShape:
    """``shape`` with ``changes``."""
    return dataclasses.replace(shape, **changes)
