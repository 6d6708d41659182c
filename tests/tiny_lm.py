"""A tiny causal LM saved as a Hugging Face folder, for the server-mechanics tests of the CPU server.

Random weights (seeded) and a byte-level BPE tokenizer trained on a few English lines, with Gemma's chat
template and turn tokens: the server treats it as it treats the bundled model, at a few milliseconds a token
instead of about 140 on 2 cores. Its vocabulary is printable ASCII only, so any token sequence it samples
decodes to valid UTF-8."""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "The capital of France is Paris. Once upon a time, there was a fox. def fibonacci(n): return n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10. The quick brown fox jumps over the lazy dog. Water boils at 100 degrees.",
    "In 1492, Columbus sailed. My favourite colour is blue. What is 2+2? Name three colours. Count to ten.",
    "Answer briefly.\nCountry: Germany\nCapital: Berlin\n",
]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]


def build_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """Write the model and its tokenizer to ``folder`` (created) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from harness.training.tiny import GEMMA

    # printable ASCII plus the byte-level symbols of space and newline: never a lone byte of a UTF-8 sequence
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if 33 <= ord(c) < 127 or c in "ĠĊ"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", extra_special_tokens=SPECIALS[3:])
    tokenizer.chat_template = GEMMA
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False,
        # wide weights make peaked logits: greedy picks never hinge on a batch's rounding
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # a special token's logit is 0, far below the top of ~300 wide random logits: greedy text never holds
        # one (whose bytes a logprobs reply would show but the text would not) and never ends early
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(SPECIALS)] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
