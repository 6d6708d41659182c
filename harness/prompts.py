"""Rendering a case into what the engine receives: chat messages or a completion prompt."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from harness.engines.client import Request
from harness.templates import CHAT_TEMPLATES, Messages, template

if TYPE_CHECKING:
    from harness.suite import Case, Suite

DEFAULT_MAX_TOKENS = 256


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
        messages.append({"role": "system", "content": template(suite.prompt.system).render(context)})
    for shot in suite.prompt.few_shot:
        # each example is one exchange: the template over the example's input, then its output
        reply = shot.get("output", "")
        messages.append({"role": "user", "content": template(suite.prompt.template).render({**context, **shot})})
        messages.append({"role": "assistant",
                         "content": reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)})
    if isinstance(case.input, list):
        messages.extend({"role": m["role"], "content": str(m["content"])} for m in case.input)
    else:
        messages.append({"role": "user", "content": template(suite.prompt.template).render(context)})
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
