"""Writing a job's reference trajectory: the job run once, from a clean git tree, with a reason.

``python -m harness.training.trajectory write <job.yaml> --reason "..."`` (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import DEFAULT_TOLERANCE, REFERENCE, steps_of


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
    parser = argparse.ArgumentParser(prog="python -m harness.training.trajectory",
                                     description=__doc__.splitlines()[0])
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
