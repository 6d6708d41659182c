"""One job run through TRL: data, tokenizer, model, trainer, label audit, training, checkpoint, checks.

:func:`run_job` never raises: a failure becomes ``TrainRun.error`` (with the partial log history), and
``run.json`` is written beside the checkpoint either way."""

from __future__ import annotations

import copy
import json
import resource
import time
from pathlib import Path
from typing import Any, Callable

from . import checks
from .api import LabelAudit, TrainJob, TrainRun
from .job import ROLES
from .label_audit import audit_dpo, audit_kto, audit_sft, prompt_ids
from .telemetry import step_telemetry
from .telemetry import summary as telemetry_summary
from .tiny import resolve_template, tiny_model, train_tokenizer
from .trainer_config import build_config, quiet

TURN_ROLES = {"prompt": "user", "completion": "assistant", "chosen": "assistant", "rejected": "assistant"}
INITIAL = "initial"  # sub-folder of the output folder: the checkpoint before training


def run_job(
    job: TrainJob, output_dir: Path, *, _make_reference: Callable[[Any], Any] | None = None
) -> TrainRun:
    """Run ``job`` and save the checkpoint, ``manifest.json`` and ``run.json`` in ``output_dir``.

    ``_make_reference`` (tests only) builds the DPO reference from the initial policy instead of a copy."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = TrainRun(job=job.name, trainer=job.trainer, output_dir=str(output_dir))
    start = time.perf_counter()
    try:
        _run(job, output_dir, run, _make_reference)
    except Exception as exc:  # the run's failure is data: every gate of the job reports it
        run.error = f"{type(exc).__name__}: {exc}"
    run.wall_s = round(time.perf_counter() - start, 3)
    (output_dir / "run.json").write_text(json.dumps(run.to_dict(), indent=2, default=str) + "\n")
    return run


def load_rows(job: TrainJob) -> list[dict[str, Any]]:
    """The job's JSONL records in TRL's vocabulary; with a chat template, plain strings become turns
    (a prompt a user turn, a completion an assistant turn) so that the template applies."""
    chat = resolve_template(job.chat_template)[0] is not None
    rows = []
    for dataset in job.datasets:
        for number, line in enumerate(dataset.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            row = {}
            for name in ROLES[job.trainer]:
                source = job.fields.get(name, name)
                if source not in record:
                    raise KeyError(f"{dataset}:{number}: no field {source!r} (for {name})")
                value = record[source]
                turn = chat and isinstance(value, str) and name in TURN_ROLES  # a label or target stays as it is
                row[name] = [{"role": TURN_ROLES[name], "content": value}] if turn else value
            rows.append(row)
    if not rows:
        raise ValueError(f"job {job.name}: no training record in {[str(d) for d in job.datasets]}")
    return rows


def _texts(rows: list[dict[str, Any]]) -> list[str]:
    texts = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):  # chat turns; a KTO label (a bool) holds no text
                texts += [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return texts + ["system\n", "user\n", "assistant\n", "model\n"] * 4  # role headers of the templates


def build_tokenizer(job: TrainJob, rows: list[dict[str, Any]]) -> Any:
    source, _ = resolve_template(job.chat_template)
    if "train" in job.tokenizer:
        return train_tokenizer(_texts(rows), int(job.tokenizer["train"].get("vocab_size", 512)), job.chat_template)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_folder(job.tokenizer or job.model), local_files_only=True)
    if source is not None:
        tokenizer.chat_template = source
    return tokenizer


def build_model(job: TrainJob, tokenizer: Any) -> Any:
    if "tiny" in job.model:
        end_of_turn = resolve_template(job.chat_template)[1]
        end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn in tokenizer.get_vocab() else None
        return tiny_model(dict(job.model["tiny"] or {}), tokenizer, seed=job.seed, end_of_turn_id=end_of_turn_id)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_folder(job.model), dtype=torch.float32, local_files_only=True)
    if "bundled" in job.model:  # the GGUF's config stops on <eos> only; its turns end with <end_of_turn>
        end_of_turn = resolve_template(job.chat_template)[1] or "<end_of_turn>"
        stop = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn)} - {None}
        model.generation_config.eos_token_id = sorted(stop)
    return model


def _folder(source: dict[str, Any]) -> str:
    """A model or tokenizer's local folder: a path, or the bundled model converted once (cached)."""
    if "bundled" in source:
        from harness.engines.bundled import prepare_hf_dir

        return str(prepare_hf_dir())
    return str(source["path"])


