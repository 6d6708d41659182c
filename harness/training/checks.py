"""The trainer regression checks: each returns ``{"passed": bool, "reason": str, ...figures}``.

Pure functions over what the runner measured (the label audit, the log history, models and the saved
folder); the runner stores them in ``TrainRun.checks``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import LabelAudit

if TYPE_CHECKING:
    import torch

LN2 = math.log(2)
MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _result(problems: list[str], ok_reason: str, **figures: Any) -> dict[str, Any]:
    return {"passed": not problems, "reason": "; ".join(problems) if problems else ok_reason, **figures}


def label_mask(audit: LabelAudit, loss: str) -> dict[str, Any]:
    """No prompt token trained (unless the job trains the full sequence), every example trains some
    tokens, and every trained span ends with the end-of-turn token."""
    problems = []
    if loss != "full" and audit.prompt_tokens_trained:
        problems.append(f"{audit.prompt_tokens_trained} prompt tokens carry a label with {loss} loss")
    if audit.examples_without_trained_tokens:
        problems.append(f"{audit.examples_without_trained_tokens} of {audit.examples} examples train no token")
    if audit.examples_not_ending_with_eos:
        problems.append(
            f"{audit.examples_not_ending_with_eos} of {audit.examples} trained spans do not end with {audit.end_of_turn!r}"
        )
    if not audit.examples:
        problems.append("no example was audited")
    if problems and audit.offending:
        problems.append(f"e.g. {audit.offending}")
    return _result(problems, f"{audit.examples} examples train only their completion, ending with {audit.end_of_turn!r}")


def _steps(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # per-step logs carry "loss"; the closing summary carries "train_loss" instead
    return [entry for entry in log_history if "loss" in entry]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def training_happened(
    log_history: list[dict[str, Any]], params_changed: int, trainer: str, window: int | None = None,
    kto_weights: tuple[float, float] = (1.0, 1.0),
) -> dict[str, Any]:
    """Loss and grad norm finite at every logged step, some gradient, parameters moved; SFT: the last
    window's mean loss below the first's; DPO/KTO: step 1 is the untrained policy (rewards 0; DPO loss
    ln 2, KTO loss 0.5 — 1 - sigmoid(0) — times the desirable/undesirable weights); GRPO: some group of
    generations had rewards that differ (``frac_reward_zero_std`` < 1), else nothing was learnt."""
    steps = _steps(log_history)
    problems = []
    if not steps:
        return _result(["no training step was logged"], "", steps=0)
    bad = [s.get("step") for s in steps if not (_finite(s.get("loss")) and _finite(s.get("grad_norm")))]
    if bad:
        problems.append(f"loss or grad_norm not finite at steps {bad[:5]}")
    if not any(_finite(s.get("grad_norm")) and s["grad_norm"] > 0 for s in steps):
        problems.append("grad_norm is 0 at every step")
    if not params_changed:
        problems.append("no trainable parameter changed")
    figures: dict[str, Any] = {"steps": len(steps), "params_changed": params_changed}
    if trainer == "sft":
        size = window or max(1, len(steps) // 4)
        first = sum(s["loss"] for s in steps[:size]) / size
        last = sum(s["loss"] for s in steps[-size:]) / size
        figures.update(first_window_loss=first, last_window_loss=last, window=size)
        if len(steps) < 2 * size:
            problems.append(f"{len(steps)} steps: too few for two windows of {size}")
        elif not last < first:  # also catches NaN
            problems.append(f"loss did not drop: last {size} steps {last:.4f} vs first {first:.4f}")
    elif trainer == "grpo":
        fractions = [s["frac_reward_zero_std"] for s in steps if _finite(s.get("frac_reward_zero_std"))]
        rewards = [s["reward"] for s in steps if _finite(s.get("reward"))]
        figures.update(frac_reward_zero_std_mean=sum(fractions) / len(fractions) if fractions else None,
                       first_reward=rewards[0] if rewards else None, last_reward=rewards[-1] if rewards else None)
        if not fractions:
            problems.append("no step logged frac_reward_zero_std")
        elif min(fractions) >= 1:
            problems.append("frac_reward_zero_std is 1 at every step: every group of generations got equal rewards, "
                            "so no advantage and no learning signal (check the reward and num_generations)")
    else:
        first_step = steps[0]
        rewards = [first_step.get("rewards/chosen"), first_step.get("rewards/rejected")]
        figures.update(step1_loss=first_step.get("loss"), step1_rewards=rewards)
        low, high = (LN2, LN2) if trainer == "dpo" else (0.5 * min(kto_weights), 0.5 * max(kto_weights))
        loss = first_step.get("loss")
        if not (_finite(loss) and low - 1e-3 <= loss <= high + 1e-3):
            expected = "ln 2" if trainer == "dpo" else (f"{low:g}" if low == high else f"within [{low:g}, {high:g}]")
            problems.append(f"step-1 loss {loss} is not {expected}: the policy and reference differ")
        if not all(_finite(r) and abs(r) <= 1e-3 for r in rewards):
            problems.append(f"step-1 rewards {rewards} are not 0")
        if trainer == "kto" and not (_finite(first_step.get("kl")) and abs(first_step["kl"]) <= 1e-3):
            problems.append(f"step-1 KL {first_step.get('kl')} is not 0")
    return _result(problems, f"{len(steps)} finite steps, parameters changed", **figures)


def weights_sha256(model: Any) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes), independent of file layout."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_model(reference_sha256: str, initial_sha256: str) -> dict[str, Any]:
    """The DPO/KTO reference is the initial policy (same weights)."""
    problems = [] if reference_sha256 == initial_sha256 else ["reference weights differ from the initial policy"]
    return _result(
        problems, "reference is the initial policy", reference_sha256=reference_sha256, initial_sha256=initial_sha256
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, str]:
    files = {p.name: _file_sha256(p) for p in sorted(folder.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)}
    (folder / MANIFEST).write_text(json.dumps({"sha256": files}, indent=2) + "\n")
    return files


def verify_manifest(folder: Path) -> list[str]:
    """Problems with the folder's weight manifest (empty: every weight file listed and matching)."""
    path = folder / MANIFEST
    if not path.exists():
        return [f"{MANIFEST} missing"]
    listed = json.loads(path.read_text())["sha256"]
    present = {p.name for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)}
    problems = [f"{name} not in {MANIFEST}" for name in sorted(present - set(listed))]
    problems += [f"{name} missing" for name in sorted(set(listed) - present)]
    problems += [f"{name} sha256 differs" for name in sorted(present & set(listed)) if _file_sha256(folder / name) != listed[name]]
    if not listed:
        problems.append("no weight file in the manifest")
    return problems


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    # exact, NaN equal to NaN: a diverged run still round-trips (training_happened reports the NaN)
    return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def checkpoint_roundtrip(model: Any, tokenizer: Any, folder: Path, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Reload the saved folder: identical tensors, identical logits on ``batch``, tokenizer and chat
    template present, manifest verified."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = verify_manifest(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
    saved, loaded = model.state_dict(), reloaded.state_dict()
    if saved.keys() != loaded.keys():
        problems.append(f"state dict keys differ: {sorted(saved.keys() ^ loaded.keys())[:3]}")
    differing = [k for k in saved.keys() & loaded.keys() if not _identical(saved[k].cpu(), loaded[k].cpu())]
    if differing:
        problems.append(f"{len(differing)} tensors differ after reload, e.g. {sorted(differing)[0]}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        before = model(**inputs).logits.cpu()
        after = reloaded.to(device)(**inputs).logits.cpu()
    model.train(was_training)
    max_diff = float((before - after).abs().nan_to_num(0.0).max())
    if not _identical(before, after):
        problems.append(f"logits differ after reload (max |diff| {max_diff:.3g})")
    try:
        saved_tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # a missing or broken tokenizer is this check's finding, not a crash
        problems.append(f"tokenizer does not load from the folder: {type(exc).__name__}: {exc}")
    else:
        if tokenizer.chat_template and saved_tokenizer.chat_template != tokenizer.chat_template:
            problems.append("chat template missing or different in the saved folder")
    return _result(problems, "reload gives identical weights and logits", max_logit_diff=max_diff)


def stop_tokens(
    model: Any, tokenizer: Any, end_of_turn_id: int | None, prompt_ids: list[int], max_new_tokens: int = 16, require_stop: bool = False
) -> dict[str, Any]:
    """The stop set {tokenizer eos, generation_config eos, end-of-turn} is defined and in the vocab, and
    generation_config stops on the end-of-turn token; a greedy sample stops before ``max_new_tokens``
    (a figure, failing only with ``require_stop``: a tiny model trained a few steps may not stop)."""
    import torch

    configured = model.generation_config.eos_token_id
    generation_eos = [configured] if isinstance(configured, int) else list(configured or [])
    named = {"tokenizer.eos_token_id": tokenizer.eos_token_id, "end-of-turn": end_of_turn_id}
    problems = [f"{name} is not defined" for name, value in named.items() if value is None]
    if not generation_eos:
        problems.append("generation_config.eos_token_id is not defined")
    stop = sorted({i for i in [*named.values(), *generation_eos] if i is not None})
    problems += [f"stop id {i} is outside the vocabulary ({len(tokenizer)})" for i in stop if not 0 <= i < len(tokenizer)]
    if end_of_turn_id is not None and end_of_turn_id not in generation_eos:
        problems.append(f"generation_config.eos_token_id {generation_eos} lacks the end-of-turn id {end_of_turn_id}")
    figures: dict[str, Any] = {"stop_ids": stop, "stop_tokens": tokenizer.convert_ids_to_tokens(stop) if stop else []}
    if stop and prompt_ids:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt_ids], device=device),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )
        model.train(was_training)
        new = out[0, len(prompt_ids):].tolist()
        stopped = any(i in stop for i in new)
        figures.update(sample_stopped=stopped, sample=tokenizer.decode(new), sample_tokens=len(new))
        if require_stop and not stopped:
            problems.append(f"greedy sample did not stop within {max_new_tokens} tokens: {figures['sample']!r}")
    return _result(problems, f"stop set {figures['stop_tokens']} defined", **figures)
