"""The training engine (harness.training.runner/checks/tiny) on tiny offline models: a healthy SFT and
DPO job pass every check, and each deliberately broken job fails the check that names its fault."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from harness.training.api import TrainJob, TrainRun  # noqa: E402
from harness.training.checks import training_happened, verify_manifest  # noqa: E402
from harness.training.runner import run_job  # noqa: E402
from harness.training.tiny import CHATML  # noqa: E402

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Chile": "Santiago",
    "Norway": "Oslo", "Greece": "Athens", "Cuba": "Havana", "Iran": "Tehran", "Poland": "Warsaw",
    "Austria": "Vienna",
}  # fmt: skip
CHECKS = {"label_mask", "training_happened", "stop_tokens", "checkpoint_roundtrip"}


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_records(extra: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    # source field names differ from TRL's: the job's field mapping translates them
    return [{"question": f"What is the capital of {c}?", "answer": a} for c, a in CAPITALS.items()] + list(extra)


def make_job(folder: Path, trainer: str, records: list[dict[str, Any]], **changes: Any) -> TrainJob:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(f"trainer: {trainer}\n")
    config = {"max_steps": 10, "per_device_train_batch_size": 4, "learning_rate": 3e-3, **changes.pop("config", {})}
    fields = {"prompt": "question", "completion": "answer"} if trainer == "sft" else {}
    settings: dict[str, Any] = dict(
        name=f"{trainer}-{folder.name}",
        path=folder / "job.yaml",
        trainer=trainer,
        model={"tiny": {}},
        tokenizer={"train": {"vocab_size": 512}},
        chat_template="chatml",
        datasets=(_write(folder / "data.jsonl", records),),
        fields=fields,
        config=config,
        gates=(),
    )
    return TrainJob(**{**settings, **changes})


def failed(run: TrainRun) -> set[str]:
    return {name for name, result in run.checks.items() if not result["passed"]}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    folder = tmp_path_factory.mktemp("sft")
    return run_job(make_job(folder, "sft", sft_records()), folder / "out")


def test_sft_job_passes_every_check_and_its_loss_drops(sft_run: TrainRun) -> None:
    assert sft_run.error is None
    assert set(sft_run.checks) == CHECKS and not failed(sft_run), sft_run.checks
    metrics = sft_run.metrics
    assert metrics["steps"] == 10 and metrics["final_loss"] < metrics["first_loss"] and metrics["loss_drop"] > 0
    assert metrics["min_grad_norm"] > 0 and metrics["samples_per_s"] > 0 and metrics["tokens_per_s"] > 0
    audit = sft_run.label_audit
    assert (audit.examples, audit.prompt_tokens_trained, audit.end_of_turn) == (16, 0, "<|im_end|>")
    assert sft_run.checks["stop_tokens"]["stop_tokens"] == ["<|im_end|>"]


def test_sft_run_folder_holds_checkpoint_manifest_and_run_json(sft_run: TrainRun) -> None:
    out = Path(sft_run.output_dir)
    saved = json.loads((out / "run.json").read_text())
    assert TrainRun.from_dict(saved).checks == sft_run.checks
    assert "<|im_end|>" in (out / "tokenizer_config.json").read_text() + (out / "chat_template.jinja").read_text()
    assert verify_manifest(out) == []
    weights = next(out.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert verify_manifest(out) == [f"{weights.name} sha256 differs"]


def test_prompt_trained_against_the_intended_loss_fails_label_mask(tmp_path: Path) -> None:
    # the job intends completion-only loss, a config override makes TRL train the prompt too
    job = make_job(tmp_path, "sft", sft_records(), config={"max_steps": 3, "completion_only_loss": False})
    run = run_job(job, tmp_path / "out")
    assert run.error is None and failed(run) == {"label_mask"}
    assert run.label_audit.prompt_tokens_trained > 0
    assert "prompt tokens carry a label" in run.checks["label_mask"]["reason"]
    assert "[[<|im_start|>user\nWhat is the capital of" in run.label_audit.offending


def test_end_of_turn_left_out_of_the_labels_fails_label_mask(tmp_path: Path) -> None:
    # a template whose generation block stops before <|im_end|>: the model is never taught to stop
    template = CHATML.replace("{{- message['content'] + '<|im_end|>\\n' -}}{% endgeneration %}",
                              "{{- message['content'] -}}{% endgeneration %}{{- '<|im_end|>\\n' -}}")  # fmt: skip
    assert template != CHATML
    job = make_job(tmp_path, "sft", sft_records(), chat_template=template, loss="assistant_only", config={"max_steps": 2})
    run = run_job(job, tmp_path / "out")
    audit = run.label_audit
    assert run.error is None and "label_mask" in failed(run)
    assert (audit.examples_not_ending_with_eos, audit.prompt_tokens_trained, audit.end_of_turn) == (16, 0, "<|im_end|>")
    assert audit.offending.endswith("<|im_start|>assistant\n[[Paris]]<|im_end|>\n")


def test_nan_learning_rate_fails_training_happened_without_raising(tmp_path: Path) -> None:
    # torch's AdamW refuses a NaN learning rate when train() builds it: run_job returns, the check fails
    job = make_job(tmp_path, "sft", sft_records(), config={"max_steps": 3, "learning_rate": float("nan")})
    run = run_job(job, tmp_path / "out")
    assert run.error == "ValueError: Invalid learning rate: nan"
    assert failed(run) == {"training_happened"} and "Invalid learning rate" in run.checks["training_happened"]["reason"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["error"] == run.error


def test_a_nan_loss_at_any_logged_step_fails_training_happened() -> None:
    log = [{"step": i, "loss": loss, "grad_norm": 1.0} for i, loss in enumerate([3.0, 2.5, float("nan"), 1.0], 1)]
    result = training_happened(log, params_changed=5, trainer="sft", window=1)
    assert not result["passed"] and "not finite at steps [3]" in result["reason"]
    healthy = training_happened([{**e, "loss": 3.0 - e["step"] / 2} for e in log], params_changed=5, trainer="sft", window=1)
    assert healthy["passed"], healthy
    assert not training_happened([{**e, "loss": 3.0 - e["step"] / 2} for e in log], params_changed=0, trainer="sft")["passed"]


def test_examples_truncated_to_no_trained_token_fail_label_mask(tmp_path: Path) -> None:
    # two prompts alone fill max_length: TRL drops them silently, the audit counts them
    long = {"question": "Tell me, after a long and winding preamble about geography, " * 3 + "the capital?", "answer": "Paris"}
    job = make_job(tmp_path, "sft", sft_records([long, long]), config={"max_steps": 2, "max_length": 24})
    run = run_job(job, tmp_path / "out")
    audit = run.label_audit
    assert audit.examples == 18 and audit.examples_without_trained_tokens == 2
    assert "label_mask" in failed(run) and "2 of 18 examples train no token" in run.checks["label_mask"]["reason"]
    assert "dropped: no trained token" in audit.offending


def test_job_with_a_missing_field_becomes_an_error_not_an_exception(tmp_path: Path) -> None:
    job = make_job(tmp_path, "sft", [{"question": "q", "reply": "a"}])
    run = run_job(job, tmp_path / "out")
    assert run.error is not None and run.error.startswith("KeyError") and "'answer'" in run.error
    assert json.loads((tmp_path / "out" / "run.json").read_text())["error"] == run.error


def dpo_job(folder: Path) -> TrainJob:
    wrong = [*list(CAPITALS.values())[1:], "Paris"]
    records = [
        {"prompt": f"What is the capital of {c}?", "chosen": a, "rejected": w}
        for (c, a), w in zip(CAPITALS.items(), wrong)
    ]
    return make_job(folder, "dpo", records, config={"max_steps": 5, "learning_rate": 1e-3})


def test_dpo_job_starts_at_ln2_against_the_initial_policy(tmp_path: Path) -> None:
    run = run_job(dpo_job(tmp_path), tmp_path / "out")
    assert run.error is None and not failed(run), run.checks
    assert set(run.checks) == CHECKS | {"reference_model"}
    assert run.checks["training_happened"]["step1_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert run.label_audit.examples == 32  # chosen and rejected sequences


def perturbed(model: Any) -> Any:
    """A reference that is not the initial policy: a copy with noise on every weight."""
    import copy

    import torch

    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return reference


def test_dpo_with_a_different_reference_fails_reference_model(tmp_path: Path) -> None:
    run = run_job(dpo_job(tmp_path), tmp_path / "out", _make_reference=perturbed)
    assert run.error is None
    assert failed(run) == {"reference_model", "training_happened"}
    assert "not ln 2" in run.checks["training_happened"]["reason"]
