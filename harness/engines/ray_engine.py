"""Engine kind ``ray``: N replicas of one model's server on a Ray cluster, one base URL each.

Models file::

    - name: llama-8b
      engine: ray
      model_path: /models/llama-8b
      options:
        address: auto                 # or ray://head:10001, host:port; absent: a local cluster for the run
        server: vllm                  # what each replica runs: vllm, sglang, bundled (CPU) or stub (tests)
        replicas: 8
        resources_per_replica: {GPU: 1}   # default {CPU: 1}
        max_model_len: 8192           # any other option goes to the server's launch (as for engine: vllm)

How it runs. :meth:`RayEngine.start` (the first process of the run that needs the model, under the
same file lock as the managed servers) starts a *supervisor* process, ``python -m
harness.engines.ray_engine CONFIG``, in a session of its own; its pid is the engine record's
``pid``, so the run's usual end (:func:`harness.engines.lease.stop_engines`: SIGTERM, then
SIGKILL) stops it. The supervisor starts a *driver* process in a process group of its own and
forwards a stop to it; the driver connects to Ray (``ray.init``), places one actor per replica
with the requested resources (scheduling strategy SPREAD: replicas on different nodes where the
resources allow), and each actor starts the server on its node on a free port, waits until
``/v1/models`` lists the model and returns ``{node_id, node_ip, port, pid, argv, ...}``. The
driver writes the engine record (``base_urls``: every replica; ``replicas``: their records, kept
in report.json) and then watches: the owner (the pytest controller) gone, a stop asked, or a
replica gone (marked ``state: dead`` in the record). At the end it looks at every replica once more
(whenever its last look was: the record the report takes, read after the stop, says which died), stops each
server through its actor, kills the actors, and shuts down the local cluster when it started one.

Teardown when something dies: a small watchdog process next to each server (it polls the
actor's pid) kills the server's process group when the actor's process dies; the actors die with
their owner (the driver); the driver watches the controller's pid and the supervisor's; a local
cluster's processes die with the driver (Ray's own fate sharing).

A replica that dies mid-run is dropped (actors are not restarted: a restarted server would
listen on another port, perhaps another node, which the run's clients do not know). Its
requests fail with connection errors and the client retries them on another replica.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.engines.lease import _slug, engine_lock, engine_log_path
from harness.engines.managed import EngineStartError, pid_alive, start_server, stop_pid, wait_ready
from harness.engines.registry import Engine, EngineContext
from harness.models import ModelSpec

SERVERS = ("bundled", "vllm", "sglang", "stub")
# the options this engine reads itself; every other option is the server's (launch options)
RAY_OPTIONS = ("address", "replicas", "resources_per_replica", "server", "host", "num_cpus", "runtime_env",
               "scheduling", "revision")
_SCHEDULING = ("SPREAD", "DEFAULT")
_READY_POLL_S = 0.2
# how often the driver looks at its replicas while the run goes on (LLM_HARNESS_RAY_WATCH_S: the tests make it rare);
# the stop looks again, whenever the last look was, before it stops the servers
_WATCH_S = 2.0


# -- the models-file entry -------------------------------------------------------------------------------------

def server_of(spec: ModelSpec) -> str:
    return str(spec.options.get("server") or ("vllm" if spec.model_path else "bundled"))


def launch_options(spec: ModelSpec) -> dict[str, Any]:
    """The options a replica's server gets (those this engine does not read itself)."""
    return {key: value for key, value in spec.options.items() if key not in RAY_OPTIONS}


def replica_resources(spec: ModelSpec) -> dict[str, float]:
    return dict(spec.options.get("resources_per_replica") or {"CPU": 1})


