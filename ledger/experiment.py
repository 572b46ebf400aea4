"""ExperimentManager and Experiment: a run's root seed, its main stream, and what it records.

``ExperimentManager(url).create_experiment(name, seed=42)`` records ``experiment_created`` —
root seed, hyperparameters, entrypoint, code version, environment — together with the
experiment's row, then every event of the run goes through the experiment's main
:class:`~ledger.store.StreamWriter`. Leaving the ``with`` block records ``run_completed`` (status
``ok``, or ``failed`` with the error when an exception escaped). A process that is killed leaves
an incomplete run that verifies up to its last flushed event.

A draw's identity (kind, path) is unique within a run: recording the same draw again with the
same output is a no-op (a resumed iterator re-entering its epoch), with another output an error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ledger.arguments import check_epoch
from ledger.canonical import canonical, normalise, normalise_entries
from ledger.datasets import (Dataset, check_arrays, check_name, check_path_argument, check_role,
                             dataset_digest, dataset_from_file, default_data_dir, store_npz)
from ledger.digests import ZERO_DIGEST, value_digest
from ledger.environment import code_version, current_user, environment_fingerprint
from ledger.environment import entrypoint as detect_entrypoint
from ledger.errors import (BadInputError, ForeignStateError, LedgerError, StateAheadError,
                           StoreError)
from ledger.events import (AUDIT_STREAM, CHECKPOINT, COMPLETION_STATUSES, DATASET_REGISTERED,
                           EPOCH_RESET, EXPERIMENT_CREATED, MAIN_STREAM, METRIC, RUN_COMPLETED,
                           USER_DRAW, Event, check_experiment_id, check_recordable, draw_value,
                           is_draw, make_event, new_experiment_id, refuse_second_draw,
                           seen_draw)
from ledger.logged_values import check_metric_value, checkpoint_record, state_digest
from ledger.processes import forks_so_far
from ledger.seeds import (SEED_SCHEME, Label, check_path, check_root_seed, derive_bytes,
                          draw_root_seed, generator, root_seed_to_bytes)
from ledger.store import Store, StreamWriter
from ledger.store.connect import parse_url, sqlite_file_path
from ledger.text import run_error

if TYPE_CHECKING:
    from ledger.iterator import TrainingDataIterator

RESERVED_LABELS = frozenset({"epoch", "worker", "rank"})
"""First labels of the library's own paths: a user draw may not start with them."""
_ERROR_MAX = 500
_SECOND_DRAW_HINT = " (use one iterator per experiment, or record=False for evaluation)"
_SECOND_USER_DRAW_HINT = (": give each draw its own path — exp.generator(\"dropout\", epoch, "
                          "step), say — or draw again from the generator it returned")


def _setting(value: Any) -> str:
    """A recorded setting in a message: a digest as the start of its hex."""
    return value.hex()[:16] + "…" if isinstance(value, bytes) else repr(value)


def _second_draw_hint(kind: str) -> str:
    """What to do about a second draw at a recorded path: a user draw is the user's own path
    (it was told to use one iterator per experiment, which says nothing to it)."""
    return _SECOND_USER_DRAW_HINT if kind == USER_DRAW else _SECOND_DRAW_HINT


def _one_line(error: BaseException) -> str:
    """``Type: message`` of the error that ended a run, on one line, cut to ``_ERROR_MAX``."""
    return run_error(error, _ERROR_MAX)


def _existing_path(what: str, value: Any) -> Path:
    """``value`` as a Path that exists, else BadInputError: a mistyped folder would otherwise
    be recorded quietly as code outside any repository."""
    path = check_path_argument(what, value)
    if not path.exists():
        raise BadInputError(f"got {what} {os.fspath(path)!r}, but no such file or folder exists")
    return path


