"""The data passed between the training modules (INTERFACE: final names; plain data, JSON-able).

A job file is loaded into :class:`TrainJob`; running it gives a :class:`TrainRun`, saved as
``run.json`` beside the checkpoint so that another process (an xdist worker) can load it instead of
training again."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRAINERS = ("sft", "dpo", "kto", "grpo")


@dataclass(frozen=True)
class TrainJob:
    """One ``job.yaml``, resolved."""

    name: str
    path: Path  # the job file
    trainer: str  # one of TRAINERS
    model: dict[str, Any]  # {"tiny": {...config overrides...}} or {"path": "local/folder"}
    tokenizer: dict[str, Any]  # {"train": {"vocab_size": 512}} or {"path": ...} (default: the model's)
    chat_template: str | None  # a name from harness.templates (chatml, qwen, gemma, ...) or Jinja text; None: the tokenizer's
    datasets: tuple[Path, ...]
    fields: dict[str, str]  # mapping vocabulary as eval suites: prompt/completion (sft), prompt/chosen/rejected (dpo), ...
    config: dict[str, Any]  # TRL config overrides (max_steps, per_device_train_batch_size, learning_rate, ...)
    gates: tuple[str, ...]  # named checks ("label_mask", "stop_tokens", ...) and metric expressions ("final_loss <= 2")
    loss: str = "completion_only"  # completion_only | assistant_only | full
    seed: int = 0
    markers: tuple[str, ...] = ()
    reward: dict[str, Any] | None = None  # grpo: {"suite": "/abs/suite.yaml"}: the suite's extraction and scorer reward
    eval: dict[str, Any] | None = None  # {"suite": "/abs/suite.yaml", "tolerance": 0.05, "padding_side": "left"}:
    # the suite evaluated in training and offline (check eval_parity)

    def fingerprint(self) -> str:
        """sha256 of everything that changes the run (job file text, data files): the shared run's key."""
        import hashlib

        digest = hashlib.sha256(self.path.read_bytes())
        for dataset in self.datasets:
            digest.update(dataset.read_bytes())
        return digest.hexdigest()[:16]


@dataclass
class LabelAudit:
    """What the collated training batches train on (gate ``label_mask``)."""

    examples: int = 0
    prompt_tokens_trained: int = 0  # tokens of system/user/prompt turns carrying a label
    examples_without_trained_tokens: int = 0  # e.g. every label masked after truncation
    examples_not_ending_with_eos: int = 0  # trained span does not end with the end-of-turn token
    end_of_turn: str | None = None  # the token the trained span must end with
    offending: str | None = None  # one offending example decoded, trained tokens marked [[like this]]


@dataclass
class TrainRun:
    """A finished (or failed) job run."""

    job: str
    trainer: str
    output_dir: str  # holds the checkpoint (model, tokenizer, chat template, weights manifest)
    log_history: list[dict[str, Any]] = field(default_factory=list)  # TRL's trainer.state.log_history
    label_audit: LabelAudit = field(default_factory=LabelAudit)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # check name -> {"passed": bool, "reason": str, ...}
    metrics: dict[str, float | None] = field(default_factory=dict)  # gateable figures: final_loss, samples_per_s, ...
    versions: dict[str, str] = field(default_factory=dict)  # trl, transformers, torch
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # per step: step_s, samples/s, tokens/s, memory
    wall_s: float = 0.0
    error: str | None = None  # the run failed: why (every gate of the job fails with it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainRun":
        raw = dict(raw)
        raw["label_audit"] = LabelAudit(**raw.get("label_audit", {}))
        return cls(**raw)
