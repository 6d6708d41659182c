"""The training block of a run's reports: one entry per job (gathered from its gate items' reports)
and ``training_<job>.png``, the job's loss, grad_norm and learning_rate per logged step.

matplotlib is imported inside the drawing function only, with the Agg canvas and the object API
(never pyplot), as harness.report.heatmap does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.report.details import safe_filename, unique_stem
from harness.report.files import write_atomic
from harness.textsafe import visible

PREFIX = "training_"
CURVES = ("loss", "grad_norm", "learning_rate")
STEP_COLUMNS = ["step", *CURVES]
_EXTRA_PREFIXES = ("rewards/", "logps/")  # DPO's figures, as TRL logs them


def add_training_gate(entries: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    """Fold one gate item's ``llm_training`` summary into the entries by job: the run once, each gate's outcome."""
    job = str(summary.get("job"))
    entry = entries.get(job)
    if entry is None:
        entry = entries[job] = {
            "job": job, "trainer": summary.get("trainer"), "config": summary.get("config") or {},
            "versions": summary.get("versions") or {}, "metrics": summary.get("metrics") or {},
            "checks": summary.get("checks") or {}, "gates": [], "log_history": summary.get("log_history") or [],
            "error": summary.get("error"), "output_dir": summary.get("output_dir"), "wall_s": summary.get("wall_s"),
        }  # fmt: skip
    gate = summary.get("gate") or {}
    if any(g["expr"] == gate.get("expr") for g in entry["gates"]):
        return  # a rerun of the same gate item (--reruns): the first outcome stands
    entry["gates"].append({"expr": gate.get("expr"), "status": "passed" if gate.get("passed") else "failed",
                           "reason": gate.get("reason") or ""})


def step_columns(log_history: list[dict[str, Any]]) -> list[str]:
    """step, loss, grad_norm, learning_rate, then DPO's rewards/* and logps/* keys when logged."""
    extra: dict[str, None] = {}
    for row in log_history:
        extra.update((key, None) for key in row if isinstance(key, str) and key.startswith(_EXTRA_PREFIXES))
    return [*STEP_COLUMNS, *extra]


def step_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged training steps (the end-of-training summary and eval rows left out)."""
    return [row for row in log_history if isinstance(row, dict) and (any(k in row for k in CURVES) or _has_extra(row))]


def training_pngs(report: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(entry, PNG file name) for each job with logged steps; names unique in the run (the writers' one rule)."""
    out: list[tuple[dict[str, Any], str]] = []
    used: set[str] = set()
    for entry in report.get("training") or []:
        if not isinstance(entry, dict) or not step_rows(entry.get("log_history") or []):
            continue
        candidate = unique_stem(PREFIX + safe_filename(str(entry.get("job"))), used)
        out.append((entry, f"{candidate}.png"))
    return out


def write_training_pngs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw each job's curves into out_dir; return the paths."""
    paths = []
    for entry, name in training_pngs(report):
        figure = _figure(str(entry.get("job")), step_rows(entry.get("log_history") or []))
        paths.append(write_atomic(Path(out_dir) / name, lambda tmp, f=figure: f.savefig(tmp, format="png")))
    return paths


def _figure(job: str, rows: list[dict[str, Any]]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(CURVES))
    for ax, name in zip(axes, CURVES):
        points = [(row.get("step", i), row[name]) for i, row in enumerate(rows) if _finite(row.get(name))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel("step")
    # the job name comes from a job file: "$" would start mathtext
    fig.suptitle(visible(job, keep_newlines=False).replace("$", r"\$"))
    return fig


def _has_extra(row: dict[str, Any]) -> bool:
    return any(isinstance(key, str) and key.startswith(_EXTRA_PREFIXES) for key in row)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
