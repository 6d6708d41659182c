"""The ``grad_accumulation`` check: one optimizer step with batch 8 × accumulation 1 equals one with
batch 1 × accumulation 8, from the same initial weights on the same 8 examples.

Padding makes the two differ unless the loss is normalised by the trained tokens of the whole
accumulated batch (``num_items_in_batch``): a library upgrade that scales it wrongly
(transformers#37766) changes training silently, and this check makes it a gate."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .api import TrainJob
from .trainer_config import build_config, quiet

EXAMPLES = 8
LOSS_RTOL = 1e-3  # the two logged step-1 losses
GRAD_RTOL = 1e-3  # the two logged (pre-clip) gradient norms: Adam's first step hides a uniform scale
UPDATE_RTOL = 1e-2  # max |update_a - update_b| relative to max |update|
SPLITS = ((EXAMPLES, 1), (1, EXAMPLES))  # (per_device_train_batch_size, gradient_accumulation_steps)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def one_step(
    job: TrainJob, model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch: int, accumulation: int,
    output_dir: Path, patch: Callable[[Any], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One optimizer step of the job's SFT trainer on ``rows`` in order: (its step-1 log, the weights after)."""
    import datasets
    import trl

    # the job's config, but exactly one step over these rows, in their order
    overrides = {"max_steps": 1, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
                 "train_sampling_strategy": "sequential", "shuffle_dataset": False, "packing": False}
    config = build_config(replace(job, config={**job.config, **overrides}), output_dir)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer)
    quiet(trainer)
    if patch is not None:  # tests: simulate a loss-scaling regression on the built trainer
        patch(trainer)
    trainer.train()
    step = next(e for e in trainer.state.log_history if "loss" in e)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return step, weights


def grad_accumulation_equivalence(
    job: TrainJob, build_model: Callable[[], Any], tokenizer: Any, rows: list[dict[str, Any]],
    *, _patch: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Compare the step-1 loss, gradient norm and parameter update of batch 8 × accumulation 1 and
    batch 1 × accumulation 8; ``build_model`` returns a fresh copy of the job's initial model.

    ``_patch`` (tests only) changes each trainer before it trains, e.g. to scale the loss wrongly."""
    if job.trainer != "sft":
        return {"passed": False, "reason": f"grad_accumulation runs sft jobs only, not {job.trainer}"}
    if len(rows) < EXAMPLES:
        return {"passed": False, "reason": f"grad_accumulation needs {EXAMPLES} examples, the job has {len(rows)}"}
    rows = rows[:EXAMPLES]
    initial_model = build_model()
    initial = {n: p.detach().clone() for n, p in initial_model.named_parameters() if p.requires_grad}
    results = []
    with tempfile.TemporaryDirectory(prefix="grad_accumulation-") as scratch:
        for index, (batch, accumulation) in enumerate(SPLITS):
            model = initial_model if index == 0 else build_model()
            results.append(one_step(job, model, tokenizer, rows, batch, accumulation, Path(scratch) / str(index),
                                    _patch))
    (step_a, after_a), (step_b, after_b) = results
    update_size = max(float((after_a[n] - initial[n]).abs().max()) for n in initial)
    update_diff = max(float((after_a[n] - after_b[n]).abs().max()) for n in initial)
    figures = {
        "loss_b8_ga1": step_a["loss"], "loss_b1_ga8": step_b["loss"], "loss_rel_diff": _rel(step_a["loss"], step_b["loss"]),
        "grad_norm_b8_ga1": step_a.get("grad_norm"), "grad_norm_b1_ga8": step_b.get("grad_norm"),
        "update_max_abs": update_size, "update_max_abs_diff": update_diff,
        "update_rel_diff": update_diff / update_size if update_size else math.inf,
        "tolerances": {"loss": LOSS_RTOL, "grad_norm": GRAD_RTOL, "update": UPDATE_RTOL},
    }
    grads = (figures["grad_norm_b8_ga1"], figures["grad_norm_b1_ga8"])
    figures["grad_norm_rel_diff"] = _rel(*grads) if None not in grads else None
    problems = []
    if not figures["loss_rel_diff"] <= LOSS_RTOL:  # also catches NaN
        problems.append(f"step-1 loss {step_a['loss']:.6g} (batch 8 × accumulation 1) vs {step_b['loss']:.6g} "
                        f"(batch 1 × accumulation 8): relative difference {figures['loss_rel_diff']:.3g} > {LOSS_RTOL:g}")
    if figures["grad_norm_rel_diff"] is not None and not figures["grad_norm_rel_diff"] <= GRAD_RTOL:
        problems.append(f"step-1 grad norm {grads[0]:.6g} vs {grads[1]:.6g}: relative difference "
                        f"{figures['grad_norm_rel_diff']:.3g} > {GRAD_RTOL:g}")
    if not figures["update_rel_diff"] <= UPDATE_RTOL:
        problems.append(f"parameter update differs by {update_diff:.3g} (max update {update_size:.3g}): relative "
                        f"{figures['update_rel_diff']:.3g} > {UPDATE_RTOL:g}")
    ok = (f"batch 8 × accumulation 1 ≡ batch 1 × accumulation 8: loss rel diff {figures['loss_rel_diff']:.2g}, "
          f"update rel diff {figures['update_rel_diff']:.2g}")
    return {"passed": not problems, "reason": "; ".join(problems) if problems else ok, **figures}
