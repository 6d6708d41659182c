"""A deterministic OpenAI-compatible stub server, for testing and measuring the harness itself.

The reply is the text after the last ``ANSWER:`` in the prompt (else ``ok``). Directives in
the prompt inject faults:

- ``FAIL:<status>`` answers that HTTP status; ``FAILN:<n>:<status>`` only to the first n attempts
- ``FLAKY:<n>`` answers 429 with ``retry-after-ms: 200`` to the first n attempts
- ``EMPTY`` gives an empty reply, ``NULL`` a reply whose ``content`` is null
- ``SLEEP:<ms>`` delays the answer; ``HANG`` never answers
- ``TRUNCATE:<n>`` cuts the JSON body in half on the first n attempts
- ``RESET:<n>`` drops the connection without an answer on the first n attempts
- ``TOOL:<name>:<json arguments>`` answers a tool call (content null)
- ``THROTTLE:<s>`` answers 429 with ``Retry-After: <s>`` to every attempt
- ``FINISH:<reason>`` sets ``finish_reason`` (``FINISH:length``: a reply cut off at max_tokens)
- ``FLIP:a|b|...`` answers the options in turn: the n-th request with this prompt (retries count)
  gets the n-th option, cycling, so a re-sent case answers differently (a nondeterministic model)
- ``SHAPE:<name>`` answers 200 with a body of an odd shape (see :data:`SHAPES` and
  :data:`STREAM_SHAPES`), e.g. ``SHAPE:usage_string`` (``usage`` is a string); an unknown name is a 400

``stream: true`` in a request gives server-sent events, one word a chunk, ``--token-delay-ms``
apart, usage in the last chunk. ``--fail-first N --fail-status S`` answers S to the first N
requests the server gets, whatever they ask (a burst). ``--api-key`` makes every request
without that bearer key a 401. ``--delay-ms`` delays every answer. Every request is counted;
``GET /stats`` returns the counts, the maximum in flight, when the first request came and the
last reply went out (``first_request_at``, ``last_reply_at``, epoch seconds) and the
Authorization headers seen (hashed, so a test can check a key arrived without the key being
stored); ``POST /stats/reset`` zeroes them.

Run: ``python -m harness.testing.stub_server --port 8000 [--models a,b] [--delay-ms 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from typing import Any, Callable

from aiohttp import web

_ANSWER = re.compile(r"ANSWER:\s*(.*)")
_FLIP = re.compile(r"FLIP:\s*(.*)")

# SHAPE:<name> on a plain request: the new body from the well-formed one (``body``, its first
# ``choice``, and ``holder[key]``, the reply's text: message.content for chat, choice.text for completion)
Shape = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], str], Any]


def _edit(change: Callable[[dict[str, Any], dict[str, Any], dict[str, Any], str], Any]) -> Shape:
    """A shape that changes the body in place."""
    def apply(body: dict[str, Any], choice: dict[str, Any], holder: dict[str, Any], key: str) -> Any:
        change(body, choice, holder, key)
        return body
    return apply


SHAPES: dict[str, Shape] = {
    "body_list": lambda body, choice, holder, key: [body],
    "body_string": lambda body, choice, holder, key: "ok",
    "body_null": lambda body, choice, holder, key: None,
    "error_200": lambda body, choice, holder, key: {"error": {"message": "overloaded, in a 200"}},
    "choices_object": _edit(lambda body, choice, holder, key: body.update(choices=choice)),
    "choices_empty": _edit(lambda body, choice, holder, key: body.update(choices=[])),
    "choice_string": _edit(lambda body, choice, holder, key: body.update(choices=["hello"])),
    # chat: the message is a string; completion: the text is a list
    "message_string": _edit(lambda body, choice, holder, key: choice.update(
        {"message": "hello"} if key == "content" else {"text": ["hello"]})),
    "content_number": _edit(lambda body, choice, holder, key: holder.update({key: 42})),
    "content_object": _edit(lambda body, choice, holder, key: holder.update({key: {"text": holder[key]}})),
    # a list of content parts is a valid chat reply: its text parts are the answer
    "content_parts": _edit(lambda body, choice, holder, key: holder.update(
        {key: [{"type": "text", "text": holder[key]}] if key == "content" else holder[key]})),
    "tool_calls_object": _edit(lambda body, choice, holder, key: holder.update(tool_calls={"name": "f"})),
    "tool_call_name_number": _edit(lambda body, choice, holder, key: holder.update(
        tool_calls=[{"type": "function", "function": {"name": 7, "arguments": "{}"}}])),
    "finish_number": _edit(lambda body, choice, holder, key: choice.update(finish_reason=3)),
    "usage_string": _edit(lambda body, choice, holder, key: body.update(usage="12 tokens")),
    "usage_list": _edit(lambda body, choice, holder, key: body.update(usage=[1, 2])),
    "tokens_string": _edit(lambda body, choice, holder, key: body["usage"].update(completion_tokens="3")),
    "tokens_negative": _edit(lambda body, choice, holder, key: body["usage"].update(completion_tokens=-1)),
}

# SHAPE:<name> on a streamed request: each content event changed, or the stream cut
STREAM_SHAPES = ("event_list", "delta_string", "choices_object", "usage_string", "content_parts", "cut")


def reply_for(prompt: str, request_number: int = 1) -> str:
    """The reply text: ``FLIP:`` options taken in turn by ``request_number`` (1 for the first
    request with this prompt), else the last ``ANSWER:``, else ``ok``."""
    flips = _FLIP.findall(prompt)
    if flips:
        options = [option.strip() for option in flips[-1].split("|")]
        return options[(request_number - 1) % len(options)]
    answers = _ANSWER.findall(prompt)
    return answers[-1].strip() if answers else "ok"


class Stub:
    def __init__(self, models: list[str] | None, delay_ms: float, api_key: str | None = None,
                 fail_first: int = 0, fail_status: int = 503, token_delay_ms: float = 0.0) -> None:
        self.models = models
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.token_delay_s = token_delay_ms / 1000
        self.api_key = api_key
        self.attempts: dict[str, int] = {}
        self.delay_s = delay_ms / 1000
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request_at = self.last_reply_at = 0.0
        self.auth: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/stats/reset", self.reset)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completion)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models or []]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "max_in_flight": self.max_in_flight,
                                  "first_request_at": self.first_request_at, "last_reply_at": self.last_reply_at,
                                  "auth_sha256": sorted(self.auth)})

    async def reset(self, request: web.Request) -> web.Response:
        self.requests = self.max_in_flight = 0
        self.first_request_at = self.last_reply_at = 0.0
        self.attempts.clear()
        return web.json_response({"ok": True})

    async def chat(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=True)

    async def completion(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, chat: bool) -> web.Response:
        self.requests += 1
        self.first_request_at = self.first_request_at or time.time()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "Authorization" in request.headers:
                self.auth.add(hashlib.sha256(request.headers["Authorization"].encode()).hexdigest())
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
            body = await request.json()
            model = body.get("model")
            if self.models is not None and model not in self.models:
                return web.json_response({"error": {"message": f"model {model!r} not found"}}, status=404)
            if chat:
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            else:
                prompt = str(body.get("prompt", ""))
            if self.requests <= self.fail_first:
                return web.json_response({"error": {"message": "injected burst"}}, status=self.fail_status)
            attempt = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
            delay = self.delay_s
            sleep = re.search(r"SLEEP:(\d+)", prompt)
            if sleep:
                delay = int(sleep.group(1)) / 1000
            if "HANG" in prompt:
                delay = 3600.0
            if delay:
                await asyncio.sleep(delay)

            def first(directive: str) -> re.Match[str] | None:
                found = re.search(directive, prompt)
                return found if found and attempt <= int(found.group(1)) else None

            throttle = re.search(r"THROTTLE:(\d+)", prompt)
            if throttle:
                return web.json_response({"error": {"message": "quota exceeded"}}, status=429,
                                         headers={"Retry-After": throttle.group(1)})
            if first(r"FLAKY:(\d+)"):
                return web.json_response({"error": {"message": "slow down"}}, status=429,
                                         headers={"retry-after-ms": "200"})
            failn = first(r"FAILN:(\d+):(\d{3})")
            if failn:
                return web.json_response({"error": {"message": "injected failure"}}, status=int(failn.group(2)))
            fail = re.search(r"FAIL:(\d{3})", prompt)
            if fail:
                return web.json_response({"error": {"message": "injected failure"}}, status=int(fail.group(1)))
            if first(r"RESET:(\d+)") and request.transport is not None:
                request.transport.abort()
                return web.Response(status=500)  # never reaches the client
            text: str | None = "" if "EMPTY" in prompt else reply_for(prompt, attempt)
            tool = re.search(r"TOOL:(\w+):(\{.*\})", prompt)
            tool_calls = None
            if tool:
                text = None
                tool_calls = [{"id": "call_1", "type": "function",
                               "function": {"name": tool.group(1), "arguments": tool.group(2)}}]
            if "NULL" in prompt:
                text = None
            words = (text or "").split()
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                     "total_tokens": len(prompt.split()) + len(words)}
            finish = re.search(r"FINISH:(\w+)", prompt)
            finish_reason = finish.group(1) if finish else "tool_calls" if tool_calls else "stop"
            shape = re.search(r"SHAPE:(\w+)", prompt)
            if shape and shape.group(1) not in (STREAM_SHAPES if body.get("stream") else SHAPES):
                return web.json_response({"error": {"message": f"unknown SHAPE {shape.group(1)}"}}, status=400)
            if body.get("stream"):
                return await self._stream(request, chat, model, words, usage, finish_reason,
                                          shape.group(1) if shape else None)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                if tool_calls:
                    choice["message"]["tool_calls"] = tool_calls
            else:
                choice["text"] = text
            payload = {"id": f"stub-{self.requests}", "object": "chat.completion" if chat else "text_completion",
                       "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}
            if first(r"TRUNCATE:(\d+)"):
                raw = json.dumps(payload)
                return web.Response(body=raw[:len(raw) // 2].encode(), content_type="application/json")
            if shape:
                holder = choice["message"] if chat else choice
                return web.json_response(SHAPES[shape.group(1)](payload, choice, holder, "content" if chat else "text"))
            return web.json_response(payload)
        finally:
            self.in_flight -= 1
            self.last_reply_at = time.time()


    async def _stream(self, request: web.Request, chat: bool, model: Any, words: list[str],
                      usage: dict[str, int], finish_reason: str = "stop",
                      shape: str | None = None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def event(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(_stream_shaped(shape, payload, chat))}\n\n".encode())

        if shape == "cut":  # one event, then half of the next, then the connection ends
            piece = {"index": 0, "delta": {"content": "cut"}} if chat else {"index": 0, "text": "cut"}
            await event({"choices": [piece]})
            line = f"data: {json.dumps({'choices': [piece]})}\n\n".encode()
            await response.write(line[:len(line) // 2])
            await response.write_eof()
            return response

        base = {"id": f"stub-{self.requests}", "object": "chat.completion.chunk" if chat else "text_completion",
                "model": model}
        for index, word in enumerate(words):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            piece = word if index == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            await event({**base, "choices": [{**choice, "finish_reason": None}]})
        end = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        await event({**base, "choices": [{**end, "finish_reason": finish_reason}]})
        await event({**base, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _stream_shaped(shape: str | None, event: dict[str, Any], chat: bool) -> Any:
    """A streamed event changed by ``SHAPE:<name>`` (only events with content, and the usage event)."""
    choices = event.get("choices") or []
    content = choices[0].get("delta", {}).get("content") if chat and choices else \
        choices[0].get("text") if choices else None
    if shape == "usage_string" and "usage" in event:
        return {**event, "usage": "12 tokens"}
    if not content:
        return event
    if shape == "event_list":
        return [event]
    if shape == "choices_object":
        return {**event, "choices": choices[0]}
    if shape == "delta_string":
        return {**event, "choices": [{**choices[0], "delta": content, "text": 5}]}
    if shape == "content_parts" and chat:
        return {**event, "choices": [{**choices[0], "delta": {"content": [{"type": "text", "text": content}]}}]}
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: any)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require this bearer key (else 401)")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --fail-status")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="streaming: delay between chunks")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else None
    stub = Stub(models, args.delay_ms, args.api_key, args.fail_first, args.fail_status, args.token_delay_ms)
    web.run_app(stub.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