def _problem(spec: ModelSpec) -> str | None:
    import importlib.util

    options = spec.options
    if spec.base_urls:
        return "base_url is for engine openai; engine ray starts its replicas itself"
    if importlib.util.find_spec("ray") is None:  # found, not imported
        return "engine ray needs Ray: pip install 'pytest-llm-harness[ray]'"
    server = server_of(spec)
    if server not in SERVERS:
        return f"options.server must be one of {', '.join(SERVERS)}, not {server!r}"
    address = options.get("address")
    if address is not None and not (isinstance(address, str) and (
            address == "auto" or address.startswith("ray://") or _host_port(address))):
        return (f"options.address must be 'auto', a ray://host:port URL or a GCS host:port (absent: a local "
                f"cluster for the run), not {address!r}")
    replicas = options.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        return f"options.replicas must be a positive integer, not {replicas!r}"
    resources = options.get("resources_per_replica", {"CPU": 1})
    if not isinstance(resources, dict) or not resources:
        return f"options.resources_per_replica must be a mapping like {{GPU: 1}} or {{CPU: 1}}, not {resources!r}"
    for key, value in resources.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return f"options.resources_per_replica: {key!r} must be a non-negative number, not {value!r}"
    if not resources.get("CPU") and not resources.get("GPU") and not (set(resources) - {"CPU", "GPU", "memory"}):
        return "options.resources_per_replica asks for nothing: give CPU, GPU or a custom resource"
    num_cpus = options.get("num_cpus")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        return f"options.num_cpus (the local cluster's CPUs) must be a positive integer, not {num_cpus!r}"
    if num_cpus is not None and address is not None:
        return "options.num_cpus sizes the local cluster the run starts; it does not apply with an address"
    host = options.get("host")
    if host is not None and not (isinstance(host, str) and host):
        return f"options.host (the address each server listens on) must be a host name, not {host!r}"
    if options.get("scheduling", "SPREAD") not in _SCHEDULING:
        return f"options.scheduling must be one of {', '.join(_SCHEDULING)}, not {options.get('scheduling')!r}"
    runtime_env = options.get("runtime_env")
    if runtime_env is not None and not isinstance(runtime_env, dict):
        return f"options.runtime_env must be a mapping (Ray's runtime_env), not {runtime_env!r}"
    if server in ("vllm", "sglang"):
        if not spec.model_path:
            return f"server {server} needs a model_path"
        from harness.engines.launchers import launch_for

        try:
            launch_for(server, spec.model_path, spec.name, 8000, launch_options(spec), spec.args)
        except ValueError as exc:
            return f"server {server}: {exc}"
    elif launch_options(spec):
        return (f"server {server} takes no launch options; unknown option {sorted(launch_options(spec))[0]!r} "
                f"(engine ray reads {', '.join(o for o in RAY_OPTIONS if o != 'revision')})")
    return None


def _host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit())


