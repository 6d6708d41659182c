"""Server processes the harness starts itself: free port, readiness wait, log, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


class EngineStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def model_listed(base_url: str, model: str, api_key: str | None = None, timeout_s: float = 5.0) -> bool:
    """True when GET {base_url}/models answers and lists the model."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(entry.get("id") == model for entry in payload.get("data", []) if isinstance(entry, dict))


def start_server(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, its output going to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # own session: a Ctrl-C in the terminal reaches pytest, which then stops the server itself
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **env} if env else None)
        except OSError as exc:  # e.g. `vllm` is not installed
            raise EngineStartError(f"cannot start {argv[0]!r}: {exc}") from exc


def wait_ready(base_url: str, model: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
               log_path: Path | None = None, interval_s: float = 0.5, api_key: str | None = None) -> float:
    """Poll until the model is listed; raise EngineStartError with the log tail on exit or timeout."""
    started = time.monotonic()
    while True:
        if model_listed(base_url, model, api_key):
            return time.monotonic() - started
        if proc is not None and proc.poll() is not None:
            raise EngineStartError(f"engine for {model!r} exited with code {proc.returncode} before it was ready"
                                   + _log_hint(log_path))
        if time.monotonic() - started > timeout_s:
            raise EngineStartError(f"engine for {model!r} at {base_url} not ready after {timeout_s:g} s"
                                   + _log_hint(log_path))
        time.sleep(interval_s)


def _log_hint(log_path: Path | None) -> str:
    return f"; log {log_path}:\n{log_tail(log_path)}" if log_path is not None else ""


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_pid(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                # reap it if it is our child, so it does not linger as a zombie
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not pid_alive(pid):
                    return
            time.sleep(0.05)
