"""Training jobs as pytest items: job file errors, gate outcomes, one run per job across xdist workers.

No torch here: a fake runner (``$LLM_HARNESS_TRAIN_RUNNER``, the test seam) returns a scripted run and
appends one line per run to ``runs.log``, so the tests can count the trainings.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import harness.training.collect  # noqa: F401 - imported before pytester snapshots sys.modules
import harness.training.job  # noqa: F401
import harness.training.shared
from tests.conftest import run_inline

JOB = "training/sft_capitals/job.yaml"
FAKE_RUNNER = '''
import json, os, time
from pathlib import Path
from harness.training.api import TrainRun

HERE = Path(__file__).parent

def run_job(job, output_dir):
    spec = json.loads((HERE / "fake_run.json").read_text())
    with open(HERE / "runs.log", "a") as log:
        log.write(f"{job.name} {os.getpid()} {os.environ.get('PYTEST_XDIST_WORKER', '-')}\\n")
    time.sleep(spec.get("delay", 0))
    if spec.get("raise"):
        raise RuntimeError(spec["raise"])
    return TrainRun(job=job.name, trainer=job.trainer, output_dir=str(output_dir), checks=spec.get("checks", {}),
                    metrics=spec.get("metrics", {}), error=spec.get("error"))
'''
GOOD_RUN = {
    "checks": {"label_mask": {"passed": True, "reason": "only completion tokens trained"},
               "training_happened": {"passed": True, "reason": "loss fell 2.9 -> 2.5"},
               "stop_tokens": {"passed": False, "reason": "3 of 4 examples do not end with <|im_end|>"}},
    "metrics": {"final_loss": 2.5, "loss_drop": 0.1, "steps": 20},
}
JOB_LINES = [
    "name: sft_capitals",                                   # 1
    "trainer: sft",                                         # 2
    "model: {tiny: {layers: 2, hidden: 64}}",               # 3
    "tokenizer: {train: {vocab_size: 512}}",                # 4
    "chat_template: chatml",                                # 5
    "dataset: data.jsonl",                                  # 6
    "fields: {prompt: prompt, completion: completion}",     # 7
    "loss: completion_only",                                # 8
    "config:",                                              # 9
    "  max_steps: 20",                                      # 10
    "  learning_rate: 5.0e-3",                              # 11
    "seed: 0",                                              # 12
    "gates:",                                               # 13
    "  - label_mask",                                       # 14
    "  - stop_tokens",                                      # 15
    "  - final_loss <= 3.0",                                # 16
    "  - loss_drop >= 0.5",                                 # 17
    "markers: [slow_training]",                             # 18
]
ROWS = [{"prompt": "Capital of France?", "completion": "Paris"},
        {"prompt": "Capital of Japan?", "completion": "Tokyo"},
        {"prompt": "Capital of Peru?", "completion": "Lima"}]


def write_job(pytester: pytest.Pytester, lines: list[str] = JOB_LINES, rows: list[Any] = ROWS,
              run: dict[str, Any] = GOOD_RUN) -> Path:
    folder = pytester.path / "training" / "sft_capitals"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # a string row goes in as it is (broken JSON)
    (folder / "data.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                                       encoding="utf-8")
    (pytester.path / "fake_run.json").write_text(json.dumps(run), encoding="utf-8")
    return folder


@pytest.fixture
def fake_runner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake runner, named by the seam; its runs.log counts the trainings."""
    (pytester.path / "fake_runner.py").write_text(FAKE_RUNNER, encoding="utf-8")
    monkeypatch.setenv(harness.training.shared.RUNNER_ENV, f"{pytester.path / 'fake_runner.py'}:run_job")
    return pytester.path / "runs.log"


def runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_collect_only_lists_one_gate_item_per_gate_without_training(pytester, fake_runner):
    write_job(pytester)
    result = run_inline(pytester, "--co", "-q", "training")
    result.stdout.fnmatch_lines([f"{JOB}::gate[[]label_mask[]]", f"{JOB}::gate[[]stop_tokens[]]",
                                 f"{JOB}::gate[[]final_loss <= 3.0[]]", f"{JOB}::gate[[]loss_drop >= 0.5[]]"])
    assert runs(fake_runner) == []


def test_checks_and_metric_gates_are_outcomes_with_their_reasons(pytester, fake_runner):
    write_job(pytester)
    result = run_inline(pytester, "training", "-m", "llm_training and llm_gate and slow_training",
                        "--junitxml", "junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*training gate stop_tokens on job sft_capitals: failed: 3 of 4 examples do not end with <|im_end|>*",
        "*training gate loss_drop >= 0.5 on job sft_capitals: failed: loss_drop = 0.1, needs >= 0.5*",
    ])
    assert len(runs(fake_runner)) == 1
    # junit carries the figures, as for eval gates
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    assert cases["gate[final_loss <= 3.0]"]["value"] == "2.5"
    assert cases["gate[final_loss <= 3.0]"]["threshold"] == "3.0"
    assert cases["gate[stop_tokens]"]["passed"] == "False"
    # the run's folder is in the run's runtime folder (shared by its processes, removed at its end)
    assert "/training/sft_capitals-" in cases["gate[final_loss <= 3.0]"]["run_dir"]


def test_a_check_the_run_lacks_and_an_unknown_metric_fail_naming_what_it_has(pytester, fake_runner):
    lines = [*JOB_LINES[:13], "  - checkpoint_roundtrip", "  - samples_per_s >= 10"]
    write_job(pytester, lines)
    result = run_inline(pytester, "training")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*checkpoint_roundtrip on job sft_capitals: failed: the run has no check "
                                 "'checkpoint_roundtrip' (it has: label_mask, stop_tokens, training_happened)*",
                                 "*unknown metric 'samples_per_s'; this run has: final_loss, loss_drop, steps*"])


