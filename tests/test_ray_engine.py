"""Engine kind ``ray``: replicas of a model's server on a Ray cluster the run starts for itself.

Two runs of 300 cases each start a local Ray cluster (through the engine: no ``address``) with two
replicas of the stub server: one shows the cases spread over both replicas and the replicas'
records in report.json, the other kills a replica's actor mid-run and every case is still
answered (retried on the other replica). After each, nothing of the run is left: every process
that carries the test's tag in its environment (supervisor, driver, gcs_server, raylet, Ray
workers, stub servers) is gone.

Needs the ``[ray]`` extra (``pip install -e ".[ray]"``): skipped without it. CI runs it as a step
of its own (``pytest tests/test_ray_engine.py -m ray``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray", reason="engine ray needs the [ray] extra: pip install -e '.[ray]'")

from harness.models import ModelSpec  # noqa: E402
from tests.conftest import answer_cases, load_report, write_suite  # noqa: E402

pytestmark = pytest.mark.ray

CASES = 300
# a stand-in `vllm` executable: takes `vllm serve` arguments and runs the stub server on the host and port given
FAKE_VLLM = textwrap.dedent("""\
    #!{python}
    import os, sys
    args = sys.argv[1:]
    assert args[0] == "serve", args
    flags = dict(zip(args[2::2], args[3::2]))
    os.execv(sys.executable, [sys.executable, "-m", "harness.testing.stub_server", "--host", flags["--host"],
                              "--port", flags["--port"], "--models", flags["--served-model-name"], "--delay-ms", "5"])
""")
TAG = "LLM_HARNESS_RAY_TEST"

# the pytester project's conftest: /stats of every replica just before the run stops its engines
# (stats.json), and with KILL_AFTER set, a thread that kills replica 0's actor once it has answered
# that many requests (killed.json)
CONFTEST = textwrap.dedent("""\
    import json, os, signal, threading, time, urllib.request
    from pathlib import Path

    import pytest

    from harness.run import STATE_KEY


    def record(config):
        state = config.stash.get(STATE_KEY, None)
        paths = list(state.runtime_dir.glob("engine-*.json")) if state is not None else []
        return json.loads(paths[0].read_text()) if paths else {}


    def stats(url):
        with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=5) as response:
            return json.loads(response.read())


    def killer(config, after):
        while not record(config).get("ready"):
            time.sleep(0.02)
        replica = record(config)["replicas"][0]
        while stats(replica["base_url"])["requests"] < after:
            time.sleep(0.01)
        seen, at = stats(replica["base_url"])["requests"], time.time()
        os.kill(replica["actor_pid"], signal.SIGKILL)
        Path("killed.json").write_text(json.dumps({**replica, "requests_at_kill": seen, "killed_at": at}))


    def pytest_configure(config):
        if os.environ.get("KILL_AFTER") and not hasattr(config, "workerinput"):
            threading.Thread(target=killer, args=(config, int(os.environ["KILL_AFTER"])), daemon=True).start()


    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(session):
        killed = json.loads(Path("killed.json").read_text())["base_url"] if Path("killed.json").exists() else None
        found = {}
        for replica in record(session.config).get("replicas", []):
            # the killed replica's server goes with its actor, within a watchdog's poll (0.2 s): waited for
            deadline = time.monotonic() + (10 if replica["base_url"] == killed else 0)
            while True:
                try:
                    found[replica["base_url"]] = stats(replica["base_url"])["requests"]
                except OSError:
                    found[replica["base_url"]] = None  # gone (the killed one)
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        Path("stats.json").write_text(json.dumps(found))
""")


def tagged(tag: str) -> list[str]:
    """The processes alive now whose environment carries the test's tag (all a run started), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():  # this process has the tag (monkeypatch)
            continue
        try:
            if f"{TAG}={tag}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):  # gone meanwhile
            continue
        found.append(f"{entry.name} {command[:150]}")
    return found