def _run(job: TrainJob, output_dir: Path, run: TrainRun, make_reference: Callable[[Any], Any] | None) -> None:
    import datasets
    import torch
    import transformers
    import trl

    run.versions = {"trl": str(trl.__version__), "transformers": str(transformers.__version__),
                    "torch": str(torch.__version__)}
    # a pytest run's output is the harness's; the libraries' progress bars would fill it per map and save
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    rows = load_rows(job)
    tokenizer = build_tokenizer(job, rows)
    template_end = resolve_template(job.chat_template)[1]
    if template_end and template_end not in tokenizer.get_vocab():
        # every turn would end in an unknown token: nothing could learn (or be told) to stop
        raise ValueError(f"the tokenizer has no {template_end!r} token, which ends every turn of chat template "
                         f"{job.chat_template!r}: use the tokenizer's own template or one whose end-of-turn it knows")
    model = build_model(job, tokenizer)
    end_of_turn = template_end or tokenizer.eos_token
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    config = build_config(job, output_dir)
    train_dataset = datasets.Dataset.from_list(rows)
    trainer, audit, reference_figures = _trainer(job, model, tokenizer, config, train_dataset, rows, end_of_turn,
                                                 make_reference)
    quiet(trainer)
    if job.eval:  # the suite evaluated with the in-memory model at the end of training (eval_parity)
        from .eval_parity import callback as eval_callback

        trainer.add_callback(eval_callback(job.eval, tokenizer))
    telemetry = step_telemetry()  # throughput and memory per optimizer step (gate kind 8)
    trainer.add_callback(telemetry)
    run.telemetry = telemetry.steps  # the same list: a failing train() leaves its partial telemetry
    run.log_history = trainer.state.log_history  # the same list: a failing train() leaves its partial log
    if audit is not None:  # grpo trains on its own generations: no labels to audit
        run.label_audit = audit
        run.checks["label_mask"] = checks.label_mask(audit, job.loss if job.trainer == "sft" else "completion_only")
        if job.trainer == "sft":  # completion-only and assistant-only loss must train the same tokens
            from .loss_modes import fold, mask_agreement

            args = trainer.args
            agreement = mask_agreement(rows, trainer.processing_class, job.loss, args.max_length, args.truncation_mode)
            run.checks["label_mask"] = fold(run.checks["label_mask"], agreement)
    if reference_figures:
        run.checks["reference_model"] = checks.reference_model(reference_figures["reference"], reference_figures["initial"])

    # the model before training, beside the trained one: an eval suite can compare the two (engine: trained)
    model.save_pretrained(str(output_dir / INITIAL))
    tokenizer.save_pretrained(str(output_dir / INITIAL))
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    started = time.perf_counter()
    try:
        trainer.train()
    except Exception as exc:
        # a run that cannot train did not train: the check says so beside run.error
        run.checks["training_happened"] = {"passed": False, "reason": f"training raised {type(exc).__name__}: {exc}"}
        raise
    train_s = time.perf_counter() - started
    trained = trainer.model
    changed = sum(not torch.equal(before[name], p.detach()) for name, p in trained.named_parameters() if name in before)
    del before
    run.log_history = list(trainer.state.log_history)
    weights = (float(getattr(config, "desirable_weight", 1.0)), float(getattr(config, "undesirable_weight", 1.0)))
    run.checks["training_happened"] = checks.training_happened(run.log_history, changed, job.trainer, kto_weights=weights)

    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    checks.write_manifest(output_dir)
    first_prompt = prompt_ids(tokenizer, rows[0]["prompt"])
    run.checks["stop_tokens"] = checks.stop_tokens(trained, tokenizer, end_of_turn_id, first_prompt)
    run.checks["checkpoint_roundtrip"] = checks.checkpoint_roundtrip(trained, tokenizer, output_dir, _batch(trainer, tokenizer, rows))
    run.metrics = _metrics(run.log_history, train_s, run.checks["stop_tokens"])
    run.metrics.update(telemetry_summary(run.telemetry))
    _opt_in_checks(job, run, trainer, tokenizer, rows, output_dir)


def _trainer(
    job: TrainJob, model: Any, tokenizer: Any, config: Any, dataset: Any, rows: list[dict[str, Any]],
    end_of_turn: str | None, make_reference: Callable[[Any], Any] | None,
) -> tuple[Any, LabelAudit | None, dict[str, str]]:
    """The job's TRL trainer, its label audit (None for GRPO, which trains on its own generations) and,
    for DPO/KTO, the weights hashes of the initial policy and the reference."""
    import trl

    if job.trainer == "sft":
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        return trainer, audit_sft(trainer, rows, tokenizer, end_of_turn, job.loss), {}
    if job.trainer in ("dpo", "kto"):
        initial = checks.weights_sha256(model)
        # an explicit in-memory reference: with ref_model=None TRL 1.16 rebuilds it from the model's path
        reference = make_reference(model) if make_reference else copy.deepcopy(model)
        figures = {"initial": initial, "reference": checks.weights_sha256(reference)}
        Trainer = trl.DPOTrainer if job.trainer == "dpo" else trl.KTOTrainer
        trainer = Trainer(model=model, ref_model=reference, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
        audit = (audit_dpo if job.trainer == "dpo" else audit_kto)(trainer, rows, tokenizer, end_of_turn)
        return trainer, audit, figures
    from .reward import SuiteReward

    assert job.reward is not None  # load_job requires it for grpo
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[SuiteReward(job.reward["suite"])], args=config,
                              train_dataset=dataset, processing_class=tokenizer)
    return trainer, None, {}


