"""The async OpenAI-compatible client: one code path for the bundled server, vLLM, SGLang and APIs.

``send`` never raises for a model-side failure: a timeout, an HTTP error or an empty reply
comes back as a :class:`Reply` with ``error`` set, so one bad case never stops a run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}


@dataclass(frozen=True)
class Request:
    """One generation request, engine-neutral."""

    api: str  # "chat" | "completion"
    model: str
    prompt: Any  # list of messages (chat) or a string (completion)
    params: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature, top_p, stop, seed
    extra_body: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        key = "messages" if self.api == "chat" else "prompt"
        return {**self.extra_body, "model": self.model, key: self.prompt,
                **{k: v for k, v in self.params.items() if v is not None}}


@dataclass
class Reply:
    """What came back: the text, or the reason there is none."""

    text: str | None
    error: str | None
    latency_ms: float
    output_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1
    status: int | None = None  # the HTTP status of the last attempt, when there was one

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OpenAICompatClient:
    """Async client for `/v1/chat/completions` and `/v1/completions` on one base URL."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 retries: int = 2, backoff_s: float = 0.5, backoff_cap_s: float = 8.0,
                 max_retry_after_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.max_retry_after_s = max_retry_after_s
        self._session: Any = None

    async def _http(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def send(self, request: Request) -> Reply:
        """Send with retries on transient failures; errors are returned, not raised."""
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            reply, retry, advised = await self._attempt(request, started)
            reply.attempts = attempt
            if not retry or attempt > self.retries:
                return reply
            if advised is not None:
                await asyncio.sleep(min(advised, self.max_retry_after_s))
            else:
                # full jitter: spread retries of many concurrent failures apart
                await asyncio.sleep(random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1))))

    async def _attempt(self, request: Request, started: float) -> tuple[Reply, bool, float | None]:
        """One try: the reply, whether to retry, and the wait the server asked for (Retry-After)."""
        import aiohttp

        path = "/chat/completions" if request.api == "chat" else "/completions"
        session = await self._http()

        def failed(reason: str) -> Reply:
            return Reply(None, reason, (time.perf_counter() - started) * 1000)

        try:
            async with session.post(self.base_url + path, data=json.dumps(request.body()),
                                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                raw = await response.read()
                if response.status != 200:
                    reply = failed(f"HTTP {response.status}: {_error_message(raw)}")
                    reply.status = response.status
                    return reply, response.status in RETRYABLE_STATUS, _retry_after(response.headers)
        except asyncio.TimeoutError:
            return failed(f"timeout after {self.timeout_s:g} s"), True, None
        except aiohttp.ClientError as exc:
            return failed(f"connection error: {type(exc).__name__}: {exc}"), True, None
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = choice["message"]["content"] if request.api == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return failed(f"malformed response: {type(exc).__name__}: {raw[:200]!r}"), False, None
        usage = payload.get("usage") or {}
        reply = Reply(text, None, (time.perf_counter() - started) * 1000,
                      usage.get("completion_tokens"), choice.get("finish_reason"), status=200)
        if not text:
            reply.error = "empty reply"
        return reply, False, None


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else a numeric `Retry-After`."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    except (ValueError, AttributeError):
        return raw[:300].decode("utf-8", "replace")
