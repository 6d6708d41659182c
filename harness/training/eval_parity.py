"""The ``eval_parity`` check: the suite metric measured during training equals the saved checkpoint's.

The in-training evaluation (a ``TrainerCallback``) generates greedily for every case of the job's
``eval`` suite with the in-memory model, batched with a copy of the trainer's tokenizer padded on
``eval.padding_side``; the offline evaluation loads the saved folder as the CPU server does and
generates through the server's own :class:`~harness.engines.cpu_server.Engine` (left padding, its
stop handling and chat rendering). Both score with the suite's pipeline and compute its main metric
as the harness does. Right padding in training (seed 001, the LLaMA-Factory lesson) lowers the
in-training metric; a checkpoint saved without its template, stop tokens or tokenizer lowers the
offline one. Either way the values differ and the check names both, with the first differing case."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checks import _result

if TYPE_CHECKING:
    from harness.suite import Case, Suite

DEFAULT_TOLERANCE = 0.05
DEFAULT_PADDING_SIDE = "left"
BATCH_SIZE = 8
OFFLINE_TIMEOUT_S = 600.0
MODEL_NAME = "eval_parity"  # the model name the case results carry


@dataclass
class Evaluation:
    """One evaluation of the suite: its main metric and every case's reply."""

    metric: str
    value: float | None
    outputs: dict[str, str]  # case id -> raw output text
    step: int | None = None
    error: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)


def load_eval_suite(where: str | Path) -> Suite:
    """The suite a job's ``eval.suite`` names: a suite file, or a folder holding exactly one."""
    from harness.suite import load_suite, suite_files_in

    path = Path(where)
    if path.is_dir():
        found = suite_files_in(path)
        if len(found) != 1:
            raise ValueError(f"eval suite folder {path} holds {len(found)} suite files, not one")
        path = found[0]
    return load_suite(path)


def suite_cases(suite: Suite) -> list[Case]:
    """The suite's clean cases, in data order (the main metric is computed on them)."""
    from harness.suite import load_cases

    return [case for dataset in suite.datasets for case in load_cases(suite, dataset)]


def _generation(suite: Suite) -> tuple[int, list[str]]:
    """(max_tokens, stop strings) as the harness sends them; decoding is greedy on both sides."""
    from harness.prompts import DEFAULT_MAX_TOKENS

    stop = suite.generation.get("stop") or []
    return int(suite.generation.get("max_tokens", DEFAULT_MAX_TOKENS)), [stop] if isinstance(stop, str) else list(stop)


def score(suite: Suite, cases: list[Case], replies: list[dict[str, Any]]) -> tuple[str, float | None, dict[str, Any]]:
    """(main metric, its value, every metric) of the replies, scored with the suite's own pipeline."""
    from harness.case_scoring import score_reply
    from harness.suite_metrics import suite_metrics

    folder = suite.path.parent
    results = [score_reply(suite, case, MODEL_NAME, f"{suite.path.name}::{case.id}",
                           case.dataset.relative_to(folder).as_posix(), reply)
               for case, reply in zip(cases, replies)]
    main, metrics = suite_metrics(suite, results)
    return main, metrics.get(main), metrics


def _evaluation(suite: Suite, cases: list[Case], replies: list[dict[str, Any]], step: int | None = None) -> Evaluation:
    main, value, metrics = score(suite, cases, replies)
    return Evaluation(main, value, {c.id: str(r.get("text") or "") for c, r in zip(cases, replies)}, step, None, metrics)


# -- in training ------------------------------------------------------------------------------


def _prompt_text(suite: Suite, case: Case, tokenizer: Any) -> tuple[str, bool]:
    """(text, add_special_tokens): chat suites through the tokenizer's template with the generation
    prompt (as the server renders them), completion suites as the harness renders their text."""
    from harness.prompts import render

    prompt = render(suite, case, keep=False)
    if suite.api != "chat":
        return str(prompt), True
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"suite {suite.name} is a chat suite and the tokenizer has no chat template")
    return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)), False


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(int(i) for i in ids if i is not None)


def _reply(tokenizer: Any, tokens: list[int], stop_ids: list[int], stop: list[str], max_tokens: int) -> dict[str, Any]:
    """A generated row as a reply: cut at the first stop token, then at the first stop string."""
    tokens = tokens[:max_tokens]
    at = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    text = str(tokenizer.decode(tokens if at is None else tokens[:at], skip_special_tokens=True))
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    finish = "stop" if hits or at is not None else "length"
    return {"text": text[:min(hits)] if hits else text, "finish_reason": finish,
            "output_tokens": len(tokens) if at is None else at + 1}