def _opt_in_checks(job: TrainJob, run: TrainRun, trainer: Any, tokenizer: Any, rows: list[dict[str, Any]],
                   output_dir: Path) -> None:
    """The checks a job asks for by name only: each costs extra generation or training."""
    import torch

    trained = trainer.model
    if "eval_parity" in job.gates:  # the saved checkpoint through the CPU server's engine
        from .eval_parity import check as eval_parity_check

        run.checks["eval_parity"] = eval_parity_check(trainer, output_dir, job.eval)
    if "trajectory" in job.gates:  # it reads the committed reference beside the job file
        from .trajectory import check as trajectory_check

        run.checks["trajectory"] = trajectory_check(run.log_history, job.path)
    if "padding" in job.gates:  # batched and one-by-one greedy generation
        from .padding import check as padding_check

        run.checks["padding"] = padding_check(trained, tokenizer, rows, trainer)
    if "grad_accumulation" in job.gates:  # two one-step runs from the saved initial weights
        from transformers import AutoModelForCausalLM

        from .accumulation import grad_accumulation_equivalence

        run.checks["grad_accumulation"] = grad_accumulation_equivalence(
            job, lambda: AutoModelForCausalLM.from_pretrained(output_dir / INITIAL, dtype=torch.float32), tokenizer, rows)


def _batch(trainer: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round-trip check's logits input: the first training batch as the trainer collates it (SFT,
    DPO), else the first prompts tokenized (KTO and GRPO collate no token batch of their own)."""
    dataset = trainer.train_dataset
    if "input_ids" in dataset.column_names or "chosen_ids" in dataset.column_names:
        batch = trainer.data_collator([dataset[i] for i in range(min(4, len(dataset)))])
        return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    import torch

    prompts = [prompt_ids(tokenizer, row["prompt"]) for row in rows[:4]]
    width = max(len(ids) for ids in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids in prompts]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in prompts])}


def _metrics(log_history: list[dict[str, Any]], train_s: float, stop: dict[str, Any]) -> dict[str, float | None]:
    steps = [e for e in log_history if "loss" in e]
    # per-step entries also carry train_runtime (transformers 5); only the closing summary has samples/s
    summary = next((e for e in reversed(log_history) if "train_samples_per_second" in e), {})
    losses = [e["loss"] for e in steps]
    norms = [e["grad_norm"] for e in steps if "grad_norm" in e]
    tokens = next((e["num_input_tokens_seen"] for e in reversed(log_history) if "num_input_tokens_seen" in e), None)
    runtime = summary.get("train_runtime") or train_s
    return {
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "loss_drop": losses[0] - losses[-1] if losses else None,
        "max_grad_norm": max(norms) if norms else None,
        "min_grad_norm": min(norms) if norms else None,
        "steps": float(steps[-1]["step"]) if steps else 0.0,
        "samples_per_s": summary.get("train_samples_per_second"),
        "tokens_per_s": tokens / runtime if tokens and runtime else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "train_s": round(train_s, 3),
        "sample_stopped": float(stop["sample_stopped"]) if "sample_stopped" in stop else None,
        **_preference_metrics(steps),
    }


def _preference_metrics(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    """DPO/KTO: the last step's reward margin; GRPO: mean reward over the first and last quarter of steps."""
    out: dict[str, float | None] = {}
    margins = [e["rewards/margins"] for e in steps if "rewards/margins" in e]
    if margins:
        out["final_reward_margin"] = margins[-1]
    rewards = [e["reward"] for e in steps if "reward" in e]
    if rewards:
        size = max(1, len(rewards) // 4)
        first, last = sum(rewards[:size]) / size, sum(rewards[-size:]) / size
        out.update(first_reward=first, final_reward=last, reward_gain=last - first)
        zero = [e["frac_reward_zero_std"] for e in steps if "frac_reward_zero_std" in e]
        out["frac_reward_zero_std_mean"] = sum(zero) / len(zero) if zero else None
    return out
