"""OpenAI-compatible HTTP server for a Hugging Face causal LM on CPU.

Requests are queued by the aiohttp handlers and served by a single generation
thread that batches them dynamically (left padding, one ``model.generate``
per batch). Rows finish independently: each result is handed back as soon as
its row hits EOS, a stop string or its own ``max_tokens``.

Run: ``python -m harness.engines.cpu_server --model bundled --port 8000``.

Limitations: no streaming, ``n == 1`` only, and sampled rows in one batch share
one RNG seeded from the batch's first request, so a seeded sampled result is
only reproducible for the same batch composition (greedy is always deterministic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from harness.engines.managed import pid_alive

log = logging.getLogger("harness.cpu_server")

DEFAULT_MAX_TOKENS = 256
_seq = count()


class RequestError(Exception):
    """A client error that maps to an OpenAI-style error response."""

    def __init__(self, status: int, message: str, err_type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code


def error_response(status: int, message: str, err_type: str = "invalid_request_error",
                   code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": err_type, "code": code}}, status=status)


@dataclass
class GenResult:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(eq=False)
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    on_done: Callable[[GenResult | BaseException], None]
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests sharing a key can run in one ``generate`` call."""
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


class Engine:
    """Owns the model and the single generation thread (torch is not async)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, batch_wait_ms: float = 5.0):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max(1, max_batch)
        self.batch_wait = max(0.0, batch_wait_ms) / 1000.0
        # Fast tokenizers raise "Already borrowed" under concurrent use, and
        # handlers encode while the generation thread decodes.
        self.tok_lock = threading.Lock()
        self.eos_ids = self._eos_ids()
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id: int = int(pad) if pad is not None else min(self.eos_ids, default=0)
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._stopped = False

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.tokenizer, "eos_token_id", None),
                       getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(i) for i in source)
        # Gemma-style chat turns end with <end_of_turn>, which the base
        # model's config does not list as EOS.
        try:
            eot = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        except Exception:
            eot = None
        if isinstance(eot, int) and eot != getattr(self.tokenizer, "unk_token_id", None):
            ids.add(eot)
        return ids

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._queue.put(None)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self.tok_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        with self.tok_lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(400, "this model has no chat template; use /v1/completions")
        with self.tok_lock:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def submit(self, req: GenRequest) -> None:
        if self._stopped:
            req.on_done(RuntimeError("server is shutting down"))
            return
        self._queue.put(req)

    # -- generation thread -------------------------------------------------

    def _run(self) -> None:
        pending: list[GenRequest] = []
        running = True
        while running or pending:
            if not pending:
                item = self._queue.get()
                if item is None:
                    break
                pending.append(item)
                deadline = time.monotonic() + self.batch_wait
            else:
                deadline = time.monotonic()  # leftovers already waited
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining > 0 and len(pending) < self.max_batch:
                        item = self._queue.get(timeout=remaining)
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    running = False
                    break
                pending.append(item)
            if not running:
                break
            batch = self._select(pending)
            chosen = {id(r) for r in batch}
            pending = [r for r in pending if id(r) not in chosen]
            self._run_batch(batch)
        for req in pending:
            req.on_done(RuntimeError("server is shutting down"))
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.on_done(RuntimeError("server is shutting down"))

    def _select(self, pending: list[GenRequest]) -> list[GenRequest]:
        """Pick a batch: the oldest request plus compatible ones with the most
        similar max_tokens, so one long request does not hold short ones."""
        oldest = pending[0]
        group = sorted((r for r in pending if r.key == oldest.key), key=lambda r: (r.max_tokens, r.seq))
        idx = group.index(oldest)
        start = max(0, idx - self.max_batch + 1)
        return group[start:start + self.max_batch]

    def _finalize(self, req: GenRequest, toks: list[int]) -> GenResult:
        """Turn a row's generated ids into text, finish_reason and token count."""
        toks = toks[:req.max_tokens]
        eos_at = next((i for i, t in enumerate(toks) if t in self.eos_ids), None)
        body = toks if eos_at is None else toks[:eos_at]
        text = self.decode(body)
        hits = [i for i in (text.find(s) for s in req.stop) if i >= 0]
        if hits:
            # Count tokens up to and including the one that completed the stop string.
            used = next((k for k in range(1, len(body) + 1)
                         if any(s in self.decode(body[:k]) for s in req.stop)), len(body))
            return GenResult(text[:min(hits)], "stop", used)
        if eos_at is not None:
            return GenResult(text, "stop", eos_at + 1)
        return GenResult(text, "length", len(body))

    def _row_finished(self, req: GenRequest, toks: list[int]) -> bool:
        if toks and toks[-1] in self.eos_ids:
            return True
        if len(toks) >= req.max_tokens:
            return True
        return bool(req.stop) and any(s in self.decode(toks) for s in req.stop)

    def _run_batch(self, batch: list[GenRequest]) -> None:
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        start = time.monotonic()
        width = max(len(r.prompt_ids) for r in batch)
        done = [False] * len(batch)
        results: list[GenResult | None] = [None] * len(batch)
        engine = self

        def deliver(i: int, toks: list[int]) -> None:
            done[i] = True
            result = results[i] = engine._finalize(batch[i], toks)
            batch[i].on_done(result)

        class RowStop(StoppingCriteria):
            """Per-row completion; finished rows are answered immediately."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                generated = input_ids[:, width:]
                for i, req in enumerate(batch):
                    if not done[i]:
                        toks = generated[i].tolist()
                        if engine._row_finished(req, toks):
                            deliver(i, toks)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        try:
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, req in enumerate(batch):  # left padding
                n = len(req.prompt_ids)
                ids[i, width - n:] = torch.tensor(req.prompt_ids, dtype=torch.long)
                mask[i, width - n:] = 1
            first = batch[0]
            gen_kwargs: dict[str, Any] = dict(
                max_new_tokens=max(r.max_tokens for r in batch),
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
                do_sample=first.temperature > 0,
            )
            if first.temperature > 0:
                gen_kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
                if first.seed is not None:
                    torch.manual_seed(first.seed)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask,
                    generation_config=GenerationConfig(**gen_kwargs),
                    stopping_criteria=StoppingCriteriaList([RowStop()]),
                )
            for i in range(len(batch)):
                if not done[i]:
                    deliver(i, out[i, width:].tolist())
        except Exception as exc:  # fail this batch only; the server keeps going
            log.exception("generation failed for a batch of %d", len(batch))
            for i, req in enumerate(batch):
                if not done[i]:
                    done[i] = True
                    req.on_done(exc)
            return
        new_tokens = sum(r.completion_tokens for r in results if r is not None)
        secs = time.monotonic() - start
        log.info("batch size=%d new_tokens=%d time=%.2fs (%.1f tok/s)",
                 len(batch), new_tokens, secs, new_tokens / secs if secs > 0 else 0.0)


# -- HTTP layer ---------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Accept a string or OpenAI content parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(400, "only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, "message content must be a string or a list of text parts")


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"'{name}' must be a number", code="invalid_value")
    if value < lo or value > hi or (lo_open and value == lo):
        raise RequestError(400, f"'{name}' is out of range", code="invalid_value")
    return float(value)


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """Validate the OpenAI sampling fields shared by both endpoints."""
    if body.get("stream"):
        raise RequestError(400, "streaming not supported", code="unsupported")
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError(400, "only n=1 is supported", code="unsupported")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be a positive integer", code="invalid_value")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise RequestError(400, "'stop' must be a string or a list of strings", code="invalid_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", code="invalid_value")
    return Sampling(
        max_tokens=max_tokens,
        # OpenAI's default temperature is 1.0; clients wanting greedy send 0.
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=[s for s in stops if s],
        seed=seed,
    )


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

    async def completions(self, request: web.Request) -> web.Response:
        return await self._handle(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.Response:
        return await self._handle(request, chat=True)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise RequestError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object", code="invalid_json")
        return body

    async def _handle(self, request: web.Request, chat: bool) -> web.Response:
        try:
            body = await self._read_body(request)
            model = body.get("model")
            if model is not None and model != self.served_name:
                raise RequestError(404, f"The model '{model}' does not exist (serving '{self.served_name}')",
                                   code="model_not_found")
            sampling = parse_sampling(body)
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
            result = await self._generate(engine, prompt_ids, sampling)
        except RequestError as err:
            return error_response(err.status, err.message, err.err_type, err.code)
        except Exception as exc:
            log.warning("request failed: %s", exc)
            return error_response(500, f"generation failed: {exc}", "server_error", "internal_error")
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": result.completion_tokens,
                 "total_tokens": len(prompt_ids) + result.completion_tokens}
        created = int(time.time())
        if chat:
            return web.json_response({
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": self.served_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": usage,
            })
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": self.served_name,
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": usage,
        })

    def _prompt_ids(self, engine: Engine, body: dict[str, Any], chat: bool) -> list[int]:
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "'prompt' is required and must be a string", code="invalid_value")
            return engine.encode(prompt, add_special_tokens=True)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' is required and must be a non-empty list", code="invalid_value")
        clean = []
        for msg in messages:
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user", "assistant"):
                raise RequestError(400, "each message needs a role of system, user or assistant", code="invalid_value")
            role = "system" if msg["role"] == "developer" else msg["role"]
            clean.append({"role": role, "content": _content_text(msg.get("content"))})
        # The template emits its own BOS, so don't add another.
        return engine.encode(engine.render_chat(clean), add_special_tokens=False)

    async def _generate(self, engine: Engine, prompt_ids: list[int], s: Sampling) -> GenResult:
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

        engine.submit(GenRequest(prompt_ids, s.max_tokens, s.temperature, s.top_p, s.stop, s.seed, on_done))
        return await fut


# -- process entry point ------------------------------------------------------


def load_model(model: str) -> tuple[Any, Any]:
    """Load model + tokenizer from an HF dir, or the bundled model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if model == "bundled":
        from harness.engines.bundled import prepare_hf_dir

        path = prepare_hf_dir()
    else:
        path = Path(model)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    lm.eval()
    log.info("model %s loaded in %.1fs (torch threads=%d)", path, time.monotonic() - start, torch.get_num_threads())
    return lm, tokenizer


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not pid_alive(pid):
            log.warning("parent process %d is gone, exiting", pid)
            stop.set()
            return
        await asyncio.sleep(1.0)


