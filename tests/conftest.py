"""Shared fixtures: a real stub server process on 127.0.0.1 and helpers to write suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Loaded before any pytester test: pytester drops the modules first imported during a test, so a
# module that an in-process run loads first would be imported again later, with new classes
# (jinja2.UndefinedError would no longer match) or not at all (numpy's C core refuses twice).
# It also makes each in-process run cheaper: what every run loads (openpyxl alone is 176 modules) is loaded
# once per test process instead of once per run.
import aiohttp  # noqa: F401
import jinja2  # noqa: F401
import jinja2.sandbox  # noqa: F401
import matplotlib.backends.backend_agg  # noqa: F401  (the report's plots: 1 s a run to import again)
import matplotlib.figure  # noqa: F401
import numpy  # noqa: F401
import openpyxl  # noqa: F401
import PIL.Image  # noqa: F401
import scipy.stats  # noqa: F401
import pytest
import yaml

import harness.case_scoring  # noqa: F401
import harness.comparison.compare  # noqa: F401
import harness.comparison.statistics  # noqa: F401
import harness.engines.lease  # noqa: F401
import harness.envelope  # noqa: F401
import harness.generation  # noqa: F401
import harness.judging.options  # noqa: F401
import harness.metadata  # noqa: F401
import harness.progress  # noqa: F401
import harness.prompts  # noqa: F401
import harness.report.details  # noqa: F401
import harness.report.files  # noqa: F401
import harness.report.html  # noqa: F401
import harness.report.indicators  # noqa: F401
import harness.report.json_report  # noqa: F401
import harness.report.markdown  # noqa: F401
import harness.report.training_plots  # noqa: F401
import harness.report.xlsx  # noqa: F401
import harness.session  # noqa: F401
import harness.suite_metrics  # noqa: F401
import harness.testing.scripted  # noqa: F401
import harness.testing.stub_server  # noqa: F401
import harness.training.api  # noqa: F401
import harness.training.job  # noqa: F401

from harness.engines.bundled import default_cache_root
from harness.engines.managed import free_port, model_listed

# The user's cache root, named before pytester moves HOME (see pytester_runs).
USER_CACHE = default_cache_root()

# The processes the tests start (pytester's subprocess runs, the xdist workers of in-process runs, stub
# servers) cache their bytecode even where the environment says not to (PYTHONDONTWRITEBYTECODE): else each
# of them compiles again every module it imports and pytest rewrites the asserts of every module of each
# installed plugin package, this one included (a 3-case run: 3.4 -> 1.5 s at -n 0, 8 -> 3 CPU-s at -n 2).
# Where Python puts it by default (__pycache__ beside each source, ignored by git), not in a folder of its own
# (PYTHONPYCACHEPREFIX): Python then reads bytecode from that folder only, never the bytecode pip compiled at
# install, so on a fresh machine the first processes compiled torch, transformers, trl, scipy, ... again (the
# suite took about 40 s longer on an empty folder than on a filled one).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

STUB_MODELS = "stub,stub-b"

# Modules whose module-scoped fixture is expensive (a CPU server process, a real TRL run): under `-n` their
# tests go to one xdist worker together, so the fixture is set up once instead of once per worker that happens
# to get one of them. Every other test is scheduled on its own, as `--dist load` does.
SHARED_FIXTURE_MODULES = frozenset({
    "test_cpu_server.py", "test_training_accumulation.py", "test_training_eval_parity.py",
    "test_training_loss_modes.py", "test_training_padding.py", "test_training_runner.py",
    "test_training_telemetry.py",
})


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n N` (``--dist load``): the tests of SHARED_FIXTURE_MODULES are one unit of work, the rest one each."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1] in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixtureModules(config, log)


# Installed pytest plugins that no run a test starts uses; each would be imported by every process of
# each run (hypothesis's and anyio's take about 0.4 s together).
UNUSED_PLUGINS = "-p no:hypothesispytest -p no:anyio -p no:benchmark"


@pytest.fixture(autouse=True)
def pytester_runs(request: pytest.FixtureRequest) -> None:
    """The runs a pytester test starts: a harness cache of their own (responses, ...) whose converted models
    are the user's, and no unused plugins. pytester's HOME of its own would otherwise make each run convert the
    bundled GGUF again (about 70 s on 2 cores); a converted model is read-only once made and its conversion is
    locked across processes."""
    if "pytester" not in request.fixturenames:
        return
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    models = USER_CACHE / "models"
    models.mkdir(parents=True, exist_ok=True)
    root = pytester.path / ".cache" / "pytest-llm-harness"
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("LLM_HARNESS_CACHE", str(root))
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(filter(None, [os.environ.get("PYTEST_ADDOPTS"), UNUSED_PLUGINS])))


@pytest.fixture(scope="session")
def stub_url() -> Iterator[str]:
    """Base URL of a stub OpenAI-compatible server (see harness.testing.stub_server)."""
    with stub_server("--models", STUB_MODELS) as (_, url):
        yield url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM as a Hugging Face folder (tests/tiny_lm.py): served in a few milliseconds a token."""
    from tests.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@contextmanager
