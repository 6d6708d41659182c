"""The generation thread: one model, requests batched dynamically, rows answered (or streamed) as they finish."""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from harness.engines.cpu_server.request_body import RequestError

log = logging.getLogger("harness.cpu_server")

_seq = count()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_REPLACEMENT = "\ufffd"


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
        from transformers import (
            GenerationConfig,
            StoppingCriteria,
            StoppingCriteriaList,
        )

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