class RayEngine(Engine):
    """N replicas of the model's server, placed on a Ray cluster (see the module's docstring)."""

    kind = "ray"
    loads = True

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        return _problem(spec)

    def identity(self) -> dict[str, Any]:
        # the replicas serve one model: replies are interchangeable with the same server's, whatever the count
        server = server_of(self.spec)
        if server == "stub":
            return {"name": self.spec.name, "engine": "stub", "args": list(self.spec.args)}
        from harness.engines.registry import engine_class

        cls = engine_class(server)
        assert cls is not None
        return cls(self._server_spec()).identity()

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """The model's source, and in report.json every replica's record (node, port, pid, argv, state) and the
        cluster's size."""
        if server_of(self.spec) == "bundled":
            from harness.engines.bundled_engine import BundledEngine

            found = BundledEngine(self._server_spec()).metadata(record)
        else:
            found = super().metadata(record)
        if record is not None:
            found.update(replicas=record.get("replicas") or [], cluster=record.get("cluster"))
        return found

    def _server_spec(self) -> ModelSpec:
        from dataclasses import replace

        options = launch_options(self.spec)
        if "revision" in self.spec.options:
            options["revision"] = self.spec.options["revision"]
        return replace(self.spec, engine=server_of(self.spec), options=options, gpus=None)

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        spec = self.spec
        runtime_dir = ctx.runtime_dir
        with engine_lock(runtime_dir, spec.name, ready=True) as (record_path, running):
            if running is not None:
                return running
            log_path = engine_log_path(runtime_dir, spec.name)
            # not engine-*.json: stop_engines reads every such file as an engine record
            config_path = runtime_dir / f"ray-{_slug(spec.name)}.config.json"
            timeout_s = ctx.settings.engine_timeout_s
            fields = {"model": spec.name, "kind": self.kind, "base_url": None, "base_urls": [],
                      "launch": _launch_record(spec), "log": str(log_path), "replicas": []}
            config = {"spec": spec.to_dict(), "record": str(record_path), "record_fields": fields,
                      "owner_pid": ctx.owner_pid, "timeout_s": timeout_s, "max_batch": ctx.settings.max_batch,
                      "runtime_dir": str(runtime_dir)}
            config_path.write_text(json.dumps(config))
            proc = start_server([sys.executable, "-m", "harness.engines.ray_engine", str(config_path)], log_path)
            record = {**fields, "pid": proc.pid}
            # written before the wait so the controller can stop it even if we are interrupted
            _write_json(record_path, record)
            try:
                record = _wait_record(record_path, proc, timeout_s + 60, log_path)
                for url in record["base_urls"]:  # reachable from here, not only from the replica's node
                    wait_ready(url, spec.name, 30.0, proc, log_path)
            except BaseException as exc:
                stop_pid(proc.pid)
                failed = json.loads(record_path.read_text()) if record_path.exists() else record
                failed["failed"] = str(exc)
                _write_json(record_path, failed)
                raise
            return record


def _launch_record(spec: ModelSpec) -> dict[str, Any]:
    options = spec.options
    return {"server": server_of(spec), "address": options.get("address") or "local",
            "replicas": options.get("replicas", 1), "resources_per_replica": replica_resources(spec),
            "scheduling": options.get("scheduling", "SPREAD"), "options": launch_options(spec),
            "args": list(spec.args), "model_path": spec.model_path}


