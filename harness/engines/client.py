"""The async OpenAI-compatible client: one code path for the bundled server, vLLM, SGLang and APIs.

``send`` never raises for a model-side failure: a timeout, an HTTP error, an empty reply or a
body of an unexpected shape comes back as a :class:`Reply` with ``error`` set, so one bad case
never stops a run. Every 200 body goes through :func:`parse_reply`, the one place that reads
what a server sent. The client owns retries (exponential backoff with full jitter,
``Retry-After`` honoured up to ``max_retry_after_s``), a total deadline per request, the spread
over several base URLs (replicas, each with its own credentials) and, through an
:class:`~harness.engines.limiter.AdaptiveLimit`, the run's in-flight ceiling.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime  # here, not on the request loop's thread on a first Retry-After
from typing import Any, Sequence

from harness.engines.limiter import AdaptiveLimit
from harness.redact import basic_auth, key_secrets, redact_text, split_credentials, url_secrets

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}
DOWN_S = 10.0  # a replica that refused a connection is passed over this long while another one is up


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request, engine-neutral. Frozen; the harness never changes its dicts in place, so
    requests of one suite may share their ``params`` and ``extra_body`` (a large run builds them all
    before the first is sent): make a new request with ``dataclasses.replace`` and new dicts."""

    api: str  # "chat" | "completion"
    model: str
    prompt: Any  # list of messages (chat) or a string (completion)
    params: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature, top_p, stop, seed
    extra_body: dict[str, Any] = field(default_factory=dict)
    stream: bool = False  # how it is sent, not what is asked: not part of body() or the cache key
    # time.monotonic() by which the request must be done: a re-send in a later pass gets only what
    # its earlier passes left of the deadline. How it is sent, not what is asked (not in body()).
    deadline_at: float | None = None

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
    replica: str | None = None  # the base URL that answered (without credentials)
    truncated: bool = False  # cut off at max_tokens (finish_reason "length")

    def __post_init__(self) -> None:
        # every engine reports a cut-off the OpenAI way; deriving it here covers them all
        if self.finish_reason == "length":
            self.truncated = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OpenAICompatClient:
    """Async client for `/v1/chat/completions` and `/v1/completions` on one or several base URLs.

    A base URL may carry credentials (``http://user:pw@host/v1``): they are taken out of the URL
    and sent as that replica's Basic ``Authorization`` header, in place of the API key's bearer
    header (the URL names them for that server). A query (``?api-version=...``) stays on every
    request. Error messages never show the credentials or secret query values."""

    def __init__(self, base_url: str | Sequence[str], api_key: str | None = None, timeout_s: float = 300.0,
                 retries: int = 2, backoff_s: float = 0.5, backoff_cap_s: float = 8.0,
                 max_retry_after_s: float = 60.0, deadline_s: float | None = None,
                 limiter: AdaptiveLimit | None = None) -> None:
        # imported by the thread that makes the client (a run's main thread), not by the request loop's thread
        # on its first request while the main thread imports the report writers' libraries: two threads
        # importing at once is what hung a run once (see harness.report.warm_writers), and the first
        # request waited for aiohttp's import to share the interpreter with theirs
        import aiohttp  # noqa: F401

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("a client needs at least one base URL")
        self.base_urls: list[str] = []
        self._auth: dict[str, str] = {}  # base URL -> its own Authorization header (URL credentials)
        secrets = key_secrets(api_key)
        for raw in urls:
            url, credentials = split_credentials(raw.rstrip("/"))
            self.base_urls.append(url)
            secrets += url_secrets(raw)
            if credentials is not None:
                self._auth[url] = basic_auth(*credentials)
        self._secrets = secrets
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
        # replica -> time.monotonic() until which it is passed over: it refused a connection (a dead replica)
        self._down_until: dict[str, float] = {}
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
        """The replica with the fewest requests in flight, ties taken in turn; a retry avoids the one that failed,
        and a replica that refused a connection is passed over for ``DOWN_S`` while another one is up."""
        if len(self.base_urls) == 1:
            return self.base_urls[0]
        start = next(self._turn) % len(self.base_urls)
        order = [url for url in self.base_urls[start:] + self.base_urls[:start] if url != avoid]
        now = time.monotonic()
        order = [url for url in order if self._down_until.get(url, 0.0) <= now] or order
        return min(order, key=self._in_flight.__getitem__)

    def _deadline(self, request: Request) -> float:
        """The time.monotonic() by which this send must end: its own deadline or what earlier passes left."""
        own = time.monotonic() + self.deadline_s if self.deadline_s else math.inf
        return min(own, request.deadline_at) if request.deadline_at is not None else own

    async def send(self, request: Request) -> Reply:
        """Send with retries on transient failures, within the deadline; errors are returned, not raised."""
        sent_at = time.time()
        started = time.perf_counter()
        deadline = self._deadline(request)
        attempt = 0
        failed_at: str | None = None
        while True:
            attempt += 1
            timeout = min(self.timeout_s, deadline - time.monotonic())
            try:
                reply, retry, advised, queued = await self._limited_attempt(request, started, max(timeout, 0.001),
                                                                            failed_at, first=attempt == 1)
                if attempt == 1 and queued:
                    # the clocks start when the request leaves, not while it waits for a slot of the run's
                    # in-flight ceiling (judge requests share it): the deadline and latency are the request's
                    sent_at, deadline, started = sent_at + queued, deadline + queued, started + queued
            except Exception as exc:  # noqa: BLE001 - a case the client did not foresee fails this request only
                reply = Reply(None, f"client error: {type(exc).__name__}: {exc}",
                              (time.perf_counter() - started) * 1000)
                retry, advised = False, None
            failed_at = reply.replica
            reply.attempts, reply.sent_at, reply.done_at = attempt, sent_at, time.time()
            if reply.error is not None:
                reply.error = redact_text(reply.error, self._secrets)
            reply.transient = reply.error is not None and retry
            if not retry:
                return reply
            if advised is not None and advised > self.max_retry_after_s:
                # waiting an hour would hold the case (and the run's end) hostage: fail it now, with the reason
                reply.error = (f"{reply.error}; server asked to retry after {advised:g} s, "
                               f"above the {self.max_retry_after_s:g} s limit")
                reply.transient = False
                return reply
            if time.monotonic() >= deadline - 0.01:
                return self._out_of_time(reply, attempt)
            if attempt > self.retries:
                return reply
            if advised is not None:
                wait = advised
            else:
                # full jitter: spread retries of many concurrent failures apart
                wait = random.uniform(0, min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1)))
            if time.monotonic() + wait >= deadline - 0.01:
                return self._out_of_time(reply, attempt)
            await asyncio.sleep(wait)

    def _out_of_time(self, reply: Reply, attempt: int) -> Reply:
        """The deadline is spent: this reply is final, a later pass would have no time left either."""
        limit = f"{self.deadline_s:g} s" if self.deadline_s else "the request"
        reply.error = f"{reply.error} (deadline of {limit} reached after {attempt} attempts)"
        reply.transient = False
        return reply

    async def _limited_attempt(self, request: Request, started: float, timeout: float, avoid: str | None,
                               first: bool = False) -> tuple[Reply, bool, float | None, float]:
        """One attempt within the in-flight ceiling; the last value is the seconds it waited for a slot
        (measured on the first attempt only, where the clocks then start)."""
        url = self._pick(avoid)
        self._in_flight[url] += 1
        queued = 0.0
        try:
            if self.limiter is None:
                result = await self._attempt(url, request, started, timeout)
            else:
                waiting = time.perf_counter()
                async with self.limiter.slot() as slot:
                    if first:
                        queued = time.perf_counter() - waiting
                        started += queued
                    result = await self._attempt(url, request, started, timeout)
                    slot.throttled = result[0].status == 429
        finally:
            self._in_flight[url] -= 1
        result[0].replica = url
        return (*result, queued)

    async def _attempt(self, url: str, request: Request, started: float,
                       timeout: float) -> tuple[Reply, bool, float | None]:
        """One try: the reply, whether to retry, and the wait the server asked for (Retry-After)."""
        import aiohttp

        session = await self._http()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        def failed(reason: str) -> Reply:
            return Reply(None, reason, elapsed_ms())

        data = json.dumps(request.wire_body())
        headers = {"Authorization": self._auth[url]} if url in self._auth else None
        stream = False
        arrivals: list[float] = []
        try:
            async with session.post(endpoint(url, request.api), data=data, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status != 200:
                    raw = await response.read()
                    reply = failed(f"HTTP {response.status}: {_error_message(raw)}")
                    reply.status = response.status
                    return reply, response.status in RETRYABLE_STATUS, _retry_after(response.headers)
                stream = response.content_type == "text/event-stream"
                raw = await (_read_events(response, started, arrivals) if stream else response.read())
        except asyncio.TimeoutError:
            return failed(f"timeout after {timeout:g} s"), True, None
        except aiohttp.ClientError as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):  # nothing listens there: a dead replica
                self._down_until[url] = time.monotonic() + DOWN_S
            return failed(f"connection error: {type(exc).__name__}: {exc}"), True, None
        except ValueError as exc:  # aiohttp: a stream line longer than its buffer
            return failed(f"unreadable stream: {exc}"), True, None
        reply = parse_reply(request.api, raw, stream=stream, latency_ms=elapsed_ms(), arrivals=arrivals)
        return reply, reply.transient, None


