"""One row per figure, the table printed at the end, and its chart."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table


class Figure(BaseModel):
    """One measured figure against its baseline from the same run (if it has one) and
    the goal it is held to."""

    key: str  # P2, P3, P4…
    name: str
    unit: str
    ours: float
    baseline: float | None = None
    #: Which way is better, for the ratio and the goal.
    better: Literal["lower", "higher"]
    goal: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / baseline: how many times the baseline it costs (or achieves)."""
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline

    @property
    def meets_goal(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ours <= self.goal if self.better == "lower" else self.ours >= self.goal


Round = TypeVar("Round", bound=tuple[Any, ...])


def median_round(rounds: Sequence[Round]) -> Round:
    """Of rounds measured one after another, the one whose first figure is the median
    (the upper middle of an even count), with its other figures: on a shared machine
    one round swings by a third."""
    return sorted(rounds)[len(rounds) // 2]


def spread(values: Iterable[float], fmt: str = ",.0f", label: str = "median of") -> str:
    """The rounds' figures for a note ("median of a, b, c"); "" for one round."""
    ordered = sorted(values)
    if len(ordered) < 2:
        return ""
    return f"{label} " + ", ".join(format(value, fmt) for value in ordered)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"


def print_table(figures: list[Figure], console: Console | None = None) -> None:
    table = Table(title="camflow bench", show_lines=False)
    for column in ("", "figure", "ours", "baseline", "ratio", "goal", "met", "how"):
        table.add_column(column, justify="right" if column in ("ours", "baseline") else "left")
    for f in figures:
        ratio = f"x{f.ratio:.3g}" if f.ratio is not None else "-"
        goal = "-" if f.goal is None else ("<= " if f.better == "lower" else ">= ") + _num(f.goal)
        met = {True: "yes", False: "NO", None: "-"}[f.meets_goal]
        table.add_row(
            f.key, f"{f.name} ({f.unit})", _num(f.ours), _num(f.baseline), ratio, goal, met, f.note
        )
    (console or Console()).print(table)


def save(figures: list[Figure], folder: Path) -> tuple[Path, Path | None]:
    """bench.json always; bench.png when matplotlib is installed (a dev dependency)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "bench.json"
    data.write_text(
        json.dumps([f.model_dump() | {"ratio": f.ratio} for f in figures], indent=2) + "\n"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen here, nor on CI
        import matplotlib.pyplot as plt
    except ImportError:
        return data, None
    # Each figure against its goal, so that one axis holds seconds and clips/min alike:
    # 1.0 is the goal; beyond it (right) is better.
    rows = [f for f in figures if f.goal]
    labels = [f"{f.key} {f.name}" for f in rows]
    scores = [
        (f.goal / f.ours if f.ours else float("inf")) if f.better == "lower" else f.ours / f.goal
        for f in rows
    ]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    colours = ["tab:green" if s >= 1 else "tab:red" for s in scores]
    ax.barh(labels, [min(s, 10) for s in scores], color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("goal / ours for costs, ours / goal for rates (>= 1 meets the goal)")
    ax.invert_yaxis()
    ax.set_title("camflow bench: each figure against its goal (green meets it)")
    fig.tight_layout()
    chart = folder / "bench.png"
    fig.savefig(chart, dpi=110)
    plt.close(fig)
    return data, chart
