"""Engines as plugins: one class per engine kind behind one small interface, found by name.

A model's ``engine:`` (models file) names its kind. The kind is looked up, in order, in
``pytest_llm_make_engine`` hook implementations (a ``conftest.py`` or plugin), the built-in
kinds, and the ``pytest_llm_harness.engines`` entry-point group of installed packages::

    [project.entry-points."pytest_llm_harness.engines"]
    my-engine = "my_package.engine:MyEngine"

so adding an engine touches one new file. See :class:`Engine` for what a kind implements.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from harness.engines.limiter import AdaptiveLimit
    from harness.models import ModelSpec

ENTRY_POINT_GROUP = "pytest_llm_harness.engines"

# built-in kinds: module:class, imported only when a model uses them
BUILTIN: dict[str, str] = {
    "openai": "harness.engines.remote:RemoteEngine",
    "bundled": "harness.engines.bundled_engine:BundledEngine",
    "cpu": "harness.engines.cpu_engine:CPUEngine",
    "vllm": "harness.engines.servers:VLLMServer",
    "sglang": "harness.engines.servers:SGLangServer",
    "llama-cpp": "harness.engines.servers:LlamaCppServer",
    "ray": "harness.engines.ray_engine:RayEngine",
    "vllm-offline": "harness.engines.vllm_offline:VLLMOfflineEngine",
    "scripted": "harness.testing.scripted:ScriptedEngine",
    "trained": "harness.training.engine:TrainedEngine",
}


@dataclass(frozen=True)
class EngineContext:
    """What an engine may use to start and to make a client: the run's folder and settings."""

    runtime_dir: Path  # shared by the controller and its xdist workers
    owner_pid: int  # the controller: servers it starts exit when it dies
    is_controller: bool
    settings: Any  # harness.run.Settings
    limiter: AdaptiveLimit | None = None  # the process's in-flight ceiling


class Engine:
    """One engine kind serving one model (``self.spec``).

    ``start`` makes the engine reachable and returns its record (kept in report.json: at least
    ``model``, ``kind``, ``base_url``, ``base_urls``, ``launch``); ``client`` returns an object with
    ``async send(Request) -> Reply`` and ``async close()``; ``identity`` is what makes two replies
    interchangeable in the response cache; ``metadata`` is the model's source for the report (secrets
    in URLs masked);
    ``stop`` ends what ``start`` began in this process. ``in_process`` engines load into the
    controller and are never started by an xdist worker."""

    kind: ClassVar[str] = ""
    in_process: ClassVar[bool] = False
    loads: ClassVar[bool] = False  # starting it takes a while (the terminal says so)

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        """What is wrong with a models-file entry for this kind, or None."""
        return None

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        urls = list(self.spec.base_urls)
        return {"model": self.spec.name, "kind": self.kind, "base_url": urls[0] if urls else None,
                "base_urls": urls, "launch": None}

    def client(self, record: dict[str, Any], ctx: EngineContext) -> Any:
        from harness.engines.client import OpenAICompatClient

        settings = ctx.settings
        return OpenAICompatClient(record.get("base_urls") or record["base_url"], self.api_key(), settings.timeout_s,
                                  settings.retries, deadline_s=settings.deadline_s or None, limiter=ctx.limiter)

    def identity(self) -> dict[str, Any]:
        return {"name": self.spec.name, "engine": self.kind, "model_path": self.spec.model_path,
                "revision": self.spec.options.get("revision")}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        from harness.redact import redact_url

        source = self.spec.model_path or self.spec.base_url
        return {"source": redact_url(source) if source else source, "weights_sha256": None}

    def stop(self, record: dict[str, Any]) -> None:
        from harness.engines.managed import pid_alive, stop_pid

        if record.get("pid") and pid_alive(record["pid"]):
            stop_pid(record["pid"])

    def api_key(self) -> str | None:
        import os

        return os.environ.get(self.spec.api_key_env)


def _load(target: str) -> type[Engine]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """Every engine kind this installation knows: built-in and from entry points."""
    return sorted({*BUILTIN, *_entry_points()})


def engine_class(kind: str) -> type[Engine] | None:
    if kind in BUILTIN:
        return _load(BUILTIN[kind])
    entry = _entry_points().get(kind)
    if entry is None:
        return None
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"entry point {kind!r} in {ENTRY_POINT_GROUP} is {cls!r}, not a harness Engine subclass")
    return cls


def spec_problem(spec: ModelSpec, hook: Any = None) -> str | None:
    """What is wrong with a models-file entry's engine, or None; a kind only a
    ``pytest_llm_make_engine`` hook serves is accepted when the hook makes it."""
    try:
        cls = engine_class(spec.engine)
    except (ImportError, TypeError) as exc:
        return f"engine {spec.engine!r} could not be loaded: {exc}"
    if cls is None:
        try:
            if hook is not None and _from_hook(spec, hook) is not None:
                return None
        except RuntimeError as exc:  # the hook raised: said as the entry's problem (the caller names the model)
            return str(exc).removeprefix(f"model {spec.name!r}: ")
        return f"engine must be one of {', '.join(known_kinds())}, not {spec.engine!r}"
    return cls.check(spec)


def _from_hook(spec: ModelSpec, hook: Any) -> Engine | None:
    """A ``pytest_llm_make_engine`` hook's engine for ``spec``, or None; a hook that raises is the model's engine
    failing to start (``EngineStartError``, naming the exception and the line that raised it), not a crash."""
    from harness.engines.managed import EngineStartError

    try:
        engine = hook.pytest_llm_make_engine(spec=spec)
    except Exception as exc:  # noqa: BLE001 - a user's hook: its failure is reported as the model's
        from harness.hookspec import raised

        raise EngineStartError(f"model {spec.name!r}: pytest_llm_make_engine raised {raised(exc, Path.cwd())}") from exc
    if engine is not None and not isinstance(engine, Engine):
        raise EngineStartError(f"model {spec.name!r}: pytest_llm_make_engine returned {type(engine).__name__}, "
                               f"not a harness Engine (harness.Engine)")
    return engine


def make_engine(spec: ModelSpec, hook: Any = None) -> Engine:
    """The engine serving ``spec``: a ``pytest_llm_make_engine`` hook's, else the registry's."""
    if hook is not None:
        engine = _from_hook(spec, hook)
        if engine is not None:
            return engine
    cls = engine_class(spec.engine)
    if cls is None:
        raise KeyError(f"model {spec.name!r}: unknown engine {spec.engine!r}; known: {', '.join(known_kinds())} "
                       f"(or one a pytest_llm_make_engine hook makes)")
    return cls(spec)