def endpoint(base_url: str, api: str) -> str:
    """The URL of an API's endpoint under a base URL."""
    return join_path(base_url, "/chat/completions" if api == "chat" else "/completions")


def join_path(base_url: str, path: str) -> str:
    """``path`` after the base URL's own path, before its query (``?api-version=...`` stays last)."""
    head, sep, query = base_url.partition("?")
    return head.rstrip("/") + path + sep + query


async def _read_events(response: Any, started: float, arrivals: list[float]) -> bytes:
    """A server-sent event stream's lines up to ``data: [DONE]``, each line's arrival (ms) in ``arrivals``."""
    lines: list[bytes] = []
    async for line in response.content:
        lines.append(line)
        arrivals.append((time.perf_counter() - started) * 1000)
        if line.strip() == b"data: [DONE]":
            break  # do not wait for the server to close the connection
    return b"".join(lines)


# -- the one boundary between a server's 200 body and the harness ------------------------------------------

class MalformedReply(ValueError):
    """A well-formed body of a shape the harness cannot read; the message says where."""


class _Cut(ValueError):
    """A body that is not JSON, or a stream that stopped early: more often the transport's fault."""


def parse_reply(api: str, raw: bytes, *, stream: bool = False, latency_ms: float = 0.0,
                arrivals: Sequence[float] | None = None) -> Reply:
    """A 200 body (JSON, or server-sent events when ``stream``) as a :class:`Reply`; never raises.

    A body cut short (not JSON, a stream without its end) is ``transient``: a retry may get it
    whole. A complete body of the wrong shape is an error with the reason (``malformed reply:
    usage is not an object (string)``) and is not retried: the same request would get the same
    body. ``arrivals``: when each line of a stream arrived (ms after sending), for TTFT and TPOT."""
    try:
        reply = _stream_reply(api, raw, latency_ms, arrivals) if stream else _body_reply(api, raw, latency_ms)
    except _Cut as exc:
        return Reply(None, str(exc), latency_ms, status=200, transient=True)
    except MalformedReply as exc:
        return Reply(None, f"malformed reply: {exc}", latency_ms, status=200)
    except Exception as exc:  # noqa: BLE001 - a shape no rule foresaw ends here too, never past this boundary
        return Reply(None, f"malformed reply: {type(exc).__name__}: {exc}", latency_ms, status=200)
    return _finish(reply)


