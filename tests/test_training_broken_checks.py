"""The stop-token and checkpoint round-trip checks fail on deliberately broken models: a saved model
whose generation config does not stop on the template's end-of-turn, and a checkpoint whose weights
changed on disk after it was written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("trl")

from harness.training import checks  # noqa: E402
from harness.training.runner import run_job  # noqa: E402
from harness.training.tiny import tiny_model, train_tokenizer  # noqa: E402

from tests.test_training_runner import CAPITALS, make_job, sft_records  # noqa: E402


def _saved_model(folder: Path, stops_on_end_of_turn: bool) -> Path:
    texts = [f"What is the capital of {c}?" for c in CAPITALS] + list(CAPITALS.values())
    tokenizer = train_tokenizer(texts * 2, 512, "chatml")
    model = tiny_model({}, tokenizer, seed=0)
    if not stops_on_end_of_turn:  # a base model's eos (Qwen-style <|endoftext|>) that no chat turn ends with:
        tokenizer.eos_token = "<|endoftext|>"  # the model never learns to stop on it (trl#1623)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_model_that_does_not_stop_on_the_end_of_turn_fails_stop_tokens(tmp_path: Path) -> None:
    folder = _saved_model(tmp_path / "model", stops_on_end_of_turn=False)
    job = make_job(tmp_path, "sft", sft_records(), model={"path": str(folder)}, tokenizer={"path": str(folder)},
                   config={"max_steps": 2})
    run = run_job(job, tmp_path / "out")
    assert run.error is None
    stop = run.checks["stop_tokens"]
    assert not stop["passed"] and "lacks the end-of-turn id" in stop["reason"], stop


def test_the_same_model_stopping_on_the_end_of_turn_passes(tmp_path: Path) -> None:
    folder = _saved_model(tmp_path / "model", stops_on_end_of_turn=True)
    job = make_job(tmp_path, "sft", sft_records(), model={"path": str(folder)}, tokenizer={"path": str(folder)},
                   config={"max_steps": 2})
    assert run_job(job, tmp_path / "out").checks["stop_tokens"]["passed"]


def test_a_checkpoint_changed_on_disk_fails_checkpoint_roundtrip(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _saved_model(tmp_path / "model", stops_on_end_of_turn=True)
    checks.write_manifest(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["What is the capital of Peru?"], return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert checks.checkpoint_roundtrip(model, tokenizer, folder, batch)["passed"]

    other = _saved_model(tmp_path / "other", stops_on_end_of_turn=True)
    with torch.no_grad():  # another seed's weights written over the checkpoint, manifest left as it was
        changed = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32)
        for p in changed.parameters():
            p.add_(1.0)
        changed.save_pretrained(other)
    # a new file, not written into the old one: the loaded model may map the old file's pages
    (folder / "model.safetensors").unlink()
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    result = checks.checkpoint_roundtrip(model, tokenizer, folder, batch)
    assert not result["passed"]
    assert "model.safetensors sha256 differs" in result["reason"]
    assert "tensors differ after reload" in result["reason"] and "logits differ after reload" in result["reason"]
