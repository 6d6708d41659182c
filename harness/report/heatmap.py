"""confusion_<suite>[_<model>].png: each confusion matrix drawn as a row-normalised heatmap.

matplotlib is imported inside write_confusion_png only: the plugin imports this package at
pytest start-up, and most runs have no confusion matrix to draw. Figures are built with the
object API and the Agg canvas, never pyplot, whose global state is not thread-safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from harness.report.details import safe_filename, unique_stem
from harness.report.files import write_atomic
from harness.textsafe import visible

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PREFIX = "confusion_"
MAX_ANNOTATED = 30  # beyond this many labels the counts are unreadable; colour alone tells the story
MAX_LABEL_CHARS = 24


def confusion_table(suite: dict[str, Any]) -> dict[str, Any] | None:
    """The suite's confusion table when it has labels to draw, else None."""
    table = (suite.get("tables") or {}).get("confusion")
    return table if isinstance(table, dict) and table.get("labels") else None


def confusion_pngs(report: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(suite, PNG file name) for each suite with a confusion table, names unique in the run.

    The one naming rule for every writer: the Markdown links and the workbook embeds the
    very files write_reports drew. The model joins the name when the run has several.
    """
    suites: list[dict[str, Any]] = report.get("suites") or []
    models = {str(s.get("model")) for s in suites}
    models |= {str(c.get("model")) for c in report.get("cases") or []}
    out: list[tuple[dict[str, Any], str]] = []
    used: set[str] = set()
    for suite in suites:
        if confusion_table(suite) is None:
            continue
        raw = str(suite.get("name"))
        if len(models) > 1:
            raw += f"_{suite.get('model')}"
        candidate = unique_stem(PREFIX + safe_filename(raw), used)
        out.append((suite, f"{candidate}.png"))
    return out


def write_confusion_pngs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every confusion matrix of the report into out_dir; return the paths."""
    paths = []
    for suite, name in confusion_pngs(report):
        table = confusion_table(suite) or {}
        title = f"{suite.get('name')} · {suite.get('model')}"
        paths.append(write_confusion_png(table["labels"], table["matrix"], title, Path(out_dir) / name))
    return paths


def write_confusion_png(labels: Sequence[Any], matrix: Sequence[Sequence[int]], title: str, path: Path) -> Path:
    """A heatmap of matrix (rows: target, columns: predicted), coloured by each row's shares."""
    figure = confusion_figure(labels, matrix, title)
    return write_atomic(Path(path), lambda tmp: figure.savefig(tmp, format="png"))


def confusion_figure(labels: Sequence[Any], matrix: Sequence[Sequence[int]], title: str) -> Figure:
    """The heatmap as a figure on its own Agg canvas; counts written in the cells up to 30 labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    names = [_plain(_short(str(label))) for label in labels]
    shares = _row_shares(matrix)
    side = min(max(0.45 * n + 3.0, 5.0), 22.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the target row")
    font = 9 if n <= 12 else 7 if n <= 30 else 5
    few = n <= 12
    ax.set_xticks(range(n), names, rotation=45 if few else 90, ha="right" if few else "center",
                  rotation_mode="anchor" if few else "default", fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    ax.set_title(_plain(title))
    if n <= MAX_ANNOTATED:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                # white on dark cells, black on light ones
                colour = "white" if shares[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=font)
    return fig


def _row_shares(matrix: Sequence[Sequence[int]]) -> list[list[float]]:
    # per row, so a rare class's errors are as visible as a frequent one's; an empty row stays 0
    out = []
    for row in matrix:
        total = sum(row)
        out.append([v / total if total else 0.0 for v in row])
    return out


def _plain(text: str) -> str:
    # labels are model output: "$" would start matplotlib's mathtext (and fail the drawing)
    return visible(text, keep_newlines=False).replace("$", r"\$")


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"
