"""A job's TRL config (the fixture's defaults, the intended loss, the job's own overrides) and a trainer that
logs without printing: what every run of a job's trainer is built with (the job's run, the one-step runs of the
grad_accumulation check)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .api import TrainJob

# Fixture defaults (job.config overrides them). TRL 1.16 turns bf16 and gradient checkpointing on even
# on CPU, which makes logits drift ~3e-3 after a reload; NaN filtering would hide a diverged loss.
DEFAULTS: dict[str, Any] = {
    "logging_steps": 1,
    "bf16": False,
    "fp16": False,
    "activation_checkpointing": False,  # transformers 5 name of gradient_checkpointing
    "report_to": "none",
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "logging_nan_inf_filter": False,
    "include_num_input_tokens_seen": "non_padding",
    "disable_tqdm": True,
}
# what each intended loss asks of SFTConfig; a job.config override wins, and the audit then says so
LOSS_FLAGS = {
    "completion_only": {"completion_only_loss": True, "assistant_only_loss": False},
    "assistant_only": {"completion_only_loss": False, "assistant_only_loss": True},
    "full": {"completion_only_loss": False, "assistant_only_loss": False},
}
# GRPO generates during training: TRL's defaults (8 generations of 256 tokens) are GPU-sized
GRPO_DEFAULTS: dict[str, Any] = {"num_generations": 4, "max_completion_length": 16, "per_device_train_batch_size": 8,
                                 "include_num_input_tokens_seen": False}  # GRPO counts num_tokens itself


def build_config(job: TrainJob, output_dir: Path) -> Any:
    """The TRL config of the job's trainer (SFT, DPO, KTO or GRPO), writing into ``output_dir``."""
    import torch

    settings: dict[str, Any] = {**DEFAULTS, "seed": job.seed, "use_cpu": not torch.cuda.is_available()}
    if job.trainer == "sft":
        from trl import SFTConfig as Config

        settings.update(LOSS_FLAGS[job.loss])
    elif job.trainer == "dpo":
        from trl import DPOConfig as Config
    elif job.trainer == "kto":
        from trl import KTOConfig as Config
    else:
        from trl import GRPOConfig as Config

        settings.update(GRPO_DEFAULTS)
    if "gradient_checkpointing" in job.config:  # the deprecated name in a job still decides
        settings.pop("activation_checkpointing")
    return Config(output_dir=str(output_dir), **{**settings, **job.config})


def quiet(trainer: Any) -> None:
    """No per-step log printing: the log history is in run.json."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
