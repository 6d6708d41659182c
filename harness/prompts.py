"""Rendering a case into what the engine receives: chat messages or a completion prompt."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from harness.engines.client import Request

if TYPE_CHECKING:
    from harness.suite import Case, Suite

Messages = list[dict[str, str]]
DEFAULT_MAX_TOKENS = 256


@lru_cache(maxsize=1)
def jinja_env() -> Any:
    import jinja2

    # StrictUndefined: a typo in a template field is an error, not an empty string
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=256)
def _template(source: str) -> Any:
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


def render_messages(suite: Suite, case: Case) -> Messages:
    """The chat messages for a case: system prompt, then the case's turns or templated input."""
    context = {
        "input": case.input,
        "target": case.target,
        "id": case.id,
        "metadata": case.metadata,
        "record": case.record,
    }
    messages: Messages = []
    if suite.prompt.system:
        messages.append({"role": "system", "content": _template(suite.prompt.system).render(context)})
    for shot in suite.prompt.few_shot:
        # each example is one exchange: the template over the example's input, then its output
        reply = shot.get("output", "")
        messages.append({"role": "user", "content": _template(suite.prompt.template).render({**context, **shot})})
        messages.append({"role": "assistant",
                         "content": reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)})
    if isinstance(case.input, list):
        messages.extend({"role": m["role"], "content": str(m["content"])} for m in case.input)
    else:
        messages.append({"role": "user", "content": _template(suite.prompt.template).render(context)})
    return messages


def render(suite: Suite, case: Case) -> Messages | str:
    """What is sent: messages in chat mode, a prompt string in completion mode."""
    messages = render_messages(suite, case)
    if suite.api == "chat":
        return messages
    return CHAT_TEMPLATES[suite.chat_template](messages)


def build_request(suite: Suite, case: Case, model: str, stream: bool = False, hook: Any = None) -> Request:
    """The request of one case, rendered once; ``hook`` (a pytest hook relay) lets
    ``pytest_llm_build_request`` implementations rewrite it."""
    gen = suite.generation
    params = {
        "max_tokens": gen.get("max_tokens", DEFAULT_MAX_TOKENS),
        "temperature": gen.get("temperature", 0.0),
        "top_p": gen.get("top_p"),
        "stop": gen.get("stop"),
        "seed": gen.get("seed"),
    }
    request = Request(suite.api, model, render(suite, case), params, dict(suite.extra_body),
                      stream=stream or bool(gen.get("stream")))
    if hook is not None:
        rewritten = hook.pytest_llm_build_request(suite=suite, case=case, model=model, request=request)
        if rewritten is not None:
            if not isinstance(rewritten, Request):
                raise TypeError(f"pytest_llm_build_request returned {type(rewritten).__name__}, not a Request")
            request = rewritten
    return request
