"""The async OpenAI-compatible client: one code path for the bundled server, vLLM, SGLang and APIs.

``send`` never raises for a model-side failure: a timeout, an HTTP error or an empty reply
comes back as a :class:`Reply` with ``error`` set, so one bad case never stops a run. The
client owns retries (exponential backoff with full jitter, ``Retry-After`` honoured), a total
deadline per request, the spread over several base URLs (replicas) and, through an
:class:`~harness.engines.limiter.AdaptiveLimit`, the run's in-flight ceiling.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.engines.limiter import AdaptiveLimit

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
    stream: bool = False  # how it is sent, not what is asked: not part of body() or the cache key

    def body(self) -> dict[str, Any]:
        key = "messages" if self.api == "chat" else "prompt"
        return {**self.extra_body, "model": self.model, key: self.prompt,
                **{k: v for k, v in self.params.items() if v is not None}}

    def wire_body(self) -> dict[str, Any]:
        body = self.body()
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


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
    transient: bool = False  # the failure may pass: a later pass re-sends it
    sent_at: float | None = None  # epoch seconds of the first attempt
    done_at: float | None = None  # epoch seconds of the final answer
    ttft_ms: float | None = None  # streaming only: time to the first content token
    tpot_ms: float | None = None  # streaming only: (latency - TTFT) / (output tokens - 1)
    tool_calls: list[dict[str, Any]] | None = None
    replica: str | None = None  # the base URL that answered

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OpenAICompatClient:
    """Async client for `/v1/chat/completions` and `/v1/completions` on one or several base URLs."""

    def __init__(self, base_url: str | Sequence[str], api_key: str | None = None, timeout_s: float = 300.0,
                 retries: int = 2, backoff_s: float = 0.5, backoff_cap_s: float = 8.0,
                 max_retry_after_s: float = 60.0, deadline_s: float | None = None,
                 limiter: AdaptiveLimit | None = None) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("a client needs at least one base URL")
        self.base_urls = [url.rstrip("/") for url in urls]
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.max_retry_after_s = max_retry_after_s
        self.deadline_s = deadline_s
        self.limiter = limiter
        self._in_flight = {url: 0 for url in self.base_urls}
        self._turn = itertools.count()
        self._session: Any = None

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    async def _http(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _pick(self, avoid: str | None = None) -> str:
        """The replica with the fewest requests in flight, ties taken in turn; a retry avoids the one that failed."""
        if len(self.base_urls) == 1:
            return self.base_urls[0]
        start = next(self._turn) % len(self.base_urls)
        order = [url for url in self.base_urls[start:] + self.base_urls[:start] if url != avoid]
        return min(order, key=self._in_flight.__getitem__)

    async def send(self, request: Request) -> Reply:
        """Send with retries on transient failures, within the deadline; errors are returned, not raised."""
        sent_at = time.time()
        started = time.perf_counter()
        deadline = started + self.deadline_s if self.deadline_s else float("inf")
        attempt = 0
        failed_at: str | None = None
        while True:
            attempt += 1
            timeout = min(self.timeout_s, deadline - time.perf_counter())
            reply, retry, advised = await self._limited_attempt(request, started, max(timeout, 0.001), failed_at)
            failed_at = reply.replica
            reply.attempts, reply.sent_at, reply.done_at = attempt, sent_at, time.time()
            reply.transient = reply.error is not None and retry
            if not retry:
                return reply
            if advised is not None:
                wait = min(advised, self.max_retry_after_s)
            else:
                # full jitter: spread retries of many concurrent failures apart
                wait = random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1)))
            if time.perf_counter() + wait >= deadline - 0.01:
                reply.error = f"{reply.error} (deadline of {self.deadline_s:g} s reached after {attempt} attempts)"
                return reply
            if attempt > self.retries:
                return reply
            await asyncio.sleep(wait)

    async def _limited_attempt(self, request: Request, started: float, timeout: float,
                               avoid: str | None) -> tuple[Reply, bool, float | None]:
        url = self._pick(avoid)
        self._in_flight[url] += 1
        try:
            if self.limiter is None:
                result = await self._attempt(url, request, started, timeout)
            else:
                async with self.limiter.slot() as slot:
                    result = await self._attempt(url, request, started, timeout)
                    slot.throttled = result[0].status == 429
        finally:
            self._in_flight[url] -= 1
        result[0].replica = url
        return result

    async def _attempt(self, url: str, request: Request, started: float,
                       timeout: float) -> tuple[Reply, bool, float | None]:
        """One try: the reply, whether to retry, and the wait the server asked for (Retry-After)."""
        import aiohttp

        path = "/chat/completions" if request.api == "chat" else "/completions"
        session = await self._http()

        def failed(reason: str) -> Reply:
            return Reply(None, reason, (time.perf_counter() - started) * 1000)

        try:
            async with session.post(url + path, data=json.dumps(request.wire_body()),
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status != 200:
                    raw = await response.read()
                    reply = failed(f"HTTP {response.status}: {_error_message(raw)}")
                    reply.status = response.status
                    return reply, response.status in RETRYABLE_STATUS, _retry_after(response.headers)
                if response.content_type == "text/event-stream":
                    return await _read_stream(response, request, started)
                raw = await response.read()
        except asyncio.TimeoutError:
            return failed(f"timeout after {timeout:g} s"), True, None
        except aiohttp.ClientError as exc:
            return failed(f"connection error: {type(exc).__name__}: {exc}"), True, None
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            message = choice["message"] if request.api == "chat" else {"content": choice["text"]}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # a cut-off or garbled body is the transport's fault more often than the model's
            return failed(f"malformed response: {type(exc).__name__}: {raw[:200]!r}"), True, None
        return _finish(Reply(message.get("content"), None, (time.perf_counter() - started) * 1000,
                             (payload.get("usage") or {}).get("completion_tokens"), choice.get("finish_reason"),
                             status=200, tool_calls=message.get("tool_calls") or None)), False, None


def _finish(reply: Reply) -> Reply:
    """A 200 with nothing in it is a model error: no text and no tool calls."""
    if not reply.text and not reply.tool_calls:
        reply.error = "empty reply" if reply.text == "" else "empty reply (content null)"
    return reply


async def _read_stream(response: Any, request: Request, started: float) -> tuple[Reply, bool, float | None]:
    """Server-sent events: text deltas joined, TTFT at the first content, usage from the last chunk."""
    parts: list[str] = []
    ttft: float | None = None
    usage: dict[str, Any] = {}
    finish: str | None = None
    tool_calls: dict[int, dict[str, Any]] = {}
    chunks = 0
    done = False
    async for raw_line in response.content:
        line = raw_line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except ValueError:
            return Reply(None, f"malformed stream event: {data[:200]!r}",
                         (time.perf_counter() - started) * 1000), True, None
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}) if request.api == "chat" else {"content": choice.get("text")}
            text = delta.get("content")
            if text:
                if ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
                parts.append(text)
                chunks += 1
            for call in delta.get("tool_calls") or []:
                slot = tool_calls.setdefault(call.get("index", 0), {"type": "function", "function": {}})
                slot.update({k: v for k, v in call.items() if k in ("id", "type")})
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] = fn["name"]
                slot["function"]["arguments"] = slot["function"].get("arguments", "") + (fn.get("arguments") or "")
            finish = choice.get("finish_reason") or finish
    latency = (time.perf_counter() - started) * 1000
    if not done and finish is None:
        return Reply(None, "stream ended before [DONE]", latency), True, None
    tokens = usage.get("completion_tokens") if usage else None
    count = tokens if tokens is not None else chunks
    reply = Reply("".join(parts), None, latency, tokens, finish, status=200, ttft_ms=ttft,
                  tool_calls=[tool_calls[i] for i in sorted(tool_calls)] or None)
    if ttft is not None and count and count > 1:
        reply.tpot_ms = (latency - ttft) / (count - 1)
    return _finish(reply), False, None


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
