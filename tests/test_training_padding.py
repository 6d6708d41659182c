"""The opt-in ``padding`` check: training batches pad right, generation batches pad left."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from harness.training.api import TrainRun  # noqa: E402
from harness.training.job import CHECKS, default_gates  # noqa: E402
from harness.training.padding import generation_prompts, padding_parity  # noqa: E402
from harness.training.runner import run_job  # noqa: E402

from tests.test_training_runner import make_job, sft_records  # noqa: E402

# 10 steps leave a model that emits "\n" whatever its context, which no padding can change: 60 steps
# (about 8 s here) make it answer capitals, so a right-padded batch visibly changes its answers
CONFIG = {"max_steps": 60, "per_device_train_batch_size": 8, "learning_rate": 5e-3}


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    folder = tmp_path_factory.mktemp("padding")
    return run_job(make_job(folder, "sft", sft_records(), gates=("padding",), config=CONFIG), folder / "out")


@pytest.fixture(scope="module")
def trained(padded_run: TrainRun) -> tuple[object, object, list[str]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(padded_run.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(padded_run.output_dir)
    rows = [{"prompt": [{"role": "user", "content": r["question"]}]} for r in sft_records()]
    return model, tokenizer, generation_prompts(tokenizer, rows)


def test_padding_is_an_opt_in_named_check() -> None:
    assert "padding" in CHECKS and "padding" not in default_gates("sft")


def test_sft_job_gated_on_padding_passes_and_would_see_right_padding(padded_run: TrainRun) -> None:
    assert padded_run.error is None
    result = padded_run.checks["padding"]
    assert result["passed"], result
    # the cut copy guarantees a padded training row; the control shows the model is context-sensitive
    assert result["train_rows_padded"] >= 1 and result["differing"] == 0 and result["prompts"] == 4
    assert result["right_padding_differs"] is True


def test_right_padded_generation_fails_naming_the_prompt(trained: tuple[object, object, list[str]]) -> None:
    model, tokenizer, prompts = trained
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert len(set(lengths)) > 1, lengths  # the joined prompt is longer than the job's own
    result = padding_parity(model, tokenizer, prompts, generation_padding_side="right")
    assert not result["passed"] and result["differing"] >= 1
    first = next(p for p in prompts if repr(p) in result["reason"])
    assert f"first {first!r}: batched " in result["reason"] and ", unbatched " in result["reason"]
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is untouched (the check pads a copy)


def test_a_left_padded_training_batch_fails(trained: tuple[object, object, list[str]]) -> None:
    import torch

    model, tokenizer, prompts = trained
    left = {"attention_mask": torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]])}
    result = padding_parity(model, tokenizer, prompts, batch=left)
    assert not result["passed"] and result["train_rows_padded"] == 2
    assert "pads 1 of 2 padded rows on the left (rows [1])" in result["reason"]