def _finish(reply: Reply) -> Reply:
    """A 200 with nothing in it is a model error: no text and no tool calls."""
    if not reply.text and not reply.tool_calls:
        reply.error = "empty reply" if reply.text == "" else "empty reply (content null)"
    return reply


def _body_reply(api: str, raw: bytes, latency_ms: float) -> Reply:
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise _Cut(f"incomplete reply: body is not JSON: {raw[:200]!r}") from exc
    body = _object(payload, "body")
    if body.get("choices") is None and "error" in body:
        raise MalformedReply(f"no choices, an error instead: {_error_text(body['error'])}")
    choices = _array(body.get("choices"), "choices")
    if not choices:
        raise MalformedReply("choices is empty")
    choice = _object(choices[0], "choices[0]")
    tool_calls = None
    if api == "chat":
        message = _object(choice.get("message"), "message")
        text = _content(message.get("content"), "message.content")
        tool_calls = _tool_calls(message.get("tool_calls"), "message.tool_calls")
    else:
        text = _string(choice.get("text"), "text")
    return Reply(text, None, latency_ms, _completion_tokens(body.get("usage")),
                 _string(choice.get("finish_reason"), "finish_reason"), status=200, tool_calls=tool_calls)


def _stream_reply(api: str, raw: bytes, latency_ms: float, arrivals: Sequence[float] | None) -> Reply:
    """Server-sent events: text deltas joined, TTFT at the first content, usage from the chunk that has it."""
    parts: list[str] = []
    ttft: float | None = None
    tokens: int | None = None
    finish: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    chunks = 0
    done = False
    for number, line in enumerate(raw.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue  # comments, `event:` and blank lines
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise _Cut(f"incomplete reply: stream event is not JSON: {data[:200]!r}") from exc
        event = _object(event, "stream event")
        if event.get("choices") is None and "error" in event:
            raise MalformedReply(f"stream error: {_error_text(event['error'])}")
        if event.get("usage") is not None:
            counted = _completion_tokens(event["usage"])
            tokens = counted if counted is not None else tokens
        choices = event.get("choices")
        for index, choice in enumerate(_array([] if choices is None else choices, "choices")):
            choice = _object(choice, f"choices[{index}]")
            if api == "chat":
                delta = choice.get("delta")
                delta = {} if delta is None else _object(delta, "delta")
                text = _content(delta.get("content"), "delta.content")
                _merge_call_deltas(calls, delta.get("tool_calls"))
            else:
                text = _string(choice.get("text"), "text")
            if text:
                if ttft is None:
                    ttft = arrivals[number] if arrivals is not None and number < len(arrivals) else None
                parts.append(text)
                chunks += 1
            finish = _string(choice.get("finish_reason"), "finish_reason") or finish
    if not done and finish is None:
        raise _Cut("incomplete reply: stream ended before [DONE]")
    tool_calls = [_tool_call(calls[i], f"tool_calls[{i}]") for i in sorted(calls)] or None
    reply = Reply("".join(parts), None, latency_ms, tokens, finish, status=200, ttft_ms=ttft, tool_calls=tool_calls)
    count = tokens if tokens is not None else chunks
    if ttft is not None and count > 1:
        reply.tpot_ms = (latency_ms - ttft) / (count - 1)
    return reply


def _kind(value: Any) -> str:
    """A value's JSON type name, for reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedReply(f"{where} is not an object ({_kind(value)})")
    return value


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedReply(f"{where} is not a list ({_kind(value)})")
    return value


def _string(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise MalformedReply(f"{where} is not a string ({_kind(value)})")
    return value


def _content(value: Any, where: str) -> str | None:
    """Message content: a string, null, or a list of content parts whose text parts are joined."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise MalformedReply(f"{where} is not a string ({_kind(value)})")
    texts = []
    for index, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        part = _object(part, f"{where}[{index}]")
        if part.get("type", "text") in ("text", "output_text"):
            texts.append(_string(part.get("text"), f"{where}[{index}].text") or "")
        # other parts (reasoning, images) are not the answer
    return "".join(texts)


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    calls = [_tool_call(call, f"{where}[{index}]") for index, call in enumerate(_array(value, where))]
    return calls or None


def _tool_call(value: Any, where: str) -> dict[str, Any]:
    """An OpenAI tool call with a string name and string arguments (an object is JSON-encoded)."""
    call = _object(value, where)
    function = _object(call.get("function"), f"{where}.function")
    name = _string(function.get("name"), f"{where}.function.name")
    if not name:
        raise MalformedReply(f"{where}.function.name is missing")
    arguments = function.get("arguments")
    if isinstance(arguments, (dict, list)):  # some servers send the object itself
        arguments = json.dumps(arguments, ensure_ascii=False)
    arguments = _string(arguments, f"{where}.function.arguments") or ""
    clean = {key: call[key] for key in ("id", "type") if isinstance(call.get(key), str)}
    return {**clean, "type": clean.get("type", "function"), "function": {"name": name, "arguments": arguments}}


def _merge_call_deltas(calls: dict[int, dict[str, Any]], deltas: Any) -> None:
    """Streamed tool calls arrive in pieces keyed by ``index``: name once, arguments in fragments."""
    if deltas is None:
        return
    for number, delta in enumerate(_array(deltas, "delta.tool_calls")):
        where = f"delta.tool_calls[{number}]"
        delta = _object(delta, where)
        index = delta.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise MalformedReply(f"{where}.index is not an integer ({_kind(index)})")
        slot = calls.setdefault(index, {"type": "function", "function": {}})
        for key in ("id", "type"):
            if delta.get(key) is not None:
                slot[key] = _string(delta[key], f"{where}.{key}")
        function = delta.get("function")
        function = {} if function is None else _object(function, f"{where}.function")
        name = _string(function.get("name"), f"{where}.function.name")
        if name:
            slot["function"]["name"] = name
        fragment = _string(function.get("arguments"), f"{where}.function.arguments") or ""
        slot["function"]["arguments"] = slot["function"].get("arguments", "") + fragment


def _completion_tokens(usage: Any) -> int | None:
    if usage is None:
        return None
    tokens = _object(usage, "usage").get("completion_tokens")
    if tokens is None:
        return None
    if isinstance(tokens, float) and tokens.is_integer():
        tokens = int(tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise MalformedReply(f"usage.completion_tokens is not a count ({_kind(tokens)} {str(tokens)[:20]})")
    return tokens


def _error_text(error: Any) -> str:
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message)[:300]


# -- non-200 answers ------------------------------------------------------------------------------------------

def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else `Retry-After` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            seconds = _seconds_until(value) if scale == 1.0 else None
        if seconds is not None and math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def _seconds_until(http_date: str) -> float | None:
    try:
        return parsedate_to_datetime(http_date).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace")
    return _error_text(body.get("error", body) if isinstance(body, dict) else body)
