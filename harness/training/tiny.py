"""Models and tokenizers made offline: a tiny causal LM from a config, a BPE tokenizer trained from the
job's own texts, and Jinja chat templates whose assistant turns carry ``{% generation %}`` markers
(so TRL's assistant-only loss can mask them)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# The end-of-turn token is inside the generation block, with its newline (as the model emits it):
# a template that leaves it outside never trains the model to stop.
CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}{{- message['content'] + '<|im_end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
QWEN = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}" + CHATML
)
GEMMA = (
    "{{- bos_token -}}"
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\\n\\n') -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<start_of_turn>model\\n' -}}"
    "{% generation %}{{- message['content'] + '<end_of_turn>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- '<start_of_turn>' + message['role'] + '\\n' -}}"
    "{%- if loop.first and system -%}{{- system + '\\n\\n' -}}{%- endif -%}"
    "{{- message['content'] + '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)
# name -> (Jinja source, end-of-turn token); "raw" has no template: text stays text
JINJA_TEMPLATES: dict[str, tuple[str, str]] = {
    "chatml": (CHATML, "<|im_end|>"),
    "qwen": (QWEN, "<|im_end|>"),
    "gemma": (GEMMA, "<end_of_turn>"),
}
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
PAD, BOS, EOS = "<|endoftext|>", "<|begin_of_text|>", "<|endoftext|>"
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>|<bos>|<eos>|<pad>")

TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def resolve_template(chat_template: str | None) -> tuple[str | None, str | None]:
    """(Jinja source, end-of-turn token) for a template name or Jinja text; (None, None) for none/raw."""
    if chat_template is None or chat_template == "raw":
        return None, None
    if chat_template in JINJA_TEMPLATES:
        return JINJA_TEMPLATES[chat_template]
    if "{" not in chat_template:
        known = ", ".join(["raw", *JINJA_TEMPLATES])
        raise ValueError(f"unknown chat template {chat_template!r} (known: {known}; or Jinja text)")
    found = [t for t in END_OF_TURN_TOKENS if t in chat_template]
    return chat_template, found[0] if found else None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with the template's special tokens.

    eos is the template's end-of-turn token (what generation stops on); pad is a separate token so
    that padding never hides an eos label."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    source, end_of_turn = resolve_template(chat_template)
    specials = [PAD, BOS]
    for token in _SPECIAL.findall(source or ""):
        if token not in specials:
            specials.append(token)
    if end_of_turn and end_of_turn not in specials:
        specials.append(end_of_turn)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=end_of_turn or EOS,
        pad_token=PAD,
        extra_special_tokens=[t for t in specials if t not in (PAD, BOS, end_of_turn or EOS)],
    )
    if source is not None:
        wrapped.chat_template = source
    return wrapped


def tiny_model(config_overrides: dict[str, Any], tokenizer: Any, seed: int = 0,
               end_of_turn_id: int | None = None) -> PreTrainedModel:
    """A randomly initialised Llama-architecture causal LM (seeded), sized by TINY_DEFAULTS + overrides;
    it stops on the tokenizer's eos and on ``end_of_turn_id`` (a real tokenizer's eos is often not the
    template's end-of-turn token)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {**TINY_DEFAULTS, **config_overrides}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    stop = sorted({i for i in (tokenizer.eos_token_id, end_of_turn_id) if i is not None})
    model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
