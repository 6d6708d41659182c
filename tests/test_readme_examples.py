"""The README's examples run as written: each block marked ``<!-- example: NAME ... -->`` is copied
into a pytester project (or executed) as it stands in README.md, so editing the README into code that
no longer works fails here."""

from __future__ import annotations

import re
from pathlib import Path

import openai  # noqa: F401 - loaded before any pytester run, which would otherwise unload it after the run
import pandas  # noqa: F401
import pytest
import yaml

from tests.conftest import answer_cases, scripted_models, write_suite

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    """The python block right after the README's ``<!-- example: name ... -->`` marker."""
    found = re.search(rf"<!-- example: {re.escape(name)}\b[^>]*-->\n```python\n(.*?)```\n", README.read_text("utf-8"),
                      re.DOTALL)
    assert found, f"README.md has no example marked {name!r}"
    return found.group(1)


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def run(pytester: pytest.Pytester, *args: str, workers: str) -> pytest.RunResult:
    # pytest-asyncio as a user has it: strict mode (the default), no -p or --asyncio-mode here
    return pytester.runpytest_inprocess("-n", workers, "--llm-report-dir", "out", "--llm-cache-path", "cache.sqlite",
                                        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function",
                                        "-rA", *args)


def test_hand_written_tests_example(pytester, workers):
    # a scripted model that refuses and knows one capital: the example's assertions hold on a model that does
    replies = {"weapon": "Sorry, I can't help with that.", "Capital:": " Paris"}
    (pytester.path / "models.yaml").write_text(yaml.safe_dump([{"name": "chat-model", "engine": "scripted",
                                                                "options": {"replies": replies}}]), encoding="utf-8")
    pytester.makepyfile(test_readme=readme_example("hand-written"))
    result = run(pytester, "--llm-models-file", "models.yaml", workers=workers)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*PASSED test_readme.py::test_async*"])


def test_openai_sdk_example(pytester, stub_url, workers):
    pytester.makepyfile(test_readme=readme_example("openai-sdk"))
    result = run(pytester, "--llm-base-url", stub_url, "--llm-model", "stub", workers=workers)
    result.assert_outcomes(passed=2)


def test_notebook_example(pytester):
    cases = answer_cases([("c1", "Paris", "Paris"), ("c2", "Oslo", "Bern")])
    write_suite(pytester.path / "evals", "geo", cases, gates=["accuracy >= 0.5"])
    scripted_models(pytester)
    # a comparison run of two models, reports in reports/<run id> with reports/latest
    pytester.runpytest_inprocess("--llm-models-file", "models2.yaml", "--llm-cache-path", "cache.sqlite", "evals")
    namespace: dict = {}
    exec(compile(readme_example("notebook"), "README.md", "exec"), namespace)  # in pytester's folder
    run = namespace["run"]
    assert len(run.cases) == 4 and run.comparisons is not None
