"""`llm_client`: the run's engine for hand-written tests, sync and async."""

from __future__ import annotations

from typing import Any

from harness.engines.client import Reply, Request
from harness.engines.loop import run_async, run_sync
from harness.run import RunState

DEFAULTS: dict[str, Any] = {"max_tokens": 256, "temperature": 0.0}


class LLMError(RuntimeError):
    """The engine gave no usable reply (timeout, HTTP error, empty reply)."""


class LLMClient:
    """Talks to the engine serving ``model`` in this run, through the same client as eval suites.

    ``chat``/``complete`` return the text and raise :class:`LLMError` on a model error;
    ``reply``/``areply`` return the whole :class:`Reply` (latency, tokens, error)."""

    def __init__(self, state: RunState, model: str) -> None:
        self._state = state
        self.model = model

    @property
    def base_url(self) -> str:
        return self._state.engine(self.model)["base_url"]

    def _request(self, api: str, prompt: Any, params: dict[str, Any]) -> Request:
        extra = params.pop("extra_body", {})
        if api == "chat" and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        return Request(api, self.model, prompt, {**DEFAULTS, **params}, extra)

    def reply(self, prompt: Any, api: str = "chat", **params: Any) -> Reply:
        return run_sync(self._state.client(self.model).send(self._request(api, prompt, params)))

    async def areply(self, prompt: Any, api: str = "chat", **params: Any) -> Reply:
        client = self._state.client(self.model)
        return await run_async(client.send(self._request(api, prompt, params)))

    def chat(self, messages: str | list[dict[str, str]], **params: Any) -> str:
        return _text(self.reply(messages, "chat", **params))

    def complete(self, prompt: str, **params: Any) -> str:
        return _text(self.reply(prompt, "completion", **params))

    async def achat(self, messages: str | list[dict[str, str]], **params: Any) -> str:
        return _text(await self.areply(messages, "chat", **params))

    async def acomplete(self, prompt: str, **params: Any) -> str:
        return _text(await self.areply(prompt, "completion", **params))


def _text(reply: Reply) -> str:
    if reply.error is not None or reply.text is None:
        raise LLMError(reply.error or "no text")
    return reply.text
