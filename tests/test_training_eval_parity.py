"""The ``eval_parity`` check: the suite metric of the in-training evaluation (a TrainerCallback on the
in-memory model) against the saved checkpoint's, evaluated through the CPU server's Engine.

One 60-step SFT run on the tiny model is shared: 16 capitals, asked in a short form (12 tokens with the
chat template) and a long one (23 tokens), alternating, so every batch of 8 pads. Measured on this
machine: accuracy 0.75 in training with left padding and 0.75 offline (no output differs); with right
padding the short prompts answer '' at once and the in-training accuracy is 0.3125."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("trl")

from harness.training.api import TrainRun  # noqa: E402
from harness.training.eval_parity import callback, check  # noqa: E402
from harness.training.job import CHECKS, OPT_IN_CHECKS, default_gates  # noqa: E402
from harness.training.runner import run_job  # noqa: E402
from tests.test_training_runner import CAPITALS, make_job  # noqa: E402

STEPS = 60
TOLERANCE = 0.05


def _question(i: int, country: str) -> str:
    return f"Capital of {country}?" if i % 2 else f"Tell me please, what is the capital city of the country called {country}?"


def _records() -> list[dict[str, Any]]:
    return [{"id": c.lower(), "question": _question(i, c), "answer": a} for i, (c, a) in enumerate(CAPITALS.items())]


def _suite(folder: Path) -> Path:
    """A chat suite over the training questions (memorisation: what a pipeline regression check needs)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cases.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "input": r["question"], "target": r["answer"]}) + "\n" for r in _records()))
    (folder / "suite.yaml").write_text("name: capitals_eval\ndataset: cases.jsonl\napi: chat\n"
                                       "generation: {max_tokens: 8, temperature: 0}\nextract: [strip]\n"
                                       "scorer: exact_match\npass: record\n")
    return folder


def _spec(suite: Path, padding_side: str, **extra: Any) -> dict[str, Any]:
    return {"suite": str(suite / "suite.yaml"), "tolerance": TOLERANCE, "padding_side": padding_side, **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainRun, Path]:
    folder = tmp_path_factory.mktemp("eval_parity")
    suite = _suite(folder / "suite")
    job = make_job(folder / "job", "sft", _records(), gates=("eval_parity",),
                   config={"max_steps": STEPS, "per_device_train_batch_size": 8, "learning_rate": 5e-3, "max_length": 64},
                   eval=_spec(suite, "left", every=30))
    return run_job(job, folder / "out"), suite


def test_eval_parity_is_a_named_opt_in_check() -> None:
    assert "eval_parity" in CHECKS and "eval_parity" in OPT_IN_CHECKS
    assert not any("eval_parity" in default_gates(trainer) for trainer in ("sft", "dpo"))


def test_left_padded_in_training_eval_equals_the_checkpoint_through_the_engine(trained: tuple[TrainRun, Path]) -> None:
    run, _ = trained
    assert run.error is None, run.error
    result = run.checks["eval_parity"]
    assert result["passed"], result
    assert (result["metric"], result["cases"], result["padding_side"], result["step"]) == ("accuracy", 16, "left", STEPS)
    assert result["in_training"] == result["offline"] and result["differing_cases"] == 0
    assert result["offline"] >= 0.5  # the model learned: a right-padded evaluation has something to lose
    assert f"in training (left padding) {result['in_training']} and offline {result['offline']}" in result["reason"]


def test_the_in_training_metric_is_in_the_log_history(trained: tuple[TrainRun, Path]) -> None:
    run, _ = trained
    entries = [e for e in run.log_history if "eval_accuracy" in e]
    # every 30 steps; the last step's evaluation is the end-of-training one (not made twice)
    assert [e["step"] for e in entries] == [30, STEPS]
    assert entries[-1]["eval_accuracy"] == run.checks["eval_parity"]["in_training"]
    assert json.loads((Path(run.output_dir) / "run.json").read_text())["log_history"] == json.loads(json.dumps(run.log_history))


def _trainer_with(spec: dict[str, Any], folder: Path) -> SimpleNamespace:
    """The callback at the end of training on the trained weights (the saved checkpoint's: the runner's
    checkpoint_roundtrip check holds them identical), in a stand-in for the trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

    cb = callback(spec)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.train()  # as the trainer leaves it
    state = TrainerState(global_step=STEPS)
    cb.on_train_end(None, state, TrainerControl(), model=model, processing_class=tokenizer)
    assert model.training  # the evaluation restores the training mode
    return SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[cb]), state=state)


def test_right_padded_in_training_eval_drops_the_metric_and_fails(trained: tuple[TrainRun, Path]) -> None:
    run, suite = trained
    spec = _spec(suite, "right")
    trainer = _trainer_with(spec, Path(run.output_dir))
    result = check(trainer, run.output_dir, spec)
    assert not result["passed"], result
    assert result["in_training"] < result["offline"] - TOLERANCE and result["offline"] == run.checks["eval_parity"]["offline"]
    assert result["differing_cases"] > 0 and result["padding_side"] == "right"
    reason = result["reason"]
    assert reason.startswith(f"accuracy in training (right padding) {result['in_training']:.4g} vs offline "
                             f"(saved checkpoint, harness engine) {result['offline']:.4g}")
    assert f"> tolerance {TOLERANCE:g}; first differing case " in reason and "in training ''" in reason
    assert trainer.state.log_history == [{"eval_accuracy": result["in_training"], "step": STEPS}]


def test_a_checkpoint_saved_without_its_chat_template_fails(trained: tuple[TrainRun, Path], tmp_path: Path) -> None:
    run, suite = trained
    broken = Path(shutil.copytree(run.output_dir, tmp_path / "broken", ignore=shutil.ignore_patterns("initial")))
    (broken / "chat_template.jinja").unlink()
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    spec = _spec(suite, "left")
    result = check(_trainer_with(spec, Path(run.output_dir)), broken, spec)
    assert not result["passed"] and "no chat template" in result["reason"], result
    assert result["in_training"] == run.checks["eval_parity"]["in_training"]


def test_eval_parity_without_an_eval_section_fails_saying_so() -> None:
    result = check(SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[])), "/nowhere", None)
    assert not result["passed"] and "no eval: section" in result["reason"]
