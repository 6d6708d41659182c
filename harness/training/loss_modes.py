"""Completion-only and assistant-only loss agree where both apply (part of the ``label_mask`` gate).

Prompt/completion conversational rows under a chat template with ``{% generation %}`` markers can be
trained two ways in TRL: ``completion_only_loss`` (the completion after the prompt) or, the same rows as
``messages``, ``assistant_only_loss`` (the template's generation blocks). Both must train the same
tokens; a template that leaves its end-of-turn token outside the generation block, puts the assistant
header inside it, or renders the prompt differently with the generation prompt than inside the whole
conversation makes one of the two train something else than intended.

The masks are built as TRL 1.16 builds them, without a trainer: ``SFTTrainer.__init__`` (the training
template swapped in when assistant-only loss meets a template without markers) and the
``tokenize_fn``/``build_labels``/``truncate`` steps of ``SFTTrainer._prepare_dataset``, calling TRL's own
``trl.data_utils._tokenize`` (``apply_chat_template(..., tokenize=True, return_dict=True)``, with
``return_assistant_tokens_mask=True`` for assistant-only) and ``common_prefix_length``."""

from __future__ import annotations

from typing import Any

from .label_audit import marked

LIMIT = 64  # rows compared: masks are a property of the template, a few dozen rows show a disagreement
_NAME = "completion-only/assistant-only agreement"


def mask_agreement(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    loss: str = "completion_only",
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    limit: int = LIMIT,
) -> dict[str, Any]:
    """Per row (the first ``limit``): the same token ids, and the same tokens trained, under
    ``completion_only_loss`` (the row as prompt/completion) and ``assistant_only_loss`` (the row as
    ``messages``). ``max_length``/``truncation_mode`` are the SFTConfig's: what truncation cuts off is
    trained by neither. ``{"passed": True, "applies": False, "reason": ...}`` where not both modes apply."""
    from .checks import _result

    template, why = _assistant_template(rows, tokenizer, loss)
    if why:
        return {"passed": True, "applies": False, "reason": f"{_NAME} does not apply: {why}"}
    cut = slice(None) if max_length is None else slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
    compared = disagreeing = 0
    shown: str | None = None
    for row in rows[:limit]:
        completion_ids, by_completion = completion_only_mask(row, tokenizer)
        assistant_ids, by_assistant = assistant_only_mask(row, tokenizer, template)
        completion_ids, by_completion = completion_ids[cut], by_completion[cut]
        assistant_ids, by_assistant = assistant_ids[cut], by_assistant[cut]
        compared += 1
        if completion_ids == assistant_ids and by_completion == by_assistant:
            continue
        disagreeing += 1
        if shown is None:
            shown = _describe(tokenizer, completion_ids, by_completion, assistant_ids, by_assistant)
    problems = []
    if disagreeing:
        problems.append(
            f"completion-only and assistant-only loss train different tokens in {disagreeing} of {compared} examples, "
            f"e.g. {shown}"
        )
    return _result(
        problems,
        f"completion-only and assistant-only loss train the same tokens in {compared} examples",
        applies=True,
        examples_compared=compared,
        examples_disagreeing=disagreeing,
    )


def fold(label_mask: dict[str, Any], agreement: dict[str, Any]) -> dict[str, Any]:
    """``label_mask``'s result with the agreement folded in: its figures (and why it does not apply) under
    ``agreement``; a disagreement fails the check, its reason appended."""
    merged = {**label_mask, "agreement": {k: v for k, v in agreement.items() if k != "passed"}}
    if not agreement["passed"]:
        merged["passed"] = False
        merged["reason"] = agreement["reason"] if label_mask["passed"] else f"{label_mask['reason']}; {agreement['reason']}"
    return merged