async def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT or the parent dies; returns the exit code."""
    served_name = args.served_model_name or ("gemma-3-270m" if args.model == "bundled" else Path(args.model).name)
    server = ModelServer(served_name, args.max_model_len, args.max_batch, args.batch_wait_ms)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task[None]] = []  # strong refs keep tasks alive
    if args.parent_pid:
        background.append(asyncio.create_task(_watch_parent(args.parent_pid, stop)))

    runner = web.AppRunner(server.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        await runner.cleanup()
        return 1
    log.info("listening on http://%s:%d, loading model %s", args.host, args.port, args.model)

    # A plain daemon thread rather than an executor: if we are told to stop
    # mid-load (conversion can take minutes) we must not wait for it.
    loaded: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if loaded.done():
            return
        if failed:
            loaded.set_exception(outcome)
        else:
            loaded.set_result(outcome)

    def load() -> None:
        outcome: Any
        try:
            outcome, failed = load_model(args.model), False
        except BaseException as exc:  # noqa: BLE001 - reported via the future
            outcome, failed = exc, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:  # loop closed: we were stopped mid-load
            pass

    threading.Thread(target=load, name="model-load", daemon=True).start()
    stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loaded, stop_task], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loaded.done() and not stop.is_set():
        try:
            model, tokenizer = loaded.result()
        except Exception:
            log.exception("failed to load model %s", args.model)
            code = 1
        else:
            server.attach(model, tokenizer)
            log.info("ready on http://%s:%d (model %s)", args.host, args.port, served_name)
            await stop_task
    if server.engine is not None:
        server.engine.stop()
    log.info("shutting down")
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=3)
    except Exception:  # includes TimeoutError; we are exiting anyway
        pass
    return code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.engines.cpu_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled", help="'bundled' or a Hugging Face model directory")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    p.add_argument("--max-model-len", type=int, default=2048)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s cpu_server: %(message)s")
    code = asyncio.run(serve(args))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the generation or load thread may be deep in
    # torch, and waiting for it would make SIGTERM slow.
    os._exit(code)


if __name__ == "__main__":
    main()
