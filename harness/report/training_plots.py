"""The training block of a run's reports: one entry per job (gathered from its gate items' reports),
``training_<job>.png``, the job's loss, grad_norm and learning_rate per logged step, and
``training_<job>_throughput.png``, its samples/s, tokens/s and memory per optimizer step (the run's telemetry).

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
from harness.training.telemetry import FIELDS as TELEMETRY_COLUMNS

PREFIX = "training_"
CURVES = ("loss", "grad_norm", "learning_rate")
STEP_COLUMNS = ["step", *CURVES]
# DPO/KTO rewards and log-probs, KTO and GRPO KL, GRPO rewards and zero-std fraction, as TRL logs them
_EXTRA_PREFIXES = ("rewards/", "logps/", "kl", "reward", "frac_reward_zero_std")
# the panels drawn beside the curves when a trainer logs them: (title, {key: legend label})
PREFERENCE_PANELS = (
    ("rewards", {"rewards/chosen": "chosen", "rewards/rejected": "rejected", "rewards/margins": "margin",
                 "reward": "mean reward (GRPO)"}),
    ("KL / zero-std groups", {"kl": "KL", "frac_reward_zero_std": "frac_reward_zero_std"}),
)
THROUGHPUT_SUFFIX = "_throughput"
MEMORY_CURVES = {"rss_mb": "RSS", "cuda_max_allocated_mb": "CUDA max allocated", "gpu_used_mb": "GPU used (NVML)"}


def add_training_gate(entries: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    """Fold one gate item's ``llm_training`` summary into the entries by job: the run once, each gate's outcome."""
    job = str(summary.get("job"))
    entry = entries.get(job)
    if entry is None:
        entry = entries[job] = {
            "job": job, "trainer": summary.get("trainer"), "config": summary.get("config") or {},
            "versions": summary.get("versions") or {}, "metrics": summary.get("metrics") or {},
            "checks": summary.get("checks") or {}, "gates": [], "log_history": summary.get("log_history") or [],
            "telemetry": summary.get("telemetry") or [],
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


def telemetry_rows(telemetry: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The telemetry rows (one per optimizer step) that name their step."""
    return [row for row in telemetry if isinstance(row, dict) and _finite(row.get("step"))]


def step_table(entry: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The training sheet's columns and rows: each logged step, with the run's telemetry of that step
    in extra columns when there is any (steps telemetry saw but the trainer did not log get a row too)."""
    history = entry.get("log_history") or []
    columns = step_columns(history)
    logged = step_rows(history)
    telemetry = {row["step"]: row for row in telemetry_rows(entry.get("telemetry") or [])}
    if not telemetry:
        return columns, [[row.get(key) for key in columns] for row in logged]
    columns += [key for key in TELEMETRY_COLUMNS if key != "step"]
    rows = [{**telemetry.pop(row.get("step"), {}), **row} for row in logged]
    rows += telemetry.values()
    rows.sort(key=lambda row: row["step"] if _finite(row.get("step")) else math.inf)
    return columns, [[row.get(key) for key in columns] for row in rows]


def training_pngs(report: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(entry, PNG file name) for each job with logged steps; names unique in the run (the writers' one rule)."""
    return _png_names(report)[0]


def throughput_pngs(report: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(entry, PNG file name) for each job with telemetry: ``training_<job>_throughput.png``, unique in the run."""
    return _png_names(report)[1]


def write_training_pngs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw each job's curves, and its throughput and memory, into out_dir; return the paths."""
    curves, throughput = _png_names(report)
    drawings = [*((name, _figure, entry, step_rows(entry.get("log_history") or [])) for entry, name in curves),
                *((name, _throughput_figure, entry, telemetry_rows(entry.get("telemetry") or []))
                  for entry, name in throughput)]
    paths = []
    for name, draw, entry, rows in drawings:  # one figure at a time in memory
        figure = draw(str(entry.get("job")), rows)
        paths.append(write_atomic(Path(out_dir) / name, lambda tmp, f=figure: f.savefig(tmp, format="png")))
    return paths


def _png_names(report: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], str]], list[tuple[dict[str, Any], str]]]:
    """Both kinds of PNG name, from one set of names taken: the curves' first (so their names do not
    depend on telemetry), then each throughput PNG named after its job's curves."""
    entries = [entry for entry in report.get("training") or [] if isinstance(entry, dict)]
    used: set[str] = set()
    stems: dict[int, str] = {}
    for entry in entries:
        if step_rows(entry.get("log_history") or []):
            stems[id(entry)] = unique_stem(PREFIX + safe_filename(str(entry.get("job"))), used)
    curves = [(entry, f"{stems[id(entry)]}.png") for entry in entries if id(entry) in stems]
    throughput = []
    for entry in entries:
        if telemetry_rows(entry.get("telemetry") or []):
            stem = stems.get(id(entry)) or PREFIX + safe_filename(str(entry.get("job")))
            throughput.append((entry, f"{unique_stem(stem + THROUGHPUT_SUFFIX, used)}.png"))
    return curves, throughput


def _figure(job: str, rows: list[dict[str, Any]]) -> Any:
    """loss, grad_norm and learning rate per step, then the reward and KL panels a trainer logged."""
    extra = [(title, curves) for title, curves in PREFERENCE_PANELS
             if any(_finite(row.get(key)) for row in rows for key in curves)]
    panels = [(name, {name: None}) for name in CURVES] + extra
    return _panels_figure(job, rows, panels, "not logged", width=10 + 3.3 * len(extra))


def _throughput_figure(job: str, rows: list[dict[str, Any]]) -> Any:
    """samples/s, tokens/s and memory (RSS; CUDA max allocated and NVML's GPU use when measured) per step."""
    panels = [("samples/s", {"samples_per_s": None}), ("tokens/s", {"tokens_per_s": None}), ("memory (MB)", MEMORY_CURVES)]
    return _panels_figure(job, rows, panels, "not measured")


def _panels_figure(job: str, rows: list[dict[str, Any]], panels: list[tuple[str, dict[str, str | None]]],
                   empty: str, width: float = 10) -> Any:
    """One panel per (title, {key: legend label}): each key's finite values against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (title, curves) in zip(fig.subplots(1, len(panels)), panels):
        drawn = 0
        for key, label in curves.items():
            points = [(row.get("step", i), row[key]) for i, row in enumerate(rows) if _finite(row.get(key))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=label,
                        marker="." if len(points) < 50 else None)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        elif len(curves) > 1:
            ax.legend(fontsize="small")
        ax.set_title(title)
        ax.set_xlabel("step")
    _title(fig, job)
    return fig


def _title(fig: Any, job: str) -> None:
    # the job name comes from a job file: "$" would start mathtext
    fig.suptitle(visible(job, keep_newlines=False).replace("$", r"\$"))


def _has_extra(row: dict[str, Any]) -> bool:
    return any(isinstance(key, str) and key.startswith(_EXTRA_PREFIXES) for key in row)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
