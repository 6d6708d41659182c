"""Which models a run evaluates and which engine serves each one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.engines.bundled import BUNDLED_MODEL_NAME

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
REMOTE = "openai"  # a server someone else runs; every other kind is in harness.engines.registry
_KEYS = {"name", "base_url", "base_urls", "api_key_env", "engine", "model_path", "options", "args", "gpus", "role",
         "generation", "variant_of"}
_VARIANT_KEYS = {"name", "variant_of", "generation", "role"}
ROLES = ("test", "judge")  # judge: a judge model only, never a model under test


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and the engine that serves it."""

    name: str
    base_urls: tuple[str, ...] = ()  # remote replicas; requests are spread over them
    api_key_env: str = DEFAULT_API_KEY_ENV
    engine: str = "bundled"
    model_path: str | None = None  # managed and in-process engines: weights folder or file
    options: dict[str, Any] = field(default_factory=dict)  # engine settings (tensor_parallel_size, ...)
    args: tuple[str, ...] = ()  # extra command-line arguments of a managed server
    gpus: tuple[int, ...] | None = None
    role: str = "test"  # "judge": serves judge requests only (no suite runs on it)
    generation: dict[str, Any] = field(default_factory=dict)  # this model's own settings, over every suite's
    variant_of: str | None = None  # served by that model's engine, under that name (one model, other settings)

    @property
    def base_url(self) -> str | None:
        return self.base_urls[0] if self.base_urls else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base_urls": list(self.base_urls), "api_key_env": self.api_key_env,
                "engine": self.engine, "model_path": self.model_path, "options": dict(self.options),
                "args": list(self.args), "gpus": list(self.gpus) if self.gpus is not None else None,
                "role": self.role, "generation": dict(self.generation), "variant_of": self.variant_of}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelSpec":
        gpus = raw.get("gpus")
        return cls(raw["name"], tuple(raw.get("base_urls") or ()), raw.get("api_key_env") or DEFAULT_API_KEY_ENV,
                   raw.get("engine") or "bundled", raw.get("model_path"), dict(raw.get("options") or {}),
                   tuple(raw.get("args") or ()), tuple(gpus) if gpus is not None else None, raw.get("role") or "test",
                   dict(raw.get("generation") or {}), raw.get("variant_of"))


class ModelConfigError(ValueError):
    pass


def trained_specs(trained: Any) -> list[ModelSpec]:
    """A suite's own models (``model: {train: ...}``, a :class:`harness.suite.TrainedModel`): the job's
    checkpoint and, unless the suite compares nothing, the model before training, reference first."""
    job = str(trained.job)
    specs = {trained.initial: ModelSpec(trained.initial, engine="trained", model_path=job,
                                        options={"checkpoint": "initial"}),
             trained.job_name: ModelSpec(trained.job_name, engine="trained", model_path=job)}
    return [specs[name] for name in trained.names]


def split_urls(value: str | list[str] | None) -> tuple[str, ...]:
    """`a,b` or a list: several base URLs of one model (data-parallel replicas)."""
    if not value:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(str(url).strip() for url in items if str(url).strip())


