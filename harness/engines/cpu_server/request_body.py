"""Request bodies: the whitelist of fields, their checks, and the sampling options they ask for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

DEFAULT_MAX_TOKENS = 256
MAX_N = 16
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETION = 5


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


def content_text(content: Any, where: str = "content") -> str:
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


