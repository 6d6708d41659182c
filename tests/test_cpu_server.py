"""End-to-end tests of harness.engines.cpu_server, plus an in-process test of batch-failure handling with a
fake model.

The server runs a tiny random model built from a config (tests/tiny_lm.py): these tests check the server's
mechanics (batching, streaming, stop strings, n, logprobs, errors, shutdown), which do not depend on what the
model knows. The bundled model itself is served in tests/test_engine_lifecycle.py and by `pytest evals/`."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-lm"
START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(base: str, path: str, body: Any = None, raw: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Server:
    def __init__(self, tmp: Path, name: str, parent_pid: int, model: Path, extra: list[str] | None = None):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.engines.cpu_server", "--model", str(model),
             "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
             "--parent-pid", str(parent_pid), *(extra or [])],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                status, body = _request(self.base, "/v1/models", timeout=5)
                if status == 200 and any(m["id"] == MODEL for m in body["data"]):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    # the gathering window the harness itself starts the server with; 5 ms misses batches on a busy machine
    srv = Server(tmp_path_factory.mktemp("cpu_server"), "main", os.getpid(), tiny_model,
                 ["--max-batch", "16", "--batch-wait-ms", "50"])
    try:
        srv.wait_ready(START_TIMEOUT)
        yield srv
    finally:
        started = time.monotonic()
        srv.stop()
    # SIGTERM to a loaded server that has served every test of this module: it exits promptly, by itself
    # (stop() kills it after 10 s)
    assert srv.proc.returncode == 0 and time.monotonic() - started < 5, srv.log()[-4000:]


def _complete(base: str, prompt: str, **kw: Any) -> dict[str, Any]:
    status, body = _request(base, "/v1/completions", {"model": MODEL, "prompt": prompt, "temperature": 0, **kw})
    assert status == 200, body
    return body


PROMPTS = [
    "The capital of France is", "Once upon a time, there was a", "def fibonacci(n):", "1, 2, 3, 4,",
    "The quick brown fox", "Water boils at", "In 1492, Columbus", "My favourite colour is",
]


def test_models_endpoint(server: Server) -> None:
    status, body = _request(server.base, "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert body["data"][0]["id"] == MODEL
    assert body["data"][0]["owned_by"] == "pytest-llm-harness"
    assert _request(server.base, "/health")[0] == 200


def test_greedy_completion_is_deterministic(server: Server) -> None:
    a = _complete(server.base, "The capital of France is", max_tokens=8)
    b = _complete(server.base, "The capital of France is", max_tokens=8)
    assert a["object"] == "text_completion" and a["model"] == MODEL
    choice = a["choices"][0]
    assert choice["text"] and choice["text"] == b["choices"][0]["text"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = a["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_concurrent_requests_are_batched_and_match_sequential(server: Server) -> None:
    sequential = [_complete(server.base, p, max_tokens=4)["choices"][0]["text"] for p in PROMPTS]
    # on a loaded machine the threads may reach the server one by one: a few rounds, each must match
    for _ in range(3):
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            concurrent = list(pool.map(lambda p: _complete(server.base, p, max_tokens=4)["choices"][0]["text"],
                                       PROMPTS))
        assert concurrent == sequential
        sizes = [int(m) for m in re.findall(r"batch size=(\d+)", server.log())]
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, "concurrent requests were never batched"


def _stop_across_tokens(base: str, prompt: str, max_tokens: int) -> tuple[str, str]:
    """The greedy completion of ``prompt`` and a two-character stop string that first appears in it across a
    token boundary past its third token: its first character ends one token, its second starts the next."""
    body = _complete(base, prompt, max_tokens=max_tokens, logprobs=0)
    text, tokens = body["choices"][0]["text"], body["choices"][0]["logprobs"]["tokens"]
    for k in range(2, len(tokens) - 1):
        boundary = len("".join(tokens[:k + 1]))
        stop = text[boundary - 1:boundary + 1]
        if len(stop) == 2 and text.index(stop) == boundary - 1:
            return text, stop
    raise AssertionError(f"no stop string across tokens in {tokens!r}")


def test_stop_string_cuts_text(server: Server) -> None:
    text, stop = _stop_across_tokens(server.base, "1, 2, 3, 4,", 16)
    full = _complete(server.base, "1, 2, 3, 4,", max_tokens=16)["choices"][0]
    assert full["text"] == text
    cut = _complete(server.base, "1, 2, 3, 4,", max_tokens=16, stop=["zzz", stop])
    choice = cut["choices"][0]
    assert choice["text"] == full["text"][:full["text"].index(stop)]
    assert choice["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 16
    # A string stop works too.
    assert _complete(server.base, "1, 2, 3, 4,", max_tokens=16, stop=stop)["choices"][0]["text"] == choice["text"]


def test_max_tokens_gives_length(server: Server) -> None:
    body = _complete(server.base, "Once upon a time, there was a", max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_chat_completion(server: Server) -> None:
    status, body = _request(server.base, "/v1/chat/completions", {
        "model": MODEL, "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "What is the capital of France?"}],
    })
    assert status == 200, body
    assert body["object"] == "chat.completion"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 10


def test_sampling_with_seed(server: Server) -> None:
    kw: dict[str, Any] = {"max_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 123}
    a = _complete(server.base, "Once upon a time", **kw)["choices"][0]["text"]
    b = _complete(server.base, "Once upon a time", **kw)["choices"][0]["text"]
    assert a == b


@pytest.mark.parametrize("path, payload, status, needle", [
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "nope"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "nope"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 17}, 400, "'n' must be an integer from 1 to 16"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "'tools'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                              "tool_choice": "required"}, 400, "'tool_choice'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}}, 400, "'response_format'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logit_bias": {"5": 10}}, 400, "'logit_bias'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "presence_penalty": 0.5}, 400, "'presence_penalty'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "echo": True}, 400, "'echo'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "best_of": 2}, 400, "'best_of'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "'frobnicate'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_logprobs": 2}, 400, "'top_logprobs'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 6}, 400, "'logprobs'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True, "stream_options": {"foo": True}}, 400,
     "'stream_options.foo'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                              "top_logprobs": 21}, 400, "'top_logprobs'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
     400, "'top_logprobs' needs 'logprobs'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "'image_url'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x",
                                                             "tool_calls": [{"id": "1"}]}]}, 400, "tool_calls"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "context length"),
])
def test_request_errors(server: Server, path: str, payload: dict[str, Any], status: int, needle: str) -> None:
    got, body = _request(server.base, path, payload)
    assert got == status, body
    assert needle in body["error"]["message"]
    assert {"message", "type", "code"} <= body["error"].keys()
    if status == 400:
        assert body["error"]["type"] == "invalid_request_error"


def test_bad_json(server: Server) -> None:
    status, body = _request(server.base, "/v1/completions", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]


# -- streaming, n, logprobs, field checks ---------------------------


def _sdk(server: Server) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _stream_raw(base: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed request's events, checked to be server-sent events ending in ``data: [DONE]``."""
    req = urllib.request.Request(base + path, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), raw
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_stream_completion_matches_non_streamed(server: Server) -> None:
    client = _sdk(server)
    kw: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time, there was a", "max_tokens": 120,
                          "temperature": 0}
    full = client.completions.create(**kw)
    start = time.perf_counter()
    texts, stamps, usage, finish = [], [], None, None
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        stamps.append(time.perf_counter() - start)
        if chunk.usage is not None:  # the last chunk: usage and no choices
            assert chunk.choices == [] and usage is None
            usage = chunk.usage
            continue
        assert chunk.object == "text_completion" and chunk.model == MODEL and len(chunk.choices) == 1
        texts.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(texts) == full.choices[0].text
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens == 120
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert len([t for t in texts if t]) > 10  # pushed token by token ...
    # ... as they are generated, not all at the end: the chunks arrive spread over the generation (all sent at the
    # end, they would arrive within a few milliseconds of each other). Not "the first chunk within the first third
    # of the stream": on a busy 2-core machine the prompt's prefill alone took 0.2 of 0.43 s once (a CI rehearsal)
    assert stamps[-1] - stamps[0] > stamps[-1] / 5, stamps