def parse_gpus(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError as exc:
        raise ModelConfigError(f"--llm-gpus takes GPU indices like 0,1, not {value!r}") from exc


def resolve_models(names: list[str], base_url: str | None, api_key_env: str | None,
                   models_file: str | None, rootdir: Path, gpus: str | None = None,
                   check: Callable[[ModelSpec], str | None] | None = None) -> list[ModelSpec]:
    """Models from `--llm-model`/`--llm-base-url` and/or a models file; the bundled model by default.

    ``check`` says what is wrong with an entry's engine (harness.engines.registry.spec_problem), or None."""
    key_env = api_key_env or DEFAULT_API_KEY_ENV
    default_gpus = parse_gpus(gpus)
    specs: list[ModelSpec] = []
    if models_file:
        specs.extend(_read_models_file(rootdir / models_file if not Path(models_file).is_absolute()
                                       else Path(models_file), key_env, default_gpus, check))
    urls = split_urls(base_url)
    if urls and not names:
        raise ModelConfigError("--llm-base-url needs --llm-model NAME: the model name the server lists")
    for name in names:
        if name == BUNDLED_MODEL_NAME and not urls:
            specs.append(ModelSpec(name))
        elif not urls:
            raise ModelConfigError(
                f"model {name!r} needs --llm-base-url (only {BUNDLED_MODEL_NAME!r} is served by the harness "
                "itself; vLLM, SGLang and llama.cpp servers it starts are declared in --llm-models-file)")
        else:
            specs.append(ModelSpec(name, urls, key_env, REMOTE))
    if all(spec.role == "judge" for spec in specs):
        # a models file of judges only: the models under test are still the default
        specs.insert(0, ModelSpec(BUNDLED_MODEL_NAME))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ModelConfigError(f"model {spec.name!r} given twice")
        seen.add(spec.name)
    return specs


def _read_models_file(path: Path, key_env: str, default_gpus: tuple[int, ...] | None,
                      check: Callable[[ModelSpec], str | None] | None = None) -> list[ModelSpec]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{path}: cannot read models file: {exc}") from exc
    entries = raw.get("models") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise ModelConfigError(f"{path}: expected a list of models (or a mapping with 'models')")
    specs = [_entry(path, index, entry, key_env, default_gpus, check) for index, entry in enumerate(entries, 1)]
    names = {spec.name: spec for spec in specs}
    for spec in specs:
        if spec.variant_of is None:
            continue
        base = names.get(spec.variant_of)
        if base is None and spec.variant_of != BUNDLED_MODEL_NAME:
            raise ModelConfigError(f"{path}: model {spec.name!r}: variant_of {spec.variant_of!r} is not a model of this "
                                   f"file (nor the bundled {BUNDLED_MODEL_NAME})")
        if base is not None and base.variant_of is not None:
            raise ModelConfigError(f"{path}: model {spec.name!r}: variant_of {spec.variant_of!r}, itself a variant: "
                                   f"name the model that has the engine ({base.variant_of!r})")
    return specs


def _entry(path: Path, index: int, entry: Any, key_env: str, default_gpus: tuple[int, ...] | None,
           check: Callable[[ModelSpec], str | None] | None = None) -> ModelSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ModelConfigError(f"{path}: model #{index} needs a 'name'")
    name = entry["name"]
    unknown = set(entry) - _KEYS
    if unknown:
        raise ModelConfigError(f"{path}: model {name!r}: unknown key {sorted(unknown)[0]!r} "
                               f"(known: {', '.join(sorted(_KEYS))})")
    urls = split_urls(entry.get("base_urls") or entry.get("base_url"))
    engine = entry.get("engine") or (REMOTE if urls else "bundled")
    if not isinstance(engine, str):
        raise ModelConfigError(f"{path}: model {name!r}: engine must be a name, not {engine!r}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ModelConfigError(f"{path}: model {name!r}: options must be a mapping")
    args = entry.get("args") or []
    if not isinstance(args, list):
        raise ModelConfigError(f"{path}: model {name!r}: args must be a list")
    generation = entry.get("generation") or {}
    if not isinstance(generation, dict):
        raise ModelConfigError(f"{path}: model {name!r}: generation must be a mapping of settings")
    from harness.suite import GENERATION_KEYS, generation_problem

    unknown_gen = sorted(set(generation) - set(GENERATION_KEYS))
    if unknown_gen:
        raise ModelConfigError(f"{path}: model {name!r}: unknown generation setting {unknown_gen[0]!r} "
                               f"(known: {', '.join(GENERATION_KEYS)})")
    for key, value in generation.items():
        if (problem := generation_problem(key, value)) is not None:
            raise ModelConfigError(f"{path}: model {name!r}: generation.{key} {problem}")
    variant_of = entry.get("variant_of")
    if variant_of is not None:
        if not isinstance(variant_of, str) or not variant_of.strip() or variant_of == name:
            raise ModelConfigError(f"{path}: model {name!r}: variant_of names another model of the file, whose "
                                   f"engine serves this one, not {variant_of!r}")
        extra = sorted(set(entry) - _VARIANT_KEYS)
        if extra:
            raise ModelConfigError(f"{path}: model {name!r}: a variant (variant_of) takes its engine from "
                                   f"{variant_of!r}: {extra[0]!r} does not apply (keys: {', '.join(sorted(_VARIANT_KEYS))})")
        role = entry.get("role", "test")
        if role not in ROLES:
            raise ModelConfigError(f"{path}: model {name!r}: role must be one of {', '.join(ROLES)}, not {role!r}")
        return ModelSpec(name, role=role, generation=dict(generation), variant_of=variant_of)
    gpus = entry.get("gpus")
    role = entry.get("role", "test")
    if role not in ROLES:
        raise ModelConfigError(f"{path}: model {name!r}: role must be one of {', '.join(ROLES)}, not {role!r}")
    spec = ModelSpec(name, urls, entry.get("api_key_env") or key_env, engine, entry.get("model_path"),
                     dict(options), tuple(str(a) for a in args),
                     tuple(int(g) for g in gpus) if gpus is not None else default_gpus, role, dict(generation))
    problem = check(spec) if check is not None else None
    if problem:
        raise ModelConfigError(f"{path}: model {name!r}: {problem}")
    return spec
