"""Engine kind ``scripted``: a deterministic model in the same process, for tests.

Its replies follow the directives the stub server (:mod:`harness.testing.stub_server`) knows,
read from the prompt (chat messages joined by newlines):

- ``ANSWER: x`` — the reply is ``x`` (the last such line); otherwise ``ok``;
- ``EMPTY`` — an empty reply; ``NULL`` — content null; ``FAIL:503`` — that HTTP error;
- ``SLEEP:50`` — answer after 50 ms; ``TOOL:name:{json}`` — one tool call instead of text;
- ``FLIP:a|b`` — a nondeterministic model: the n-th request with this prompt (counted per client)
  gets the n-th option, cycling; a run answers ``a``, the same case sent again ``b``.

Models-file options: ``delay_ms`` (every reply), ``replies`` (a mapping from a prompt substring
to the reply, tried before the directives). No HTTP, no subprocess: a pytester run in the same
process takes milliseconds, which is what the project's own fast tests use::

    - {name: stub, engine: scripted, options: {delay_ms: 5}}
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from harness.engines.client import RETRYABLE_STATUS, Reply, Request, _finish
from harness.engines.registry import Engine, EngineContext
from harness.testing.stub_server import reply_for

OPTIONS = ("delay_ms", "replies")


def prompt_text(request: Request) -> str:
    if request.api == "chat":
        return "\n".join(str(m.get("content", "")) for m in request.prompt)
    return str(request.prompt)


class ScriptedClient:
    """Answers requests from the directives in their prompts."""

    limiter = None

    def __init__(self, name: str, delay_ms: float = 0.0, replies: dict[str, str] | None = None) -> None:
        self.base_url = f"scripted:{name}"
        self.base_urls = [self.base_url]
        self.delay_s = delay_ms / 1000
        self.replies = dict(replies or {})
        self.requests = 0
        self.seen: dict[str, int] = {}  # prompt -> requests with it so far (FLIP:)

    async def send(self, request: Request) -> Reply:
        self.requests += 1
        sent_at = time.time()
        started = time.perf_counter()
        prompt = prompt_text(request)
        sleep = re.search(r"SLEEP:(\d+)", prompt)
        delay = int(sleep.group(1)) / 1000 if sleep else self.delay_s
        if delay:
            await asyncio.sleep(delay)
        self.seen[prompt] = self.seen.get(prompt, 0) + 1
        reply = self._reply(prompt)
        reply.latency_ms = (time.perf_counter() - started) * 1000
        reply.sent_at, reply.done_at, reply.replica = sent_at, time.time(), self.base_url
        return reply

    def _reply(self, prompt: str) -> Reply:
        fail = re.search(r"FAIL:(\d{3})", prompt)
        if fail:
            status = int(fail.group(1))
            return Reply(None, f"HTTP {status}: injected failure", 0.0, status=status,
                         transient=status in RETRYABLE_STATUS)
        for needle, text in self.replies.items():
            if needle in prompt:
                return _finish(Reply(text, None, 0.0, len(text.split()), "stop", status=200))
        tool = re.search(r"TOOL:(\w+):(\{.*\})", prompt)
        if tool:
            call = {"id": "call_1", "type": "function", "function": {"name": tool.group(1), "arguments": tool.group(2)}}
            return Reply(None, None, 0.0, 0, "tool_calls", status=200, tool_calls=[call])
        if "NULL" in prompt:
            return _finish(Reply(None, None, 0.0, 0, "stop", status=200))
        text = "" if "EMPTY" in prompt else reply_for(prompt, self.seen.get(prompt, 1))
        return _finish(Reply(text, None, 0.0, len(text.split()), "stop", status=200))

    async def close(self) -> None:
        pass


class ScriptedEngine(Engine):
    kind = "scripted"

    @classmethod
    def check(cls, spec: Any) -> str | None:
        unknown = sorted(set(spec.options) - set(OPTIONS))
        return f"unknown scripted option {unknown[0]!r} (options: {', '.join(OPTIONS)})" if unknown else None

    def client(self, record: dict[str, Any], ctx: EngineContext) -> ScriptedClient:
        options = self.spec.options
        return ScriptedClient(self.spec.name, float(options.get("delay_ms", 0.0)), options.get("replies"))

    def identity(self) -> dict[str, Any]:
        return {"name": self.spec.name, "engine": self.kind, "options": dict(self.spec.options)}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        return {"source": "scripted (harness.testing.scripted)", "weights_sha256": None}