class Experiment:
    """One run: its id, root seed and main stream. Use as a context manager.

    Create through :meth:`ExperimentManager.create_experiment`. Thread-safe: a background thread
    may log metrics, checkpoints and draws while the training loop runs; each call is recorded
    whole, before or after ``run_completed``, never between (after it, StoreError). An iterator
    belongs to the thread that iterates it. A process forked from the experiment's records
    nothing (StoreError), and leaving the ``with`` block there leaves the run to its process.
    """

    def __init__(self, store: Store, exp: str, name: str, root_seed: int, root_seed_source: str,
                 writer: StreamWriter, data_dir: Path | None) -> None:
        self.store = store
        self.id = exp
        self.name = name
        self.root_seed = root_seed
        self.root_seed_source = root_seed_source
        self.data_dir = data_dir
        self._writer = writer
        self._draws: dict[tuple[str, tuple], Any] = {}
        self._drawn_here: set[tuple[str, tuple]] = set()
        """The draws this process recorded or re-entered (a resumed run's first iterator
        re-entering an epoch the lost attempt drew): what :meth:`drew_here` answers from."""
        self.resumed = False
        """True for a run continued by :meth:`ExperimentManager.resume_experiment`."""
        self.parent: str | None = None
        """The run this one continues or derives from (``parent=``), as recorded."""
        self._datasets: dict[str, Dataset] = {}
        self._dataset_roles: dict[str, str | None] = {}
        self._recorded_datasets: dict[str, tuple[bytes, Any]] = {}
        """Datasets an interrupted run registered before it was resumed: name -> (digest,
        role as recorded)."""
        # Keyed (kind, name, epoch) as recorded: a damaged record's name may be anything.
        self._recorded_logs: dict[tuple[str, Any, Any], deque[tuple[int | None, bytes | None]]]
        self._recorded_logs = {}
        """Metrics and checkpoints recorded before a resume, to be re-logged identically:
        (seq in main, or None in another stream; output), in recorded order."""
        self._logs_passed: dict[tuple[str, str, int | None], int] = {}
        """How many metrics and checkpoints of each (kind, name, epoch) the run has gone past
        at this point: logged (or re-logged) in this process, or skipped at a restored state."""
        self._reset_params: dict[tuple[Any, ...], Any] = {}
        """The params of each epoch_reset the run holds, by path: what its batches were made
        with (batch_size, drop_last, …), which the order digest, its output, does not show."""
        self._iterators: weakref.WeakSet[TrainingDataIterator] = weakref.WeakSet()
        self._pid = os.getpid()
        self._forks = forks_so_far()
        self.status: str | None = None
        self.head: bytes | None = None
        self._entered = False
        self._lock = threading.RLock()
        """Held by every append and by close(): a draw (or a resumed run's re-logged metric) is
        checked and recorded as one step, and nothing comes between run_completed's stream
        counts and run_completed."""

    def __repr__(self) -> str:
        return f"Experiment({self.id!r}, name={self.name!r}, status={self.status or 'running'})"

    @property
    def closed(self) -> bool:
        """True once ``run_completed`` was recorded."""
        return self.status is not None

    # -- recording -------------------------------------------------------------------------------

    def record(self, kind: str, *, path: Sequence[Any] = (), seed: bytes | None = None,
               params: Mapping[str, Any] | None = None, input: bytes | None = None,
               output: bytes | None = None, meta: Mapping[str, Any] | None = None) -> Event:
        """Append one event to the main stream (buffered; durable after :meth:`flush`).

        The kinds the library records itself (:data:`~ledger.events.LIBRARY_KINDS`) are refused.
        A draw (any kind but metric, checkpoint and dataset_registered, custom kinds included)
        is refused at a (kind, path) the run already holds: replay could never certify the run.
        """
        check_recordable(kind, params, output)
        if not is_draw(kind):
            return self._append(kind, path=path, seed=seed, params=params, input=input,
                                output=output, meta=meta)
        identity = (kind, check_path(path))
        self._check_process()  # before the lock, which a forked child may inherit held
        with self._lock:
            refuse_second_draw(self._draws, *identity)
            event = self._append(kind, path=path, seed=seed, params=params, input=input,
                                 output=output, meta=meta)
            self._draws[identity] = draw_value(kind, params, output)
            self._drawn_here.add(identity)
            return event

    def record_draw(self, kind: str, path: Sequence[Any], *, seed: bytes | None,
                    params: Mapping[str, Any], input: bytes | None = None,
                    output: bytes | None = None, meta: Mapping[str, Any] | None = None
                    ) -> Event | None:
        """Record a draw once per run: None if this (kind, path) was recorded with this output.

        Raises BadInputError when the same draw was already recorded with another output.
        """
        return self._append_draw(kind, path, seed=seed, params=params, input=input,
                                 output=output, meta=meta)

    def _append_draw(self, kind: str, path: Sequence[Any], *, seed: bytes | None,
                     params: Mapping[str, Any], input: bytes | None = None,
                     output: bytes | None = None, meta: Mapping[str, Any] | None = None
                     ) -> Event | None:
        identity = (kind, tuple(path))
        value = draw_value(kind, params, output)
        self._check_process()  # before the lock, which a forked child may inherit held
        with self._lock:
            if seen_draw(self._draws, kind, path, value, _second_draw_hint(kind)):
                self._check_same_reset(kind, identity[1], params)
                self._drawn_here.add(identity)
                return None
            event = self._append(kind, path=path, seed=seed, params=params, input=input,
                                 output=output, meta=meta)
            self._draws[identity] = value
            if kind == EPOCH_RESET:
                self._reset_params[identity[1]] = normalise(params)
            self._drawn_here.add(identity)
            return event

    def _check_same_reset(self, kind: str, path: tuple[Any, ...], params: Mapping[str, Any]
                          ) -> None:
        """Refuse an epoch_reset the run holds with other params. Its output, the order's
        digest, does not depend on batch_size or drop_last: a resumed run that started over
        with another batch_size was taken for the same draw, trained on other batches than
        its record says, and replay certified it."""
        recorded = self._reset_params.get(path) if kind == EPOCH_RESET else None
        if recorded is None:
            return
        given = normalise(params)
        if canonical(given) == canonical(recorded) or not isinstance(recorded, dict):
            return
        # the params both hold: one a later library added is no difference in what was done
        differ = sorted(key for key in set(given) & set(recorded)
                        if canonical(given[key]) != canonical(recorded[key]))
        if not differ:
            return
        shown = ", ".join(f"{key}={_setting(given[key])} (recorded {_setting(recorded[key])})"
                          for key in differ[:4])
        raise BadInputError(f"got epoch_reset at path {list(path)} with {shown}, but "
                            f"{self.id} recorded it with the settings in brackets: its batches "
                            f"would differ from its record; make the iterator as the run did")

    def record_normalised_draw(self, kind: str, path: tuple[Label, ...], *, seed: bytes | None,
                               params: dict[str, Any], input: bytes | None = None,
                               output: bytes | None = None) -> bool:
        """:meth:`record_draw` for the library's per-batch hot loops; True if recorded.

        The fields must already be valid and normalised, as
        :meth:`StreamWriter.append_normalised` requires (``path`` a tuple of valid labels):
        the same event bytes at a quarter of the cost. Same once-per-run rule.
        """
        self._check_process()  # before the lock, which a forked child may inherit held
        with self._lock:
            if seen_draw(self._draws, kind, path, output, _second_draw_hint(kind)):
                return False
            self._check_open()
            self._writer.append_normalised(kind, list(path), seed=seed, params=params,
                                           input=input, output=output)
            self._draws[(kind, path)] = output
            return True

    def has_draw(self, kind: str, path: tuple[Label, ...]) -> bool:
        """Whether this run recorded the draw (kind, path) — in this process, or before it was
        resumed."""
        return (kind, path) in self._draws

    def drew_here(self, kind: str, path: tuple[Label, ...], output: bytes) -> bool:
        """Whether this process recorded the draw (kind, path) with ``output``, or re-entered
        it (a resumed run redoing what the lost attempt drew). BadInputError when the run has
        that draw with another output (a draw is recorded once per run)."""
        with self._lock:
            return ((kind, path) in self._drawn_here
                    and seen_draw(self._draws, kind, path, output, _second_draw_hint(kind)))

    def drawn_labels(self, kind: str, prefix: tuple[Label, ...], at: int) -> list[Any]:
        """The labels at position ``at`` of the paths of this run's ``kind`` draws that begin
        with ``prefix`` — the epochs of its ``epoch_reset`` draws, say."""
        with self._lock:
            return [path[at] for drawn, path in self._draws
                    if drawn == kind and len(path) > at and path[:len(prefix)] == prefix]

    def repeats_draw(self, kind: str, path: tuple[Label, ...], output: bytes, *,
                     fresh: bool) -> bool:
        """Whether a draw of (kind, path) by a caller that has not been told to redo it would
        repeat one: this process drew it already, or — in a resumed run — the lost attempt drew
        it and another iterator or sampler of this process has already started over (``fresh``:
        the caller itself has drawn nothing of ``kind`` yet, so it is not the one starting
        over). Redoing the lost attempt's draws is the first one's to do, not a repeat.
        BadInputError when the run has that draw with another output."""
        if self.drew_here(kind, path, output):
            return True
        return fresh and self.has_draw(kind, path) and self.drew_kind_here(kind)

    def drew_kind_here(self, kind: str) -> bool:
        """Whether this process recorded, or re-entered, any draw of ``kind`` (batches aside:
        :meth:`record_normalised_draw` does not count) — in a resumed run, whether an iterator
        of this process has started an epoch yet."""
        with self._lock:
            return any(drawn == kind for drawn, _path in self._drawn_here)

    def _append(self, kind: str, **fields: Any) -> Event:
        self._check_process()  # before the lock, which a forked child may inherit held
        with self._lock:
            self._check_open()
            return self._writer.append(kind, **fields)

    def _check_recording(self) -> None:
        """Refuse a call that would record: in a forked process, or once the run is closed."""
        self._check_process()
        self._check_open()

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"experiment {self.id} is closed (status {self.status}): "
                             f"nothing more can be recorded")

    def _check_process(self) -> None:
        """Refuse a process forked from the experiment's: its copy of the main stream's writer
        and buffer is not the run's (its events would be lost, or break the parent's chain)."""
        if forks_so_far() != self._forks:
            raise StoreError(f"experiment {self.id} records in process {self._pid}, not in "
                             f"process {os.getpid()} forked from it: send the values back and "
                             f"record them there")

    def flush(self) -> int:
        """Write every buffered event now; return the last durable seq of the main stream."""
        return self._writer.flush()

    # -- what trainers call ----------------------------------------------------------------------

    def register_dataset(self, name: str, features: Any = None, labels: Any = None, *,
                         path: str | os.PathLike[str] | None = None,
                         features_key: str = "features", labels_key: str | None = "labels",
                         role: str | None = None) -> Dataset:
        """Register a dataset and record ``dataset_registered``; return it for the iterator.

        Give arrays (stored content-addressed as ``.npz`` in the ledger's data folder) or
        ``path=`` to an ``.npz`` file of yours (referenced where it is; its arrays are read
        under ``features_key`` / ``labels_key``). Either way the content digest is recorded and
        replay re-checks it. ``role`` (``"train"``, ``"test"``, ``"validation"``, …) is recorded
        when given: the compliance report checks that no record of a test or validation dataset
        occurs in a training one. Registering the same name again returns the same dataset when
        the content and role are equal, and is refused otherwise.
        """
        self._check_recording()  # before the arrays are stored: a closed run keeps nothing
        check_name(name)
        check_role(role)
        if path is not None:
            if features is not None or labels is not None:
                raise BadInputError("got both arrays and path=, but must be one or the other")
            dataset = dataset_from_file(name, path, features_key, labels_key)
        else:
            if features is None:
                raise BadInputError(f"got no features for dataset {name!r}: give arrays or path=")
            features, labels = check_arrays(features, labels)
            digest = dataset_digest(features, labels)
            if self.data_dir is None:
                raise BadInputError(f"got in-memory arrays for dataset {name!r}, but the ledger "
                                    f"{self.store.url} has no data folder: pass data_dir= to "
                                    f"ExperimentManager, set LEDGER_DATA_DIR, or give path=")
            loader = store_npz(self.data_dir, features, labels, digest)
            dataset = Dataset(name, features, labels, digest, loader)
        with self._lock:  # threads registering one name record it once
            recorded = self._recorded_datasets.get(name)
            if recorded is not None:  # refused, and nothing consumed: a retry is too
                if recorded[0] != dataset.digest:
                    raise BadInputError(f"got other content for dataset {name!r} than the run "
                                        f"registered before it was resumed "
                                        f"({recorded[0].hex()[:16]}…)")
                if recorded[1] != role:
                    raise BadInputError(f"got role {role!r} for dataset {name!r}, but the run "
                                        f"registered it with role {recorded[1]!r} before it "
                                        f"was resumed")
                del self._recorded_datasets[name]
                self._datasets[name] = dataset
                self._dataset_roles[name] = role
                return dataset
            known = self._datasets.get(name)
            if known is not None:
                if known.digest != dataset.digest:
                    raise BadInputError(f"got other content for dataset {name!r}, but it is "
                                        f"already registered in {self.id} with digest "
                                        f"{known.digest.hex()}")
                if self._dataset_roles.get(name) != role:
                    raise BadInputError(f"got role {role!r} for dataset {name!r}, but it is "
                                        f"already registered in {self.id} with role "
                                        f"{self._dataset_roles.get(name)!r}")
                return known
            params = {
                "name": name, "length": len(dataset), "loader": dataset.loader,
                "features": {"dtype": dataset.features.dtype.str,
                             "shape": list(dataset.features.shape)},
                "labels": None if dataset.labels is None else {
                    "dtype": dataset.labels.dtype.str, "shape": list(dataset.labels.shape)}}
            if role is not None:  # absent, not null, when none is given: as before roles
                params["role"] = role
            self.record(DATASET_REGISTERED, params=params, output=dataset.digest)
            self._datasets[name] = dataset
            self._dataset_roles[name] = role
            return dataset

    def dataset_registered(self, dataset: Dataset) -> bool:
        """True when ``dataset`` (same name and digest) was registered in this experiment."""
        known = self._datasets.get(dataset.name)
        return known is not None and known.digest == dataset.digest

    def log_metric(self, name: str, value: Any, *, epoch: int | None = None) -> Event | None:
        """Record a ``metric`` event: params {epoch, name, value}, output value_digest(value).

        In a resumed run, a metric the run recorded before the interruption is not recorded
        again (None is returned) when its value is the same, and refused when it differs.
        """
        self._check_recording()
        if not isinstance(name, str) or not name:
            raise BadInputError(f"a metric name must be a non-empty str, got {name!r}")
        epoch = check_epoch(epoch, optional=True)
        value = normalise(check_metric_value(name, value))
        output = value_digest(value)
        with self._lock:
            event = None if self._already_logged(METRIC, name, epoch, output) else self.record(
                METRIC, params={"epoch": epoch, "name": name, "value": value}, output=output)
            self._pass_log(METRIC, name, epoch)
            return event

    def log_checkpoint(self, name: str, state: Any, *, epoch: int | None = None
                       ) -> Event | None:
        """Record a ``checkpoint`` event for a model state (an array or a map of arrays).

        Only the digest is recorded (see :func:`state_digest`), with each array's dtype and
        shape; save the weights themselves wherever you keep checkpoints.
        """
        self._check_recording()
        if not isinstance(name, str) or not name:
            raise BadInputError(f"a checkpoint name must be a non-empty str, got {name!r}")
        epoch = check_epoch(epoch, optional=True)
        output, arrays = checkpoint_record(state)
        with self._lock:
            event = None if self._already_logged(CHECKPOINT, name, epoch, output) else (
                self.record(CHECKPOINT, params={"epoch": epoch, "name": name, "arrays": arrays},
                            output=output))
            self._pass_log(CHECKPOINT, name, epoch)
            return event

    def _pass_log(self, kind: str, name: str, epoch: int | None) -> None:
        key = (kind, name, epoch)
        self._logs_passed[key] = self._logs_passed.get(key, 0) + 1

    def _already_logged(self, kind: str, name: str, epoch: int | None, output: bytes) -> bool:
        """True when a resumed run re-logs what it recorded before the interruption.

        Raises BadInputError when the value differs: the resumed run is not reproducing itself.
        """
        recorded = self._recorded_logs.get((kind, name, epoch))
        if not recorded:
            return False
        if recorded[0][1] != output:  # refused, and nothing consumed: a retry is refused too
            raise BadInputError(f"got another {kind} {name!r} for epoch {epoch} than the run "
                                f"recorded before it was resumed: the resumed run diverges")
        recorded.popleft()
        return True

    def logs_passed(self) -> list[list[Any]]:
        """``[kind, name, epoch, count]`` for each metric and checkpoint name and epoch logged:
        how many of them the run has gone past at this point (what
        :meth:`TrainingDataIterator.state_dict` saves for :meth:`skip_logs_to`)."""
        with self._lock:
            return [[kind, name, epoch, count]
                    for (kind, name, epoch), count in self._logs_passed.items()]

    def skip_logs_to(self, passed: Sequence[tuple[str, str, int | None, int]]) -> None:
        """A resumed run continues from a state saved when the run had gone past ``passed``
        (:meth:`logs_passed`): the recorded metrics and checkpoints among them come before the
        state and will not be logged again, so later ones are no longer compared with them.

        Counted per name and epoch, not by the ledger's position when the state was saved: a
        resumed run that saves a state before it has re-logged all the lost attempt recorded
        would otherwise take those later records for earlier ones and log them twice."""
        with self._lock:
            for kind, name, epoch, count in passed:
                key = (kind, name, epoch)
                done = self._logs_passed.get(key, 0)
                recorded = self._recorded_logs.get(key)
                while recorded and done < count and recorded[0][0] is not None:
                    recorded.popleft()
                    done += 1
                self._logs_passed[key] = max(done, count)

    def forget_logs_before(self, seq: int) -> None:
        """A resumed run continues from a state saved when main held ``seq`` events, by a
        library that did not save :meth:`logs_passed` yet: metrics and checkpoints recorded
        before it will not be logged again, so later ones are no longer compared with them."""
        with self._lock:
            for recorded in self._recorded_logs.values():
                while recorded and recorded[0][0] is not None and recorded[0][0] < seq:
                    recorded.popleft()

    def generator(self, *path: Any) -> np.random.Generator:
        """The numpy Generator of a user draw point, e.g. ``exp.generator("model", "init")``.

        Records ``user_draw`` (path, derived seed) the first time the path is drawn. Paths
        starting with ``epoch``, ``worker`` or ``rank`` belong to the library and are refused.
        """
        labels = self._user_path(path)
        self.record_draw(USER_DRAW, labels, seed=derive_bytes(self.root_seed, labels),
                         params={"generator": "numpy.PCG64"})
        return generator(self.root_seed, labels)

    def draw(self, name: str, path: Sequence[Any], *, version: int | None = None,
             **params: Any) -> Any:
        """Run the registered user draw ``name`` (:func:`ledger.register_draw`) at ``path``.

        The function gets the path's generator and ``params``; the ``user_draw`` event records
        the path, seed, ``{"draw": name, "version": v, "params": params}`` and the digest of the
        result, so replay can rerun it. ``version`` defaults to the highest registered.
        """
        from ledger.user_draws import (check_draw_params, latest_version, registered_draw,
                                       result_digest)

        self._check_recording()
        labels = self._user_path(path)
        version = latest_version(name) if version is None else version
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadInputError(f"got draw version {version!r}, but it must be an int")
        function = registered_draw(name, version)
        check_draw_params(name, version, params)
        # The function gets the params as recorded (numpy scalars as numbers, tuples as lists,
        # a copy it may change), so that replay, which has only the record, calls it the same.
        recorded = normalise_entries(f"draw {name!r} params", params)
        result = function(generator(self.root_seed, labels), **normalise(params))
        self.record_draw(USER_DRAW, labels, seed=derive_bytes(self.root_seed, labels),
                         params={"draw": name, "version": version, "params": recorded},
                         output=result_digest(result))
        return result

    def _user_path(self, path: Sequence[Any]) -> tuple:
        labels = check_path(path)
        if not labels or labels[0] in RESERVED_LABELS:
            raise BadInputError(f"got path {list(labels)}, but a user draw path must be non-empty "
                                f"and not start with {sorted(RESERVED_LABELS)}")
        return labels

    # -- life cycle ------------------------------------------------------------------------------

    def _track(self, iterator: TrainingDataIterator) -> None:
        self._iterators.add(iterator)

    def close(self, status: str = "ok", error: str | None = None) -> Event:
        """Record ``run_completed`` and flush. Called by ``with``; returns the head event.

        When it cannot be recorded durably (a failed write, a lost database), the error is
        raised, :attr:`status` is ``"incomplete"`` and the main stream is released, so that the
        run — incomplete in the ledger — can be resumed.
        """
        if status not in COMPLETION_STATUSES:
            raise BadInputError(f"got status {status!r}, but must be 'ok' or 'failed'")
        self._check_process()
        with self._lock:  # no other thread's event between the stream counts and the end
            return self._complete(status, error)

    def _complete(self, status: str, error: str | None) -> Event:
        if self.closed:
            raise StoreError(f"experiment {self.id} is already closed (status {self.status})")
        failure: BaseException | None = None
        for iterator in list(self._iterators):
            try:
                iterator.close()
            except BaseException as problem:  # still complete the run, then raise
                failure = failure or problem
        if failure is not None and status == "ok":
            status, error = "failed", _one_line(failure)
        def params_of(connection: Any) -> dict[str, Any]:
            # Read in the transaction that writes run_completed, under the experiment's lock:
            # no attached stream's batch can commit between these counts and the event.
            self.store.lock_experiment(connection, self.id, shared=False)
            streams = {head.stream: {"count": head.count, "head": head.head}
                       for head in Store.stream_heads_in(connection, self.id).values()
                       if head.stream != AUDIT_STREAM}
            # Main's count and head come from the writer: its buffer is written with
            # run_completed, in the same transaction (one durable commit less per run).
            streams[MAIN_STREAM] = {"count": self._writer.next_seq, "head": self._writer.head}
            params: dict[str, Any] = {"status": status, "streams": streams}
            if error is not None:
                params["error"] = error
            return params

        try:
            self._check_process()  # before the lock, which a forked child may inherit held
            with self._lock:
                self._check_open()
                event = self._writer.close_with(RUN_COMPLETED, params_of)
        except BaseException:
            self._release_writer()
            self.status = "incomplete"  # no run_completed in the ledger: it can be resumed
            raise
        self.status = status
        self.head = event.hash
        if failure is not None:
            raise failure
        return event

    def _release_writer(self) -> None:
        """When ``run_completed`` cannot be recorded (a failed write stopped the writer, the
        database went away): close the main writer anyway — its thread stopped, what it can
        still write written, its stream released — so that the run, left incomplete, can be
        resumed, in this process too. The error that stopped the run is the one raised."""
        try:
            self._writer.close()
        except LedgerError:
            pass

    def suspend(self) -> None:
        """Stop recording without completing the run, so it can be resumed elsewhere.

        Flushes, closes the iterators and releases the main stream; the run stays incomplete
        until :meth:`ExperimentManager.resume_experiment` continues it. For preemptible jobs:
        save your checkpoint, ``exp.suspend()``, exit.
        """
        self._check_process()
        with self._lock:
            if self.closed:
                raise StoreError(f"experiment {self.id} is already closed (status "
                                 f"{self.status})")
            for iterator in list(self._iterators):
                iterator.close()
            self._writer.close()
            self.status = "suspended"

    def __enter__(self) -> "Experiment":
        """Refuse a closed run (its ``with`` would record nothing, without a word) and a second
        ``with`` around the same run (the inner one's end would complete it under the outer)."""
        self._check_open()
        if self._entered:
            raise BadInputError(f"experiment {self.id} is already in a with block: leaving the "
                                f"inner one would complete the run under the outer one")
        self._entered = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        if self.closed or forks_so_far() != self._forks:  # done, suspended, or in a forked child
            return
        if exc is None:
            self.close("ok")
        elif isinstance(exc, (StateAheadError, ForeignStateError)):
            self.suspend()  # refused before anything was done: left resumable
        else:
            self.close("failed", _one_line(exc))