def _wait_record(path: Path, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> dict[str, Any]:
    from harness.engines.managed import log_tail

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("failed"):
            raise EngineStartError(f"{record['failed']}; log {log_path}:\n{log_tail(log_path)}")
        if record.get("ready"):
            return record
        if proc.poll() is not None:
            raise EngineStartError(f"the Ray supervisor exited with code {proc.returncode} before the replicas were "
                                   f"ready; log {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise EngineStartError(f"Ray replicas not ready after {timeout_s:g} s; log {log_path}:\n{log_tail(log_path)}")
        time.sleep(_READY_POLL_S)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a record."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# -- one replica: a Ray actor that runs the server on its node ------------------------------------------------

_WATCHDOG = """
import os, signal, sys, time
actor, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
while alive(actor) and alive(server):
    time.sleep(0.2)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(server, sig)
    except (ProcessLookupError, PermissionError):
        break
    for _ in range(100):
        if not alive(server):
            break
        time.sleep(0.1)
"""


def replica_argv(server: str, spec: ModelSpec, host: str, port: int, parent_pid: int,
                 max_batch: int) -> tuple[list[str], dict[str, str]]:
    """The command line (and extra environment) of one replica's server, listening on host:port."""
    from dataclasses import replace
    from types import SimpleNamespace

    ctx = EngineContext(Path("."), parent_pid, False, SimpleNamespace(max_batch=max_batch))
    # the server's own options only; no gpus: Ray sets CUDA_VISIBLE_DEVICES for the actor, and the server inherits it
    spec = replace(spec, options=launch_options(spec), gpus=None)
    if server == "stub":
        argv = [sys.executable, "-m", "harness.testing.stub_server", "--host", host, "--port", str(port),
                "--models", spec.name, *spec.args]
        return argv, {}
    if server == "bundled":
        from harness.engines.bundled_engine import BundledEngine

        argv, env, _ = BundledEngine(spec).launch(port, ctx)
        argv = [*argv, *spec.args]
    else:
        from harness.engines.servers import SGLangServer, VLLMServer

        cls = VLLMServer if server == "vllm" else SGLangServer
        argv, env, _ = cls(spec).launch(port, ctx)
    if "--host" in argv:  # the managed engines listen on 127.0.0.1; a replica listens where it is asked
        argv[argv.index("--host") + 1] = host
    return argv, env


class Replica:
    """A Ray actor (``ray.remote(Replica)``): starts one server on its node and stops it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, index: int, spec_dict: dict[str, Any], host: str, max_batch: int, timeout_s: float,
              log_dir: str) -> dict[str, Any]:
        import socket
        import tempfile

        import ray

        spec = ModelSpec.from_dict(spec_dict)
        server = server_of(spec)
        node_ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("" if host in ("0.0.0.0", "::") else host, 0))
            port = int(sock.getsockname()[1])
        argv, env = replica_argv(server, spec, host, port, os.getpid(), max_batch)
        folder = Path(log_dir) if Path(log_dir).is_dir() else Path(tempfile.gettempdir()) / "llm-harness-ray"
        folder.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path = folder / f"ray-{_slug(spec.name)}-replica-{index}-{port}.log"
        started = time.monotonic()
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, **env})
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        url_host = node_ip if host in ("0.0.0.0", "::") else host
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        wait_ready(f"http://{local}:{port}/v1", spec.name, timeout_s, self.proc, log_path)
        return {"index": index, "node_id": ray.get_runtime_context().get_node_id(), "node_ip": node_ip,
                "host": host, "port": port, "base_url": f"http://{url_host}:{port}/v1", "pid": self.proc.pid,
                "actor_pid": os.getpid(), "argv": argv, "env": env,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "log": str(log_path),
                "ready_s": round(time.monotonic() - started, 2), "state": "alive"}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> str:
        """Stop the server; the tail of its log (it lives on the replica's node)."""
        from harness.engines.managed import log_tail

        if self.proc is not None:
            stop_pid(self.proc.pid, grace_s=5.0)  # the run's own stop waits 10 s for the whole teardown
            self.proc.poll()
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait(5)
        code = self.proc.returncode if self.proc is not None else None
        return f"exit code {code}; {self.log_path}:\n" + (log_tail(self.log_path, 15) if self.log_path else "")


# -- the supervisor and the driver (processes of their own) ------------------------------------------------------

class _Stop(Exception):
    pass


def _supervise(config_path: str) -> int:
    """The engine record's pid: starts the driver in a process group of its own (so the run's SIGTERM to this
    group does not reach a local cluster's Ray processes before the driver has stopped the replicas) and
    forwards a stop to it."""
    driver = subprocess.Popen([sys.executable, "-m", "harness.engines.ray_engine", "--driver", config_path],
                              process_group=0)

    def forward(signum: int, frame: Any) -> None:
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            return driver.wait()
        except KeyboardInterrupt:
            forward(signal.SIGINT, None)


def _drive(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    spec = ModelSpec.from_dict(config["spec"])
    record_path = Path(config["record"])
    owner_pid, supervisor_pid = int(config["owner_pid"]), os.getppid()
    stop = {"asked": False}

    def ask_stop(signum: int, frame: Any) -> None:
        stop["asked"] = True

    def own_signals() -> None:  # again after ray.init, whose own SIGTERM handler exits at once
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, ask_stop)

    own_signals()

    def check() -> None:
        if stop["asked"]:
            raise _Stop("asked to stop")
        if not pid_alive(owner_pid) or not pid_alive(supervisor_pid):
            raise _Stop("the run's controller is gone")

    started = time.monotonic()
    # the starter wrote the first record (its pid: the supervisor's); from here on only this process writes it
    record = {**config["record_fields"], "pid": supervisor_pid, "driver_pid": os.getpid()}
    import ray

    options = spec.options
    address = options.get("address")
    replicas = int(options.get("replicas", 1))
    resources = replica_resources(spec)
    local = address is None
    host = options.get("host") or ("127.0.0.1" if local else "0.0.0.0")
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if local:
        # "local": a new cluster even where `ray start` left one (ray.init() alone would join that one)
        init["address"] = "local"
        need = int(-(-resources.get("CPU", 0) * replicas // 1))
        init["num_cpus"] = int(options.get("num_cpus") or max(os.cpu_count() or 1, need, 1))
    else:
        init["address"] = address
    if options.get("runtime_env"):
        init["runtime_env"] = options["runtime_env"]
    _log(f"connecting to Ray ({'a local cluster' if local else address}) for {replicas} replica(s) of "
        f"{spec.name!r} ({server_of(spec)}, {resources} each)")
    actors: list[Any] = []
    states: list[dict[str, Any]] = []
    try:
        ray.init(**init)
        own_signals()
        check()
        actor_options: dict[str, Any] = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0),
                                         "max_restarts": 0, "scheduling_strategy": options.get("scheduling", "SPREAD")}
        if resources.get("memory"):
            actor_options["memory"] = resources["memory"]
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
        if custom:
            actor_options["resources"] = custom
        remote = ray.remote(Replica).options(**actor_options)
        actors = [remote.remote() for _ in range(replicas)]
        pending = {actor.start.remote(i, spec.to_dict(), host, int(config["max_batch"]), float(config["timeout_s"]),
                                      config["runtime_dir"]): i for i, actor in enumerate(actors)}
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + float(config["timeout_s"])
        while pending:
            check()
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                index = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise EngineStartError(f"replica {index} did not start: {_short(exc)}") from None
                _log(f"replica {index} ready on node {results[index]['node_ip']} at {results[index]['base_url']} "
                    f"(pid {results[index]['pid']}, {results[index]['ready_s']} s)")
            if pending and time.monotonic() > deadline:
                raise EngineStartError(
                    f"{len(pending)} of {replicas} replicas not ready after {config['timeout_s']:g} s (each needs "
                    f"{resources}; the cluster has {ray.cluster_resources()}, available now "
                    f"{ray.available_resources()})")
        states = [results[i] for i in range(replicas)]
        urls = [state["base_url"] for state in states]
        record.update({"base_url": urls[0], "base_urls": urls, "replicas": states, "ready": True,
                       "ready_s": round(time.monotonic() - started, 2),
                       "cluster": {"address": address or "local", "nodes": len({s["node_id"] for s in states}),
                                   "resources": {k: v for k, v in ray.cluster_resources().items()
                                                 if not k.startswith("node:")}}})
        _write_json(record_path, record)
        _watch(actors, states, record, record_path, check, local)
    except (_Stop, SystemExit) as exc:
        _log(f"stopping: {exc}")
    except BaseException as exc:  # noqa: BLE001 - reported in the record, which the starter reads
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EngineStartError) else str(exc)
        _log(f"failed: {message}")
        record["failed"] = message
        _write_json(record_path, record)
    finally:
        _teardown(ray, actors, states, local, record, record_path)
        record["stopped_at"] = time.time()
        if record.get("replicas"):
            record["replicas"] = states
        _write_json(record_path, record)
        _log("stopped")
    return 0


def _watch(actors: list[Any], states: list[dict[str, Any]], record: dict[str, Any], record_path: Path,
           check: Any, local: bool) -> None:
    """Until asked to stop: mark a replica whose actor or server died as dead (it is not replaced)."""
    import ray

    every = float(os.environ.get("LLM_HARNESS_RAY_WATCH_S") or _WATCH_S)
    last = time.monotonic()  # every replica answered just now
    while True:
        check()
        time.sleep(0.2)
        if time.monotonic() - last < every:
            continue
        last = time.monotonic()
        if _mark_dead(ray, actors, states, local):
            record["replicas"] = states
            _write_json(record_path, record)


def _mark_dead(ray: Any, actors: list[Any], states: list[dict[str, Any]], local: bool,
               timeout_s: float = 5.0) -> bool:
    """Look at every replica still marked alive, now, and mark the ones that are gone: on a local cluster its
    actor's or server's process gone (this machine's pids); its port refusing connections (what makes the run's
    clients pass it over); Ray saying its actor died or its server exited (within ``timeout_s``)."""
    live = [i for i, state in enumerate(states) if state["state"] == "alive"]
    if not live:
        return False
    pings = {actors[i].alive.remote(): i for i in live}  # asked first: answered while the rest is looked at
    why: dict[int, str] = {}
    for i in live:
        if local and not pid_alive(states[i]["actor_pid"]):
            why[i] = "its actor's process is gone"
        elif local and not pid_alive(states[i]["pid"]):
            why[i] = "its server exited"
    from concurrent.futures import ThreadPoolExecutor

    rest = [i for i in live if i not in why]
    if rest:
        with ThreadPoolExecutor(min(len(rest), 16)) as pool:
            for i, refuses in zip(rest, pool.map(lambda i: _refuses(states[i]["base_url"]), rest), strict=True):
                if refuses:
                    why[i] = "its server refuses connections"
    asked = [ref for ref, i in pings.items() if i not in why]
    done, _ = ray.wait(asked, num_returns=len(asked), timeout=timeout_s) if asked else ([], [])
    for ref in done:
        try:
            if not ray.get(ref):
                why[pings[ref]] = "its server exited"
        except ray.exceptions.RayError as exc:
            why[pings[ref]] = f"its actor died: {_short(exc)}"
    for index in sorted(why):
        states[index].update(state="dead", died_at=time.time(), died=why[index])
        _log(f"replica {index} at {states[index]['base_url']} is gone ({why[index]}); its requests go to the others")
    return bool(why)


def _refuses(base_url: str, timeout_s: float = 2.0) -> bool:
    """True when nothing listens on the replica's port any more (a connection refused); a slow or unreachable
    host is no proof that it is gone."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _teardown(ray: Any, actors: list[Any], states: list[dict[str, Any]], local: bool, record: dict[str, Any],
              record_path: Path) -> None:
    """Look at the replicas a last time (the report's state of each: a replica that died since the last look is
    dead), write it down, then stop every server through its actor, kill the actors, leave the cluster (shut it
    down when local)."""
    if not ray.is_initialized():
        return
    try:
        if states and _mark_dead(ray, actors, states, local, timeout_s=2.0):
            record["replicas"] = states
            _write_json(record_path, record)  # before the stops: the run's stop may not wait for all of them
        stops = [actor.stop.remote() for actor in actors]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=8)
        for index, ref in enumerate(stops):
            try:
                _log(f"replica {index} stopped: {ray.get(ref, timeout=0.1)}")
            except Exception:  # noqa: BLE001 - a dead replica has nothing to say
                pass
        for actor in actors:
            ray.kill(actor)
    except Exception as exc:  # noqa: BLE001 - the actors die with this driver anyway
        _log(f"while stopping the replicas: {_short(exc)}")
    finally:
        ray.shutdown()
    for state in states:  # a local server that outlived its actor (it should not): stopped here
        if local and state.get("pid") and pid_alive(state["pid"]):
            stop_pid(state["pid"], grace_s=5.0)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--driver"]:
        return _drive(argv[1])
    return _supervise(argv[0])


if __name__ == "__main__":
    # run as the importable module, not as __main__: Ray pickles the Replica class by its module's name
    from harness.engines import ray_engine

    sys.exit(ray_engine.main(sys.argv[1:]))
