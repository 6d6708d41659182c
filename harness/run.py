"""Per-process run state: settings, models, the result board, engines and clients.

The controller creates it; xdist workers rebuild it from ``workerinput`` so that every
process talks to the same engines and reads the same result board.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness.board import Board, SqliteBoard
from harness.engines.client import Reply
from harness.engines.limiter import AdaptiveLimit
from harness.engines.loop import run_sync
from harness.engines.registry import Engine, EngineContext, make_engine
from harness.models import ModelSpec
from harness.cache import ResponseCache, cache_warner

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
    deadline_s: float = 900.0  # per request, all attempts and waits included; 0: none
    retry_passes: int = 1  # passes over transiently failed requests after the main pass
    stream: bool = False  # stream every request (time to first token, time per output token)
    generation_set: dict[str, Any] = field(default_factory=dict)  # --llm-set key=value: over every suite's settings
    judge_model: str = ""  # the judge of suites whose judge names no model (--llm-judge-model)
    progress_s: float = 10.0  # seconds between live progress lines on the terminal (0: none)


@dataclass
class RunState:
    run_id: str
    runtime_dir: Path
    owner_pid: int
    models: list[ModelSpec]  # the run's models (models file, --llm-model, the bundled default)
    settings: Settings
    is_controller: bool
    # models a suite names for itself (model: {train: ...}), registered by name when a process loads such a
    # suite (collection; the xdist controller when it rebuilds the workers' items): never a plain suite's
    suite_specs: dict[str, ModelSpec] = field(default_factory=dict)
    _board: Board | None = field(default=None, repr=False)
    _limiter: AdaptiveLimit | None = field(default=None, repr=False)
    _engines: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _cache: ResponseCache | None = field(default=None, repr=False)
    _kinds: dict[str, Engine] = field(default_factory=dict, repr=False)
    hook: Any = field(default=None, repr=False)  # pytest's hook relay, for pytest_llm_make_engine
    # the controller's hook for a gate item that runs in its own process (no xdist)
    before_gate: Callable[[str], None] | None = field(default=None, repr=False)

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
        """The run's models: those every suite without a model of its own runs on."""
        return [m.name for m in self.models if m.role != "judge"]

    @property
    def all_models(self) -> list[ModelSpec]:
        """The run's models, then the suites' own (in the order their suites were loaded)."""
        return [*self.models, *self.suite_specs.values()]

    @property
    def all_model_names(self) -> list[str]:
        return [m.name for m in self.all_models]

    def spec(self, model: str) -> ModelSpec:
        for spec in self.all_models:
            if spec.name == model:
                return spec
        raise KeyError(f"model {model!r} is not part of this run ({', '.join(self.all_model_names)})")

    def board(self) -> Board:
        """The reply board: the controller's own without xdist, else the shared SQLite one."""
        if self._board is None:
            self._board = SqliteBoard(self.runtime_dir / "replies.sqlite", None if self.is_controller
                                      else self.owner_pid)
        return self._board

    def use_board(self, board: Board) -> None:
        self._board = board

    def limiter(self) -> AdaptiveLimit:
        """This process's in-flight ceiling (`--llm-concurrency`), shared by all its clients."""
        if self._limiter is None:
            self._limiter = AdaptiveLimit(self.settings.concurrency)
        return self._limiter

    def response_cache(self) -> ResponseCache | None:
        """The persistent response cache, or None when `--llm-cache off`."""
        if self.settings.cache_mode == "off":
            return None
        if self._cache is None:
            from harness.engines.bundled import default_cache_root

            path = Path(self.settings.cache_path) if self.settings.cache_path else \
                default_cache_root() / "responses.sqlite"
            self._cache = ResponseCache(path, self.settings.cache_mode, warn=cache_warner(self.hook))
        return self._cache

    def context(self) -> EngineContext:
        return EngineContext(self.runtime_dir, self.owner_pid, self.is_controller, self.settings, self.limiter())

    def served_name(self, model: str) -> str:
        """The name a model's engine serves it under: its own, or for a variant (``variant_of``) its base's."""
        try:
            return self.spec(model).variant_of or model
        except KeyError:  # a variant's base that the run does not test itself (the bundled model)
            return model

    def _engine_spec(self, model: str) -> ModelSpec:
        name = self.served_name(model)
        try:
            return self.spec(name)
        except KeyError:  # a variant of the bundled model, which the run does not test itself
            return ModelSpec(name)

    def engine_of(self, model: str) -> Engine:
        """The engine kind serving a model (from a pytest_llm_make_engine hook or the registry); variants
        of one model share its engine."""
        served = self.served_name(model)
        if served not in self._kinds:
            self._kinds[served] = make_engine(self._engine_spec(model), self.hook)
        return self._kinds[served]

    def model_identity(self, model: str) -> dict[str, Any]:
        """What makes two replies interchangeable: name, engine kind, weights when known."""
        engine = self.engine_of(model)
        with _starting(f"model {model!r}", engine, "gave no identity"):
            return engine.identity()

    def engine(self, model: str) -> dict[str, Any]:
        """The engine serving a model, started (or reached) now if this process has not yet."""
        model = self.served_name(model)
        if model not in self._engines:
            engine = self.engine_of(model)
            if engine.in_process and not self.is_controller:
                from harness.engines.managed import EngineStartError

                raise EngineStartError(
                    f"model {model!r} runs in-process (engine {engine.kind}) in the controller only; loading it in "
                    f"every xdist worker would put several engines on one GPU. Use engine: vllm (a managed server) "
                    f"for hand-written llm_client tests under -n, or run without -n")
            with _starting(f"model {model!r}", engine, "did not start"):
                self._engines[model] = engine.start(self.context())
        return self._engines[model]

    def alongside(self, models: list[str]) -> list[str]:
        """Of these models, those whose engines are not started yet and may start side by side (CPU servers), when
        there are two or more; else none."""
        from harness.engines.lease import ManagedServer

        found = [model for model in dict.fromkeys(self.served_name(m) for m in models)
                 if model not in self._engines and isinstance(engine := self.engine_of(model), ManagedServer)
                 and engine.alongside()]
        return found if len(found) > 1 else []

    def start_alongside(self, models: list[str]) -> None:
        """Start the engines of these models (as ``alongside`` returned them) together: each launched, then all
        waited for."""
        from harness.engines.lease import ManagedServer, start_together

        servers = [engine for model in models if isinstance(engine := self.engine_of(model), ManagedServer)]
        with _starting(f"models {', '.join(map(repr, models))}", None, "did not start"):
            self._engines.update(zip(models, start_together(servers, self.context())))

    def started_engines(self) -> dict[str, dict[str, Any]]:
        """The records of the engines this process started or reached, by model."""
        return dict(self._engines)

    def client(self, model: str) -> Any:
        """The client of a model: HTTP for every served engine, the engine itself when in-process."""
        model = self.served_name(model)
        if model not in self._clients:
            record = self.engine(model)
            engine = self.engine_of(model)
            with _starting(f"model {model!r}", engine, "gave no client"):
                self._clients[model] = engine.client(record, self.context())
        return self._clients[model]

    def planned_reply(self, nodeid: str) -> dict[str, Any]:
        """A case item's reply, as generation posts it (waited for); an error reply when none came."""
        board = self.board()
        if not board.is_planned(nodeid):
            return Reply(None, "no reply: this case was not planned for generation (collected after the run "
                         "started?)", 0.0).to_dict()
        reply = board.wait(nodeid)
        if reply is not None:
            return reply
        why = getattr(board, "reason", None) or "generation stopped before this case (interrupted or -x)"
        return Reply(None, f"no reply: {why}", 0.0).to_dict()

    def gate_verdict(self, nodeid: str) -> dict[str, Any]:
        """A gate item's verdict, waited for until the controller has judged its suite."""
        if self.before_gate is not None:
            self.before_gate(nodeid)
        verdict = self.board().wait_verdict(nodeid)
        if verdict is None:
            return {"gate": {"expr": nodeid, "metric": "", "op": "", "threshold": 0.0, "value": None,
                             "status": "failed", "reason": "the run's controller went away before judging"},
                    "cases": 0, "total_cases": 0}
        return verdict

    def close(self) -> None:
        for client in self._clients.values():
            try:
                run_sync(client.close(), timeout=10)
            except Exception:  # noqa: BLE001 - closing sockets at exit must not fail the run
                pass
        self._clients.clear()
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None


@contextmanager
def _starting(what: str, engine: Engine | None, failed: str) -> Iterator[None]:
    """An engine's own failure to start (``EngineStartError``, with its log) passes as it is; anything else it
    raises (a third-party kind's bug, a missing binary) becomes one, naming the model, the kind and the line, so
    that the run ends saying so rather than with an internal error."""
    from harness.engines.managed import EngineStartError

    try:
        yield
    except EngineStartError:
        raise
    except Exception as exc:  # noqa: BLE001
        from harness.hookspec import raised

        kind = f" (engine {engine.kind})" if engine is not None else ""
        raise EngineStartError(f"{what}{kind} {failed}: {raised(exc, Path.cwd())}") from exc


def run_state(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]
