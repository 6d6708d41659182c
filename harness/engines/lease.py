"""One engine per model per run, whichever process asks first.

Managed engines are the bundled CPU server and the vLLM, SGLang and llama.cpp servers
(:mod:`harness.engines.launchers`). The first process that needs one (the controller, or an xdist worker whose
hand-written test uses ``llm_client``) starts it under a file lock and records it in the run's
runtime folder; every other process reads that record. The controller stops them all at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.engines.managed import EngineStartError, free_port, pid_alive, start_server, stop_pid, wait_ready
from harness.models import ModelSpec


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def engine_record_path(runtime_dir: Path, model: str) -> Path:
    return runtime_dir / f"engine-{_slug(model)}.json"


def ensure_engine(spec: ModelSpec, runtime_dir: Path, owner_pid: int, ready_timeout_s: float,
                  max_batch: int = 16) -> dict[str, Any]:
    """The engine record for a model: its base URLs, and for a managed engine its pid, launch and log."""
    if not spec.managed:
        return {"model": spec.name, "kind": "openai-compatible" if not spec.in_process else spec.engine,
                "base_url": spec.base_url, "base_urls": list(spec.base_urls), "launch": None}
    runtime_dir.mkdir(parents=True, exist_ok=True)
    record_path = engine_record_path(runtime_dir, spec.name)
    with open(runtime_dir / f"engine-{_slug(spec.name)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("failed"):
                raise EngineStartError(record["failed"])
            if pid_alive(record["pid"]):
                return record
        port = free_port()
        log_path = runtime_dir / f"engine-{_slug(spec.name)}.log"
        argv, env, launch = _launch(spec, port, owner_pid, max_batch)
        started = time.monotonic()
        proc = start_server(argv, log_path, env)
        base_url = f"http://127.0.0.1:{port}/v1"
        record = {"model": spec.name, "kind": "bundled-cpu" if spec.engine == "bundled" else spec.engine,
                  "base_url": base_url, "base_urls": [base_url], "pid": proc.pid, "launch": launch,
                  "log": str(log_path)}
        # written before the wait so the controller can stop it even if we are interrupted
        record_path.write_text(json.dumps(record))
        try:
            wait_ready(record["base_url"], spec.name, ready_timeout_s, proc, log_path)
        except BaseException as exc:
            stop_pid(proc.pid)
            record["failed"] = str(exc)
            record_path.write_text(json.dumps(record))
            raise
        record["ready_s"] = round(time.monotonic() - started, 2)
        record_path.write_text(json.dumps(record))
        return record


def _launch(spec: ModelSpec, port: int, owner_pid: int,
            max_batch: int) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """argv, extra environment and the launch record (kept in the report) of a managed server."""
    if spec.engine == "bundled":
        # 50 ms: requests sent together land in one batch instead of a small first one
        argv = [sys.executable, "-m", "harness.engines.cpu_server", "--model", "bundled",
                "--served-model-name", spec.name, "--host", "127.0.0.1", "--port", str(port),
                "--max-batch", str(max_batch), "--batch-wait-ms", "50", "--parent-pid", str(owner_pid)]
        return argv, {}, {"argv": argv, "max_batch": max_batch}
    from harness.engines.launchers import launch_for

    assert spec.model_path is not None  # checked when the models file was read
    try:
        launch = launch_for(spec.engine, spec.model_path, spec.name, port, dict(spec.options), spec.args,
                            spec.gpus)
    except ValueError as exc:
        raise EngineStartError(f"model {spec.name!r}: {exc}") from exc
    return launch.argv, launch.env, {**launch.to_dict(), "options": dict(spec.options)}


def stop_engines(runtime_dir: Path) -> list[dict[str, Any]]:
    """Stop every managed engine recorded in the runtime folder; returns their records."""
    records = []
    for path in sorted(runtime_dir.glob("engine-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("pid") and pid_alive(record["pid"]):
            stop_pid(record["pid"])
        records.append(record)
    return records


def api_key(spec: ModelSpec) -> str | None:
    return os.environ.get(spec.api_key_env)
