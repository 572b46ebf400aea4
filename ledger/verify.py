"""Chain verification: re-hash every stored event and check every link (``ledger verify``).

For each chain (experiment, stream), in seq order, verification checks that the stored body
hashes to the stored hash, decodes as a v1 body, agrees with every indexed column, that seq runs
from 0 with no gap, and that each ``prev`` is the hash of the event before. Per experiment it then
checks that ``experiment_created`` opens the main stream, that the experiment row matches, and,
where ``run_completed`` exists, that it closes the main stream and that its recorded stream counts
and heads match what is stored.

Chains are cut into segments that are checked independently — in parallel processes for large
ledgers — and stitched by their end hashes. Rows are streamed: memory does not grow with the
number of events. A body shaped like one already checked in its segment is compared with its
columns byte for byte instead of being decoded (:mod:`ledger.body_check`); any body that
comparison does not accept is decoded in full, which makes every finding.

What it cannot see: events cut from the end of an incomplete run (nothing records where it
ended), and a chain recomputed from an edit onwards by someone who also rewrote run_completed —
only a signed report or an external copy of the head catches that.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ledger.chain_check import Segment, SegmentResult, check_segment
from ledger.digests import ZERO_DIGEST
from ledger.errors import BadInputError, UnknownExperimentError
from ledger.events import AUDIT_STREAM, COMPLETION_STATUSES, MAIN_STREAM, check_experiment_id
from ledger.processes import exit_with_parent, pool_start_method, process_count, usable_cores
from ledger.store.store import Store
from ledger.text import is_sendable_text, quoted

SEGMENT_EVENTS = 50_000
"""Events per segment: the unit of parallel work (small enough that the processes finish
together even when one of them gets less CPU)."""
PARALLEL_MIN_EVENTS = 300_000
"""Below this many events, starting processes costs more than it saves."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong: where (exp, stream, seq — None for whole-chain problems) and what."""

    exp: str
    stream: str | None
    seq: int | None
    problem: str

    def describe(self) -> str:
        """One line naming the event and the problem."""
        where = self.exp if self.stream is None else f"{self.exp} stream {self.stream}"
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{where}: {self.problem}"

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON-ready map."""
        return {"exp": self.exp, "stream": self.stream, "seq": self.seq, "problem": self.problem}


INTACT_NOTE = "intact before the first bad event of each broken chain"
"""How reports word :attr:`VerifyReport.intact` when verification failed."""


@dataclass(slots=True)
class VerifyReport:
    """What verification saw: counts, incomplete runs, and every finding (at most one per
    broken chain).

    ``events`` is every event stored in the chains looked at; ``intact`` those proven intact:
    all of them when no chain is broken, else each broken chain's events before its first bad
    one. ``incomplete`` lists the experiments whose chains verify but that have no
    ``run_completed`` (killed, or still running): events cut from their end cannot be seen.
    """

    experiments: int = 0
    chains: int = 0
    events: int = 0
    intact: int = 0
    incomplete: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no finding was made."""
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready map."""
        return {"ok": self.ok, "experiments": self.experiments, "chains": self.chains,
                "events": self.events, "intact": self.intact, "incomplete": self.incomplete,
                "findings": [f.to_json() for f in self.findings]}


@dataclass(slots=True)
class _Chain:
    """A chain's stitched state: its count of intact events and head so far, or broken."""

    exp: str
    stream: str
    count: int = 0
    head: bytes = ZERO_DIGEST
    broken: bool = False


@dataclass(slots=True)
class _Experiment:
    exp: str
    chains: dict[str, _Chain] = field(default_factory=dict)
    created: tuple[str, int, Any, Any] | None = None
    completed: tuple[int, dict[str, Any], bytes] | None = None
    completed_elsewhere: list[tuple[str, int]] = field(default_factory=list)


def plan_segments(chains: Iterable[tuple[str, str, int, int]], size: int = SEGMENT_EVENTS
                  ) -> list[Segment]:
    """Cut each chain ``(exp, stream, count, max_seq)`` into segments of at most ``size`` seqs.

    An intact chain of ``count`` events holds seqs 0 to count - 1, so the segments never reach
    past seq ``count``: a chain whose max_seq is larger (or not even an integer — SQLite keeps
    what a tamperer writes) has a gap below it, which the segments then report, however large
    that max_seq.
    """
    segments = []
    for exp, stream, count, max_seq in chains:
        # A chain of only negative seqs still gets a segment.
        end = max(max_seq + 1, 1) if type(max_seq) is int and max_seq < count else count + 1
        for lo in range(0, end, size):
            segments.append(Segment(exp, stream, lo, min(lo + size, end)))
    return segments


_worker_url: str | None = None
_worker_store: Store | None = None


def _set_worker_url(url: str) -> None:
    global _worker_url
    _worker_url = url
    exit_with_parent()


