"""Jinja templates (sandboxed) and the chat formats a completion prompt can take (raw, chatml, qwen, r1, gemma)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

Messages = list[dict[str, str]]


@lru_cache(maxsize=1)
def jinja_env() -> Any:
    """The one environment of every template the harness renders.

    Sandboxed: suite files come from others, and a plain environment lets a template reach
    Python internals (``cycler.__init__.__globals__.os``) and run commands; the immutable sandbox
    also keeps a template from changing the case data it reads. StrictUndefined: a typo in a
    template field is an error, not an empty string.

    ``tojson`` writes JSON for a model to read (see :func:`prompt_json`), not for an HTML page."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["tojson"] = prompt_json
    return env


def prompt_json(value: Any, indent: int | None = None) -> str:
    """The ``tojson`` filter of prompt templates: ``{{ tools | tojson }}`` writes ``"城市"``, not
    ``"\\u57ce\\u5e02"``, and ``<``, ``>``, ``&``, ``'`` as themselves.

    Jinja's own filter is made for a ``<script>`` tag of an HTML page: it escapes every non-ASCII
    character and those four (``\\u003c``...). A prompt is no HTML page and nothing here parses it
    as one: the escapes only cost a model readability (and tokens). Keys stay sorted, as Jinja's
    filter sorts them; ``indent`` as in Jinja's. The result is a plain string, not Markup: an
    environment with autoescape (none here) would still escape it."""
    import json

    import jinja2

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # names the missing field, as printing it would
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=indent)


@lru_cache(maxsize=256)
def template(source: str) -> Any:
    compiled = jinja_env().from_string(source)
    # every render copies the template's globals into its context: flat, not the ChainMap jinja
    # keeps, that copy is half the cost of rendering a short prompt (collection renders every case)
    compiled.globals = dict(compiled.globals)
    return compiled


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
