"""The async OpenAI-compatible client against a real stub server process: errors become replies."""

from __future__ import annotations

import asyncio

import pytest

from harness.engines.client import OpenAICompatClient, Request
from tests.conftest import stub_stats


def send(url: str, prompt: str, api: str = "chat", **client_kwargs) -> object:
    async def go():
        client = OpenAICompatClient(url, **{"backoff_s": 0.01, **client_kwargs})
        try:
            body = [{"role": "user", "content": prompt}] if api == "chat" else prompt
            return await client.send(Request(api, "stub", body, {"max_tokens": 8}))
        finally:
            await client.close()

    return asyncio.run(go())


def test_chat_and_completion_text_and_usage(stub_url):
    chat = send(stub_url, "ANSWER: forty two")
    assert (chat.text, chat.error, chat.output_tokens, chat.finish_reason) == ("forty two", None, 2, "stop")
    completion = send(stub_url, "ANSWER: done", api="completion")
    assert completion.text == "done" and completion.latency_ms > 0


def test_server_errors_are_retried_then_reported(stub_url):
    before = stub_stats(stub_url)["requests"]
    reply = send(stub_url, "FAIL:503", retries=2)
    assert reply.text is None and reply.error == "HTTP 503: injected failure"
    assert reply.attempts == 3
    assert stub_stats(stub_url)["requests"] - before == 3


def test_client_errors_are_not_retried(stub_url):
    before = stub_stats(stub_url)["requests"]
    reply = send(stub_url, "FAIL:400", retries=2)
    assert reply.error.startswith("HTTP 400") and reply.attempts == 1
    assert stub_stats(stub_url)["requests"] - before == 1


def test_timeout_and_empty_reply_are_errors(stub_url):
    slow = send(stub_url, "SLEEP:2000 ANSWER: late", timeout_s=0.3, retries=0)
    assert slow.error == "timeout after 0.3 s" and slow.latency_ms < 1500
    empty = send(stub_url, "EMPTY")
    assert empty.error == "empty reply" and empty.text == ""


def test_unreachable_server_is_a_connection_error():
    from harness.engines.managed import free_port

    reply = send(f"http://127.0.0.1:{free_port()}/v1", "ANSWER: x", retries=1)
    assert reply.error.startswith("connection error") and reply.attempts == 2


def test_api_key_is_sent_as_bearer(stub_url):
    import hashlib

    send(stub_url, "ANSWER: x", api_key="sk-client-test")
    assert hashlib.sha256(b"Bearer sk-client-test").hexdigest() in stub_stats(stub_url)["auth_sha256"]


def test_retry_after_is_honoured_instead_of_backoff(stub_url):
    # FLAKY:2 answers 429 with retry-after-ms: 200 twice; a 30 s backoff shows it was not used
    reply = send(stub_url, "FLAKY:2 ANSWER: finally", retries=3, backoff_s=30.0)
    assert reply.text == "finally" and reply.attempts == 3
    assert 350 <= reply.latency_ms < 3000


def test_engine_that_dies_before_ready_reports_its_log_tail(tmp_path):
    import sys

    from harness.engines.managed import EngineStartError, free_port, start_server, wait_ready

    log = tmp_path / "engine.log"
    proc = start_server([sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"], log)
    with pytest.raises(EngineStartError, match=r"exited with code 3(.|\n)*CUDA out of memory"):
        wait_ready(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=30, proc=proc, log_path=log,
                   interval_s=0.05)
