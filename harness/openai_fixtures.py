"""``llm_openai`` and ``llm_async_openai``: the official OpenAI SDK bound to the run's engine.

Code written against ``openai`` runs unchanged in a test::

    def test_capital(llm_openai, llm_model):
        reply = llm_openai.chat.completions.create(model=llm_model, messages=[...], max_tokens=8)

Each fixture is a real ``openai.OpenAI`` / ``openai.AsyncOpenAI`` (session scope, one per model of a
comparison run) whose base URL is the engine the run started or reached for ``llm_model`` (the first
replica when it has several), with the model's API key (its ``api_key_env``, else a placeholder: local
servers take any key and the SDK insists on one), the run's ``--llm-timeout`` and ``--llm-retries``,
and the model's name as the extra attribute ``model``. Requests through them go straight to the
server: they bypass the harness's response cache and in-flight limit and are not in the reports.

The async client keeps no idle connections: pytest-asyncio gives each test an event loop of its own,
and a pooled connection opened in one test's loop fails in the next ("Event loop is closed").

Imported at the end of :mod:`harness.plugin` so that pytest finds the fixtures; ``openai`` itself is
imported only when a test uses one, so loading the plugin stays cheap.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from harness.run import run_state

PLACEHOLDER_KEY = "EMPTY"  # what vLLM's docs send; a server without keys ignores it


def _import_openai(fixture: str) -> Any:
    try:
        import openai
    except ImportError:
        pytest.fail(f"{fixture} needs the openai package: pip install openai", pytrace=False)
    return openai


def client_options(request: pytest.FixtureRequest, model: str, fixture: str) -> dict[str, Any]:
    """The SDK client's keyword arguments for ``model``'s engine in this run (started here if need be)."""
    state = run_state(request.config)
    engine = state.engine_of(model)
    if engine.in_process:
        pytest.fail(f"{fixture}: model {model!r} runs in-process (engine {engine.kind}): there is no HTTP server "
                    f"for the openai client to talk to. Use llm_client, or serve the model (engine: vllm)",
                    pytrace=False)
    record = state.engine(model)
    url = record.get("base_url")
    if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        pytest.fail(f"{fixture}: model {model!r} (engine {engine.kind}) has no HTTP base URL (it has "
                    f"{url!r}); use llm_client", pytrace=False)
    from harness.redact import basic_auth, split_credentials

    url, credentials = split_credentials(url)
    parts = urlsplit(url)
    options: dict[str, Any] = {
        "base_url": urlunsplit(parts._replace(query="", fragment="")),
        "api_key": engine.api_key() or PLACEHOLDER_KEY,
        "timeout": state.settings.timeout_s,
        "max_retries": state.settings.retries,
    }
    if parts.query:  # e.g. ?api-version=...: the SDK adds it to every request, as the harness's client does
        options["default_query"] = dict(parse_qsl(parts.query, keep_blank_values=True))
    if credentials is not None:  # user:password@ in the URL wins over the key, as in the harness's client
        options["default_headers"] = {"Authorization": basic_auth(*credentials)}
    return options


@pytest.fixture(scope="session")
def llm_openai(request: pytest.FixtureRequest, llm_model: str) -> Iterator[Any]:
    """An ``openai.OpenAI`` client of the run's engine for ``llm_model`` (its name also as ``.model``)."""
    openai = _import_openai("llm_openai")
    client = openai.OpenAI(**client_options(request, llm_model, "llm_openai"))
    client.model = llm_model
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def llm_async_openai(request: pytest.FixtureRequest, llm_model: str) -> Any:
    """An ``openai.AsyncOpenAI`` client of the run's engine for ``llm_model`` (its name also as ``.model``),
    usable from every test's event loop."""
    openai = _import_openai("llm_async_openai")
    options = client_options(request, llm_model, "llm_async_openai")
    limits = openai.DEFAULT_CONNECTION_LIMITS  # an httpx Limits; the same class without keep-alive
    no_keepalive = type(limits)(max_connections=limits.max_connections, max_keepalive_connections=0)
    client = openai.AsyncOpenAI(**options, http_client=openai.DefaultAsyncHttpxClient(limits=no_keepalive))
    client.model = llm_model
    return client
