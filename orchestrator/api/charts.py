"""Charts as inline SVG, drawn on the server: the page needs no JavaScript to show
them, and no build step. Each chart is pure (data in, markup out) and accessible: an
``img`` role named by its ``<title>`` and described by a ``<desc>`` that says in words
what the bars and lines say, and each bar or point carries its own ``<title>`` that a
browser shows on hover.

Hand-written rather than a charting library's: four small shapes, with the markup
escaped and sized exactly as the page needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 220
#: Room for the axes' labels, and for the legend above the plot.
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 30
PALETTE = {
    "succeeded": "#2f9e44",
    "failed": "#d9480f",
    "p50": "#4c6ef5",
    "p95": "#f59f00",
    "queued": "#adb5bd",
    "running": "#1c7ed6",
    "in use": "#7048e8",
    "free": "#dee2e6",
    "longest": "#e8590c",
}
_ids = itertools.count(1)


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    color: str | None = None

    @property
    def fill(self) -> str:
        return self.color or PALETTE.get(self.name, "#495057")


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (an
    axis's top), 1 for nothing."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power + 1e-9:
            return float(step * power)
    return float(10 * power)


def number(value: float) -> str:
    """Short figures for labels: 3, 2.5, 0.005, 1.2k."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def _open(
    title: str, description: str, height: int = HEIGHT, width: int = WIDTH
) -> tuple[str, list[str]]:
    ident = f"chart-{next(_ids)}"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
        f'aria-labelledby="{ident}-t {ident}-d">'
        f'<title id="{ident}-t">{escape(title)}</title>'
        f'<desc id="{ident}-d">{escape(description)}</desc>'
        "<style>text{font:11px system-ui,sans-serif;fill:#5c6475}"
        ".grid{stroke:#e3e6ec}.axis{stroke:#adb5bd}</style>"
    )
    return head, []


def _legend(series: Sequence[Series]) -> str:
    parts, x = [], LEFT
    for item in series:
        parts.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{item.fill}"/>'
            f'<text x="{x + 14}" y="17">{escape(item.name)}</text>'
        )
        x += 24 + 7 * len(item.name)
    return "".join(parts)


def _y_axis(top: float, height: int, unit: str, width: int = WIDTH) -> str:
    plot = height - TOP - BOTTOM
    parts = []
    for k in range(5):
        value = top * k / 4
        y = TOP + plot - plot * k / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(number(value))}{escape(unit) if k == 4 else ''}</text>"
        )
    return "".join(parts)


def empty(title: str, message: str) -> Markup:
    head, _ = _open(title, message, height=60)
    return Markup(f'{head}<text x="{LEFT}" y="44">{escape(message)}</text></svg>')


def time_lines(
    title: str,
    times: Sequence[datetime],
    series: Sequence[Series],
    unit: str = "",
    description: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """Lines over time, one point per time (equally spaced), with a time axis marked
    at six even steps and at its end."""
    if not times:
        return empty(title, "No data in this window.")
    top = nice_ceiling(max((max(s.values, default=0) for s in series), default=0))
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = plot_w / max(1, len(times) - 1)
    head, _ = _open(title, description or title, height, width)
    parts = [head, _legend(series), _y_axis(top, height, unit, width)]
    every = max(1, len(times) // 6)
    marks = [i for i in range(0, len(times), every) if len(times) - 1 - i >= every / 2]
    for i in [*marks, len(times) - 1]:
        x = LEFT + i * step
        anchor = "end" if i == len(times) - 1 and i else "middle"
        parts.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{height - BOTTOM}" '
            f'y2="{height - BOTTOM + 4}"/><text x="{x:.1f}" y="{height - BOTTOM + 16}" '
            f'text-anchor="{anchor}">{times[i]:%H:%M}</text>'
        )
    for item in series:
        points = " ".join(
            f"{LEFT + i * step:.1f},{TOP + plot_h - plot_h * v / top:.1f}"
            for i, v in enumerate(item.values)
        )
        parts.append(
            f'<polyline class="series" data-series="{escape(item.name)}" fill="none" '
            f'stroke="{item.fill}" stroke-width="1.5" points="{points}">'
            f"<title>{escape(item.name)}: {escape(number(sum(item.values)))} in all, "
            f"at most {escape(number(max(item.values, default=0)))}{escape(unit)}</title>"
            "</polyline>"
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{height - BOTTOM}" '
        f'y2="{height - BOTTOM}"/></svg>'
    )
    return Markup("".join(parts))


def bars(
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    unit: str = "",
    description: str = "",
    stacked: bool = False,
    none: str = "Nothing to show.",
) -> Markup:
    """Horizontal bars, one row per category: side by side for each series, or one
    bar of stacked parts. ``none``: what an empty chart says instead."""
    if not categories:
        return empty(title, none)
    totals = [
        sum(s.values[i] for s in series) if stacked else max(s.values[i] for s in series)
        for i in range(len(categories))
    ]
    top = nice_ceiling(max(totals, default=0))
    per_row = 22 if stacked else 10 * len(series) + 8
    height = TOP + BOTTOM + per_row * len(categories)
    label_w = 150
    x0 = LEFT + label_w - 40
    plot_w = WIDTH - x0 - RIGHT
    head, _ = _open(title, description or title, height)
    parts = [head, _legend(series)]
    for k in range(5):
        x = x0 + plot_w * k / 4
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - BOTTOM}"/>'
            f'<text x="{x:.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">'
            f"{escape(number(top * k / 4))}{escape(unit) if k == 4 else ''}</text>"
        )
    for row, category in enumerate(categories):
        y = TOP + row * per_row + 3
        parts.append(
            f'<text x="{x0 - 6}" y="{y + (per_row - 6) / 2 + 4:.1f}" text-anchor="end">'
            f"{escape(category)}</text>"
        )
        offset = 0.0
        for n, item in enumerate(series):
            value = item.values[row]
            width = plot_w * value / top
            if stacked:
                x, bar_y, bar_h = x0 + offset, y, per_row - 6
                offset += width
            else:
                x, bar_y, bar_h = x0, y + n * 10, 8
            parts.append(
                f'<rect class="bar" data-series="{escape(item.name)}" '
                f'data-value="{value:g}" x="{x:.1f}" y="{bar_y:.1f}" '
                f'width="{max(width, 0.0):.1f}" height="{bar_h}" fill="{item.fill}">'
                f"<title>{escape(category)} · {escape(item.name)}: "
                f"{escape(number(value))}{escape(unit)}</title></rect>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
