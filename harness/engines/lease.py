"""Servers the harness starts: one per model per run, whichever process asks first.

Managed engines are the bundled CPU server and the vLLM, SGLang and llama.cpp servers
(:class:`ManagedServer` subclasses). The first process that needs one (the controller, or an xdist worker whose
hand-written test uses ``llm_client``) starts it under a file lock and records it in the run's
runtime folder; every other process reads that record. The controller stops them all at the end.
"""

from __future__ import annotations

import fcntl
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from harness.engines.managed import EngineStartError, free_port, pid_alive, start_server, stop_pid, wait_ready
from harness.engines.registry import Engine, EngineContext
from harness.models import ModelSpec


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def engine_record_path(runtime_dir: Path, model: str) -> Path:
    return runtime_dir / f"engine-{_slug(model)}.json"


def engine_log_path(runtime_dir: Path, model: str) -> Path:
    """Where a managed server's output goes (copied into the report folder at the end)."""
    return runtime_dir / f"engine-{_slug(model)}.log"


@contextmanager
def engine_lock(runtime_dir: Path, model: str, *,
                ready: bool = False) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """Holds the model's engine lock in the runtime folder (whoever asks first starts the engine; the others wait
    here). Yields the engine record's path and the record of an engine already running (its pid alive; with
    ``ready``, only a record that says ``ready``), or None: start it, still holding the lock. Raises the failure
    another process recorded for its start."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    record_path = engine_record_path(runtime_dir, model)
    with open(runtime_dir / f"engine-{_slug(model)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = None
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("failed"):
                raise EngineStartError(record["failed"])
            if (record.get("ready") or not ready) and pid_alive(record["pid"]):
                running = record
        yield record_path, running


class ManagedServer(Engine):
    """A server the harness starts on a free 127.0.0.1 port, shared by every process of the run.

    Subclasses say how to launch it (``launch``); starting, sharing, waiting and stopping are here."""

    loads = True
    record_kind = ""  # the kind written in the engine record (default: ``kind``)

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        if spec.base_urls:
            return f"base_url is for engine openai; engine {spec.engine} is started by the harness"
        return None

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        """argv, extra environment and the launch record (kept in the report) of the server."""
        raise NotImplementedError

    def alongside(self) -> bool:
        """Whether this server may start while the run's other servers start (launched together, then waited
        for together): True for CPU servers. GPU servers start one after another, as two servers profiling
        the free memory of one GPU at once could both claim it."""
        return False

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        with self.launched(ctx) as ready:
            return ready()

    @contextmanager
    def launched(self, ctx: EngineContext) -> Iterator[Callable[[], dict[str, Any]]]:
        """Launch the server (unless a process of the run already did) and yield the function that waits until
        it is ready and returns its record; the engine's lock is held until the context ends, so the run's other
        processes wait for the same server instead of starting one."""
        spec = self.spec
        runtime_dir = ctx.runtime_dir
        with engine_lock(runtime_dir, spec.name) as (record_path, running):
            if running is not None:
                yield lambda: running
                return
            port = free_port()
            log_path = engine_log_path(runtime_dir, spec.name)
            argv, env, launch = self.launch(port, ctx)
            started = time.monotonic()
            proc = start_server(argv, log_path, env)
            base_url = f"http://127.0.0.1:{port}/v1"
            record = {"model": spec.name, "kind": self.record_kind or self.kind, "base_url": base_url,
                      "base_urls": [base_url], "pid": proc.pid, "launch": launch, "log": str(log_path)}
            # written before the wait so the controller can stop it even if we are interrupted
            record_path.write_text(json.dumps(record))

            def ready() -> dict[str, Any]:
                try:
                    wait_ready(record["base_url"], spec.name, ctx.settings.engine_timeout_s, proc, log_path)
                except BaseException as exc:
                    stop_pid(proc.pid)
                    record["failed"] = str(exc)
                    record_path.write_text(json.dumps(record))
                    raise
                record["ready_s"] = round(time.monotonic() - started, 2)
                record_path.write_text(json.dumps(record))
                return record

            yield ready


def start_together(servers: list[ManagedServer], ctx: EngineContext) -> list[dict[str, Any]]:
    """Start several servers side by side: each launched in turn (a trained model's job trains here, in this
    thread), then each waited for; their records in order. A server that fails raises as ``start`` does; the
    others are recorded, so the run's end stops them."""
    with ExitStack() as stack:
        waits = [stack.enter_context(server.launched(ctx)) for server in servers]
        return [ready() for ready in waits]


def stop_engines(runtime_dir: Path) -> list[dict[str, Any]]:
    """Stop every managed engine recorded in the runtime folder; returns their records as each engine left them
    (read again after its stop: an engine may write its last word on the way out, e.g. engine ray's replicas
    checked at the stop, one that died since its driver's last look marked dead)."""
    records = []
    for path in sorted(runtime_dir.glob("engine-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("pid") and pid_alive(record["pid"]):
            stop_pid(record["pid"])
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # the record as it was before the stop
        records.append(record)
    return records

