"""Metric curves from a run's ``metric`` events, with a bounded number of points per metric.

A metric logged with an epoch (an integer; a forged ``true`` is none) is plotted at that epoch
(the last value logged for an epoch wins); one logged without an epoch at its position among that
metric's values. Past
:data:`MAX_POINTS` points a series is thinned uniformly (every other point dropped, and from then
on only every 2nd, 4th, … value kept), so memory does not grow with the number of events.
Past :data:`MAX_SERIES` names, further metrics are counted, not kept. Values that are not real
numbers (text, lists, booleans) or not finite (NaN, ±infinity) are not plotted but counted
(``not_plotted``); their last value is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ledger.json_view import json_view
from report.jsonview import recorded_int

MAX_POINTS = 2000
MAX_SERIES = 100
"""Most metric names plotted; values of further names are only counted."""


def unplotted_note(values: int) -> str:
    """What HTML and Markdown say of R1's ``metrics_not_plotted``: without it a run's first
    MAX_SERIES metrics would read as all it logged."""
    return (f"{values} values of metrics past the first {MAX_SERIES} names are counted, not "
            f"shown (they are in the ledger)")


@dataclass(slots=True)
class Series:
    """One metric: its plotted points, how many values were logged, and the last one."""

    name: str
    points: list[tuple[float, float]] = field(default_factory=list)
    count: int = 0
    last: Any = None
    last_epoch: int | None = None
    stride: int = 1
    plotted: int = 0
    not_plotted: int = 0
    """Values that are not finite real numbers (NaN, ±infinity, text, …): no point to draw,
    counted so that a chart missing them says so (a diverged loss is worth seeing)."""

    def add(self, epoch: Any, value: Any) -> None:
        """Take one logged value."""
        self.count += 1
        epoch = recorded_int(epoch)
        self.last, self.last_epoch = value, epoch
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            self.not_plotted += 1
            return
        x = float(self.plotted if epoch is None else epoch)
        self.plotted += 1
        if self.points and self.points[-1][0] == x:
            self.points[-1] = (x, float(value))
            return
        if (self.plotted - 1) % self.stride:
            return
        self.points.append((x, float(value)))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
            self.stride *= 2

    def to_json(self) -> dict[str, Any]:
        """The series as the report holds it."""
        return {"name": self.name, "count": self.count, "last": json_view(self.last),
                "last_epoch": self.last_epoch, "thinned_every": self.stride,
                "not_plotted": self.not_plotted,
                "points": [[_number(x), _number(y)] for x, y in self.points]}


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class MetricCurves:
    """Every metric of a run, by name (names in first-logged order)."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.unplotted = 0
        """Values of metrics past the first MAX_SERIES names."""

    def add(self, params: Any) -> None:
        """Take the params of one ``metric`` event ({epoch, name, value})."""
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            return
        name = params["name"]
        series = self.series.get(name)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                self.unplotted += 1
                return
            series = self.series[name] = Series(name)
        series.add(params.get("epoch"), params.get("value"))

    def to_json(self) -> list[dict[str, Any]]:
        """Every series, sorted by name."""
        return [self.series[name].to_json() for name in sorted(self.series)]