def _check_in_worker(segment: Segment) -> SegmentResult:
    """Check one segment in a pool worker, opening the worker's store on its first segment.

    Opened here rather than in the pool's initializer: a failed open there (a role's connection
    limit reached, a server restarting) printed a traceback per worker and broke the pool, an
    internal error; raised from a task it reaches the caller as the StoreError it is."""
    global _worker_store
    if _worker_store is None:
        assert _worker_url is not None
        _worker_store = Store.open(_worker_url)
    return check_segment(_worker_store, segment)


def _results(store: Store, segments: list[Segment], jobs: int) -> Iterator[SegmentResult]:
    if jobs <= 1 or not store.shareable:
        for segment in segments:
            yield check_segment(store, segment)
        return
    context = multiprocessing.get_context(pool_start_method())
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_set_worker_url,
                             initargs=(store.url_with_secrets,)) as pool:
        yield from pool.map(_check_in_worker, segments)


class _Stitcher:
    """Joins segment results into chains and experiments, and makes the findings."""

    def __init__(self, names: dict[str, tuple[str, int]], report: VerifyReport) -> None:
        self.report = report
        self.names = names
        self.seen: set[str] = set()
        self.experiment: _Experiment | None = None
        self.checked = 0
        """Events read so far (for progress)."""

    def find(self, exp: str, stream: str | None, seq: int | None, problem: str) -> None:
        """Record one finding of the report."""
        self.report.findings.append(Finding(exp, stream, seq, problem))

    def add(self, result: SegmentResult) -> None:
        """Join the next segment's result (segments come in chain order) to its chain."""
        segment = result.segment
        if self.experiment is None or self.experiment.exp != segment.exp:
            self.finish_experiment()
            self.experiment = _Experiment(segment.exp)
        experiment = self.experiment
        chain = experiment.chains.get(segment.stream)
        if chain is None:
            chain = experiment.chains[segment.stream] = _Chain(segment.exp, segment.stream)
            self.report.chains += 1
        self.checked += result.count + (result.problem is not None)
        if chain.broken:
            return
        if result.count and result.first_prev != chain.head:
            return self.break_chain(chain, segment.lo, "prev is not the hash of the event before "
                                                       "it (an event was inserted, removed or "
                                                       "reordered)")
        chain.count += result.count  # intact: a broken chain keeps the count before its break
        if result.problem is not None:
            return self.break_chain(chain, *result.problem)
        if result.last_seq != segment.hi - 1:
            return self.break_chain(chain, result.last_seq + 1, "event missing (seq gap)")
        chain.head = result.last_hash or chain.head
        if result.created is not None:
            experiment.created = (segment.stream, *result.created)
        if result.completed is not None:
            if segment.stream == MAIN_STREAM:
                if experiment.completed is None:  # the first one: events after it are flagged
                    experiment.completed = result.completed
            else:
                experiment.completed_elsewhere.append((segment.stream, result.completed[0]))

    def break_chain(self, chain: _Chain, seq: int, problem: str) -> None:
        """Mark ``chain`` broken at ``seq``: what follows in it is not checked further."""
        chain.broken = True
        self.find(chain.exp, chain.stream, seq, problem)

    def finish_experiment(self) -> None:
        """Close the experiment being joined: count it and check how its run ended."""
        experiment, self.experiment = self.experiment, None
        if experiment is None:
            return
        exp = experiment.exp
        self.report.experiments += 1
        self.report.intact += sum(chain.count for chain in experiment.chains.values())
        self.seen.add(exp)
        if any(chain.broken for chain in experiment.chains.values()):
            return
        if experiment.completed is None and not experiment.completed_elsewhere:
            self.report.incomplete.append(exp)
        if exp not in self.names:
            self.find(exp, None, None, "events of an experiment the ledger has no row for "
                                       "(copied in from another ledger?)")
        created = experiment.created
        if created is None or created[0] != MAIN_STREAM or created[1] != 0:
            self.find(exp, MAIN_STREAM, 0, "experiment_created is missing from main seq 0")
        elif exp in self.names:
            name, created_t = self.names[exp]
            if name != created[2]:
                self.find(exp, None, None, f"experiment row name {name!r} differs from the "
                                           f"recorded name {created[2]!r}")
            elif created_t != created[3] or type(created_t) is not int:
                self.find(exp, None, None, f"experiment row created_t {created_t!r} differs "
                                           f"from the time experiment_created recorded "
                                           f"({created[3]!r})")
        for stream, seq in experiment.completed_elsewhere:
            self.find(exp, stream, seq, "run_completed outside the main stream")
        if experiment.completed is not None:
            self.check_completion(experiment, experiment.completed)

    def check_completion(self, experiment: _Experiment,
                         completed: tuple[int, dict[str, Any], bytes]) -> None:
        """Check the run_completed event against the chains it counts."""
        seq, params, prev = completed
        main = experiment.chains[MAIN_STREAM]
        if main.count != seq + 1:
            self.find(experiment.exp, MAIN_STREAM, seq + 1, "event recorded after run_completed")
            return
        if params.get("status") not in COMPLETION_STATUSES:
            self.find(experiment.exp, MAIN_STREAM, seq, f"run_completed has status "
                                                        f"{quoted(params.get('status'))}, not "
                                                        f"'ok' or 'failed'")
            return
        recorded = params.get("streams")
        if not isinstance(recorded, dict) or not all(type(name) is str for name in recorded):
            self.find(experiment.exp, MAIN_STREAM, seq, "run_completed has no stream table "
                                                        "(or one not keyed by stream names)")
            return
        observed = {name: (chain.count, chain.head) for name, chain in experiment.chains.items()
                    if name != AUDIT_STREAM}
        observed[MAIN_STREAM] = (seq, prev)
        for name in sorted(set(recorded) | set(observed)):
            entry = recorded.get(name)
            count, head = observed.get(name, (0, ZERO_DIGEST))
            if not isinstance(entry, dict):
                self.find(experiment.exp, name, None, "stream not listed in run_completed "
                                                      "(events added after the run completed)")
            elif entry.get("count") != count:
                recorded_count = entry.get("count")
                first_bad = (min(count, recorded_count) if type(recorded_count) is int
                             else count)
                self.find(experiment.exp, name, first_bad, f"run_completed records "
                                                           f"{recorded_count!r} events, {count} "
                                                           f"are stored (events removed or added)")
            elif entry.get("head") != head:
                self.find(experiment.exp, name, count - 1, "stream head differs from the head "
                                                           "recorded by run_completed")

    def finish_ledger(self, exp: str | None) -> None:
        """Close the last experiment and flag every listed experiment that has no events."""
        self.finish_experiment()
        expected = set(self.names) if exp is None else {exp} & set(self.names)
        for missing in sorted(expected - self.seen):
            self.find(missing, None, None, "experiment row without any events")


