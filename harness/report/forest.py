"""comparison.png: a forest plot of the paired comparison's quality deltas and their intervals.

One row per (suite, candidate vs reference, metric), main metrics first; a point at the delta
(candidate - reference), a line over its interval, a vertical line at no difference. Like the
heatmaps, matplotlib is imported inside the drawing function only and figures use the object
API on an Agg canvas, never pyplot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from harness.report.files import write_atomic
from harness.report.heatmap import _plain

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILENAME = "comparison.png"
MAX_ROWS = 40  # beyond this the labels no longer fit a readable figure
MAX_PART_CHARS = 20  # per name in a label, so that a long model name never hides the metric


class ForestRow(NamedTuple):
    """One drawn row: its label parts, whether it is a main metric, the delta and its interval."""

    suite: str
    reference: str
    candidate: str
    metric: str
    main: bool
    delta: float
    lower: float | None
    upper: float | None

    @property
    def label(self) -> str:
        return f"{_short(self.suite)} · {_short(self.candidate)} vs {_short(self.reference)} · {_short(self.metric)}"


def forest_rows(report: dict[str, Any]) -> tuple[list[ForestRow], int]:
    """(the rows drawn, at most MAX_ROWS; how many quality rows had a delta to draw)."""
    comparison = report.get("comparison")
    if not isinstance(comparison, dict):
        return [], 0
    rows: list[ForestRow] = []
    for pair in comparison.get("pairs") or []:
        if pair.get("refused"):
            continue
        for row in pair.get("rows") or []:
            delta = _number(row.get("delta"))
            if row.get("kind") != "quality" or delta is None:
                continue
            rows.append(ForestRow(str(pair.get("suite")), str(pair.get("reference")), str(pair.get("candidate")),
                                  str(row.get("metric")), bool(row.get("main")), delta,
                                  _number(row.get("lower")), _number(row.get("upper"))))
    # stable: within main and within the others, the pairs' own order
    rows.sort(key=lambda r: not r.main)
    return rows[:MAX_ROWS], len(rows)


def write_forest_png(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw comparison.png into out_dir when the report compares something; return the paths."""
    rows, total = forest_rows(report)
    if not rows:
        return []
    confidence = _number((report.get("comparison") or {}).get("confidence"))
    figure = forest_figure(rows, total, confidence)
    return [write_atomic(Path(out_dir) / FILENAME, lambda tmp: figure.savefig(tmp, format="png"))]


def forest_figure(rows: list[ForestRow], total: int, confidence: float | None = None) -> Figure:
    """The forest plot on its own Agg canvas; the first row at the top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(10.0, min(max(0.3 * n + 1.6, 3.0), 16.0)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, row in enumerate(rows):
        # an interval that excludes 0 is the one a reader should look at
        clear = row.lower is not None and row.upper is not None and (row.lower > 0 or row.upper < 0)
        colour = "tab:blue" if clear else "dimgray"
        if row.lower is not None and row.upper is not None:
            ax.hlines(y, row.lower, row.upper, color=colour, linewidth=2)
        ax.plot([row.delta], [y], marker="s" if row.main else "o", color=colour, markersize=7 if row.main else 5)
    ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    font = 9 if n <= 20 else 7
    ax.set_yticks(range(n), [_plain(row.label) for row in rows], fontsize=font)
    for tick, row in zip(ax.get_yticklabels(), rows):
        if row.main:
            tick.set_fontweight("bold")
    ax.set_ylim(n - 0.5, -0.5)
    level = f"{confidence:.0%} " if confidence is not None else ""
    ax.set_xlabel(f"Δ candidate - reference ({level}interval); main metrics bold, square")
    title = "Paired comparison"
    if total > n:
        title += f" (first {n} of {total} rows)"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _number(value: Any) -> float | None:
    # None, NaN and non-numbers cannot be placed on an axis
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _short(name: str) -> str:
    return name if len(name) <= MAX_PART_CHARS else name[: MAX_PART_CHARS - 1] + "…"
