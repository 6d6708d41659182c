"""CPU servers of several models start side by side: each launched, then all waited for, so a run waits for
the slowest start instead of the sum; GPU servers still start one after another."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.engines.lease import ManagedServer, start_together, stop_engines
from harness.engines.managed import EngineStartError, pid_alive
from harness.engines.registry import EngineContext
from harness.models import ModelSpec
from harness.run import Settings
from tests.conftest import answer_cases, load_report, write_suite

# a test-local engine kind: the stub server as a managed server that may start alongside others, ready no sooner
# than LOAD_S after its launch (as a model that loads); each launch is written down with its time
LOAD_S = 1.5
STUB_ENGINE = '''
import json, sys, time
from pathlib import Path

from harness.engines.lease import ManagedServer

EVENTS = Path(__file__).parent / "events.jsonl"
LOADS = "import runpy, sys, time; time.sleep(%s); sys.argv[0] = 'stub_server'; "\\
        "runpy.run_module('harness.testing.stub_server', run_name='__main__')"


class StubServer(ManagedServer):
    kind = "stub-server"

    def alongside(self):
        return self.spec.options.get("alongside", True)

    def launch(self, port, ctx):
        with open(EVENTS, "a") as handle:
            handle.write(json.dumps([self.spec.name, time.monotonic()]) + "\\n")
        argv = [sys.executable, "-c", LOADS, "--port", str(port), "--models", self.spec.name]
        return argv, {}, {"argv": argv}


def pytest_llm_make_engine(spec):
    return StubServer(spec) if spec.engine == "stub-server" else None
''' % LOAD_S


def _launched(folder: Path) -> dict[str, float]:
    return dict(map(json.loads, (folder / "events.jsonl").read_text().splitlines()))


@pytest.mark.parametrize(("alongside", "workers"), [(True, "0"), (True, "2"), (False, "0")])
def test_cpu_servers_of_a_run_start_side_by_side_and_gpu_servers_in_turn(pytester, alongside, workers):
    pytester.makeconftest(STUB_ENGINE)
    models = [{"name": name, "engine": "stub-server", "options": {"alongside": alongside}}
              for name in ("stub", "stub-b")]
    pytester.makefile(".yaml", models=json.dumps(models))
    write_suite(pytester.path / "evals", "s", answer_cases([("a", "x", "x"), ("b", "y", "y")]))
    result = pytester.runpytest_subprocess("-n", workers, "--llm-models-file", "models.yaml", "--llm-report-dir",
                                           "out", "--llm-cache", "off", "evals", timeout=120)
    result.assert_outcomes(passed=4)  # 2 cases x 2 models
    launched = _launched(pytester.path)
    if alongside:
        result.stdout.fnmatch_lines(
            ["llm-harness: starting stub-server for stub, stub-server for stub-b, side by side"])
        # the second server was launched before the first could be ready
        assert launched["stub-b"] - launched["stub"] < LOAD_S
    else:
        assert "side by side" not in result.stdout.str()
        assert launched["stub-b"] - launched["stub"] >= LOAD_S
    assert [m["engine"]["kind"] for m in load_report(pytester)["run"]["models"]] == ["stub-server"] * 2


class _Server(ManagedServer):
    kind = "test-server"

    def __init__(self, spec: ModelSpec, argv: list[str]) -> None:
        super().__init__(spec)
        self.argv = argv

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        argv = [a.replace("PORT", str(port)) for a in self.argv]
        return argv, {}, {"argv": argv}


def test_a_server_that_fails_beside_another_raises_and_the_other_is_stopped_at_the_end(tmp_path):
    ctx = EngineContext(tmp_path, owner_pid=0, is_controller=True, settings=Settings(engine_timeout_s=60))
    good = _Server(ModelSpec("good"), [sys.executable, "-m", "harness.testing.stub_server", "--port", "PORT",
                                       "--models", "good"])
    bad = _Server(ModelSpec("bad"), [sys.executable, "-c", "import sys; print('out of memory (test)'); sys.exit(3)"])
    with pytest.raises(EngineStartError, match="out of memory"):
        start_together([bad, good], ctx)  # the good one launched, never waited for
    records = {r["model"]: r for r in stop_engines(tmp_path)}
    assert records["bad"]["failed"] and records["good"]["pid"]
    deadline = time.monotonic() + 10
    while pid_alive(records["good"]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(records["good"]["pid"]), "the server started beside the failed one was left running"
