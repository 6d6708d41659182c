"""The label audit: which tokens of the trainer's own prepared examples carry a label (check
``label_mask``), read before training from the collated batches (SFT, DPO) or the prepared ids (KTO)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .api import LabelAudit
from .job import ROLES



def prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    """The prompt as TRL tokenizes it (conversational: with the generation prompt)."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class _Sequence:
    ids: list[int]
    trained: list[bool]
    prompt_len: int


def _key(row: dict[str, Any], names: tuple[str, ...]) -> str:
    return json.dumps([row[n] for n in names], sort_keys=True)


def _dropped(rows: list[dict[str, Any]], dataset: Any, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows missing from the prepared dataset: TRL silently drops examples that truncation left untrained."""
    kept: dict[str, int] = {}
    for row in dataset:
        kept[_key(row, names)] = kept.get(_key(row, names), 0) + 1
    missing = []
    for row in rows:
        key = _key(row, names)
        if kept.get(key):
            kept[key] -= 1
        else:
            missing.append(row)
    return missing


def audit_sft(trainer: Any, rows: list[dict[str, Any]], tokenizer: Any, end_of_turn: str | None, loss: str) -> LabelAudit:
    """Collate the prepared dataset with the trainer's collator and read which tokens carry a label."""
    dataset, size = trainer.train_dataset, trainer.args.per_device_train_batch_size
    sequences = []
    for start in range(0, len(dataset), size):
        chunk = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in chunk])
        for row, labels in zip(chunk, batch["labels"]):
            ids = list(row["input_ids"])
            prompt_len = _common_prefix(prompt_ids(tokenizer, row["prompt"]), ids) if "prompt" in row else 0
            sequences.append(_Sequence(ids, (labels[: len(ids)] != -100).tolist(), prompt_len))
    dropped = _dropped(rows, dataset, ROLES["sft"]) if "prompt" in dataset.column_names else []
    shown = [prompt_ids(tokenizer, r["prompt"])[: trainer.args.max_length] for r in dropped]
    return _audit(sequences, shown, tokenizer, end_of_turn, check_prompt=loss != "full")


def audit_dpo(trainer: Any, rows: list[dict[str, Any]], tokenizer: Any, end_of_turn: str | None) -> LabelAudit:
    """Chosen and rejected sequences as the preference collator builds them (trained: completion_mask)."""
    dataset, size = trainer.train_dataset, trainer.args.per_device_train_batch_size
    sequences = []
    for start in range(0, len(dataset), size):
        chunk = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        batch = trainer.data_collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in chunk])
        prompt_lens = [len(r["prompt_ids"]) for r in chunk] * 2  # rows: every chosen, then every rejected
        for ids, attention, mask, prompt_len in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], prompt_lens):
            n = int(attention.sum())
            sequences.append(_Sequence(ids[:n].tolist(), (mask[:n] == 1).tolist(), min(prompt_len, n)))
    dropped = _dropped(rows, dataset, ROLES["dpo"])
    shown = [prompt_ids(tokenizer, r["prompt"])[: trainer.args.max_length] for r in dropped for _ in range(2)]
    return _audit(sequences, shown, tokenizer, end_of_turn, check_prompt=True)


def audit_kto(trainer: Any, rows: list[dict[str, Any]], tokenizer: Any, end_of_turn: str | None) -> LabelAudit:
    """KTO's prepared examples: the prompt's tokens then the completion's, which alone carry the loss."""
    dataset = trainer.train_dataset
    sequences = []
    for row in dataset:
        prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
        sequences.append(_Sequence(prompt + completion, [False] * len(prompt) + [True] * len(completion), len(prompt)))
    dropped = _dropped(rows, dataset, ROLES["kto"])
    shown = [prompt_ids(tokenizer, r["prompt"])[: trainer.args.max_length] for r in dropped]
    return _audit(sequences, shown, tokenizer, end_of_turn, check_prompt=True)


def _audit(
    sequences: list[_Sequence], dropped: list[list[int]], tokenizer: Any, end_of_turn: str | None, check_prompt: bool
) -> LabelAudit:
    audit = LabelAudit(examples=len(sequences) + len(dropped), end_of_turn=end_of_turn)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    audit.examples_without_trained_tokens = len(dropped)
    offenders: list[str] = [f"{marked(tokenizer, ids, [False] * len(ids))} (dropped: no trained token)" for ids in dropped[:1]]
    for seq in sequences:
        prompt_trained = sum(seq.trained[: seq.prompt_len]) if check_prompt else 0
        audit.prompt_tokens_trained += prompt_trained
        positions = [i for i, t in enumerate(seq.trained) if t]
        # the end-of-turn may be followed by its newline (ChatML "<|im_end|>\n"), trained too
        while positions and seq.ids[positions[-1]] != end_id and not tokenizer.decode([seq.ids[positions[-1]]]).strip():
            positions.pop()
        no_tokens = not any(seq.trained)
        not_ending = not no_tokens and (not positions or seq.ids[positions[-1]] != end_id)
        audit.examples_without_trained_tokens += no_tokens
        audit.examples_not_ending_with_eos += not_ending
        if prompt_trained or no_tokens or not_ending:
            offenders.append(marked(tokenizer, seq.ids, seq.trained))
    audit.offending = offenders[0] if offenders else None
    return audit


def marked(tokenizer: Any, ids: list[int], trained: list[bool], opening: str = "[[", closing: str = "]]") -> str:
    """The sequence decoded, each run of trained tokens between ``opening`` and ``closing``."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tokenizer.decode(ids[start:i])
            parts.append(f"{opening}{text}{closing}" if trained[start] else text)
            start = i
    return "".join(parts)
