"""Gate label_mask, part "completion-only and assistant-only agree where both apply": the masks TRL builds
for prompt/completion rows (completion_only_loss) and the same rows as messages (assistant_only_loss)
select the same tokens under a healthy template, and a template that moves a token across the edge of
its generation block fails the check, in a mask_agreement call and in a whole SFT job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from harness.training.api import TrainRun  # noqa: E402
from harness.training.loss_modes import fold, mask_agreement  # noqa: E402
from harness.training.runner import _texts, load_rows, run_job  # noqa: E402
from harness.training.tiny import CHATML, train_tokenizer  # noqa: E402

from .test_training_runner import make_job, sft_records  # noqa: E402

# the end-of-turn token after the generation block: assistant-only never trains the model to stop
EOT_OUTSIDE = CHATML.replace("{{- message['content'] + '<|im_end|>\\n' -}}{% endgeneration %}",
                             "{{- message['content'] -}}{% endgeneration %}{{- '<|im_end|>\\n' -}}")  # fmt: skip
# the assistant header inside the generation block: assistant-only trains it, completion-only does not
HEADER_INSIDE = CHATML.replace("{{- '<|im_start|>assistant\\n' -}}{% generation %}",
                               "{% generation %}{{- '<|im_start|>assistant\\n' -}}")  # fmt: skip
NO_MARKERS = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def rows_and_tokenizer(folder: Path, template: str) -> tuple[list[dict[str, Any]], Any]:
    """The runner's rows (turns) and tiny tokenizer for the capitals data under ``template``."""
    job = make_job(folder, "sft", sft_records(), chat_template=template)
    rows = load_rows(job)
    return rows, train_tokenizer(_texts(rows), 512, template)


@pytest.mark.parametrize("template", ["chatml", "qwen", "gemma"])
def test_bundled_templates_train_the_same_tokens_in_both_modes(tmp_path: Path, template: str) -> None:
    rows, tokenizer = rows_and_tokenizer(tmp_path, template)
    result = mask_agreement(rows, tokenizer)
    assert result["passed"] and result["applies"], result
    assert (result["examples_compared"], result["examples_disagreeing"]) == (16, 0)


def test_end_of_turn_outside_the_generation_block_disagrees(tmp_path: Path) -> None:
    assert EOT_OUTSIDE != CHATML
    rows, tokenizer = rows_and_tokenizer(tmp_path, EOT_OUTSIDE)
    result = mask_agreement(rows, tokenizer, limit=5)
    assert not result["passed"] and (result["examples_compared"], result["examples_disagreeing"]) == (5, 5)
    reason = result["reason"]
    assert "different tokens in 5 of 5 examples" in reason and "2 tokens trained only by completion-only" in reason
    assert "completion-only: <|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in reason
    assert "<|im_start|>assistant\n[[Paris<|im_end|>\n]]" in reason
    assert reason.endswith("assistant-only: <|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                           "<|im_start|>assistant\n{{Paris}}<|im_end|>\n")  # fmt: skip


def test_assistant_header_inside_the_generation_block_disagrees(tmp_path: Path) -> None:
    assert HEADER_INSIDE != CHATML
    rows, tokenizer = rows_and_tokenizer(tmp_path, HEADER_INSIDE)
    result = mask_agreement(rows, tokenizer)
    assert not result["passed"] and result["examples_disagreeing"] == 16
    assert "0 tokens trained only by completion-only" in result["reason"]
    assert "{{<|im_start|>assistant\nParis<|im_end|>\n}}" in result["reason"]


def test_truncation_cuts_the_disagreement_off_in_both_modes(tmp_path: Path) -> None:
    # what max_length cuts off is trained by neither mode: only the kept tokens are compared
    rows, tokenizer = rows_and_tokenizer(tmp_path, EOT_OUTSIDE)
    ids = tokenizer.apply_chat_template(rows[0]["prompt"] + rows[0]["completion"], tokenize=True, return_dict=True)["input_ids"]
    end = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), len(ids) - 3)  # the completion's end-of-turn
    assert not mask_agreement(rows[:1], tokenizer, max_length=end + 1)["passed"]
    assert mask_agreement(rows[:1], tokenizer, max_length=end)["passed"]


@pytest.mark.parametrize(
    "case, why",
    [
        ("no markers", "no {% generation %} markers and TRL has no training version"),
        ("messages", "not prompt/completion"),
        ("plain text", "plain text, not turns"),
        ("no template", "no chat template"),
        ("full loss", "loss full"),
    ],
)
def test_where_one_mode_does_not_apply_the_check_says_why(tmp_path: Path, case: str, why: str) -> None:
    rows, tokenizer = rows_and_tokenizer(tmp_path, NO_MARKERS if case == "no markers" else "chatml")
    if case == "messages":
        rows = [{"messages": row["prompt"] + row["completion"]} for row in rows]
    if case == "plain text":
        rows = [{"prompt": row["prompt"][0]["content"], "completion": row["completion"][0]["content"]} for row in rows]
    if case == "no template":
        tokenizer.chat_template = None
    result = mask_agreement(rows, tokenizer, loss="full" if case == "full loss" else "completion_only")
    assert result == {"passed": True, "applies": False, "reason": result["reason"]}
    assert result["reason"].startswith("completion-only/assistant-only agreement does not apply: ") and why in result["reason"]


def test_fold_keeps_the_label_mask_reason_and_appends_the_disagreement() -> None:
    agreement = {"passed": False, "reason": "differ", "applies": True, "examples_compared": 2, "examples_disagreeing": 1}
    assert fold({"passed": True, "reason": "fine"}, agreement) == {
        "passed": False, "reason": "differ", "agreement": {k: v for k, v in agreement.items() if k != "passed"}}  # fmt: skip
    assert fold({"passed": False, "reason": "prompt trained"}, agreement)["reason"] == "prompt trained; differ"
    skipped = {"passed": True, "applies": False, "reason": "does not apply: x"}
    assert fold({"passed": True, "reason": "fine"}, skipped) == {
        "passed": True, "reason": "fine", "agreement": {"applies": False, "reason": "does not apply: x"}}  # fmt: skip


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    folder = tmp_path_factory.mktemp("healthy")
    return run_job(make_job(folder, "sft", sft_records(), config={"max_steps": 4}), folder / "out")


def test_healthy_sft_job_label_mask_passes_with_agreement_figures(healthy_run: TrainRun) -> None:
    assert healthy_run.error is None
    label_mask = healthy_run.checks["label_mask"]
    assert label_mask["passed"], label_mask
    assert label_mask["agreement"] == {
        "applies": True, "examples_compared": 16, "examples_disagreeing": 0,
        "reason": "completion-only and assistant-only loss train the same tokens in 16 examples"}  # fmt: skip


def test_sft_job_whose_template_leaves_the_end_of_turn_out_fails_label_mask(tmp_path: Path) -> None:
    # completion-only loss (the job's) trains the end-of-turn; the template's assistant mask would not
    job = make_job(tmp_path, "sft", sft_records(), chat_template=EOT_OUTSIDE, config={"max_steps": 4})
    run = run_job(job, tmp_path / "out")
    assert run.error is None and run.label_audit.examples_not_ending_with_eos == 0
    label_mask = run.checks["label_mask"]
    assert not label_mask["passed"] and label_mask["agreement"]["examples_disagreeing"] == 16
    assert label_mask["reason"].startswith("completion-only and assistant-only loss train different tokens in 16 of 16")
    assert "[[Paris<|im_end|>\n]]" in label_mask["reason"] and "{{Paris}}<|im_end|>" in label_mask["reason"]
