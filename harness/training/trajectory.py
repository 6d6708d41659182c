"""Gate ``trajectory``: a run's per-step loss and grad_norm against a committed reference beside the job.

The reference is ``training/<job>/trajectory.json``::

    {"steps": [{"step": 1, "loss": 6.2, "grad_norm": 3.1}, ...],
     "tolerance": {"max_abs": 0.05, "mean_residual": 0.01},
     "reason": "...", "created": "<iso>", "git_commit": "<sha>", "dirty": false, "versions": {...}}

The gate fails when any step's |run - reference| exceeds ``max_abs`` (a spike), or when the mean
signed residual of a series exceeds ``mean_residual`` in size (a drift too small to spike), naming the
worst step. Writing or refreshing a reference is an explicit act with a reason, from a clean tree::

    python -m harness.training.trajectory write training/sft_capitals/job.yaml --reason "initial reference"
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
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


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout


def dirty_files(folder: Path) -> list[str]:
    """Tracked files with uncommitted changes in the repository holding ``folder`` (untracked ones don't count)."""
    return [line for line in _git(folder, "status", "--porcelain", "--untracked-files=no").splitlines() if line]


def reference_from(run: Any, reason: str, commit: str, dirty: bool, tolerance: dict[str, float]) -> dict[str, Any]:
    return {
        "steps": steps_of(run.log_history),
        "tolerance": tolerance,
        "reason": reason,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "dirty": dirty,
        "versions": run.versions,
    }


def write(job_file: Path | str, reason: str, *, allow_dirty: bool = False,
          tolerance: dict[str, float] | None = None) -> Path:
    """Run the job once in a temp folder and write its reference; raises ``SystemExit`` with a message
    on a dirty tree (unless ``allow_dirty``), an empty reason or a failed run."""
    from harness.training.job import load_job
    from harness.training.runner import run_job

    job_file = Path(job_file).resolve()
    if not reason.strip():
        raise SystemExit("a reference needs a --reason (why the trajectory is what it is now)")
    try:
        dirty = dirty_files(job_file.parent)
        commit = _git(job_file.parent, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        if not allow_dirty:
            raise SystemExit(f"{job_file.parent} is not in a git work tree ({exc}); --allow-dirty to write anyway")
        dirty, commit = [], "unknown"
    if dirty and not allow_dirty:
        shown = "\n  ".join(dirty[:10])
        raise SystemExit(f"refusing to write a reference from a dirty tree ({len(dirty)} changed tracked files):\n  "
                         f"{shown}\ncommit or stash them first, or pass --allow-dirty")
    job = load_job(job_file)
    with tempfile.TemporaryDirectory(prefix=f"trajectory-{job.name}-") as folder:
        run = run_job(job, Path(folder))
    if run.error:
        raise SystemExit(f"the run failed, no reference written: {run.error}")
    if not steps_of(run.log_history):
        raise SystemExit("the run logged no step, no reference written")
    path = job_file.parent / REFERENCE
    data = reference_from(run, reason, commit, bool(dirty), {**DEFAULT_TOLERANCE, **(tolerance or {})})
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.training.trajectory", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="run the job once and write training/<job>/trajectory.json")
    writer.add_argument("job_file", type=Path)
    writer.add_argument("--reason", required=True)
    writer.add_argument("--allow-dirty", action="store_true", help="write even with uncommitted tracked changes")
    writer.add_argument("--max-abs", type=float, default=DEFAULT_TOLERANCE["max_abs"])
    writer.add_argument("--mean-residual", type=float, default=DEFAULT_TOLERANCE["mean_residual"])
    args = parser.parse_args(argv)
    path = write(args.job_file, args.reason, allow_dirty=args.allow_dirty,
                 tolerance={"max_abs": args.max_abs, "mean_residual": args.mean_residual})
    steps = json.loads(path.read_text())["steps"]
    print(f"wrote {path}: {len(steps)} steps, final loss {steps[-1]['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