def generate_in_memory(model: Any, tokenizer: Any, suite: Suite, cases: list[Case], padding_side: str = "left",
                       batch_size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """Greedy replies of ``model`` to every case, in batches padded on ``padding_side`` (a copy of the
    tokenizer pads them: the trainer's own keeps its side)."""
    import torch
    from transformers import GenerationConfig

    generator = copy.deepcopy(tokenizer)  # deep: a fast tokenizer's backend holds padding state
    generator.padding_side = padding_side
    if generator.pad_token is None:
        generator.pad_token = generator.eos_token
    max_tokens, stop = _generation(suite)
    stop_ids = _stop_ids(model, tokenizer)
    prompts = [_prompt_text(suite, case, tokenizer) for case in cases]
    # the settings the server sends (no sampling or penalty from the model's generation_config)
    settings = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop_ids,
                                pad_token_id=generator.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    replies: list[dict[str, Any]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            special = chunk[0][1]
            encoded = generator([text for text, _ in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=special).to(device)
            with torch.inference_mode():
                out = model.generate(**encoded, generation_config=settings)
            width = encoded["input_ids"].shape[1]
            replies += [_reply(tokenizer, row[width:].tolist(), stop_ids, stop, max_tokens) for row in out]
    finally:
        model.train(was_training)
    return replies


class InTrainingEval:
    """The callback's state: the suite, its cases and the evaluations made so far."""

    def __init__(self, spec: dict[str, Any], tokenizer: Any = None) -> None:
        self.spec = dict(spec)
        self.padding_side = str(self.spec.get("padding_side") or DEFAULT_PADDING_SIDE)
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"eval.padding_side must be left or right, not {self.padding_side!r}")
        self.every = int(self.spec.get("every") or 0)
        self.tokenizer = tokenizer
        self.suite = load_eval_suite(self.spec["suite"])
        self.cases = suite_cases(self.suite)
        self.evaluations: list[Evaluation] = []

    @property
    def final(self) -> Evaluation | None:
        return self.evaluations[-1] if self.evaluations else None

    def evaluate(self, state: Any, model: Any, tokenizer: Any) -> None:
        """Evaluate at ``state.global_step`` and log ``eval_<metric>`` into the trainer's log history;
        a failure is kept (the check reports it), never raised into training."""
        step = int(state.global_step)
        try:
            replies = generate_in_memory(model, self.tokenizer or tokenizer, self.suite, self.cases, self.padding_side)
            evaluation = _evaluation(self.suite, self.cases, replies, step)
        except Exception as exc:  # noqa: BLE001 - the check's finding, not a crashed run
            self.evaluations.append(Evaluation("", None, {}, step, f"{type(exc).__name__}: {exc}"))
            return
        self.evaluations.append(evaluation)
        state.log_history.append({f"eval_{evaluation.metric}": evaluation.value, "step": step})


def callback(spec: dict[str, Any], tokenizer: Any = None) -> Any:
    """A ``TrainerCallback`` evaluating the ``spec["suite"]`` at the end of training (and every
    ``spec["every"]`` steps when set) with the in-memory model; its ``evaluation`` holds the results."""
    from transformers import TrainerCallback

    state_holder = InTrainingEval(spec, tokenizer)

    class EvalParityCallback(TrainerCallback):  # type: ignore[misc]
        evaluation = state_holder

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            every = self.evaluation.every
            if every and state.global_step % every == 0:
                self.evaluation.evaluate(state, kwargs["model"], kwargs.get("processing_class"))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            final = self.evaluation.final
            if final is None or final.step != state.global_step:  # the last step's evaluation stands
                self.evaluation.evaluate(state, kwargs["model"], kwargs.get("processing_class"))

    return EvalParityCallback()


def in_training(trainer: Any) -> InTrainingEval | None:
    """The trainer's eval-parity callback state, if it has one."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(getattr(cb, "evaluation", None), InTrainingEval):
            return cb.evaluation
    return None


# -- offline, through the CPU server's engine -----------------------------------------------------


def generate_offline(folder: Path | str, suite: Suite, cases: list[Case], batch_size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """Greedy replies of the saved checkpoint: loaded as the CPU server loads it, requests parsed and
    encoded by the server's own code, generated by its ``Engine`` (in process, no HTTP)."""
    from harness.engines.cpu_server import Engine, GenRequest, GenResult, ModelServer, load_model, parse_sampling
    from harness.prompts import render

    model, tokenizer = _load(folder, load_model)
    engine = Engine(model, tokenizer, max_batch=batch_size, batch_wait_ms=0)
    server = ModelServer(MODEL_NAME, max_batch=batch_size)
    max_tokens, stop = _generation(suite)
    outcomes: list[GenResult | BaseException | None] = [None] * len(cases)
    done = threading.Semaphore(0)
    chat = suite.api == "chat"
    for i, case in enumerate(cases):
        prompt = render(suite, case, keep=False)
        body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0, "stop": stop,
                                **({"messages": prompt} if chat else {"prompt": prompt})}
        sampling = parse_sampling(body)

        def on_done(outcome: GenResult | BaseException, i: int = i) -> None:
            outcomes[i] = outcome
            done.release()

        # queued before the engine starts: batches are the cases in order, batch_size at a time
        engine.submit(GenRequest(server._prompt_ids(engine, body, chat), sampling.max_tokens, sampling.temperature,
                                 sampling.top_p, sampling.stop, sampling.seed, on_done))
    engine.start()
    try:
        for _ in cases:
            if not done.acquire(timeout=OFFLINE_TIMEOUT_S):
                raise TimeoutError(f"the engine answered no case within {OFFLINE_TIMEOUT_S:.0f} s")
    finally:
        engine.stop()
    replies = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) or outcome is None:
            raise RuntimeError(f"the engine failed: {outcome}")
        replies.append({"text": outcome.text, "finish_reason": outcome.finish_reason,
                        "output_tokens": outcome.completion_tokens})
    return replies


