"""OpenAI-compatible HTTP server for a Hugging Face causal LM on CPU.

Requests are queued by the aiohttp handlers and served by a single generation
thread that batches them dynamically (left padding, one ``model.generate``
per batch). Rows finish independently: each result is handed back as soon as
its row hits EOS, a stop string or its own ``max_tokens``.

Run: ``python -m harness.engines.cpu_server --model bundled --port 8000``.

Served: ``/v1/completions`` and ``/v1/chat/completions``, plain or streamed
(``stream: true``: server-sent events as OpenAI and vLLM send them, tokens
pushed per decode step from the generation thread; ``stream_options:
{include_usage: true}`` adds a last chunk with ``usage`` and no choices).
A streamed row never shows text that later turns out to be part of a stop
string (a suffix that could begin one is held back) nor the replacement
character of an incomplete UTF-8 sequence. ``n`` choices (1 to 16, one batch
row each), ``logprobs`` (chat: ``logprobs: true`` + ``top_logprobs`` 0..20;
completions: ``logprobs`` 0..5), also in streamed chunks.

Every request field is checked against a whitelist (:data:`CHAT_FIELDS`,
:data:`COMPLETION_FIELDS`): a field the server cannot serve, or an unknown
one, is a 400 ``invalid_request_error`` naming it. Accepted and honoured:
``model``, ``messages``/``prompt``, ``max_tokens``/``max_completion_tokens``,
``temperature``, ``top_p``, ``top_k`` and ``min_p`` (vLLM's extra sampling
fields; -1/0 and 0 switch them off), ``stop``, ``seed``, ``n``, ``stream``,
``stream_options.include_usage``, ``logprobs``, ``top_logprobs`` and (chat)
``chat_template_kwargs`` (extra variables for the chat template). Accepted
only at their neutral value (anything else is a 400): ``presence_penalty``
and ``frequency_penalty`` 0, ``logit_bias`` ``{}``, ``response_format``
``{"type": "text"}``, ``tools``/``functions`` ``[]``, ``tool_choice``/
``function_call`` ``"none"`` or ``"auto"`` (there are no tools),
``parallel_tool_calls`` (any: there are no tools), ``modalities``
``["text"]``, ``echo`` false, ``best_of`` 1, ``suffix`` ``""``,
``skip_special_tokens`` true (it always is). Accepted and ignored, as
metadata that changes nothing here: ``user``, ``metadata``, ``store``,
``service_tier``, ``safety_identifier``, ``prompt_cache_key``, a message's
``name``, ``stream_options`` without ``stream``. A null value counts as
absent for every known field.

Limitations: text in, text out (no tools, images or audio); logprobs are the
model's raw log-softmax (before temperature, top-p/top-k), as vLLM reports
them by default, and include the EOS token that ended a row (one entry per
completion token); sampled rows in one batch share one RNG seeded from the
batch's first request, so a seeded sampled result is only reproducible for
the same batch composition (greedy is always deterministic), and the ``n``
choices of a seeded request differ from each other only while they share a
batch (``n`` at most ``--max-batch``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import queue
import re
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
MAX_N = 16
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETION = 5
_seq = count()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_REPLACEMENT = "\ufffd"


class RequestError(Exception):
    """A client error that maps to an OpenAI-style error response."""

    def __init__(self, status: int, message: str, err_type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code
        self.param = param


def error_response(status: int, message: str, err_type: str = "invalid_request_error",
                   code: str | None = None, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": err_type, "code": code, "param": param}},
                             status=status)


@dataclass
class TokenLogprob:
    """One generated token: its text, bytes and log-probability, and the top alternatives (best first)."""

    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]] = field(default_factory=list)


@dataclass
class GenResult:
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # when asked: one per completion token
    text_offset: list[int] | None = None  # where each of those tokens starts in ``text``


@dataclass
class StreamDelta:
    """New text of a streamed row, with the logprobs of the tokens it completes (when asked)."""

    text: str
    logprobs: list[TokenLogprob] | None = None
    text_offset: list[int] | None = None


@dataclass(eq=False)
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    on_done: Callable[[GenResult | BaseException], None]
    logprobs: int | None = None  # None: none; k: the sampled token's logprob and the top k
    on_delta: Callable[[StreamDelta], None] | None = None  # streaming: called from the generation thread
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    cancelled: bool = False  # set by the HTTP layer when the client went away: the row stops
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests sharing a key can run in one ``generate`` call."""
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.top_k, self.min_p, self.seed)