@pytest.mark.parametrize("run", [{"error": "CUDA out of memory"}, {"raise": "tokenizer exploded"}],
                         ids=["error", "raises"])
def test_a_failed_run_fails_every_gate_with_its_error_and_is_not_retried(pytester, fake_runner, run):
    write_job(pytester, run=run)
    result = run_inline(pytester, "training")
    result.assert_outcomes(failed=4)
    why = "CUDA out of memory" if "error" in run else "runner crashed: RuntimeError: tokenizer exploded"
    for gate in ("label_mask", "stop_tokens", "final_loss <= 3.0", "loss_drop >= 0.5"):
        result.stdout.fnmatch_lines([f"*training gate {gate} on job sft_capitals: failed: the run failed: {why}*"])
    assert len(runs(fake_runner)) == 1


def test_llm_train_returns_the_gates_run_and_a_new_pytest_run_trains_again(pytester, fake_runner):
    write_job(pytester)
    pytester.makepyfile(test_uses_run=f'''
        def test_run(llm_train):
            run = llm_train("{JOB}")
            assert run.metrics["final_loss"] == 2.5 and run.checks["label_mask"]["passed"]
            assert llm_train("{JOB}") is run
    ''')
    result = run_inline(pytester, "training", "test_uses_run.py")
    result.assert_outcomes(passed=3, failed=2)
    assert len(runs(fake_runner)) == 1
    run_inline(pytester, "test_uses_run.py").assert_outcomes(passed=1)
    assert len(runs(fake_runner)) == 2  # each pytest run has its own run id


def test_one_training_run_across_xdist_workers(pytester, fake_runner):
    write_job(pytester, run={**GOOD_RUN, "delay": 1.5})
    pytester.makepyfile(test_uses_run=f'''
        def test_run(llm_train):
            assert llm_train("{JOB}").metrics["steps"] == 20
    ''')
    result = run_inline(pytester, "-n", "2", "--dist", "load", "-v", "training", "test_uses_run.py")
    result.assert_outcomes(passed=3, failed=2)
    assert len(runs(fake_runner)) == 1, runs(fake_runner)
    workers = {w for w in ("gw0", "gw1") if any(w in line and "job.yaml::gate" in line for line in result.outlines)}
    assert workers == {"gw0", "gw1"}, "the job's gates did not run on both workers"


BAD_INPUTS = [
    # (lines changed {line number: new text}, extra rows, the file:line and message the error starts with)
    pytest.param({2: "trainer: sftt"}, None, "job.yaml:2: unknown trainer 'sftt'", id="unknown-trainer"),
    pytest.param({3: "# no model"}, None, "job.yaml:1: missing required key 'model'", id="missing-key"),
    pytest.param({12: "sede: 0"}, None, "job.yaml:12: unknown key 'sede'", id="unknown-key"),
    pytest.param({10: "  max_steps: twenty"}, None, "job.yaml:10: config.max_steps must be a positive integer",
                 id="bad-type"),
    pytest.param({8: "loss: prompt_only"}, None, "job.yaml:8: unknown loss 'prompt_only'", id="unknown-loss"),
    pytest.param({15: "  - stop_token"}, None, "job.yaml:15: unknown gate 'stop_token'", id="unknown-gate"),
    pytest.param({16: "  - final_loss <== 3"}, None, "job.yaml:16: unknown gate 'final_loss <== 3'",
                 id="bad-expression"),
    pytest.param({15: "  - reference_model"}, None, "job.yaml:15: check 'reference_model' applies to dpo, kto jobs",
                 id="check-of-another-trainer"),
    pytest.param({5: "chat_template: chatlm"}, None, "job.yaml:5: unknown chat_template 'chatlm'",
                 id="unknown-chat-template"),
    pytest.param({6: "dataset: missing.jsonl"}, None, "job.yaml:6: dataset 'missing.jsonl' not found",
                 id="missing-dataset"),
    pytest.param({6: "dataset: data.csv"}, None, "job.yaml:6: dataset 'data.csv' must be a .jsonl file",
                 id="not-jsonl-name"),
    pytest.param({7: "fields: {prompt: question, completion: completion}"}, None,
                 "data.jsonl:1: job *job.yaml: row lacks field 'prompt' (mapped to column 'question')",
                 id="field-mapping"),
    pytest.param({7: "fields: {prompt: prompt, answer: completion}"}, None,
                 "job.yaml:7: unknown field 'answer' for trainer sft", id="unknown-role"),
    pytest.param({}, [{"prompt": "Capital of Chile?"}], "data.jsonl:4: job *job.yaml: row lacks field 'completion'",
                 id="row-lacks-field"),
    pytest.param({}, ["{not json"], "data.jsonl:4: job *job.yaml: not JSONL", id="not-json"),
]


@pytest.mark.parametrize("changes, extra_rows, error", BAD_INPUTS)
def test_a_bad_job_is_a_collection_error_naming_file_and_line(pytester, fake_runner, changes, extra_rows, error):
    lines = [changes.get(number, line) for number, line in enumerate(JOB_LINES, 1)]
    write_job(pytester, lines, ROWS + (extra_rows or []))
    result = run_inline(pytester, "--co", "training")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the run
    result.stdout.fnmatch_lines([f"*{error}*"])
    assert runs(fake_runner) == []
