"""Training runs in the run's reports: report.json's ``training`` block, report.md's Training section
with its PNG, report.xlsx's ``training_<job>`` sheet; one entry per job, also under xdist.

No torch: the fake runner of the seam (``$LLM_HARNESS_TRAIN_RUNNER``) returns a scripted run with a
log history written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import harness.training.collect  # noqa: F401 - imported before pytester snapshots sys.modules
import harness.training.job  # noqa: F401
import harness.training.shared
from harness.report.markdown import render_markdown
from tests.conftest import answer_cases, load_report, run_inline, write_suite
from tests.test_training_jobs import GOOD_RUN, write_job

FAKE_RUNNER = '''
import json
from pathlib import Path
from harness.training.api import TrainRun

def run_job(job, output_dir):
    spec = json.loads((Path(__file__).parent / "fake_run.json").read_text())
    return TrainRun(job=job.name, trainer=job.trainer, output_dir=str(output_dir), checks=spec.get("checks", {}),
                    metrics=spec.get("metrics", {}), versions=spec.get("versions", {}),
                    log_history=spec.get("log_history", []), wall_s=1.5, error=spec.get("error"))
'''
HISTORY = [
    {"loss": 2.9, "grad_norm": 1.5, "learning_rate": 5e-3, "epoch": 0.5, "step": 1,
     "rewards/chosen": 0.1, "logps/chosen": -3.2},
    {"loss": 2.7, "grad_norm": 1.1, "learning_rate": 2.5e-3, "epoch": 1.0, "step": 2,
     "rewards/chosen": 0.3, "logps/chosen": -2.9},
    {"train_runtime": 1.2, "train_loss": 2.8, "epoch": 1.0, "step": 2},  # the end-of-training summary
]
RUN = {**GOOD_RUN, "log_history": HISTORY, "versions": {"trl": "1.16.0", "torch": "2.5.0"}}
GATES = {"label_mask": "passed", "stop_tokens": "failed", "final_loss <= 3.0": "passed", "loss_drop >= 0.5": "failed"}


@pytest.fixture
def fake_runner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (pytester.path / "fake_runner.py").write_text(FAKE_RUNNER, encoding="utf-8")
    monkeypatch.setenv(harness.training.shared.RUNNER_ENV, f"{pytester.path / 'fake_runner.py'}:run_job")


def training_block(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    return json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))["training"]


def test_a_training_only_run_writes_the_training_block_section_png_and_sheet(pytester, fake_runner):
    write_job(pytester, run=RUN)
    run_inline(pytester, "training", "-p", "no:cacheprovider").assert_outcomes(passed=2, failed=2)
    out = pytester.path / "out"
    [entry] = training_block(pytester)
    assert entry["job"] == "sft_capitals" and entry["trainer"] == "sft" and entry["error"] is None
    assert entry["config"] == {"max_steps": 20, "learning_rate": 5.0e-3}
    assert entry["versions"]["trl"] == "1.16.0" and entry["metrics"]["final_loss"] == 2.5
    assert entry["log_history"] == HISTORY  # in full, the summary row too
    assert {g["expr"]: g["status"] for g in entry["gates"]} == GATES
    reasons = {g["expr"]: g["reason"] for g in entry["gates"]}
    assert reasons["stop_tokens"] == "3 of 4 examples do not end with <|im_end|>"
    assert reasons["loss_drop >= 0.5"] == "loss_drop = 0.1, needs >= 0.5"
    assert json.loads((out / "report.json").read_text())["cases"] == []

    png = out / "training_sft_capitals.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "**Gates FAILED**: 2 passed, 2 failed" in md  # the training gates count in the verdict
    section = md[md.index("## Training"):]
    assert "](training_sft_capitals.png)" in section
    assert "| `stop_tokens` | ❌ failed | 3 of 4 examples do not end with &lt;\\|im_end\\|> |" in section
    assert "| `final_loss <= 3.0` | ✅ passed |" in section
    assert "trl `1.16.0`" in section and "| final_loss | 2.5 |" in section

    from openpyxl import load_workbook

    ws = load_workbook(out / "report.xlsx")["training_sft_capitals"]
    rows = [[c.value for c in row] for row in ws.iter_rows()]
    assert rows[0] == ["step", "loss", "grad_norm", "learning_rate", "rewards/chosen", "logps/chosen"]
    assert rows[1:] == [[1, 2.9, 1.5, 5e-3, 0.1, -3.2], [2, 2.7, 1.1, 2.5e-3, 0.3, -2.9]]  # steps only


def test_under_xdist_each_job_is_one_entry_with_every_gate(pytester, fake_runner):
    write_job(pytester, run=RUN)
    run_inline(pytester, "-n", "2", "training", "-p", "no:cacheprovider").assert_outcomes(passed=2, failed=2)
    [entry] = training_block(pytester)
    assert {g["expr"]: g["status"] for g in entry["gates"]} == GATES
    assert entry["log_history"] == HISTORY


def test_a_run_of_evals_and_training_reports_both(pytester, fake_runner):
    write_job(pytester, run=RUN)
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "Paris", "Paris")]), gates=["accuracy >= 0.5"])
    run_inline(pytester, "evals", "training").assert_outcomes(passed=4, failed=2)
    report = load_report(pytester)
    assert [c["id"] for c in report["cases"]] == ["c1"] and [s["name"] for s in report["suites"]] == ["geo"]
    assert [t["job"] for t in report["training"]] == ["sft_capitals"]
    from openpyxl import load_workbook

    assert "training_sft_capitals" in load_workbook(pytester.path / "out" / "report.xlsx").sheetnames


def test_a_failed_run_is_reported_with_its_error_on_every_gate(pytester, fake_runner):
    write_job(pytester, run={"error": "CUDA out of memory"})
    run_inline(pytester, "training").assert_outcomes(failed=4)
    [entry] = training_block(pytester)
    assert entry["error"] == "CUDA out of memory"
    assert {g["reason"] for g in entry["gates"]} == {"the run failed: CUDA out of memory"}
    assert not (pytester.path / "out" / "training_sft_capitals.png").exists()  # nothing logged, nothing drawn
    assert "**Run failed**: CUDA out of memory" in (pytester.path / "out" / "report.md").read_text()


def test_hostile_text_from_a_run_is_escaped_in_markdown(pytester, fake_runner):
    hostile = "evil\x1b[31m <img src=x>|$x$\n# heading"
    run = {**RUN, "checks": {**RUN["checks"], "stop_tokens": {"passed": False, "reason": hostile}},
           "versions": {"trl": "1`2\x07"}}
    write_job(pytester, run=run)
    run_inline(pytester, "training")
    md = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    section = md[md.index("## Training"):]
    assert "\x1b" not in md and "\x07" not in md and "<img" not in md and "\n# heading" not in md
    assert "evil\\x1b[31m &lt;img src=x>\\|\\$x\\$\\n# heading" in section


def test_a_hostile_job_name_is_escaped_in_the_section():
    entry = {"job": "x](javascript:1) <b>\x1b[2J", "trainer": "sft", "gates": [], "metrics": {}, "log_history": []}
    md = render_markdown({"run": {}, "suites": [], "cases": [], "training": [entry]})
    assert "### x](javascript:1) &lt;b>\\x1b[2J (sft)" in md
    assert "\x1b" not in md


def test_a_run_with_neither_training_nor_eval_writes_no_report(pytester, fake_runner):
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    run_inline(pytester, "test_plain.py").assert_outcomes(passed=1)
    assert not Path(pytester.path / "out").exists()
