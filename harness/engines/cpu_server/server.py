"""The HTTP layer: /v1/models, /v1/completions and /v1/chat/completions, plain or streamed (SSE)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from harness.engines.cpu_server.generation import (
    Engine,
    GenRequest,
    GenResult,
    StreamDelta,
    TokenLogprob,
)
from harness.engines.cpu_server.request_body import (
    MESSAGE_FIELDS,
    UNSUPPORTED,
    Options,
    RequestError,
    content_text,
    error_response,
    parse_options,
)

log = logging.getLogger("harness.cpu_server")


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in e.top]}
                        for e in entries],
            "refusal": None}


def _completion_logprobs(entries: Sequence[TokenLogprob], offsets: Sequence[int]) -> dict[str, Any]:
    tops = []
    for e in entries:
        top = {t: lp for t, _, lp in e.top}
        top.setdefault(e.token, e.logprob)  # the sampled token is always there, as OpenAI does
        tops.append(top)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": list(offsets)}


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class ModelServer:
    """HTTP state: the served name, limits, and (once loaded) the engine."""

    def __init__(self, served_name: str, max_model_len: int = 2048, max_batch: int = 16, batch_wait_ms: float = 5.0):
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.engine: Engine | None = None

    def attach(self, model: Any, tokenizer: Any) -> None:
        engine = Engine(model, tokenizer, self.max_batch, self.batch_wait_ms)
        engine.start()
        self.engine = engine

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        if self.engine is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        if self.engine is None:
            return error_response(503, "model is still loading", "server_error", "model_loading")
        return web.json_response({"object": "list", "data": [
            {"id": self.served_name, "object": "model", "created": 0, "owned_by": "pytest-llm-harness"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise RequestError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object", code="invalid_json")
        return body

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            model = body.get("model")
            if model is not None and model != self.served_name:
                raise RequestError(404, f"The model '{model}' does not exist (serving '{self.served_name}')",
                                   code="model_not_found", param="model")
            opts = parse_options(body, chat)
            sampling = opts.sampling
            engine = self.engine
            if engine is None:
                raise RequestError(503, "model is still loading", "server_error", "model_loading")
            prompt_ids = self._prompt_ids(engine, body, chat)
            if not prompt_ids:
                raise RequestError(400, "the prompt is empty", code="invalid_value")
            total = len(prompt_ids) + sampling.max_tokens
            if total > self.max_model_len:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{total} tokens ({len(prompt_ids)} in the prompt, {sampling.max_tokens} for the completion). "
                    "Please reduce the prompt or max_tokens.",
                    code="context_length_exceeded",
                )
            if opts.stream:
                return await self._stream(request, engine, prompt_ids, opts, chat)
            results = await asyncio.gather(*(self._generate(engine, prompt_ids, opts) for _ in range(opts.n)))
        except RequestError as err:
            return error_response(err.status, err.message, err.err_type, err.code, err.param)
        except Exception as exc:
            log.warning("request failed: %s", exc)
            return error_response(500, f"generation failed: {exc}", "server_error", "internal_error")
        completion_tokens = sum(r.completion_tokens for r in results)
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                 "total_tokens": len(prompt_ids) + completion_tokens}
        created = int(time.time())
        if chat:
            return web.json_response({
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": self.served_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                             "logprobs": None if r.logprobs is None else _chat_logprobs(r.logprobs),
                             "finish_reason": r.finish_reason} for i, r in enumerate(results)],
                "usage": usage,
            })
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": self.served_name,
            "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                         "logprobs": None if r.logprobs is None else _completion_logprobs(r.logprobs,
                                                                                         r.text_offset or [])}
                        for i, r in enumerate(results)],
            "usage": usage,
        })

    def _prompt_ids(self, engine: Engine, body: dict[str, Any], chat: bool) -> list[int]:
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "'prompt' is required and must be a string", code="invalid_value",
                                   param="prompt")
            return engine.encode(prompt, add_special_tokens=True)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' is required and must be a non-empty list", code="invalid_value",
                               param="messages")
        clean = []
        for number, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user", "assistant"):
                raise RequestError(400, "each message needs a role of system, user or assistant", code="invalid_value",
                                   param=f"messages[{number}].role")
            extra = sorted(k for k, v in msg.items() if k not in MESSAGE_FIELDS and v is not None)
            if extra:
                raise RequestError(400, f"'messages[{number}].{extra[0]}' {UNSUPPORTED}",
                                   code="unsupported_parameter", param=f"messages[{number}].{extra[0]}")
            role = "system" if msg["role"] == "developer" else msg["role"]
            clean.append({"role": role, "content": content_text(msg.get("content"), f"messages[{number}].content")})
        # The template emits its own BOS, so don't add another.
        return engine.encode(engine.render_chat(clean, body.get("chat_template_kwargs")), add_special_tokens=False)

    def _request(self, prompt_ids: list[int], opts: Options, on_done: Callable[[GenResult | BaseException], None],
                 on_delta: Callable[[StreamDelta], None] | None = None) -> GenRequest:
        s = opts.sampling
        return GenRequest(prompt_ids, s.max_tokens, s.temperature, s.top_p, s.stop, s.seed, on_done,
                          logprobs=opts.logprobs, on_delta=on_delta, top_k=s.top_k, min_p=s.min_p)

    async def _generate(self, engine: Engine, prompt_ids: list[int], opts: Options) -> GenResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[GenResult] = loop.create_future()

        def settle(outcome: GenResult | BaseException) -> None:
            if fut.done():  # client went away
                return
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

        def on_done(outcome: GenResult | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # loop already closed during shutdown
                pass

        req = self._request(prompt_ids, opts, on_done)
        engine.submit(req)
        try:
            return await fut
        except asyncio.CancelledError:
            req.cancelled = True
            raise

    async def _stream(self, request: web.Request, engine: Engine, prompt_ids: list[int], opts: Options,
                      chat: bool) -> web.StreamResponse:
        """Server-sent events, as OpenAI sends them: chunks as the tokens come, then ``data: [DONE]``."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, StreamDelta | GenResult | BaseException]] = asyncio.Queue()

        def push(index: int, item: StreamDelta | GenResult | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, item))
            except RuntimeError:  # loop already closed during shutdown
                pass

        reqs = [self._request(prompt_ids, opts, lambda o, i=index: push(i, o), lambda d, i=index: push(i, d))
                for index in range(opts.n)]
        cid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        head = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": self.served_name}

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            return _sse({**head, "choices": choices, **({"usage": None} if opts.include_usage else {})})

        def choice(index: int, text: str | None, finish: str | None, delta: StreamDelta | None = None,
                   role: bool = False) -> dict[str, Any]:
            logprobs = None
            if delta is not None and delta.logprobs is not None:
                logprobs = (_chat_logprobs(delta.logprobs) if chat
                            else _completion_logprobs(delta.logprobs, delta.text_offset or []))
            if not chat:
                return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            content: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                content["content"] = text
            return {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish}

        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
        for req in reqs:
            engine.submit(req)
        try:
            await response.prepare(request)
            if chat:
                await response.write(chunk([choice(i, None, None, role=True) for i in range(opts.n)]))
            remaining, completion_tokens = opts.n, 0
            while remaining:
                index, item = await events.get()
                if isinstance(item, StreamDelta):
                    await response.write(chunk([choice(index, item.text, None, item)]))
                elif isinstance(item, GenResult):
                    remaining -= 1
                    completion_tokens += item.completion_tokens
                    await response.write(chunk([choice(index, None, item.finish_reason)]))
                else:
                    log.warning("streamed request failed: %s", item)
                    await response.write(_sse({"error": {"message": f"generation failed: {item}",
                                                         "type": "server_error", "code": "internal_error"}}))
                    break
            else:
                if opts.include_usage:
                    await response.write(_sse({**head, "choices": [], "usage": {
                        "prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                        "total_tokens": len(prompt_ids) + completion_tokens}}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError) as exc:  # the client went away mid-stream
            log.info("stream client disconnected: %s", type(exc).__name__)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            for req in reqs:  # stops rows still running (a no-op for finished ones)
                req.cancelled = True
        return response


