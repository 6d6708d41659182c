"""The ``padding`` check: training batches pad right, generation batches pad left.

A decoder-only model generates from the last position of each row: with right padding that position
is a pad token for every shorter prompt, so batched evaluation silently scores something else than the
model (the LLaMA-Factory lesson). The check inspects a collated training batch and compares batched
greedy generation with one prompt at a time, token for token."""

from __future__ import annotations

import copy
from typing import Any, Sequence

from .checks import _result


def right_padded_rows(batch: dict[str, Any]) -> tuple[int, list[int]]:
    """(rows shorter than the longest, indices of those whose padding is not all at the end), from the
    batch's ``attention_mask``: a right-padded row is ones then zeros."""
    mask = batch["attention_mask"]
    rows = mask.tolist() if hasattr(mask, "tolist") else [list(r) for r in mask]
    padded, wrong = 0, []
    for index, row in enumerate(rows):
        n = sum(1 for m in row if m)
        if n == len(row):
            continue
        padded += 1
        if any(row[n:]) or not all(row[:n]):
            wrong.append(index)
    return padded, wrong


def padding_batch(trainer: Any) -> dict[str, Any]:
    """The shortest and longest training examples, and the shortest cut to half its length, collated by
    the trainer's own collator: the cut copy makes sure a row is padded even when every example has the
    same length (a BPE trained on the job's texts often makes each prompt the same number of tokens)."""
    dataset = trainer.train_dataset
    lengths = [len(ids) for ids in dataset["input_ids"]]
    shortest, longest = dataset[lengths.index(min(lengths))], dataset[lengths.index(max(lengths))]
    n = len(shortest["input_ids"])
    # every per-token field (labels, completion_mask, assistant_masks) is cut with the ids
    cut = {k: v[: max(1, n // 2)] if isinstance(v, list) and len(v) == n else v for k, v in shortest.items()}
    return trainer.data_collator([shortest, longest, cut])


def _generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    device = next(model.parameters()).device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    # exactly max_new_tokens each (stop tokens suppressed): a briefly trained tiny model answers
    # <|im_end|> at once, which every padding reproduces; the tokens after it expose the difference
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    width = encoded["input_ids"].shape[1]
    return [row[width:].tolist() for row in out]


def padding_parity(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch: dict[str, Any] | None = None,
    generation_padding_side: str = "left",
    max_new_tokens: int = 6,
) -> dict[str, Any]:
    """``batch`` (a collated training batch) pads right; batched greedy generation from a copy of
    ``tokenizer`` padding on ``generation_padding_side`` (the harness's: left) equals generating each
    prompt alone. The failure names the first prompt whose outputs differ, with both outputs."""
    problems: list[str] = []
    figures: dict[str, Any] = {"generation_padding_side": generation_padding_side, "prompts": len(prompts)}
    if batch is not None:
        padded, wrong = right_padded_rows(batch)
        figures.update(train_rows_padded=padded)
        if wrong:
            problems.append(f"training collator pads {len(wrong)} of {padded} padded rows on the left (rows {wrong[:5]}); "
                            "training batches must pad right")
    if len({len(tokenizer(p)["input_ids"]) for p in prompts}) < 2:
        problems.append("generation prompts all have the same length: padding is not exercised")
    # a copy: the caller's tokenizer (saved with the checkpoint) keeps its own padding side
    generator = copy.deepcopy(tokenizer)  # deep: a fast tokenizer's backend holds padding state
    generator.padding_side = generation_padding_side
    was_training = model.training
    model.eval()
    try:
        batched = _generate(model, generator, list(prompts), max_new_tokens)
        alone = [_generate(model, generator, [p], max_new_tokens)[0] for p in prompts]
        if generation_padding_side == "left":
            # the control: whether this model's outputs would show the bug at all (a model that ignores
            # its context, e.g. after a few steps, generates the same whatever the padding)
            generator.padding_side = "right"
            figures["right_padding_differs"] = _generate(model, generator, list(prompts), max_new_tokens) != alone
    finally:
        model.train(was_training)
    differing = [i for i, (b, a) in enumerate(zip(batched, alone)) if b != a]
    figures.update(differing=len(differing))
    if differing:
        i = differing[0]
        problems.append(f"batched generation ({generation_padding_side} padding) differs from unbatched for "
                        f"{len(differing)} of {len(prompts)} prompts; first {prompts[i]!r}: batched "
                        f"{tokenizer.decode(batched[i])!r}, unbatched {tokenizer.decode(alone[i])!r}")
    trained = "training pads right; " if batch is not None else ""
    return _result(problems, f"{trained}{len(prompts)} prompts generate the same batched "
                             f"({generation_padding_side} padding) as alone", **figures)


def generation_prompts(tokenizer: Any, rows: list[dict[str, Any]], count: int = 4) -> list[str]:
    """Up to ``count`` distinct job prompts as the model sees them (chat: rendered with the generation
    prompt), from the shortest to the longest, and one made of several prompts joined: job prompts are
    often all the same number of tokens, and a batch of those pads nothing."""
    raw = [row["prompt"] for row in rows if isinstance(row.get("prompt"), (str, list))]
    if not raw:
        return []
    first = raw[: max(2, count)]
    if isinstance(raw[0], list):
        joined: Any = [{**raw[0][-1], "content": " ".join(p[-1]["content"] for p in first if p)}]
    else:
        joined = " ".join(p for p in first if isinstance(p, str))
    texts: dict[str, int] = {}
    for prompt in raw:
        if isinstance(prompt, list):
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        if prompt not in texts:
            texts[prompt] = len(tokenizer(prompt)["input_ids"])
    ordered = sorted(texts, key=texts.__getitem__)
    if len(ordered) > count - 1:
        ordered = [ordered[round(i * (len(ordered) - 1) / (count - 2))] for i in range(count - 1)]
    if isinstance(joined, list):
        joined = tokenizer.apply_chat_template(joined, tokenize=False, add_generation_prompt=True)
    return list(dict.fromkeys([*ordered, joined]))


def check(model: Any, tokenizer: Any, rows: list[dict[str, Any]], trainer: Any) -> dict[str, Any]:
    """The runner's entry point: the trainer's collated batch and the job's own prompts."""
    return padding_parity(model, tokenizer, generation_prompts(tokenizer, rows), batch=padding_batch(trainer))