@dataclass
class _Row:
    """What the generation thread tracks of one row while it runs."""

    sent: str = ""  # text already streamed
    raw: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)  # token, logprob, top
    offsets: list[int] = field(default_factory=lambda: [0])  # offsets[k]: where token k starts in the text
    lp_sent: int = 0  # tokens whose logprobs were streamed


def _clean(text: str) -> str:
    """The text without the replacement characters of a trailing incomplete UTF-8 sequence."""
    return text.rstrip(_REPLACEMENT)


def hold_back(text: str, stops: Sequence[str]) -> str:
    """What of a running row's text may be streamed: not a trailing incomplete character, nor a
    suffix that could be the start of a stop string."""
    text = _clean(text)
    keep = len(text)
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                keep = min(keep, len(text) - size)
                break
    return text[:keep]


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
        self._token_infos: dict[int, tuple[str, list[int]]] = {}

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

    def render_chat(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(400, "this model has no chat template; use /v1/completions")
        with self.tok_lock:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                          **(template_kwargs or {})))

    def token_info(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and bytes, as OpenAI reports them (a lone byte token is ``bytes:\\xe2``)."""
        info = self._token_infos.get(token_id)
        if info is None:
            with self.tok_lock:
                convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
                piece = convert(token_id) if convert is not None else None
                match = _BYTE_TOKEN.fullmatch(piece) if isinstance(piece, str) else None
                if match:
                    info = (f"bytes:\\x{match[1].lower()}", [int(match[1], 16)])
                else:
                    text = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
                    info = (text, list(text.encode("utf-8", "replace")))
            self._token_infos[token_id] = info
        return info

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
            pending = [r for r in pending if not r.cancelled]
            if not pending:
                continue
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

    def _finalize(self, req: GenRequest, toks: list[int], row: _Row | None = None) -> GenResult:
        """Turn a row's generated ids into text, finish_reason, token count (and logprobs)."""
        toks = toks[:req.max_tokens]
        eos_at = next((i for i, t in enumerate(toks) if t in self.eos_ids), None)
        body = toks if eos_at is None else toks[:eos_at]
        text = self.decode(body)
        hits = [i for i in (text.find(s) for s in req.stop) if i >= 0]
        if hits:
            # Count tokens up to and including the one that completed the stop string.
            used = next((k for k in range(1, len(body) + 1)
                         if any(s in self.decode(body[:k]) for s in req.stop)), len(body))
            result = GenResult(text[:min(hits)], "stop", used)
        elif eos_at is not None:
            result = GenResult(text, "stop", eos_at + 1)
        else:
            result = GenResult(text, "length", len(body))
        if req.logprobs is not None and row is not None:
            used = min(result.completion_tokens, len(row.raw))
            result.logprobs = [self._token_logprob(*raw) for raw in row.raw[:used]]
            result.text_offset = [min(o, len(result.text)) for o in row.offsets[:used]]
        return result

    def _token_logprob(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
        return TokenLogprob(*self.token_info(token_id), logprob,
                            [(*self.token_info(t), lp) for t, lp in top])

    def _step(self, req: GenRequest, row: _Row, toks: list[int], logprobs: Any) -> bool:
        """One decode step of a running row: record its logprob, stream what may be shown; whether it is done."""
        if req.logprobs is not None:
            if logprobs is None:
                raise RuntimeError("no logits were captured for this step; logprobs are unavailable")
            token = toks[-1]
            top: list[tuple[int, float]] = []
            if req.logprobs > 0:
                import torch

                values, ids = torch.topk(logprobs, req.logprobs)
                top = [(int(t), _finite(float(v))) for t, v in zip(ids.tolist(), values.tolist())]
            row.raw.append((token, _finite(float(logprobs[token])), top))
        finished = bool(toks) and (toks[-1] in self.eos_ids or len(toks) >= req.max_tokens)
        if not (req.stop or req.on_delta is not None or req.logprobs is not None):
            return finished
        body = toks[:-1] if toks and toks[-1] in self.eos_ids else toks
        text = self.decode(body)
        if req.logprobs is not None:
            row.offsets.append(len(_clean(text)))
        if finished or any(s in text for s in req.stop):
            return True
        if req.on_delta is not None:
            safe = hold_back(text, req.stop)
            if len(safe) > len(row.sent) and safe.startswith(row.sent):
                self._emit(req, row, safe[len(row.sent):], len(safe))
                row.sent = safe
        return False

    def _emit(self, req: GenRequest, row: _Row, text: str, upto: int | None) -> None:
        """Stream ``text``, with the logprobs of the tokens that end within the first ``upto`` characters
        (all of them when None)."""
        assert req.on_delta is not None
        entries = offsets = None
        if req.logprobs is not None:
            end = len(row.raw)
            if upto is not None:
                end = row.lp_sent
                while end < len(row.raw) and row.offsets[end + 1] <= upto:
                    end += 1
            entries = [self._token_logprob(*raw) for raw in row.raw[row.lp_sent:end]]
            offsets = row.offsets[row.lp_sent:end]
            row.lp_sent = end
        req.on_delta(StreamDelta(text, entries, offsets))

    def _run_batch(self, batch: list[GenRequest]) -> None:
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        start = time.monotonic()
        width = max(len(r.prompt_ids) for r in batch)
        done = [False] * len(batch)
        results: list[GenResult | None] = [None] * len(batch)
        rows = [_Row() for _ in batch]
        captured: dict[str, Any] = {}
        engine = self

        def deliver(i: int, toks: list[int]) -> None:
            done[i] = True
            req, row = batch[i], rows[i]
            result = results[i] = engine._finalize(req, toks, row)
            if req.on_delta is not None:
                rest = result.text[len(row.sent):] if result.text.startswith(row.sent) else ""
                if rest or (req.logprobs is not None and row.lp_sent < len(result.logprobs or ())):
                    entries = (result.logprobs or [])[row.lp_sent:] if req.logprobs is not None else None
                    offsets = (result.text_offset or [])[row.lp_sent:] if req.logprobs is not None else None
                    req.on_delta(StreamDelta(rest, entries, offsets))
            req.on_done(result)

        class RowStop(StoppingCriteria):
            """Per-row completion; finished rows are answered immediately, running ones streamed."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                generated = input_ids[:, width:]
                logits = captured.pop("logits", None)
                logprobs = None
                for i, req in enumerate(batch):
                    if done[i]:
                        continue
                    if req.cancelled:  # nobody is waiting: free the row
                        done[i] = True
                        continue
                    if req.logprobs is not None and logprobs is None and logits is not None:
                        logprobs = torch.log_softmax(logits.float(), dim=-1)
                    toks = generated[i].tolist()
                    if engine._step(req, rows[i], toks, None if logprobs is None else logprobs[i]):
                        deliver(i, toks)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        hook = None
        try:
            if any(r.logprobs is not None for r in batch):
                def keep_logits(module: Any, args: Any, output: Any) -> None:
                    logits = output["logits"] if isinstance(output, dict) else getattr(output, "logits", None)
                    if logits is None and isinstance(output, tuple):
                        logits = output[0]
                    captured["logits"] = logits[:, -1, :].detach()

                hook = self.model.register_forward_hook(keep_logits)
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
                gen_kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=first.top_k)
                if first.min_p > 0:
                    gen_kwargs.update(min_p=first.min_p)
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
        finally:
            if hook is not None:
                hook.remove()
        new_tokens = sum(r.completion_tokens for r in results if r is not None)
        secs = time.monotonic() - start
        log.info("batch size=%d new_tokens=%d time=%.2fs (%.1f tok/s)",
                 len(batch), new_tokens, secs, new_tokens / secs if secs > 0 else 0.0)


def _finite(logprob: float) -> float:
    """JSON has no -inf: a token the model rules out gets OpenAI's floor."""
    return logprob if math.isfinite(logprob) else -9999.0


# -- HTTP layer ---------------------------------------------------------------

UNSUPPORTED = "is not supported by the bundled CPU server"

# Fields each endpoint accepts (see the module docstring for what each does); any other is a 400.
COMMON_FIELDS = frozenset({
    "model", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "min_p", "stop", "seed", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "skip_special_tokens", "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
})
CHAT_FIELDS = COMMON_FIELDS | {
    "messages", "top_logprobs", "chat_template_kwargs", "response_format", "tools", "tool_choice", "functions",
    "function_call", "parallel_tool_calls", "modalities",
}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "best_of", "suffix"}
MESSAGE_FIELDS = frozenset({"role", "content", "name"})


def _neutral(name: str, value: Any) -> bool:
    """Whether an accepted-only-when-neutral field has a value that changes nothing here."""
    if name in ("presence_penalty", "frequency_penalty"):
        return not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0
    if name == "logit_bias":
        return value == {}
    if name == "response_format":
        return value == {"type": "text"}
    if name in ("tools", "functions"):
        return value == []
    if name in ("tool_choice", "function_call"):
        return value in ("none", "auto")
    if name == "parallel_tool_calls":
        return isinstance(value, bool)
    if name == "modalities":
        return value == ["text"]
    if name == "echo":
        return value is False
    if name == "best_of":
        return value == 1 and not isinstance(value, bool)
    if name == "suffix":
        return value == ""
    if name == "skip_special_tokens":
        return value is True
    return True


def check_fields(body: dict[str, Any], chat: bool) -> None:
    """A 400 naming the first field this server cannot serve: unknown, or known with a value it cannot honour."""
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name not in known:
            other = COMPLETION_FIELDS if chat else CHAT_FIELDS
            where = f" on {'/v1/chat/completions' if chat else '/v1/completions'}" if name in other else ""
            raise RequestError(400, f"'{name}' {UNSUPPORTED}{where} (unknown or unsupported request field)",
                               code="unsupported_parameter", param=name)
        if value is not None and not _neutral(name, value):
            raise RequestError(400, f"'{name}' {UNSUPPORTED} (value {json.dumps(value)[:80]})",
                               code="unsupported_parameter", param=name)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object", code="invalid_value", param="stream_options")
        for key, value in options.items():
            if key != "include_usage":
                raise RequestError(400, f"'stream_options.{key}' {UNSUPPORTED}", code="unsupported_parameter",
                                   param=f"stream_options.{key}")
            if value is not None and not isinstance(value, bool):
                raise RequestError(400, "'stream_options.include_usage' must be a boolean", code="invalid_value",
                                   param="stream_options.include_usage")


def _content_text(content: Any, where: str = "content") -> str:
    """Accept a string or OpenAI content parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise RequestError(400, f"'{where}' parts must be objects", code="invalid_value", param=where)
            kind = part.get("type")
            if kind != "text":
                raise RequestError(400, f"'{where}' part of type {kind!r} {UNSUPPORTED} (only text content parts "
                                   "are supported)", code="unsupported_parameter", param=where)
            if not isinstance(part.get("text"), str):
                raise RequestError(400, f"'{where}' text part needs a string 'text'", code="invalid_value",
                                   param=where)
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(400, "message content must be a string or a list of text parts", code="invalid_value",
                       param=where)


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    top_k: int = 0
    min_p: float = 0.0


@dataclass
class Options:
    """Everything a request asks beyond its prompt."""

    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: none; k: the sampled token's and the top k


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"'{name}' must be a number", code="invalid_value", param=name)
    if value < lo or value > hi or (lo_open and value == lo):
        raise RequestError(400, f"'{name}' is out of range", code="invalid_value", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(400, f"'{name}' must be an integer from {lo} to {hi}", code="invalid_value", param=name)
    return value


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """Validate the OpenAI sampling fields shared by both endpoints."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be a positive integer", code="invalid_value", param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise RequestError(400, "'stop' must be a string or a list of strings", code="invalid_value", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", code="invalid_value", param="seed")
    top_k = _integer(body, "top_k", -1, 1 << 30)
    return Sampling(
        max_tokens=max_tokens,
        # OpenAI's default temperature is 1.0; clients wanting greedy send 0.
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=[s for s in stops if s],
        seed=seed,
        top_k=max(0, top_k or 0),  # vLLM's -1 and 0 both mean off
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
    )


def parse_options(body: dict[str, Any], chat: bool) -> Options:
    """Check every field of a request and read what it asks for."""
    check_fields(body, chat)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be a boolean", code="invalid_value", param="stream")
    n = _integer(body, "n", 1, MAX_N)
    options = body.get("stream_options") or {}
    if chat:
        wanted = body.get("logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise RequestError(400, "'logprobs' must be a boolean on /v1/chat/completions", code="invalid_value",
                               param="logprobs")
        top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not wanted:
            raise RequestError(400, "'top_logprobs' needs 'logprobs': true", code="invalid_value",
                               param="top_logprobs")
        logprobs = (top or 0) if wanted else None
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None:
            reserved = {"tokenize", "conversation", "messages", "add_generation_prompt", "continue_final_message",
                        "tools", "documents", "chat_template", "return_dict", "return_tensors"}
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise RequestError(400, "'chat_template_kwargs' must be an object", code="invalid_value",
                                   param="chat_template_kwargs")
            taken = sorted(reserved & kwargs.keys())
            if taken:
                raise RequestError(400, f"'chat_template_kwargs.{taken[0]}' {UNSUPPORTED}",
                                   code="unsupported_parameter", param=f"chat_template_kwargs.{taken[0]}")
    else:  # false, as some clients send for "none", is absent too
        logprobs = None if body.get("logprobs") is False else _integer(body, "logprobs", 0, MAX_LOGPROBS_COMPLETION)
    return Options(parse_sampling(body), n=n or 1, stream=bool(stream),
                   include_usage=bool(options.get("include_usage")), logprobs=logprobs)


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
            clean.append({"role": role, "content": _content_text(msg.get("content"), f"messages[{number}].content")})
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
