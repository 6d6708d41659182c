"""The ``grad_accumulation`` check on a tiny offline SFT job: batch 8 × accumulation 1 equals batch 1 ×
accumulation 8 in this library version, and simulated loss-scaling regressions fail it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from harness.training.accumulation import LOSS_RTOL, UPDATE_RTOL, grad_accumulation_equivalence  # noqa: E402
from harness.training.api import TrainJob  # noqa: E402
from harness.training.job import default_gates, load_job  # noqa: E402
from harness.training.runner import build_model, build_tokenizer, load_rows, run_job  # noqa: E402
from tests.test_training_runner import make_job  # noqa: E402

# completions of different lengths: batch 8 pads them, and a per-micro-batch mean would weight them wrongly
ANSWERS = {
    "France": "Paris", "Japan": "Tokyo, on Honshu", "Italy": "Rome", "Spain": "Madrid, in the centre of Spain",
    "Germany": "Berlin", "Egypt": "Cairo, on the Nile", "Canada": "Ottawa", "Peru": "Lima, on the Pacific coast",
}  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> TrainJob:
    records = [{"question": f"What is the capital of {c}?", "answer": a} for c, a in ANSWERS.items()]
    return make_job(tmp_path_factory.mktemp("acc"), "sft", records, config={"max_steps": 2},
                    gates=("grad_accumulation",))


@pytest.fixture(scope="module")
def parts(job: TrainJob) -> tuple[Any, list[dict[str, Any]]]:
    rows = load_rows(job)
    return build_tokenizer(job, rows), rows


def check(job: TrainJob, parts: tuple[Any, list[dict[str, Any]]], patch: Any = None) -> dict[str, Any]:
    tokenizer, rows = parts
    return grad_accumulation_equivalence(job, lambda: build_model(job, tokenizer), tokenizer, rows, _patch=patch)


def test_job_with_the_gate_passes_it(job: TrainJob, tmp_path: Path) -> None:
    run = run_job(job, tmp_path / "out")
    assert run.error is None, run.error
    result = run.checks["grad_accumulation"]
    assert result["passed"], result
    assert result["loss_rel_diff"] <= LOSS_RTOL and result["update_rel_diff"] <= UPDATE_RTOL
    assert result["update_max_abs"] > 0 and result["loss_b8_ga1"] > 0


def test_double_division_by_accumulation_steps_fails_with_both_losses(job: TrainJob, parts: Any) -> None:
    def divide_twice(trainer: Any) -> None:  # the token-normalised loss divided by the steps again
        trainer.loss_is_scaled_for_ga = False

    result = check(job, parts, divide_twice)
    assert not result["passed"]
    # with accumulation 8 the logged loss is an eighth; with accumulation 1 nothing changes
    assert result["loss_b1_ga8"] == pytest.approx(result["loss_b8_ga1"] / 8, rel=1e-3)
    assert f"{result['loss_b8_ga1']:.6g}" in result["reason"] and f"{result['loss_b1_ga8']:.6g}" in result["reason"]
    assert "relative difference 0.875" in result["reason"]


def test_per_micro_batch_mean_fails_on_padded_lengths(job: TrainJob, parts: Any) -> None:
    def per_batch_mean(trainer: Any) -> None:  # no num_items_in_batch: each micro-batch's own token mean
        trainer.model_accepts_loss_kwargs = False

    result = check(job, parts, per_batch_mean)
    # an untrained model's per-token loss is nearly uniform, so the loss barely moves: the gradient does
    assert not result["passed"], result
    assert result["grad_norm_rel_diff"] > 0.01 and result["update_rel_diff"] > UPDATE_RTOL
    assert "grad norm" in result["reason"] and "parameter update" in result["reason"]


def test_gate_is_opt_in_and_accepted_in_a_job_file(tmp_path: Path) -> None:
    assert "grad_accumulation" not in default_gates("sft")
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "job.yaml").write_text("trainer: sft\nmodel: {tiny: {}}\ntokenizer: {train: {}}\n"
                                       "dataset: data.jsonl\ngates: [grad_accumulation]\n")
    assert load_job(tmp_path / "job.yaml").gates == ("grad_accumulation",)