def test_stream_chat_matches_non_streamed(server: Server) -> None:
    client = _sdk(server)
    kw: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}],
                          "max_tokens": 12, "temperature": 0}
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert all(c.object == "chat.completion.chunk" and len(c.choices) == 1 for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    events = _stream_raw(server.base, "/v1/chat/completions", kw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["delta"] == {} and events[-1]["choices"][0]["finish_reason"]
    assert all("usage" not in e for e in events)  # only with stream_options.include_usage


def test_stream_holds_back_stop_strings(server: Server) -> None:
    client = _sdk(server)
    kw: dict[str, Any] = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 16, "temperature": 0}
    full, stop = _stop_across_tokens(server.base, kw["prompt"], kw["max_tokens"])
    cut = client.completions.create(**kw, stop=["zzz", stop]).choices[0]
    assert cut.text == full[:full.index(stop)]
    # the stop string's first character ends a token: it could start the stop string, so it is never shown
    chunks = list(client.completions.create(**kw, stop=["zzz", stop], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut.text
    assert chunks[-1].choices[0].finish_reason == "stop"
    # a stop string that never completes (the model's vocabulary is ASCII only): what was held back comes out
    chunks = list(client.completions.create(**kw, stop=[stop[0] + "é"], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full


def test_n_choices(server: Server) -> None:
    one = _complete(server.base, "The quick brown fox", max_tokens=6)
    body = _complete(server.base, "The quick brown fox", max_tokens=6, n=2)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["text"] == choices[1]["text"] == one["choices"][0]["text"]  # greedy: the same
    assert body["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"]
    assert body["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    sampled = _complete(server.base, "Once upon a time", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert len({c["text"] for c in sampled["choices"]}) > 1  # one batch row each: their own samples
    texts, finishes, usage = {0: "", 1: ""}, {}, None
    for chunk in _sdk(server).completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=6,
                                                 temperature=0, n=2, stream=True,
                                                 stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                assert c.index not in finishes
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == {0: choices[0]["text"], 1: choices[1]["text"]}
    assert finishes == {0: choices[0]["finish_reason"], 1: choices[1]["finish_reason"]}
    assert usage is not None and usage.completion_tokens == body["usage"]["completion_tokens"]


def _check_top(entries: list[Any]) -> None:
    for e in entries:
        top = [t.logprob for t in e.top_logprobs]
        assert top == sorted(top, reverse=True) and all(lp <= 0 for lp in top)
        assert sum(math.exp(lp) for lp in top) <= 1 + 1e-5
        # greedy: the sampled token is the most likely one
        assert e.top_logprobs[0].token == e.token and e.logprob == pytest.approx(top[0], abs=1e-5)
        assert bytes(e.bytes).decode(errors="replace") == e.token or e.token.startswith("bytes:")


def test_chat_logprobs(server: Server) -> None:
    client = _sdk(server)
    kw: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}],
                          "max_tokens": 8, "temperature": 0}
    plain = client.chat.completions.create(**kw)
    assert plain.choices[0].logprobs is None
    reply = client.chat.completions.create(**kw, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert choice.message.content == plain.choices[0].message.content
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens  # one per completion token (EOS included)
    assert all(len(e.top_logprobs) == 3 for e in content)
    _check_top(content)
    assert b"".join(bytes(e.bytes) for e in content).decode().startswith(choice.message.content)
    bare = client.chat.completions.create(**kw, logprobs=True).choices[0].logprobs.content
    assert [e.top_logprobs for e in bare] == [[]] * len(content)
    assert [e.logprob for e in bare] == pytest.approx([e.logprob for e in content], abs=1e-4)
    streamed = [e for c in client.chat.completions.create(**kw, logprobs=True, top_logprobs=3, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)


def test_completion_logprobs(server: Server) -> None:
    body = _complete(server.base, "The capital of France is", max_tokens=6, logprobs=3)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    n = body["usage"]["completion_tokens"]
    assert choice["finish_reason"] == "length" and n == 6
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [len("".join(lp["tokens"][:k])) for k in range(n)]
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and top[token] == logprob <= 0
        assert max(top.values()) == pytest.approx(logprob, abs=1e-5)  # greedy: the top token
    zero = _complete(server.base, "The capital of France is", max_tokens=6, logprobs=0)["choices"][0]["logprobs"]
    assert zero["top_logprobs"] == [{t: p} for t, p in zip(lp["tokens"], zero["token_logprobs"])]
    events = _stream_raw(server.base, "/v1/completions", {"model": MODEL, "prompt": "The capital of France is",
                                                          "max_tokens": 6, "temperature": 0, "logprobs": 3})
    parts = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
    assert [t for p in parts for t in p["tokens"]] == lp["tokens"]
    assert [o for p in parts for o in p["text_offset"]] == lp["text_offset"]
    assert [x for p in parts for x in p["token_logprobs"]] == pytest.approx(lp["token_logprobs"], abs=1e-4)


def test_harmless_fields_are_accepted(server: Server) -> None:
    status, body = _request(server.base, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"}],
        "max_tokens": 2, "max_completion_tokens": 2, "temperature": 0, "top_p": None, "seed": 1, "stop": None,
        "n": 1, "user": "u", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "stream": False,
        "stream_options": {"include_usage": True}, "presence_penalty": 0, "frequency_penalty": 0.0,
        "logit_bias": {}, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
        "parallel_tool_calls": True, "chat_template_kwargs": {"enable_thinking": False},
        "skip_special_tokens": True, "top_k": -1, "min_p": 0, "logprobs": False,
    })
    assert status == 200, body
    status, body = _request(server.base, "/v1/completions", {
        "model": MODEL, "prompt": "Hi", "max_tokens": 2, "echo": False, "best_of": 1, "suffix": None,
        "temperature": 0.7, "top_k": 20, "min_p": 0.05, "seed": 5})
    assert status == 200, body


def test_harness_client_streams_with_ttft(server: Server) -> None:
    """What ``--llm-stream`` sends: the harness's own client gets the text, TTFT and TPOT."""
    from harness.engines.client import OpenAICompatClient, Request

    async def send(stream: bool) -> Any:
        client = OpenAICompatClient(server.base + "/v1")
        try:
            return await client.send(Request("chat", MODEL, [{"role": "user", "content": "Count to ten."}],
                                             {"max_tokens": 16, "temperature": 0.0, "top_p": None, "stop": None,
                                              "seed": 3}, stream=stream))
        finally:
            await client.close()

    plain, streamed = asyncio.run(send(False)), asyncio.run(send(True))
    assert streamed.error is None and plain.error is None, (streamed.error, plain.error)
    assert streamed.text == plain.text and streamed.output_tokens == plain.output_tokens
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.ttft_ms is not None and 0 < streamed.ttft_ms < streamed.latency_ms
    assert streamed.tpot_ms is not None and streamed.tpot_ms > 0


def test_client_disconnect_mid_stream(server: Server) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    conn.sock.close()  # type: ignore[union-attr]
    resp.close()
    conn.close()
    deadline = time.monotonic() + 60
    while "stream client disconnected" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "stream client disconnected" in server.log()
    # the server goes on; the abandoned row was stopped, not run to 300 tokens
    assert _complete(server.base, "Water boils at", max_tokens=4)["choices"][0]["text"]
    deadline = time.monotonic() + 30
    while "new_tokens=0 " not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "new_tokens=0 " in server.log()


def wait_listening(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "listening on" not in server.log():
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log()[-4000:]
        time.sleep(0.05)


def test_terminate_and_parent_death_while_loading(tmp_path: Path, tiny_model: Path) -> None:
    """Told to stop while the model still loads (a conversion can take minutes), the server does not wait for the
    load: SIGTERM exits promptly, and so does losing the --parent-pid process. (SIGTERM to a loaded server: the
    ``server`` fixture's teardown.)"""
    sigterm = Server(tmp_path, "sigterm", os.getpid(), tiny_model)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    orphan = Server(tmp_path, "orphan", parent.pid, tiny_model)
    try:
        wait_listening(sigterm)
        wait_listening(orphan)
        start = time.monotonic()
        sigterm.proc.terminate()
        sigterm.proc.wait(10)
        assert time.monotonic() - start < 5
        assert "ready on" not in sigterm.log() and sigterm.proc.returncode == 0, sigterm.log()

        parent.kill()
        parent.wait()
        orphan.proc.wait(10)
        assert "parent process" in orphan.log() and "ready on" not in orphan.log(), orphan.log()
    finally:
        parent.kill()
        parent.wait()
        sigterm.stop()
        orphan.stop()
    assert sigterm.proc.poll() is not None and orphan.proc.poll() is not None


# -- in-process: a failing batch fails only its own requests ----------------


EOS, PAD, BOOM = 1, 0, ord("!") + 10


class _FakeTokenizer:
    """Character-level tokenizer: id = ord(c) + 10."""

    eos_token_id, pad_token_id, unk_token_id = EOS, PAD, 3
    chat_template = "fake"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) + 10 for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 10) for i in ids if i >= 10)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.unk_token_id

    def apply_chat_template(self, messages: list[dict[str, str]], **kw: Any) -> str:
        return "|".join(m["content"] for m in messages) + ">"


class _FakeModel:
    """Emits 'abc. def' then EOS, step by step like generate(); raises on '!'."""

    generation_config = SimpleNamespace(eos_token_id=EOS)
    continuation = [ord(c) + 10 for c in "abc. def"] + [EOS]

    def generate(self, input_ids: Any, attention_mask: Any, generation_config: Any, stopping_criteria: Any) -> Any:
        import torch

        if bool((input_ids == BOOM).any()):
            raise RuntimeError("boom")
        seq, rows = input_ids, input_ids.shape[0]
        unfinished = torch.ones(rows, dtype=torch.bool)
        for step in range(generation_config.max_new_tokens):
            tok = self.continuation[min(step, len(self.continuation) - 1)]
            nxt = torch.where(unfinished, torch.full((rows,), tok), torch.full((rows,), PAD))
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            unfinished &= ~stopping_criteria(seq, None) & (nxt != EOS)
            if not bool(unfinished.any()):
                break
        return seq


def test_failing_batch_only_fails_its_requests() -> None:
    pytest.importorskip("torch")
    from aiohttp.test_utils import TestClient, TestServer

    from harness.engines.cpu_server import ModelServer

    async def scenario() -> None:
        ms = ModelServer("fake", max_model_len=512, max_batch=4, batch_wait_ms=50)
        ms.attach(_FakeModel(), _FakeTokenizer())
        async with TestClient(TestServer(ms.build_app())) as client:
            async def post(prompt: str, **kw: Any) -> tuple[int, dict[str, Any]]:
                resp = await client.post("/v1/completions", json={"model": "fake", "prompt": prompt, **kw})
                return resp.status, await resp.json()

            # These land in one batch (same greedy key, 50 ms window): all fail.
            results = await asyncio.gather(post("ok"), post("bad!"), post("fine"))
            assert [s for s, _ in results] == [500, 500, 500]
            assert "boom" in results[0][1]["error"]["message"]

            status, body = await post("ok", temperature=0)
            assert status == 200, body
            assert body["choices"][0] == {"index": 0, "text": "abc. def", "finish_reason": "stop", "logprobs": None}
            assert body["usage"]["completion_tokens"] == 9  # 8 chars + EOS

            status, body = await post("ok", temperature=0, stop=". ")
            assert (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == ("abc", "stop")
            assert body["usage"]["completion_tokens"] == 5

            # Mixed max_tokens in one batch: each row honours its own limit.
            (s1, b1), (s2, b2) = await asyncio.gather(post("a", max_tokens=2), post("b", max_tokens=20))
            assert (b1["choices"][0]["text"], b1["choices"][0]["finish_reason"]) == ("ab", "length")
            assert (b2["choices"][0]["text"], b2["choices"][0]["finish_reason"]) == ("abc. def", "stop")
        ms.engine.stop()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_prepare_hf_dir_converts_once_under_concurrency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.engines import bundled

    calls: list[Path] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other callers to queue on the lock
        if len(calls) == 1:
            raise RuntimeError("first conversion dies half-way")
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(bundled, "_convert", fake_convert)
    monkeypatch.setattr(bundled, "bundled_gguf", lambda: tmp_path / "unused.gguf")
    with pytest.raises(RuntimeError):
        bundled.prepare_hf_dir(tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"gemma-3-270m-{bundled.bundled_sha256()[:12]}.lock"]
    with ThreadPoolExecutor(4) as pool:
        dirs = list(pool.map(lambda _: bundled.prepare_hf_dir(tmp_path), range(4)))
    assert len(set(dirs)) == 1 and len(calls) == 2
    assert dirs[0].name == f"gemma-3-270m-{bundled.bundled_sha256()[:12]}"
    assert (dirs[0] / "config.json").exists()
    assert not list(dirs[0].parent.glob("*.tmp-*"))


class _ByteTokenizer(_FakeTokenizer):
    """Byte-level: id = byte + 10, so one character may take several tokens."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [b + 10 for b in text.encode()]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - 10 for i in ids if i >= 10).decode("utf-8", "replace")


class _ByteModel(_FakeModel):
    continuation = [b + 10 for b in "né 日本!".encode()] + [EOS]


def _events(raw: str) -> list[dict[str, Any]]:
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]", raw
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_streaming_holds_back_stop_prefixes_and_partial_utf8() -> None:
    """Streamed deltas never show a possible start of a stop string, nor half a UTF-8 character."""
    pytest.importorskip("torch")
    from aiohttp.test_utils import TestClient, TestServer

    from harness.engines.cpu_server import ModelServer, hold_back

    assert hold_back("abc. ", [". x"]) == "abc" and hold_back("abc. d", [". x"]) == "abc. d"
    assert hold_back("ab\ufffd", []) == "ab" and hold_back("abc", ["bcd", "c!"]) == "a"

    async def deltas(model: Any, tokenizer: Any, **kw: Any) -> tuple[list[str], str | None]:
        ms = ModelServer("fake", max_model_len=512, max_batch=4, batch_wait_ms=0)
        ms.attach(model, tokenizer)
        try:
            async with TestClient(TestServer(ms.build_app())) as client:
                resp = await client.post("/v1/completions", json={"model": "fake", "prompt": "ok", "temperature": 0,
                                                                  "stream": True, **kw})
                assert resp.status == 200 and resp.content_type == "text/event-stream"
                events = _events(await resp.text())
        finally:
            ms.engine.stop()  # type: ignore[union-attr]
        texts = [e["choices"][0]["text"] for e in events]
        return [t for t in texts if t], events[-1]["choices"][0]["finish_reason"]

    # ". " could start ". x": held back until "d" shows it is not a stop string
    assert asyncio.run(deltas(_FakeModel(), _FakeTokenizer(), stop=[". x"])) == (
        ["a", "b", "c", ". d", "e", "f"], "stop")
    assert asyncio.run(deltas(_FakeModel(), _FakeTokenizer(), stop=[". d"])) == (["a", "b", "c"], "stop")
    # "f" could start "f!", then EOS ends the row: the held-back "f" comes out at the end
    assert asyncio.run(deltas(_FakeModel(), _FakeTokenizer(), stop=["f!"])) == (
        ["a", "b", "c", ".", " ", "d", "e", "f"], "stop")
    texts, finish = asyncio.run(deltas(_ByteModel(), _ByteTokenizer()))
    assert texts == ["n", "é", " ", "日", "本", "!"] and finish == "stop"