def stub_server(*args: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A stub server process of its own (the args are its options), killed on exit: for tests that
    inject faults, count requests or kill the server."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while not model_listed(url, "stub"):
        assert proc.poll() is None and time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.05)
    try:
        yield proc, url
    finally:
        proc.kill()
        proc.wait(10)


def stub_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())


def stub_reset(url: str) -> None:
    """Zero a stub's counts (requests, the maximum in flight, ...): the session's stub is shared by the tests of
    an xdist worker, one after the other, so a test that reads a maximum resets it first."""
    urllib.request.urlopen(urllib.request.Request(url.removesuffix("/v1") + "/stats/reset", method="POST"),
                           timeout=5).close()


def write_suite(root: Path, name: str, cases: list[dict[str, Any]], dataset: str = "cases.jsonl",
                **suite: Any) -> Path:
    """A suite folder: suite.yaml (defaults: chat mode, exact_match) and its JSONL."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "dataset": dataset, "api": "chat", "scorer": "exact_match", **suite}
    (folder / "suite.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    (folder / dataset).write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases),
                                  encoding="utf-8")
    return folder


def answer_cases(pairs: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Cases whose stub reply is `answer`: (id, answer, target)."""
    return [{"id": i, "input": f"question {i}\nANSWER: {answer}", "target": target} for i, answer, target in pairs]


def load_report(pytester: pytest.Pytester, folder: str = "out") -> dict[str, Any]:
    return json.loads((pytester.path / folder / "report.json").read_text(encoding="utf-8"))


def scripted_models(pytester: pytest.Pytester, delay_ms: float = 0.0) -> str:
    """A models file of two in-process scripted models (``stub``, ``stub-b``): no server, no subprocess."""
    spec = [{"name": name, "engine": "scripted", "options": {"delay_ms": delay_ms}} for name in ("stub", "stub-b")]
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(spec[:1]), encoding="utf-8")
    (pytester.path / "models2.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return "models.yaml"


def run_inline(pytester: pytest.Pytester, *args: str, models: str = "models.yaml") -> pytest.RunResult:
    """pytest in this process on the scripted engine (reports in out/, a cache of the test's own)."""
    if not (pytester.path / "models.yaml").exists():
        scripted_models(pytester)
    return pytester.runpytest_inprocess("--llm-models-file", models, "--llm-report-dir", "out", "--llm-cache-path",
                                        "cache.sqlite", *args)


def outcome(result: pytest.RunResult, nodeid_part: str) -> str:
    """PASSED/FAILED/ERROR/SKIPPED of the item whose -rA summary line names ``nodeid_part``."""
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            if line.startswith(word + " ") and nodeid_part in line:
                return word
    raise AssertionError(f"no summary line for {nodeid_part!r}:\n" + "\n".join(result.outlines[-40:]))
