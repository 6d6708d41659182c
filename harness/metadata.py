"""Run metadata for reproducibility: code, environment, models, data (secrets redacted)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.packages import package_versions
from harness.redact import key_secrets, redact_data, url_secrets
from harness.suite import Suite, file_digest


def harness_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-llm-harness")
    except PackageNotFoundError:
        return "unknown"


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """The commit checked out under root and whether a tracked file differs from it (None, None: no git or
    no repository)."""
    return GitProbe(root).result()


class GitProbe:
    """git_state, asked when made and read when needed: a run makes one while its first requests are in flight,
    so that ``git status`` (a stat of every tracked file: long in a large checkout) is not waited for after the
    last reply."""

    def __init__(self, root: Path) -> None:
        self._state: tuple[str | None, bool | None] | None = None
        self._procs: list[subprocess.Popen[str]] = []
        # it runs beside the run's tests: `git status` then takes no optional lock (its refresh of the index), so
        # a test that runs git in the same checkout meanwhile never meets an index.lock of ours
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        try:
            for argv in (["git", "rev-parse", "--verify", "-q", "HEAD"],
                         ["git", "status", "--porcelain", "--untracked-files=no"]):
                self._procs.append(subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        except OSError:  # no git, or no such folder
            self.close()
            self._state = (None, None)

    def result(self) -> tuple[str | None, bool | None]:
        if self._state is None:
            self._state = self._read()
        return self._state

    def _read(self) -> tuple[str | None, bool | None]:
        if len(self._procs) != 2:  # closed before it was read
            return None, None
        head, status = self._procs
        try:
            commit = head.communicate(timeout=10)[0].strip()
            changes = status.communicate(timeout=10)[0].strip()
        except (OSError, subprocess.SubprocessError):
            return None, None
        finally:
            self.close()
        if head.returncode != 0 or not commit:
            return None, None
        return commit, (changes != "") if status.returncode == 0 else None

    def close(self) -> None:
        """Stop and reap what still runs (a run that ended without reports)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self._procs = []


def model_secrets(spec: Any) -> list[str]:
    """What must never be written down for a model: its URLs' credentials and its API key."""
    key_env = getattr(spec, "api_key_env", None)
    return ([secret for url in getattr(spec, "base_urls", ()) for secret in url_secrets(url)]
            + key_secrets(os.environ.get(key_env) if key_env else None))


def model_metadata(spec: Any, kind: Any, engine: dict[str, Any] | None) -> dict[str, Any]:
    """A model's entry in report.json: its source (from its engine kind) and the engine's record,
    with credentials in URLs, secret query values and the API key masked."""
    entry: dict[str, Any] = {"name": spec.name, **kind.metadata(engine), "engine": None}
    if engine is not None:
        entry["engine"] = {k: engine.get(k) for k in ("kind", "base_url", "base_urls", "launch", "ready_s")}
        if engine.get("log"):
            entry["engine"]["log"] = Path(engine["log"]).name
    return redact_data(entry, model_secrets(spec))


def dataset_metadata(suites: list[Suite], root: Path) -> list[dict[str, Any]]:
    rows = []
    for suite in suites:
        for dataset in suite.datasets:
            md5, count = file_digest(dataset)
            path = dataset.relative_to(root).as_posix() if dataset.is_relative_to(root) else str(dataset)
            rows.append({"suite": suite.name, "path": path, "md5": md5, "rows": count})
    return rows


def environment() -> dict[str, Any]:
    """The interpreter, the platform and the versions of the packages that matter (None: not installed)."""
    return {"harness_version": harness_version(), "python": platform.python_version(),
            "platform": platform.platform(), "executable": sys.executable, "packages": package_versions()}
