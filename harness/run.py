"""Per-process run state: settings, models, the result board, engines and clients.

The controller creates it; xdist workers rebuild it from ``workerinput`` so that every
process talks to the same engines and reads the same result board.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.engines.client import OpenAICompatClient, Reply
from harness.engines.lease import api_key, ensure_engine
from harness.engines.loop import run_sync
from harness.engines.managed import wait_ready
from harness.models import ModelSpec
from harness.cache import ResponseCache
from harness.store import ResultStore
from harness.suite import Case, Suite

STATE_KEY = pytest.StashKey["RunState"]()
WORKERINPUT_KEY = "llm_harness"


@dataclass(frozen=True)
class Settings:
    """Options that shape requests and engines (from `--llm-*` and `llm_*` ini keys)."""

    concurrency: int = 16
    timeout_s: float = 300.0
    retries: int = 2
    engine_timeout_s: float = 900.0
    max_batch: int = 16
    wait_ready_s: float = 0.0  # remote servers: wait up to this long for the model to be listed
    wait_interval_s: float = 5.0
    cache_mode: str = "read-write"
    cache_path: str = ""  # empty: <cache root>/responses.sqlite


@dataclass
class RunState:
    run_id: str
    runtime_dir: Path
    owner_pid: int
    models: list[ModelSpec]
    settings: Settings
    is_controller: bool
    _store: ResultStore | None = field(default=None, repr=False)
    _engines: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _clients: dict[str, OpenAICompatClient] = field(default_factory=dict, repr=False)
    _cache: ResponseCache | None = field(default=None, repr=False)

    @classmethod
    def new(cls, models: list[ModelSpec], settings: Settings) -> "RunState":
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
        runtime = Path(tempfile.mkdtemp(prefix=f"llm-harness-{run_id}-"))
        return cls(run_id, runtime, os.getpid(), models, settings, True)

    def to_workerinput(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "runtime_dir": str(self.runtime_dir), "owner_pid": self.owner_pid,
                "models": [m.to_dict() for m in self.models], "settings": asdict(self.settings)}

    @classmethod
    def from_workerinput(cls, raw: dict[str, Any]) -> "RunState":
        return cls(raw["run_id"], Path(raw["runtime_dir"]), raw["owner_pid"],
                   [ModelSpec.from_dict(m) for m in raw["models"]], Settings(**raw["settings"]), False)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def spec(self, model: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == model:
                return spec
        raise KeyError(f"model {model!r} is not part of this run ({', '.join(self.model_names)})")

    def store(self) -> ResultStore:
        if self._store is None:
            self._store = ResultStore(self.runtime_dir / "results.sqlite")
        return self._store

    def response_cache(self) -> ResponseCache | None:
        """The persistent response cache, or None when `--llm-cache off`."""
        if self.settings.cache_mode == "off":
            return None
        if self._cache is None:
            from harness.engines.bundled import default_cache_root

            path = Path(self.settings.cache_path) if self.settings.cache_path else \
                default_cache_root() / "responses.sqlite"
            self._cache = ResponseCache(path, self.settings.cache_mode)
        return self._cache

    def model_identity(self, model: str) -> dict[str, Any]:
        """What makes two replies interchangeable: name, engine kind, weights when known."""
        spec = self.spec(model)
        if spec.managed:
            from harness.engines.bundled import bundled_sha256

            return {"name": model, "engine": "bundled-cpu", "weights_sha256": bundled_sha256()}
        return {"name": model, "engine": "openai-compatible"}

    def engine(self, model: str) -> dict[str, Any]:
        """The engine serving a model, started now if this run has not started it yet."""
        if model not in self._engines:
            spec = self.spec(model)
            record = ensure_engine(spec, self.runtime_dir, self.owner_pid, self.settings.engine_timeout_s,
                                   self.settings.max_batch)
            if not spec.managed and self.settings.wait_ready_s > 0:
                # the InternBootcamp practice: a server still loading is waited for, not failed on
                wait_ready(record["base_url"], model, self.settings.wait_ready_s,
                           interval_s=self.settings.wait_interval_s, api_key=api_key(spec))
            self._engines[model] = record
        return self._engines[model]

    def client(self, model: str) -> OpenAICompatClient:
        if model not in self._clients:
            record = self.engine(model)
            self._clients[model] = OpenAICompatClient(record["base_url"], api_key(self.spec(model)),
                                                      self.settings.timeout_s, self.settings.retries)
        return self._clients[model]

    def reply_for(self, nodeid: str, suite: Suite, case: Case, model: str) -> dict[str, Any]:
        """An item's reply: from generation when it was planned, else sent now."""
        store = self.store()
        if store.is_planned(nodeid):
            reply = store.wait(nodeid, self.settings.timeout_s * (self.settings.retries + 1) + 60)
            if reply is not None:
                return reply
            return Reply(None, "no reply from generation in time", 0.0).to_dict()
        from harness.generation import build_request

        return run_sync(self.client(model).send(build_request(suite, case, model))).to_dict()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def run_state(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]
