"""End-to-end tests of harness.engines.cpu_server against the real bundled model,
plus an in-process test of batch-failure handling with a fake model."""

from __future__ import annotations

import asyncio
import json
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
MODEL = "gemma-3-270m"
FIRST_START_TIMEOUT = 600.0  # first run converts the GGUF (~100 s on 2 cores)


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
    def __init__(self, tmp: Path, name: str, parent_pid: int, extra: list[str] | None = None):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.engines.cpu_server", "--model", "bundled",
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the gathering window the harness itself starts the server with; 5 ms misses batches on a busy machine
    srv = Server(tmp_path_factory.mktemp("cpu_server"), "main", os.getpid(),
                 ["--max-batch", "16", "--batch-wait-ms", "50"])
    try:
        srv.wait_ready(FIRST_START_TIMEOUT)
        yield srv
    finally:
        srv.stop()


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
    a = _complete(server.base, "The capital of France is", max_tokens=16)
    b = _complete(server.base, "The capital of France is", max_tokens=16)
    assert a["object"] == "text_completion" and a["model"] == MODEL
    choice = a["choices"][0]
    assert choice["text"] and choice["text"] == b["choices"][0]["text"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = a["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_concurrent_requests_are_batched_and_match_sequential(server: Server) -> None:
    sequential = [_complete(server.base, p, max_tokens=8)["choices"][0]["text"] for p in PROMPTS]
    # on a loaded machine the threads may reach the server one by one: a few rounds, each must match
    for _ in range(3):
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            concurrent = list(pool.map(lambda p: _complete(server.base, p, max_tokens=8)["choices"][0]["text"],
                                       PROMPTS))
        assert concurrent == sequential
        sizes = [int(m) for m in re.findall(r"batch size=(\d+)", server.log())]
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, "concurrent requests were never batched"


def test_stop_string_cuts_text(server: Server) -> None:
    full = _complete(server.base, "1, 2, 3, 4,", max_tokens=16)["choices"][0]
    stop = "7,"
    assert stop in full["text"], full
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
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True}, 400, "streaming not supported"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "n=1"),
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


def test_bad_json(server: Server) -> None:
    status, body = _request(server.base, "/v1/completions", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]


def test_terminate_and_parent_death(tmp_path: Path) -> None:
    """SIGTERM exits promptly; so does losing the --parent-pid process."""
    sigterm = Server(tmp_path, "sigterm", os.getpid())
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    orphan = Server(tmp_path, "orphan", parent.pid)
    try:
        sigterm.wait_ready(120)
        orphan.wait_ready(120)
        start = time.monotonic()
        sigterm.proc.terminate()
        sigterm.proc.wait(10)
        assert time.monotonic() - start < 5

        parent.kill()
        parent.wait()
        orphan.proc.wait(10)
        assert "parent process" in orphan.log()
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
