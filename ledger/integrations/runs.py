"""Recording into one more stream of an existing experiment: a distributed rank, another process.

An experiment is created once, by one process, whose events go to the ``main`` stream. Other
processes that take part in the same run — ranks of a ``torch.distributed`` job, each on its own
machine — *attach* to it, each with a stream of its own (``rank-1``, ``rank-2``, …) that it alone
writes (the store refuses a second writer of a stream when it opens). Their draws use paths that
no other process uses (``("rank", r, …)``), so a draw's (kind, path) stays unique within the run.

The process that created the experiment records ``run_completed`` last, listing every stream's
count and head: it must wait until every attached stream is closed (flushed), e.g. behind a
``torch.distributed`` barrier, as :func:`ledger.integrations.torch.distributed_experiment` does.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger.arguments import check_flag
from ledger.datasets import (Dataset, check_arrays, check_name, check_role, dataset_digest,
                             dataset_from_file)
from ledger.errors import BadInputError, StoreError
from ledger.events import (AUDIT_STREAM, DATASET_REGISTERED, EXPERIMENT_CREATED, MAIN_STREAM,
                           RUN_COMPLETED, Event, check_experiment_id, check_recordable,
                           check_stream, decode_body, draw_value, is_draw,
                           refuse_second_draw, seen_draw)
from ledger.seeds import Label, check_path, root_seed_from_bytes
from ledger.store import Store, StreamWriter


class AttachedRun:
    """One stream of an existing, still running experiment; records like an Experiment does.

    Open with :meth:`open` (its own database connection) or the constructor (a Store you keep
    open). It offers what the recorded samplers and loaders need from an experiment —
    ``id``, ``root_seed``, :meth:`record_draw`, :meth:`register_dataset` — but creates nothing:
    datasets are registered by the experiment's main process, and found here by name and digest.
    """

    drains_tracked_loaders = True
    """Loaders tracked by this run (``_track``) are drained before anything else is recorded,
    so they may record their batches in runs (RecordedDataLoader does)."""

    def __init__(self, store: Store, exp: str, stream: str, *, take_over: bool = False,
                 _owns_store: bool = False) -> None:
        self.store = store
        self.id = check_experiment_id(exp)
        self.stream = check_stream(stream)
        take_over = check_flag("take_over", take_over)  # "no" would take the stream over
        self._owns_store = _owns_store
        if stream == MAIN_STREAM:
            raise BadInputError(f"got stream {stream!r}, but the main stream belongs to the "
                                f"process that created {exp}: attach with another stream name")
        if stream == AUDIT_STREAM:
            raise BadInputError(f"got stream {stream!r}, but it holds the replays and reports of "
                                f"{exp}, not its draws: attach with another stream name")
        store.experiment(exp)  # UnknownExperimentError when there is none
        created = store.first_event_body(exp, EXPERIMENT_CREATED)
        if created is None or not isinstance(created.get("params"), dict):
            raise StoreError(f"experiment {exp} has no experiment_created event to attach to")
        if store.first_event_hash(exp, RUN_COMPLETED) is not None:
            raise BadInputError(f"got experiment {exp}, but its run is already completed: "
                                f"nothing more can be recorded in it")
        params = created["params"]
        self.name = str(params.get("name"))
        self.root_seed = root_seed_from_bytes(params.get("root_seed"))
        parent = params.get("parent")
        self.parent: str | None = parent if isinstance(parent, str) else None
        """The run this one continues (``parent=`` at its creation), whose states it takes."""
        self._writer = StreamWriter(store, exp, stream, take_over=take_over, write_behind=True,
                                    guard=self._refuse_completed_run)
        self._draws: dict[tuple[str, tuple], Any] = {}
        try:
            self._remember_draws()
        except BaseException:
            self._writer.close()
            raise
        self._datasets: dict[str, Dataset] = {}
        self._loaders: weakref.WeakSet[Any] = weakref.WeakSet()
        self.closed = False

    def _remember_draws(self) -> None:
        """Load the draws the stream already holds: a process attached to it before (a rank
        killed and started again) recorded them, and a draw is recorded once per run — the same
        draw again is checked against the record, another output at its path refused."""
        if not self._writer.next_seq:
            return
        for kind, body_bytes in self.store.iter_segment_rows(
                self.id, self.stream, 0, self._writer.next_seq, ("kind", "body")):
            body = decode_body(body_bytes)
            if body["seed"] is not None:
                self._draws[(kind, tuple(body["path"]))] = draw_value(kind, body["params"],
                                                                      body["output"])

    @classmethod
    def open(cls, url: str | None, exp: str, stream: str, *, take_over: bool = False
             ) -> "AttachedRun":
        """Attach to ``exp`` in the ledger at ``url`` (default ``$LEDGER_URL``) as ``stream``."""
        store = Store.open(url)
        try:
            return cls(store, exp, stream, take_over=take_over, _owns_store=True)
        except BaseException:
            store.close()
            raise

    def __repr__(self) -> str:
        return f"AttachedRun({self.id!r}, stream={self.stream!r})"

    # -- recording -------------------------------------------------------------------------------

    def record(self, kind: str, *, path: Sequence[Any] = (), seed: bytes | None = None,
               params: Mapping[str, Any] | None = None, input: bytes | None = None,
               output: bytes | None = None, meta: Mapping[str, Any] | None = None) -> Event:
        """Append one event to this stream (buffered; durable after :meth:`flush`).

        Events still pending in this run's loaders are appended first, so the order of events
        follows the order of the calls (as :meth:`ledger.experiment.Experiment.record`), and the
        kinds the library records itself are refused, as there."""
        check_recordable(kind, params, output)
        self._prepare_to_record()
        if not is_draw(kind):
            return self._writer.append(kind, path=path, seed=seed, params=params, input=input,
                                       output=output, meta=meta)
        identity = (kind, check_path(path))
        refuse_second_draw(self._draws, *identity)
        event = self._writer.append(kind, path=path, seed=seed, params=params, input=input,
                                    output=output, meta=meta)
        self._draws[identity] = draw_value(kind, params, output)
        return event

    def record_draw(self, kind: str, path: Sequence[Any], *, seed: bytes | None,
                    params: Mapping[str, Any], input: bytes | None = None,
                    output: bytes | None = None, meta: Mapping[str, Any] | None = None
                    ) -> Event | None:
        """Record a draw once: None if this (kind, path) was recorded here with this output."""
        identity = (kind, tuple(path))
        value = draw_value(kind, params, output)
        if seen_draw(self._draws, kind, path, value):
            return None
        event = self.record(kind, path=path, seed=seed, params=params, input=input,
                            output=output, meta=meta)
        self._draws[identity] = value
        return event

    def has_draw(self, kind: str, path: tuple[Label, ...]) -> bool:
        """Whether this stream holds the draw (kind, path): recorded in this process, or by a
        process attached to it before (as :meth:`ledger.experiment.Experiment.has_draw`)."""
        return (kind, tuple(path)) in self._draws

    def drew_here(self, kind: str, path: tuple[Label, ...], output: bytes) -> bool:
        """Whether this run recorded the draw (kind, path) with ``output`` (everything it
        recorded, it recorded in this stream: here, or in a process attached to it before).
        BadInputError when with another output."""
        return seen_draw(self._draws, kind, path, output)

    def repeats_draw(self, kind: str, path: tuple[Label, ...], output: bytes, *,
                     fresh: bool) -> bool:
        """As :meth:`ledger.experiment.Experiment.repeats_draw`: :meth:`drew_here` (``fresh``
        makes no difference; draws a process attached before recorded count as this run's)."""
        return self.drew_here(kind, path, output)

    def record_normalised_draw(self, kind: str, path: tuple[Label, ...], *, seed: bytes | None,
                               params: dict[str, Any], input: bytes | None = None,
                               output: bytes | None = None) -> bool:
        """:meth:`record_draw` for the library's per-batch hot loops; True if recorded.

        As :meth:`ledger.experiment.Experiment.record_normalised_draw`: the fields must already
        be valid and normalised (``path`` a tuple of valid labels), for the same event bytes
        without per-field validation. Same once-per-run rule, same draining of loaders first.
        """
        if seen_draw(self._draws, kind, path, output):
            return False
        self._prepare_to_record()
        self._writer.append_normalised(kind, list(path), seed=seed, params=params, input=input,
                                       output=output)
        self._draws[(kind, path)] = output
        return True

    def _prepare_to_record(self) -> None:
        """Append what this run's loaders hold first; refuse once the stream is closed."""
        self._drain_loaders()
        if self.closed:
            raise StoreError(f"stream {self.stream} of {self.id} is closed")

    def flush(self) -> int:
        """Write every buffered event now; return the last durable seq of this stream."""
        self._drain_loaders()
        return self._writer.flush()

    def _refuse_completed_run(self, connection: Any) -> None:
        """First in each batch's transaction: once the main process has recorded
        ``run_completed``, nothing more belongs to the run (it would no longer verify). Under
        the experiment's shared lock, so the completion either counts this batch or is seen."""
        self.store.lock_experiment(connection, self.id, shared=True)
        if Store.last_kind_in(connection, self.id, MAIN_STREAM) == RUN_COMPLETED:
            raise StoreError(f"the run of {self.id} is already completed: events of stream "
                             f"{self.stream} recorded after that are not written")

    def _track(self, loader: Any) -> None:
        """Drain ``loader`` (its ``_drain_recorder()``) before recording anything else, and at
        close (its ``close()``): the protocol of Experiment's iterators."""
        self._loaders.add(loader)

    def _drain_loaders(self) -> None:
        for loader in list(self._loaders):
            loader._drain_recorder()

    # -- datasets --------------------------------------------------------------------------------

    def register_dataset(self, name: str, features: Any = None, labels: Any = None, *,
                         path: str | os.PathLike[str] | None = None,
                         features_key: str = "features", labels_key: str | None = "labels",
                         role: str | None = None) -> Dataset:
        """The dataset ``name`` as the experiment's main process registered it.

        Give the same arrays (or ``path=``) and ``role`` as the main process: their digest and
        role must match the recorded ones. Nothing is recorded here; BadInputError when the
        main process has not registered this content under this name and role (yet: register
        there first, then attach).
        """
        check_name(name)
        check_role(role)
        if path is not None and (features is not None or labels is not None):
            raise BadInputError(f"got both arrays and path= for dataset {name!r}: give one")
        if path is not None:
            dataset = dataset_from_file(name, Path(path), features_key, labels_key)
            features, labels = dataset.features, dataset.labels
        elif features is None:
            raise BadInputError(f"got no features for dataset {name!r}: give arrays or path=")
        else:
            features, labels = check_arrays(features, labels)
        digest = dataset_digest(features, labels)
        for _stream, _seq, _kind, body_bytes in self.store.iter_kind_bodies(
                self.id, [DATASET_REGISTERED]):
            body = decode_body(body_bytes)
            params = body["params"] if isinstance(body["params"], dict) else {}
            if (params.get("name") == name and body["output"] == digest
                    and params.get("role") == role):
                dataset = Dataset(name, features, labels, digest, params.get("loader"))
                self._datasets[name] = dataset
                return dataset
        raise BadInputError(f"got dataset {name!r} with digest {digest.hex()[:16]}… and role "
                            f"{role!r}, but {self.id} has no such dataset registered: the main "
                            f"process must register the same content and role first")

    def dataset_registered(self, dataset: Dataset) -> bool:
        """True when ``dataset`` (same name and digest) was found by :meth:`register_dataset`."""
        known = self._datasets.get(dataset.name)
        return known is not None and known.digest == dataset.digest

    # -- life cycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush, close the stream (releasing it) and, when opened by :meth:`open`, the store."""
        if self.closed:
            return
        try:
            for loader in list(self._loaders):
                loader.close()
        finally:
            self.closed = True
        try:
            self._writer.close()
        finally:
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> "AttachedRun":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
