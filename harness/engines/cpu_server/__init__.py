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


from harness.engines.cpu_server.generation import (
           Engine,
           GenRequest,
           GenResult,
           StreamDelta,
           TokenLogprob,
           hold_back,
)
from harness.engines.cpu_server.process import load_model, main, parse_args, serve
from harness.engines.cpu_server.request_body import (
           RequestError,
           Sampling,
           check_fields,
           parse_options,
           parse_sampling,
)
from harness.engines.cpu_server.server import ModelServer

__all__ = ["Engine", "GenRequest", "GenResult", "StreamDelta", "TokenLogprob", "hold_back", "load_model", "main",
           "parse_args", "serve", "RequestError", "Sampling", "check_fields", "parse_options", "parse_sampling",
           "ModelServer"]
