"""Jinja templates and the chat formats a completion prompt can take (raw, chatml, qwen, r1, gemma)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

Messages = list[dict[str, str]]


@lru_cache(maxsize=1)
def jinja_env() -> Any:
    import jinja2

    # StrictUndefined: a typo in a template field is an error, not an empty string
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=256)
def template(source: str) -> Any:
    return jinja_env().from_string(source)


def _turns(messages: Messages, open_tag: Callable[[str], str], close: str, reply: str) -> str:
    return "".join(f"{open_tag(m['role'])}{m['content']}{close}" for m in messages) + reply


def _chatml(messages: Messages) -> str:
    return _turns(messages, lambda r: f"<|im_start|>{r}\n", "<|im_end|>\n", "<|im_start|>assistant\n")


def _qwen(messages: Messages) -> str:
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": "You are a helpful assistant."}, *messages]
    return _chatml(messages)


def _r1(messages: Messages) -> str:
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    body = "".join(
        f"<｜User｜>{m['content']}" if m["role"] == "user" else f"<｜Assistant｜>{m['content']}<｜end▁of▁sentence｜>"
        for m in messages
        if m["role"] != "system"
    )
    return f"<｜begin▁of▁sentence｜>{system}{body}<｜Assistant｜><think>\n"


def _gemma(messages: Messages) -> str:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if system and turns and turns[0]["role"] == "user":
        turns[0] = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
    role = {"assistant": "model"}
    return "<bos>" + _turns(
        turns, lambda r: f"<start_of_turn>{role.get(r, r)}\n", "<end_of_turn>\n", "<start_of_turn>model\n"
    )


def _raw(messages: Messages) -> str:
    # base models: the text as written; each reply follows its prompt directly, exchanges
    # are separated by a blank line, the system prompt comes first
    parts: list[str] = []
    for m in messages:
        if m["role"] == "assistant" and parts:
            parts[-1] += m["content"]
        else:
            parts.append(m["content"])
    return "\n\n".join(parts)


CHAT_TEMPLATES: dict[str, Callable[[Messages], str]] = {
    "raw": _raw,
    "chatml": _chatml,
    "qwen": _qwen,
    "r1": _r1,
    "gemma": _gemma,
}
