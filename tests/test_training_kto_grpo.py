"""KTO and GRPO jobs on tiny offline models: a healthy run passes its checks; a KTO reference that is
not the initial policy, and a GRPO reward that never varies, fail the check that names the fault; the
GRPO reward is the eval suite's own extraction and scorer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from harness.training.job import JobError, load_job  # noqa: E402
from harness.training.reward import SuiteReward  # noqa: E402
from harness.training.runner import run_job  # noqa: E402

from tests.test_training_runner import perturbed  # noqa: E402

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima"}
SUITE = """\
name: mentioned
dataset: cases.jsonl
api: chat
extract: [first_line]
scorer: contains
"""


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _suite(folder: Path, text: str = SUITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(text)
    _write_rows(folder / "cases.jsonl", [{"id": "france", "input": "What is the capital of France?", "target": "Paris"}])
    return folder / "suite.yaml"


def kto_job(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wrong = [*list(CAPITALS.values())[1:], "Paris"]
    rows = []
    for (country, capital), other in zip(CAPITALS.items(), wrong):
        rows.append({"prompt": f"What is the capital of {country}?", "completion": capital, "label": True})
        rows.append({"prompt": f"What is the capital of {country}?", "completion": other, "label": False})
    _write_rows(folder / "data.jsonl", rows)
    (folder / "job.yaml").write_text(
        "trainer: kto\nmodel: {tiny: {}}\ntokenizer: {train: {vocab_size: 512}}\nchat_template: chatml\n"
        "dataset: data.jsonl\nconfig: {max_steps: 4, per_device_train_batch_size: 8, learning_rate: 1.0e-3}\n")
    return folder / "job.yaml"


def grpo_job(folder: Path, targets: dict[str, str] = CAPITALS, reward: str = "../reward", steps: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_rows(folder / "data.jsonl", [{"question": f"What is the capital of {c}?", "answer": a} for c, a in targets.items()])
    (folder / "job.yaml").write_text(
        "trainer: grpo\nmodel: {tiny: {}}\ntokenizer: {train: {vocab_size: 512}}\nchat_template: chatml\n"
        "dataset: data.jsonl\nfields: {prompt: question, target: answer}\n"
        f"reward: {{suite: {reward}}}\n"
        f"config: {{max_steps: {steps}, per_device_train_batch_size: 32, num_generations: 8, learning_rate: 1.0e-3}}\n")
    return folder / "job.yaml"


def failed(run: Any) -> set[str]:
    return {name for name, result in run.checks.items() if not result["passed"]}


def test_kto_job_starts_at_the_untrained_policy_and_passes_every_check(tmp_path: Path) -> None:
    job = load_job(kto_job(tmp_path / "kto"))
    assert job.gates == ("label_mask", "training_happened", "stop_tokens", "checkpoint_roundtrip", "reference_model")
    run = run_job(job, tmp_path / "out")
    assert run.error is None and not failed(run), run.checks
    happened = run.checks["training_happened"]
    assert happened["step1_loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigmoid(0): policy equals reference
    assert happened["step1_rewards"] == [0.0, 0.0]
    assert run.label_audit.examples == 2 * len(CAPITALS) and run.label_audit.prompt_tokens_trained == 0
    assert "final_reward_margin" in run.metrics


def test_kto_with_a_reference_other_than_the_initial_policy_fails(tmp_path: Path) -> None:
    run = run_job(load_job(kto_job(tmp_path / "kto")), tmp_path / "out", _make_reference=perturbed)
    assert run.error is None
    assert failed(run) == {"reference_model", "training_happened"}
    assert "is not 0.5" in run.checks["training_happened"]["reason"]


def test_grpo_rewards_with_the_suites_extraction_and_scorer(tmp_path: Path) -> None:
    reward = SuiteReward(_suite(tmp_path / "reward"))
    assert reward.__name__ == "suite_mentioned"
    prompts = [[{"role": "user", "content": "What is the capital of France?"}]] * 3
    completions = [[{"role": "assistant", "content": "It is Paris."}],
                   [{"role": "assistant", "content": "Lyon\nnot Paris"}],  # first_line: Paris is not in it
                   [{"role": "assistant", "content": "Lyon"}]]
    assert reward(prompts, completions, target=["Paris"] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no 'target' column"):
        reward(prompts, completions)


def test_grpo_job_with_a_suite_reward_trains(tmp_path: Path) -> None:
    _suite(tmp_path / "reward")
    job = load_job(grpo_job(tmp_path / "grpo"))
    assert job.reward == {"suite": str((tmp_path / "reward" / "suite.yaml").resolve())}
    assert "label_mask" not in job.gates  # GRPO trains on its own generations: no labels
    run = run_job(job, tmp_path / "out")
    assert run.error is None and not failed(run), run.checks
    steps = [e for e in run.log_history if "frac_reward_zero_std" in e]
    assert len(steps) == 6 and "rewards/suite_mentioned/mean" in steps[0]
    assert run.metrics["frac_reward_zero_std_mean"] < 1


def test_grpo_whose_reward_never_varies_fails_training_happened(tmp_path: Path) -> None:
    _suite(tmp_path / "reward")
    never = {country: "Atlantis-Zzyzx" for country in CAPITALS}  # no completion ever contains it
    run = run_job(load_job(grpo_job(tmp_path / "grpo", never, steps=2)), tmp_path / "out")  # 2 steps say it
    assert run.error is None
    assert failed(run) == {"training_happened"}
    assert "frac_reward_zero_std is 1 at every step" in run.checks["training_happened"]["reason"]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("reward: {suite: ../reward}\n", ""), "a grpo job needs a reward"),
    (lambda t: t.replace("../reward", "../nowhere"), "no suite file found"),
    (lambda t: t.replace("{suite: ../reward}", "{script: x.py}"), "'reward' must be {suite: <eval suite>}"),
    (lambda t: t.replace("target: answer", "target: solution"), "lacks field 'target' (mapped to column 'solution')"),
])
def test_bad_grpo_jobs_are_errors_naming_file_and_line(tmp_path: Path, change: Any, message: str) -> None:
    _suite(tmp_path / "reward")
    path = grpo_job(tmp_path / "grpo")
    path.write_text(change(path.read_text()))
    with pytest.raises(JobError, match=re.escape(message)) as info:
        load_job(path)
    assert info.value.line >= 1 and info.value.path.endswith(("job.yaml", "data.jsonl"))


def test_a_reward_suite_with_an_error_is_the_jobs_error_at_the_reward_line(tmp_path: Path) -> None:
    _suite(tmp_path / "reward", SUITE.replace("scorer: contains", "scorer: contains\nbogus_key: 1"))
    path = grpo_job(tmp_path / "grpo")
    with pytest.raises(JobError, match="reward.suite") as info:
        load_job(path)
    assert info.value.line == path.read_text().splitlines().index("reward: {suite: ../reward}") + 1


def test_reward_and_eval_belong_to_the_right_jobs(tmp_path: Path) -> None:
    _suite(tmp_path / "reward")
    path = kto_job(tmp_path / "kto")
    text = path.read_text()
    path.write_text(text + "reward: {suite: ../reward}\n")
    with pytest.raises(JobError, match="'reward' applies to grpo jobs, not kto"):
        load_job(path)
    path.write_text(text + "gates: [eval_parity]\n")
    with pytest.raises(JobError, match="needs eval: {suite"):
        load_job(path)
    path.write_text(text + "eval: {suite: ../reward, padding_side: middle}\n")
    with pytest.raises(JobError, match="padding_side must be left or right"):
        load_job(path)
    path.write_text(text + "eval: {suite: ../reward, tolerance: 0.1}\n")
    assert load_job(path).eval == {"suite": str((tmp_path / "reward" / "suite.yaml").resolve()), "tolerance": 0.1,
                                   "padding_side": "left"}


def test_the_training_plot_gains_reward_and_kl_panels_when_the_trainer_logs_them() -> None:
    from harness.report.training_plots import _figure, step_columns

    sft = [{"step": 1, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-3}]
    kto = [{**sft[0], "kl": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}]
    grpo = [{**sft[0], "reward": 0.1, "frac_reward_zero_std": 0.5}]
    titles = {name: [ax.get_title() for ax in _figure(name, rows).axes] for name, rows in
              (("sft", sft), ("kto", kto), ("grpo", grpo))}
    assert titles["sft"] == ["loss", "grad_norm", "learning_rate"]
    assert titles["kto"] == titles["grpo"] == [*titles["sft"], "rewards", "KL / zero-std groups"]
    assert {"kl", "rewards/margins"} <= set(step_columns(kto)) and "frac_reward_zero_std" in step_columns(grpo)