def _load(folder: Path | str, load_model: Any) -> tuple[Any, Any]:
    """The server's loader, without its process-wide settings (offline hub, quiet transformers) leaking
    into the training process."""
    import os

    from transformers.utils import logging as hf_logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    verbosity = hf_logging.get_verbosity()
    try:
        return load_model(str(folder))
    finally:
        hf_logging.set_verbosity(verbosity)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def evaluate_offline(folder: Path | str, suite: Suite, cases: list[Case]) -> Evaluation:
    return _evaluation(suite, cases, generate_offline(folder, suite, cases))


# -- the check --------------------------------------------------------------------------------------


def compare(training: Evaluation, offline: Evaluation, tolerance: float, padding_side: str) -> dict[str, Any]:
    """Pass when both metrics exist and differ by at most ``tolerance``; the reason names the metric,
    both values, the tolerance, the padding side and the first case whose outputs differ."""
    differing = [cid for cid in offline.outputs if training.outputs.get(cid) != offline.outputs[cid]]
    figures: dict[str, Any] = {
        "in_training": training.value, "offline": offline.value, "metric": offline.metric, "tolerance": tolerance,
        "padding_side": padding_side, "cases": len(offline.outputs), "differing_cases": len(differing),
        "step": training.step,
    }
    first = ""
    if differing:
        cid = differing[0]
        first = (f"; first differing case {cid!r}: in training {training.outputs.get(cid)!r}, "
                 f"offline {offline.outputs[cid]!r}")
    problems = []
    if training.value is None or offline.value is None:
        problems.append(f"{offline.metric} not computed (in training {training.value}, offline {offline.value})")
    elif abs(training.value - offline.value) > tolerance:
        problems.append(f"{offline.metric} in training ({padding_side} padding) {training.value:.4g} vs offline "
                        f"(saved checkpoint, harness engine) {offline.value:.4g}: differ by "
                        f"{abs(training.value - offline.value):.4g} > tolerance {tolerance:g}{first}")
    ok = (f"{offline.metric} in training ({padding_side} padding) {training.value} and offline {offline.value} "
          f"agree within {tolerance:g} ({len(differing)} of {len(offline.outputs)} outputs differ{first})")
    return _result(problems, ok, **figures)


def check(trainer: Any, output_dir: Path | str, spec: dict[str, Any] | None) -> dict[str, Any]:
    """The runner's entry point, after the checkpoint is saved: the trainer's in-training evaluation
    against the saved folder's, evaluated through the CPU server's engine."""
    if not spec:
        return _result(["the job has no eval: section (eval: {suite: ...}) to evaluate"], "")
    tolerance = float(spec.get("tolerance", DEFAULT_TOLERANCE))
    padding_side = str(spec.get("padding_side") or DEFAULT_PADDING_SIDE)
    state = in_training(trainer)
    final = state.final if state else None
    if final is None:
        return _result(["no in-training evaluation ran (the eval callback is missing)"], "", tolerance=tolerance)
    if final.error:
        return _result([f"the in-training evaluation failed: {final.error}"], "", tolerance=tolerance,
                       padding_side=padding_side)
    assert state is not None
    try:
        offline = evaluate_offline(output_dir, state.suite, state.cases)
    except Exception as exc:  # noqa: BLE001 - a checkpoint the engine cannot serve is this check's finding
        return _result([f"the offline evaluation of {output_dir} failed: {type(exc).__name__}: {exc}"], "",
                       in_training=final.value, metric=final.metric, tolerance=tolerance, padding_side=padding_side)
    return compare(final, offline, tolerance, padding_side)
