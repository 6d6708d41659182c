"""Gate ``trajectory``: a run's per-step loss and grad_norm against a committed reference beside the job.

The reference is ``training/<job>/trajectory.json``::

    {"steps": [{"step": 1, "loss": 6.2, "grad_norm": 3.1}, ...],
     "tolerance": {"max_abs": 0.05, "mean_residual": 0.01},
     "reason": "...", "created": "<iso>", "git_commit": "<sha>", "dirty": false, "versions": {...}}

The gate fails when any step's |run - reference| exceeds ``max_abs`` (a spike), or when the mean
signed residual of a series exceeds ``mean_residual`` in size (a drift too small to spike), naming the
worst step. Writing or refreshing a reference is an explicit act with a reason, from a clean tree::

    python -m harness.training.trajectory write training/sft_capitals/job.yaml --reason "initial reference"

which runs the job (``writer.py``): the gate here only reads the reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REFERENCE = "trajectory.json"
SERIES = ("loss", "grad_norm")
DEFAULT_TOLERANCE = {"max_abs": 0.05, "mean_residual": 0.01}


def write_command(job_file: Path | str) -> str:
    return f'python -m harness.training.trajectory write {job_file} --reason "..."'


def steps_of(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-step entries (the closing summary has ``train_loss``, not ``loss``), as reference rows."""
    return [{"step": e["step"], **{k: e.get(k) for k in SERIES}} for e in log_history if "loss" in e]


def _result(problems: list[str], ok_reason: str, **figures: Any) -> dict[str, Any]:
    return {"passed": not problems, "reason": "; ".join(problems) if problems else ok_reason, **figures}


def compare(log_history: list[dict[str, Any]], reference: dict[str, Any] | None, where: str = REFERENCE) -> dict[str, Any]:
    """Pure comparison: ``{"passed", "reason", steps, max_abs, worst_step, mean_residual}`` per series."""
    if reference is None:
        return _result([f"no reference trajectory {where}: write one with {write_command('<job.yaml>')}"], "")
    tolerance = {**DEFAULT_TOLERANCE, **(reference.get("tolerance") or {})}
    expected = {row["step"]: row for row in reference.get("steps") or []}
    actual = {row["step"]: row for row in steps_of(log_history)}
    if not expected:
        return _result([f"reference {where} has no steps"], "")
    if sorted(actual) != sorted(expected):
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        return _result([f"logged steps differ from {where}: missing {missing[:5]}, extra {extra[:5]} "
                        f"({len(actual)} logged vs {len(expected)})"], "", steps=len(actual))
    problems: list[str] = []
    figures: dict[str, Any] = {"steps": len(expected), "tolerance": tolerance}
    for name in SERIES:
        pairs = [(s, actual[s].get(name), expected[s].get(name)) for s in sorted(expected)
                 if expected[s].get(name) is not None]
        if not pairs:
            continue
        bad = [s for s, a, _ in pairs if not (isinstance(a, (int, float)) and math.isfinite(a))]
        if bad:
            problems.append(f"{name} missing or not finite at steps {bad[:5]}")
            continue
        residuals = [(s, a - e, a, e) for s, a, e in pairs]
        worst = max(residuals, key=lambda r: abs(r[1]))
        mean = sum(r[1] for r in residuals) / len(residuals)
        figures[name] = {"max_abs": abs(worst[1]), "worst_step": worst[0], "mean_residual": mean}
        if abs(worst[1]) > tolerance["max_abs"]:
            problems.append(f"{name} at step {worst[0]} is {worst[2]:.6g}, reference {worst[3]:.6g} "
                            f"(|diff| {abs(worst[1]):.4g} > max_abs {tolerance['max_abs']})")
        if abs(mean) > tolerance["mean_residual"]:
            # a drift: every step a little off in the same direction; the worst step shows where it is largest
            problems.append(f"{name} drifts: mean residual {mean:+.4g} over {len(residuals)} steps "
                            f"(> mean_residual {tolerance['mean_residual']}; largest at step {worst[0]}, "
                            f"{worst[1]:+.4g})")
    return _result(problems, f"{len(expected)} steps within max_abs {tolerance['max_abs']}, "
                             f"mean residual within {tolerance['mean_residual']} of {where}", **figures)


def check(log_history: list[dict[str, Any]], job_file: Path) -> dict[str, Any]:
    """The gate: the reference beside ``job_file`` read and compared; a missing one fails with the how-to."""
    path = Path(job_file).parent / REFERENCE
    if not path.exists():
        return _result([f"no reference trajectory {path}: write one with {write_command(job_file)} "
                        "(from a clean git tree), review it and commit it"], "")
    try:
        reference = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return _result([f"cannot read {path}: {exc}"], "")
    return compare(log_history, reference, str(path))