def default_data_dir_for(url: str | None = None) -> Path | None:
    """The data folder :class:`ExperimentManager` uses for the ledger at ``url`` when given
    none: ``$LEDGER_DATA_DIR``, else ``ledger-data/`` beside an SQLite file; None for a
    PostgreSQL (or in-memory) ledger without ``$LEDGER_DATA_DIR``. Asked without opening the
    ledger, so that a caller can refuse before anything is created."""
    return default_data_dir(sqlite_file_path(parse_url(url)))


class ExperimentManager:
    """Creates experiments in one ledger (created if missing). Use as a context manager or close().

    ``data_dir`` is where registered arrays are stored: default ``$LEDGER_DATA_DIR``, else
    ``ledger-data/`` beside an SQLite ledger; PostgreSQL ledgers need one of the two.
    """

    def __init__(self, url: str | None = None, *, data_dir: str | os.PathLike[str] | None = None
                 ) -> None:
        given_dir = None if data_dir is None else check_path_argument("data_dir", data_dir)
        self.store = Store.open(url, create=True)
        self.data_dir = given_dir if given_dir is not None else default_data_dir_for(url)

    def create_experiment(self, name: str, *, seed: int | None = None,
                          hyperparams: Mapping[str, Any] | None = None, model: str | None = None,
                          purpose: str | None = None, parent: str | None = None,
                          entrypoint: Mapping[str, Any] | None = None,
                          exp_id: str | None = None,
                          code_dir: str | os.PathLike[str] | None = None) -> Experiment:
        """Record ``experiment_created`` and return the running :class:`Experiment`.

        ``seed`` is the root seed (an int in ``[0, 2**128)``); without one, 128 bits are drawn
        from the OS and recorded (``root_seed_source`` tells which). ``model`` defaults to
        ``name``. ``entrypoint`` overrides the detected entrypoint (e.g. module and
        function). ``parent`` names the experiment this one continues or derives from.
        ``code_dir`` is a folder (or file) in the repository whose git version is recorded;
        by default the main script's: give it when the process starts from elsewhere — a
        console script in a virtualenv, a notebook, a launcher in another repository.
        """
        if not isinstance(name, str) or not name.strip():
            raise BadInputError(f"an experiment name must be a non-empty str, got {name!r}")
        for what, text in (("model", model), ("purpose", purpose)):
            if text is not None and not isinstance(text, str):
                raise BadInputError(f"got {what} of type {type(text).__name__}, but must be a str")
        for what, given in (("hyperparams", hyperparams), ("entrypoint", entrypoint)):
            if given is not None and not isinstance(given, Mapping):
                raise BadInputError(f"got {what} of type {type(given).__name__}, but must be a "
                                    f"map (dict) of names to values")
        code_start = None if code_dir is None else _existing_path("code_dir", code_dir)
        root = draw_root_seed() if seed is None else check_root_seed(seed)
        exp = check_experiment_id(exp_id) if exp_id is not None else new_experiment_id()
        if parent is not None:
            check_experiment_id(parent)
        params: dict[str, Any] = {
            "name": name, "model": model if model is not None else name,
            "root_seed": root_seed_to_bytes(root), "root_seed_source": "os" if seed is None
            else "user", "seed_scheme": SEED_SCHEME,
            "hyperparams": normalise_entries("hyperparams", hyperparams or {}),
            "entrypoint": normalise_entries("entrypoint", entrypoint) if entrypoint is not None
            else detect_entrypoint(),
            "code": code_version(code_start), "environment": environment_fingerprint()}
        if purpose is not None:
            params["purpose"] = purpose
        if parent is not None:
            params["parent"] = parent
        meta = {"pid": os.getpid(), "host": socket.gethostname(), "user": current_user()}
        first = make_event(exp, MAIN_STREAM, 0, EXPERIMENT_CREATED, params=params, meta=meta,
                           prev=ZERO_DIGEST, t=time.time_ns())
        # Main is claimed first: a ledger that refuses the claim (a role that cannot read or
        # write the claims table) then records nothing, not a run that can never go on.
        writer = StreamWriter(self.store, exp, MAIN_STREAM, write_behind=True,
                              _head=(0, first.hash))
        try:
            self.store.insert_experiment(exp, name, first)
        except BaseException:
            with contextlib.suppress(LedgerError):  # the error to raise is the insert's
                writer.close()
            raise
        experiment = Experiment(self.store, exp, name, root, params["root_seed_source"],
                                writer, self.data_dir)
        experiment.parent = parent
        return experiment

    def resume_experiment(self, exp: str, *, take_over: bool = False,
                          code_dir: str | os.PathLike[str] | None = None) -> Experiment:
        """Continue an interrupted run — killed, or suspended — under its own id and root seed.

        The run must be incomplete and must verify. Every draw, dataset, metric and checkpoint it
        recorded is remembered: when the resumed run reaches them again (from its last
        checkpoint) they are checked against the record instead of recorded twice, so each
        draw stays recorded once and a resumed run that does not reproduce itself is refused.
        A ``run_resumed`` event marks where the run continued. Restore your model and the
        iterator (``load_state_dict``) from your checkpoint files, then go on training.

        A process of this machine that held the run and is gone is taken over by itself. A
        holder on another machine (a node that crashed) cannot be asked: once you know it is
        gone, pass ``take_over=True``. Should it still be alive, its next flush of buffered
        events fails (:class:`~ledger.errors.ConcurrentWriteError`): never a forked chain.

        ``run_resumed`` also records this session's environment and code version, as
        ``experiment_created`` records the first session's (``code_dir`` as there: the
        repository whose version is recorded, by default the main script's), so that a run
        resumed on another machine or with other library versions shows it.
        """
        from ledger.resume import resume

        return resume(self.store, exp, self.data_dir, take_over=take_over, code_dir=code_dir)

    def close(self) -> None:
        """Release the database connections."""
        self.store.close()

    def __enter__(self) -> "ExperimentManager":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