def run_on_ray(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, model: dict,
               *args: str, kill_after: int | None = None) -> tuple[pytest.RunResult, float]:
    """A run of CASES cases on two replicas of a local Ray cluster; fails if anything of it outlives it."""
    write_suite(pytester.path / "evals", "spread", answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(CASES)]),
                gates=["accuracy == 1"])
    model = {"name": "ray-stub", "engine": "ray", **model}
    model["options"] = {"replicas": 2, "resources_per_replica": {"CPU": 1}, **model["options"]}
    (pytester.path / "models.yaml").write_text(yaml.safe_dump([model]))
    pytester.makeconftest(CONFTEST)
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG, tag)
    if kill_after is not None:
        monkeypatch.setenv("KILL_AFTER", str(kill_after))
    started = time.monotonic()
    try:
        result = pytester.runpytest_subprocess("--llm-models-file", "models.yaml", "--llm-report-dir", "out",
                                               "--llm-cache", "off", "-p", "no:cacheprovider", "-q", *args, "evals",
                                               timeout=180)
    finally:
        # a local cluster's processes exit when its driver does, within seconds
        deadline = time.monotonic() + 30
        while tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = tagged(tag)
        for line in left:
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, "still running after the run:\n" + "\n".join(left)
    return result, time.monotonic() - started