def completion_only_mask(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids and trained positions under ``completion_only_loss=True`` (``assistant_only_loss=False``,
    so TRL's own template): ``tokenize_fn``'s prompt-completion conversational case, then ``build_labels``
    with the ``completion_mask`` column only."""
    from trl.data_utils import _tokenize, common_prefix_length

    kwargs = _template_kwargs(row, None)
    prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True, **kwargs)["input_ids"]
    ids = list(_tokenize(tokenizer, row["prompt"] + row["completion"], return_assistant_tokens_mask=False, **kwargs)["input_ids"])
    start = common_prefix_length(prompt_ids, ids)  # the completion starts where the two diverge
    return ids, [False] * start + [True] * (len(ids) - start)


def assistant_only_mask(row: dict[str, Any], tokenizer: Any, chat_template: str | None) -> tuple[list[int], list[bool]]:
    """Token ids and trained positions under ``assistant_only_loss=True`` with the row as ``messages``
    (prompt turns then completion turns): ``tokenize_fn``'s language-modeling conversational case, then
    ``build_labels`` with the ``assistant_masks`` column. (Prompt/completion rows with ``assistant_only_loss``
    and ``completion_only_loss=False`` get the same mask, from the same prompt+completion call.)"""
    from trl.data_utils import _tokenize

    processed = _tokenize(
        tokenizer, row["prompt"] + row["completion"], return_assistant_tokens_mask=True, **_template_kwargs(row, chat_template)
    )
    return list(processed["input_ids"]), [bool(bit) for bit in processed["assistant_masks"]]


def _template_kwargs(row: dict[str, Any], chat_template: str | None) -> dict[str, Any]:
    """``tokenize_fn``'s ``apply_chat_template_kwargs``: the trainer's template override, the row's tools
    (JSON text or a list) and its ``chat_template_kwargs``."""
    import json

    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"chat_template": chat_template, "tools": tools, **(row.get("chat_template_kwargs") or {})}


def _assistant_template(rows: list[dict[str, Any]], tokenizer: Any, loss: str) -> tuple[str | None, str | None]:
    """(the template override TRL's assistant-only loss uses, None) or (None, why the comparison does not apply)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.data_utils import is_conversational

    if loss == "full":
        return None, "the job trains the full sequence (loss full)"
    if not rows:
        return None, "no rows"
    if "prompt" not in rows[0] or "completion" not in rows[0]:
        return None, "the rows are not prompt/completion (e.g. messages): completion-only loss does not apply"
    if not is_conversational(rows[0]):
        return None, "the prompt/completion rows are plain text, not turns: assistant-only loss needs a chat template"
    if not getattr(tokenizer, "chat_template", None):
        return None, "the tokenizer has no chat template"
    if has_generation_markers(tokenizer.chat_template):
        return None, None
    try:  # SFTTrainer.__init__: assistant-only loss swaps in TRL's training version of a known template
        return get_training_chat_template(tokenizer), None
    except Exception:  # ValueError for a template TRL cannot patch; any failure means: no comparison
        return None, "the chat template has no {% generation %} markers and TRL has no training version of it"


def _describe(tokenizer: Any, ids_c: list[int], by_c: list[bool], ids_a: list[int], by_a: list[bool]) -> str:
    """One disagreeing example, decoded once per mode: completion-only trained [[...]], assistant-only {{...}}."""
    if ids_c == ids_a:
        only_c = sum(c and not a for c, a in zip(by_c, by_a))
        only_a = sum(a and not c for c, a in zip(by_c, by_a))
        what = f"{only_c} tokens trained only by completion-only, {only_a} only by assistant-only"
    else:
        start = next((i for i, (x, y) in enumerate(zip(ids_c, ids_a)) if x != y), min(len(ids_c), len(ids_a)))
        what = f"the token ids differ from position {start}"
    return (
        f"{what}:\ncompletion-only: {marked(tokenizer, ids_c, by_c, '[[', ']]')}"
        f"\nassistant-only: {marked(tokenizer, ids_a, by_a, '{{', '}}')}"
    )
