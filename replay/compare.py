"""Comparing a re-executed draw with its record: the rule, and the divergence it names.

:func:`first_difference` is the one comparison rule — the worker processes of a parallel replay
use it to tell matches from mismatches, and :class:`Comparer` uses it to classify each mismatch
(in recorded order, in the main process) and keep the report's counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ledger.events import DATASET_REGISTERED
from ledger.seeds import derive_bytes
from replay.causes import Cause, explain_output
from replay.registry import Redraw

if TYPE_CHECKING:
    from replay.engine import ReplayReport

Difference = tuple[str, "bytes | None", "bytes | None", Cause]
"""(field, expected, actual, cause) of a mismatch."""

_DETAILS = {Cause.SEED: "the recorded seed is not derive(root seed, path)",
            Cause.INPUT: "the data this draw read changed"}


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first event whose re-execution did not match, and why."""

    exp: str
    stream: str
    seq: int
    kind: str
    path: list[Any]
    field: str
    expected: bytes | None
    actual: bytes | None
    cause: Cause
    detail: str

    def describe(self) -> str:
        """One line for humans."""
        path = "/".join(str(label) for label in self.path) or "-"
        return (f"{self.exp} {self.stream}#{self.seq} {self.kind} [{path}]: {self.cause.value} "
                f"({self.field} expected {hex_or_none(self.expected)}, got "
                f"{hex_or_none(self.actual)}) — {self.detail}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (digests as hex)."""
        return {"exp": self.exp, "stream": self.stream, "seq": self.seq, "kind": self.kind,
                "path": self.path, "field": self.field, "expected": hex_or_none(self.expected),
                "actual": hex_or_none(self.actual), "cause": self.cause.value,
                "detail": self.detail}


def hex_or_none(value: bytes | None) -> str | None:
    """A digest as lowercase hex, None kept."""
    return None if value is None else value.hex()


def first_difference(body: dict[str, Any], redraw: Redraw | None, seed_ok: bool
                     ) -> Difference | None:
    """How the re-execution of ``body`` differs from its record (checked in the order of
    :mod:`replay.causes`), or None when it matches."""
    if not seed_ok:
        return "seed", body["seed"], None, Cause.SEED
    if redraw is None:
        return None
    if redraw.input != body["input"]:  # one recorded without its input is not certified
        return "input", body["input"], redraw.input, Cause.INPUT
    if redraw.output != body["output"]:
        cause = Cause.INPUT if body["kind"] == DATASET_REGISTERED else Cause.OUTPUT
        return "output", body["output"], redraw.output, cause
    return None


class Comparer:
    """Compares re-executed digests with the recorded ones and keeps the report's counts."""

    def __init__(self, report: ReplayReport, recorded_env: Any, current_env: Any,
                 root: int | None = None,
                 resumed_session: Callable[[dict[str, Any]], tuple[Any, str] | None] | None
                 = None) -> None:
        self.report = report
        self.recorded_env = recorded_env
        self.current_env = current_env
        self.root = root
        """The run's root seed: the seed a path derives is the *actual* of a seed divergence."""
        self.resumed_session = resumed_session
        """The environment and ``run_resumed`` (``stream#seq``) of the resumed session that
        recorded an event, None for the creating session: a run resumed under another numpy
        drew its later events with it, not with the version ``experiment_created`` records."""

    def compare(self, body: dict[str, Any], redraw: Redraw | None, seed_ok: bool) -> None:
        """Count one re-executed event; remember it when it is the first divergence."""
        report = self.report
        report.compared[body["kind"]] += 1
        difference = first_difference(body, redraw, seed_ok)
        if difference is None:
            report.matched += 1
            return
        report.mismatched += 1
        if report.first_divergence is None:
            report.first_divergence = self.divergence(body, *difference)

    def count_matches(self, kind: str, count: int) -> None:
        """Count ``count`` events of ``kind`` that re-executed to their recorded digests."""
        self.report.compared[kind] += count
        self.report.matched += count

    def divergence(self, body: dict[str, Any], field_name: str, expected: bytes | None,
                   actual: bytes | None, cause: Cause) -> Divergence:
        """The divergence of ``body`` with its human detail. A seed divergence's actual digest is
        the seed its path derives (``got None`` told the auditor nothing)."""
        if field_name == "seed" and actual is None and self.root is not None:
            actual = derive_bytes(self.root, tuple(body["path"]))
        if cause is Cause.OUTPUT:
            session = None if self.resumed_session is None else self.resumed_session(body)
            detail = (explain_output(self.recorded_env, self.current_env) if session is None
                      else explain_output(session[0], self.current_env,
                                          (f"recorded (session resumed at {session[1]})",
                                           "now")))
        elif body["kind"] == DATASET_REGISTERED and cause is Cause.INPUT and field_name == "output":
            detail = "the dataset's content changed since the run registered it"
        elif field_name == "input" and expected is None:
            detail = "the record names no input for a draw that reads one: nothing vouches for it"
        elif field_name == "input" and actual is None:
            detail = "the record names an input for a draw that reads none"
        else:  # SEED or INPUT: the other causes first_difference names
            detail = _DETAILS[cause]
        return Divergence(body["exp"], body["stream"], body["seq"], body["kind"],
                          list(body["path"]), field_name, expected, actual, cause, detail)
