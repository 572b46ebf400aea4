"""Metric curves as inline SVG: one small line chart per metric, nothing external.

Every number placed in the SVG is formatted here from floats; every text is escaped (HTML
and unprintable characters, as in :func:`report.html.e`).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from ledger.text import escape_unprintable

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 14, 30


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def metric_chart(series: dict[str, Any]) -> str:
    """An ``<svg>`` line chart of one series of R1's metrics (x: epoch or index)."""
    points = [(float(x), float(y)) for x, y in series["points"]]
    name = escape(escape_unprintable(str(series["name"])))  # a bidi control or ESC: as text
    if not points:
        return f'<p class="muted">{name}: no numeric values to plot</p>'
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    # Values from -1e308 to 1e308 span more than a float holds: halved, every span is finite.
    half = 0.5 if math.isinf(y_high - y_low) else 1.0
    x_span = (x_high - x_low) or 1.0
    y_span = (y_high * half - y_low * half) or (abs(y_high) or 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def place(x: float, y: float) -> str:
        px = LEFT + (x - x_low) / x_span * plot_w
        py = TOP + plot_h - (y * half - y_low * half) / y_span * plot_h
        return f"{px:.1f},{py:.1f}"

    axis = "epoch" if series.get("last_epoch") is not None else "value number"
    coordinates = " ".join(place(x, y) for x, y in points)
    dots = "".join(f'<circle cx="{place(x, y).split(",")[0]}" cy="{place(x, y).split(",")[1]}" '
                   f'r="2"/>' for x, y in points) if len(points) <= 60 else ""
    bottom, right = TOP + plot_h, LEFT + plot_w
    return (
        f'<svg class="chart" role="img" aria-label="metric {name}" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f'<title>{name}</title>'
        f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>'
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{_fmt(y_high)}</text>'
        f'<text x="{LEFT - 4}" y="{bottom}" text-anchor="end">{_fmt(y_low)}</text>'
        f'<text x="{LEFT}" y="{bottom + 14}" text-anchor="start">{_fmt(x_low)}</text>'
        f'<text x="{right}" y="{bottom + 14}" text-anchor="end">{_fmt(x_high)}</text>'
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{bottom + 26}" text-anchor="middle">{axis}</text>'
        f'<polyline class="curve" points="{coordinates}"/>'
        f'<g class="dots">{dots}</g></svg>')