def test_two_replicas_share_a_run_and_are_recorded_in_the_report(pytester, monkeypatch):
    # server: vllm through its real command line, a stand-in `vllm` that runs the stub server
    fake = pytester.path / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    model = {"model_path": "/models/ray-stub", "args": ["--max-num-seqs", "8"],
             "options": {"server": "vllm", "executable": str(fake), "max_model_len": 4096}}
    result, _ = run_on_ray(pytester, monkeypatch, model)
    assert result.ret == 0, result.stdout.str()[-3000:]
    report = load_report(pytester)
    assert len(report["cases"]) == CASES and all(case["passed"] for case in report["cases"])
    model = report["run"]["models"][0]
    engine = model["engine"]
    assert engine["kind"] == "ray" and engine["launch"]["server"] == "vllm"
    assert engine["launch"]["address"] == "local" and engine["launch"]["resources_per_replica"] == {"CPU": 1}
    replicas = model["replicas"]
    assert [r["index"] for r in replicas] == [0, 1]
    assert engine["base_urls"] == [r["base_url"] for r in replicas]
    for replica in replicas:
        assert replica["node_id"] and replica["node_ip"] and replica["state"] == "alive"
        assert replica["base_url"] == f"http://127.0.0.1:{replica['port']}/v1"
        argv = replica["argv"]
        assert argv[:3] == [str(fake), "serve", "/models/ray-stub"] and argv[-2:] == ["--max-num-seqs", "8"]
        assert argv[argv.index("--port") + 1] == str(replica["port"]) and "--max-model-len" in argv
    assert model["cluster"]["nodes"] == 1
    stats = json.loads((pytester.path / "stats.json").read_text())
    counts = [stats[r["base_url"]] for r in replicas]
    assert all(count and count >= CASES // 10 for count in counts), counts  # both served a real share
    assert sum(counts) >= CASES


def test_a_replica_killed_mid_run_loses_no_case(pytester, monkeypatch):
    # the driver's look at its replicas during the run made rare (every 2 s by default; the run may end sooner
    # after the kill, or not): the replica's death in the report comes from the look the stop takes, whenever it is
    monkeypatch.setenv("LLM_HARNESS_RAY_WATCH_S", "3600")
    model = {"args": ["--delay-ms", "40"], "options": {"server": "stub"}}
    result, _ = run_on_ray(pytester, monkeypatch, model, "--llm-concurrency", "8", kill_after=20)
    assert result.ret == 0, result.stdout.str()[-3000:]
    killed = json.loads((pytester.path / "killed.json").read_text())
    report = load_report(pytester)
    cases = report["cases"]
    assert len(cases) == CASES and {c["id"] for c in cases} == {f"c{i}" for i in range(CASES)}
    assert all(case["passed"] and case["error"] is None for case in cases)
    replicas = report["run"]["models"][0]["replicas"]
    assert replicas[0]["state"] == "dead" and replicas[0]["actor_pid"] == killed["actor_pid"], replicas[0]
    assert replicas[0]["died"] and replicas[0]["died_at"] >= killed["killed_at"]
    assert replicas[1]["state"] == "alive", replicas[1]
    stats = json.loads((pytester.path / "stats.json").read_text())
    assert stats[replicas[0]["base_url"]] is None  # its server went with its actor
    # the survivor answered the rest (the killed one had answered at most what it had been sent)
    assert stats[replicas[1]["base_url"]] >= CASES // 2
    assert killed["requests_at_kill"] >= 20


# -- the models-file entry, without a cluster ------------------------------------------------------------------

def spec(**options) -> ModelSpec:
    return ModelSpec("m", engine="ray", model_path=options.pop("model_path", None), options=options)


@pytest.mark.parametrize("options, message", [
    ({"server": "triton"}, "options.server must be one of bundled, vllm, sglang, stub"),
    ({"server": "stub", "replicas": 0}, "options.replicas must be a positive integer"),
    ({"server": "stub", "address": "somewhere"}, "options.address must be 'auto', a ray://host:port URL"),
    ({"server": "stub", "resources_per_replica": {"GPU": -1}}, "'GPU' must be a non-negative number"),
    ({"server": "stub", "resources_per_replica": "GPU"}, "must be a mapping like {GPU: 1}"),
    ({"server": "stub", "address": "auto", "num_cpus": 4}, "num_cpus sizes the local cluster"),
    ({"server": "vllm"}, "server vllm needs a model_path"),
    ({"server": "vllm", "model_path": "/m", "tensor_parallel_size": 0}, "server vllm: tensor_parallel_size must be"),
    ({"server": "stub", "max_model_len": 10}, "server stub takes no launch options"),
])
def test_check_names_what_is_wrong(options, message):
    from harness.engines.ray_engine import RayEngine

    problem = RayEngine.check(spec(**options))
    assert problem is not None and message in problem, problem


def test_a_valid_entry_passes_and_its_identity_is_the_model_not_the_replicas():
    from harness.engines.ray_engine import RayEngine
    from harness.engines.servers import VLLMServer

    entry = spec(server="vllm", model_path="/models/x", address="auto", replicas=8,
                 resources_per_replica={"GPU": 1}, max_model_len=4096)
    assert RayEngine.check(entry) is None
    assert RayEngine.check(spec(server="stub", address="ray://head:10001")) is None
    four = RayEngine(spec(server="vllm", model_path="/models/x", replicas=4, resources_per_replica={"GPU": 1}))
    assert RayEngine(entry).identity() == four.identity()
    assert four.identity() == VLLMServer(ModelSpec("m", engine="vllm", model_path="/models/x")).identity()


def test_harness_does_not_import_ray_until_a_ray_engine_starts():
    code = ("import sys, harness.plugin, harness.engines.registry as r; r.engine_class('ray'); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_replica_that_refuses_connections_is_passed_over():
    """What a dead replica costs the client: one refused connection, then it is passed over (DOWN_S)."""
    from harness.engines.client import OpenAICompatClient, Request
    from harness.engines.loop import run_sync
    from harness.engines.managed import free_port
    from tests.conftest import stub_server

    with stub_server("--models", "stub") as (_, url):
        dead = f"http://127.0.0.1:{free_port()}/v1"
        client = OpenAICompatClient([dead, url], retries=2, backoff_s=0.01)

        async def ask() -> list:
            try:
                return [await client.send(Request("chat", "stub", [{"role": "user", "content": f"ANSWER: {i}"}]))
                        for i in range(20)]
            finally:
                await client.close()

        replies = run_sync(ask(), timeout=60)
    assert [r.text for r in replies] == [str(i) for i in range(20)]
    assert all(r.replica == url for r in replies)
    assert sum(r.attempts for r in replies) <= 21  # the dead replica was tried once


def test_each_server_kind_gets_the_managed_engines_command_line_on_the_replicas_host_and_port():
    from harness.engines.ray_engine import replica_argv

    vllm = spec(server="vllm", model_path="/models/x", replicas=2, max_model_len=4096)
    argv, env = replica_argv("vllm", vllm, "0.0.0.0", 8123, 4242, 16)
    assert argv[:3] == ["vllm", "serve", "/models/x"] and env == {}  # Ray sets CUDA_VISIBLE_DEVICES itself
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--max-model-len") + 1] == "4096" and "replicas" not in " ".join(argv)
    argv, _ = replica_argv("bundled", spec(server="bundled"), "127.0.0.1", 8124, 4242, 8)
    assert argv[1:3] == ["-m", "harness.engines.cpu_server"] and argv[argv.index("--parent-pid") + 1] == "4242"
    assert argv[argv.index("--max-batch") + 1] == "8"
    argv, _ = replica_argv("sglang", spec(server="sglang", model_path="/models/x"), "10.0.0.2", 8125, 1, 1)
    assert argv[argv.index("--host") + 1] == "10.0.0.2" and "--model-path" in argv
