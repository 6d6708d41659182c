"""A bundled training job, for real (TRL on a tiny offline model): its gates pass, it trains once per run
with two workers, and the trained checkpoint is evaluated in the same run against the
model before training (paired comparison gates): the suite names the job as its model, no models file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COUNTING_RUNNER = '''
import os
from pathlib import Path
from harness.training.runner import run_job as real

def run_job(job, output_dir):
    with open(Path(__file__).parent / "runs.log", "a") as log:
        log.write(f"{job.name} {os.environ.get('PYTEST_XDIST_WORKER', '-')}\\n")
    return real(job, output_dir)
'''

pytest.importorskip("trl")


def test_train_then_evaluate_in_one_run_with_two_workers(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "training", tmp_path / "training")
    shutil.copytree(ROOT / "examples" / "train_then_eval", tmp_path / "examples" / "train_then_eval")
    (tmp_path / "runner.py").write_text(COUNTING_RUNNER)
    env = {**__import__("os").environ, "LLM_HARNESS_TRAIN_RUNNER": f"{tmp_path / 'runner.py'}:run_job"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "training/sft_capitals", "examples/train_then_eval", "-n", "2", "-p", "no:cacheprovider",
         "--llm-report-dir", "out", "--llm-cache", "off", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # the job trained once, though its gates, two suites and the two engines serving its checkpoints ran in 3
    # processes (the other bundled jobs run in CI's `pytest training/ -n 2` step and in their own tests)
    runs = [line.split()[0] for line in (tmp_path / "runs.log").read_text().splitlines()]
    assert runs == ["sft_capitals"], runs
    # the suite's own models (model: {train: ...}): the job before training is the reference
    assert "capitals_trained: sft_capitals vs sft_capitals-initial, 24 paired" in done.stdout
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### capitals_trained: sft_capitals vs sft_capitals-initial" in report
    assert "| **accuracy** (main) | 0 | 1 |" in report  # before training: none right; after: all
    record = json.loads((tmp_path / "out" / "report.json").read_text())
    gates = {(s["model"], g["expr"]): g["status"] for s in record["suites"] if s["name"] == "capitals_trained"
             for g in s["gates"]}
    assert gates == {("sft_capitals", "delta(accuracy) >= 0.5"): "passed",
                     ("sft_capitals", "regressed_cases == 0"): "passed"}
    assert [m["name"] for m in record["run"]["models"]] == ["sft_capitals-initial", "sft_capitals"]  # no other
