"""`llm_openai` / `llm_async_openai`: the official SDK's clients on the run's engine, in hand-written
tests, against a real stub server process (with and without xdist); on the bundled model in test_engine_lifecycle.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import openai  # noqa: F401 - loaded before any pytester run, which would otherwise unload it after the run
import pytest

from tests.conftest import stub_server, stub_stats

HAND_WRITTEN = """
import asyncio

import pytest


def test_chat(llm_openai, llm_model):
    assert llm_openai.model == llm_model == "stub"
    reply = llm_openai.chat.completions.create(
        model=llm_model, messages=[{"role": "user", "content": "ANSWER: hello"}], max_tokens=8)
    assert reply.choices[0].message.content == "hello"


def test_completions(llm_openai):
    reply = llm_openai.completions.create(model=llm_openai.model, prompt="ANSWER: done", max_tokens=8)
    assert reply.choices[0].text == "done"


def test_stream(llm_openai, llm_model):  # the stub streams, and so does the bundled CPU server
    chunks = llm_openai.chat.completions.create(
        model=llm_model, messages=[{"role": "user", "content": "ANSWER: one two"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"


def test_same_engine_as_llm_client(llm_openai, llm_async_openai, llm_client):
    assert str(llm_openai.base_url).rstrip("/") == llm_client.base_url.rstrip("/")
    assert str(llm_async_openai.base_url) == str(llm_openai.base_url)


@pytest.mark.asyncio
async def test_async_chat(llm_async_openai, llm_model):
    reply = await llm_async_openai.chat.completions.create(
        model=llm_model, messages=[{"role": "user", "content": "ANSWER: hi"}], max_tokens=8)
    assert reply.choices[0].message.content == "hi"


@pytest.mark.asyncio
async def test_async_again_in_a_new_event_loop(llm_async_openai, llm_model):
    # the session's client, the second test's own loop: no connection of the first loop is reused
    replies = await asyncio.gather(*(llm_async_openai.completions.create(
        model=llm_model, prompt=f"ANSWER: {i}", max_tokens=8) for i in range(4)))
    assert [r.choices[0].text for r in replies] == ["0", "1", "2", "3"]
"""


def run_http(pytester: pytest.Pytester, url: str, *args: str, workers: str = "0") -> pytest.RunResult:
    # in this process (with -n 2 the workers are processes of their own)
    return pytester.runpytest_inprocess("-n", workers, "--llm-base-url", url, "--llm-report-dir", "out",
                                        "--llm-cache-path", "cache.sqlite", "-p", "no:cacheprovider",
                                        "-o", "asyncio_default_fixture_loop_scope=function", *args)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sdk_clients_in_hand_written_tests(pytester, stub_url, workers):
    pytester.makepyfile(test_hand=HAND_WRITTEN)
    result = run_http(pytester, stub_url, "--llm-model", "stub", "-rA", workers=workers)
    result.assert_outcomes(passed=6)


def test_comparison_run_gets_one_client_per_model(pytester, stub_url):
    pytester.makepyfile(test_models="""
        def test_model(llm_openai, llm_model):
            assert llm_openai.model == llm_model
            reply = llm_openai.chat.completions.create(
                model=llm_model, messages=[{"role": "user", "content": "ANSWER: " + llm_model}])
            assert reply.model == llm_model and reply.choices[0].message.content == llm_model
    """)
    result = run_http(pytester, stub_url, "--llm-model", "stub", "--llm-model", "stub-b", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_model[[]stub[]] PASSED*", "*test_model[[]stub-b[]] PASSED*"])


def test_api_key_from_the_models_variable(pytester, monkeypatch):
    secret = "sk-test-" + "5" * 24
    monkeypatch.setenv("LLM_OPENAI_TEST_KEY", secret)
    pytester.makepyfile(test_key="""
        def test_key(llm_openai, llm_model):
            reply = llm_openai.chat.completions.create(
                model=llm_model, messages=[{"role": "user", "content": "ANSWER: in"}])
            assert reply.choices[0].message.content == "in"
    """)
    with stub_server("--models", "stub", "--api-key", secret) as (_, url):
        without = run_http(pytester, url, "--llm-model", "stub")  # OPENAI_API_KEY, unset or another: 401
        with_key = run_http(pytester, url, "--llm-model", "stub", "--llm-api-key-env", "LLM_OPENAI_TEST_KEY")
        seen = stub_stats(url)["auth_sha256"]
    without.assert_outcomes(failed=1)
    with_key.assert_outcomes(passed=1)
    assert hashlib.sha256(f"Bearer {secret}".encode()).hexdigest() in seen


def test_an_engine_without_http_fails_clearly(pytester):
    (pytester.path / "models.yaml").write_text("- {name: stub, engine: scripted}\n- {name: offline, engine: my-offline}\n")
    pytester.makeconftest("""
        from harness import Engine

        class Offline(Engine):
            kind = "my-offline"
            in_process = True

        def pytest_llm_make_engine(spec):
            return Offline(spec) if spec.engine == "my-offline" else None
    """)
    pytester.makepyfile(test_sdk="""
        def test_sdk(llm_openai):
            pass

        def test_async_sdk(llm_async_openai):
            pass
    """)
    result = pytester.runpytest_inprocess("--llm-models-file", "models.yaml", "--llm-report-dir", "out",
                                          "-p", "no:cacheprovider")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines([
        "*llm_openai: model 'stub' (engine scripted) has no HTTP base URL (it has None); use llm_client*",
        "*llm_async_openai: model 'offline' runs in-process (engine my-offline): there is no HTTP server*",
    ], consecutive=False)


def test_plugin_import_does_not_load_openai():
    code = "import sys, harness, harness.plugin; print('openai' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# The SDK clients on the real bundled model (a chat, a completion, the same streamed, tools refused; and async
# streaming from two xdist workers) run in tests/test_engine_lifecycle.py, inside the runs that start the bundled
# engine anyway: each used to start an engine of its own (tens of seconds each).
