"""Templates and tokenizers that cannot train what a job asks: each run fails with a reason naming the
fault, never a silently untrained model; and a job marked gpu is skipped where no GPU exists."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")

from harness.training.runner import run_job  # noqa: E402
from harness.training.tiny import train_tokenizer  # noqa: E402

from tests.test_training_runner import make_job, sft_records  # noqa: E402

# a ChatML template with no {% generation %} markers and a layout TRL cannot patch
NO_MARKERS = ("{%- for m in messages -%}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{%- endfor -%}"
              "{%- if add_generation_prompt -%}<|im_start|>assistant: {%- endif -%}")


def test_a_tokenizer_without_the_templates_end_of_turn_fails_the_run_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "tokenizer"
    train_tokenizer(["What is the capital of France?", "Paris"] * 4, 256, "chatml").save_pretrained(folder)
    job = make_job(tmp_path, "sft", sft_records(), tokenizer={"path": str(folder)}, chat_template="gemma",
                   config={"max_steps": 2})
    run = run_job(job, tmp_path / "out")
    assert run.error is not None and "no '<end_of_turn>' token" in run.error and "'gemma'" in run.error
    assert run.log_history == []  # stopped before training: no model was trained on unknown tokens


def test_assistant_only_loss_with_a_template_that_cannot_mask_assistant_turns_fails(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sft", sft_records(), chat_template=NO_MARKERS, loss="assistant_only",
                   config={"max_steps": 2})
    run = run_job(job, tmp_path / "out")
    assert run.error is not None and "generation" in run.error.lower(), run.error
    assert run.checks.get("training_happened", {"passed": False})["passed"] is False


def test_a_job_marked_gpu_is_skipped_without_a_gpu(pytester: pytest.Pytester) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the job would run")
    job = pytester.mkdir("training").joinpath("big")
    job.mkdir()
    job.joinpath("data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    job.joinpath("job.yaml").write_text("trainer: sft\nmodel: {bundled: gemma-3-270m}\ndataset: data.jsonl\n"
                                        "markers: [gpu]\ngates: [label_mask]\n")
    result = pytester.runpytest("training", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*training job big is marked gpu: no CUDA GPU here*"])