def _readable_chains(chains: list[tuple[str, str, int, int]], report: VerifyReport
                     ) -> list[tuple[str, str, int, int]]:
    """The chains whose exp and stream columns are text a query can name; each other one is a
    finding. SQLite keeps whatever a tamperer writes to a TEXT column — a blob, or bytes cast
    to TEXT that are not UTF-8 and read back escaped as surrogates, which no driver can send
    back as a parameter — while no recorder writes such a name (bodies hold names as text)."""
    readable = []
    for chain in chains:
        exp, stream, count, _max_seq = chain
        unreadable = [(column, value) for column, value in (("exp", exp), ("stream", stream))
                      if not is_sendable_text(value)]
        if not unreadable:
            readable.append(chain)
            continue
        column, value = unreadable[0]
        report.findings.append(Finding(
            _shown_name(exp), None if column == "exp" else _shown_name(stream), None,
            f"{count} event(s) whose {column} column is not text ({_shown_name(value)}): "
            f"edited outside the ledger"))
    return readable


def _shown_name(name: Any) -> str:
    """An exp or stream column for a finding: as it is when it is text, else its bytes."""
    if is_sendable_text(name):
        return name
    if isinstance(name, str):
        return quoted(name.encode("utf-8", "surrogateescape"))
    return quoted(name)


def verify(store: Store | str, exp: str | None = None, *, jobs: int | None = None,
           on_progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify every chain of ``exp`` (or of the whole ledger) and return what was found.

    ``store`` is an open :class:`Store` or a ledger URL (opened, never created, and closed).

    ``jobs`` processes check segments in parallel (default: one per core, for ledgers of
    more than PARALLEL_MIN_EVENTS events; never more than the cores or the segments).
    ``on_progress`` receives the count of events checked.
    Raises UnknownExperimentError when ``exp`` is given and the ledger holds nothing of it.
    """
    if isinstance(store, str):
        with Store.open(store) as opened:
            return verify(opened, exp, jobs=jobs, on_progress=on_progress)
    if not isinstance(store, Store):
        raise BadInputError(f"got {type(store).__name__} to verify, but must be a Store or a "
                            f"ledger URL")
    if exp is not None:
        check_experiment_id(exp)
    chains, names = store.chains_and_experiments(exp)
    if exp is not None:
        if not chains and exp not in names:
            raise UnknownExperimentError(f"unknown experiment {exp} in {store.url}")
    report = VerifyReport(events=sum(count for _exp, _stream, count, _max in chains))
    chains = _readable_chains(chains, report)
    total = sum(count for _exp, _stream, count, _max in chains)
    if jobs is None:
        jobs = usable_cores() if total >= PARALLEL_MIN_EVENTS else 1
    segments = plan_segments(chains)
    stitcher = _Stitcher(names, report)
    for result in _results(store, segments, process_count(jobs, len(segments))):
        stitcher.add(result)
        if on_progress is not None:
            on_progress(stitcher.checked)
    stitcher.finish_ledger(exp)
    return report
