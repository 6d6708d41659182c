"""Which models a run evaluates and where each one is served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.engines.bundled import BUNDLED_MODEL_NAME

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class ModelSpec:
    """A model by name: the bundled CPU model (started by the harness) or an OpenAI-compatible server."""

    name: str
    base_url: str | None = None  # None: the bundled engine, managed by the harness
    api_key_env: str = DEFAULT_API_KEY_ENV

    @property
    def managed(self) -> bool:
        return self.base_url is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.base_url, "api_key_env": self.api_key_env}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelSpec":
        return cls(raw["name"], raw.get("base_url"), raw.get("api_key_env") or DEFAULT_API_KEY_ENV)


class ModelConfigError(ValueError):
    pass


def resolve_models(names: list[str], base_url: str | None, api_key_env: str | None,
                   models_file: str | None, rootdir: Path) -> list[ModelSpec]:
    """Models from `--llm-model`/`--llm-base-url` and/or a models file; the bundled model by default."""
    key_env = api_key_env or DEFAULT_API_KEY_ENV
    specs: list[ModelSpec] = []
    if models_file:
        specs.extend(_read_models_file(rootdir / models_file if not Path(models_file).is_absolute()
                                       else Path(models_file), key_env))
    if base_url and not names:
        raise ModelConfigError("--llm-base-url needs --llm-model NAME: the model name the server lists")
    for name in names:
        if name == BUNDLED_MODEL_NAME and not base_url:
            specs.append(ModelSpec(name))
        elif not base_url:
            raise ModelConfigError(
                f"model {name!r} needs --llm-base-url (only {BUNDLED_MODEL_NAME!r} is served by the harness itself)")
        else:
            specs.append(ModelSpec(name, base_url, key_env))
    if not specs:
        specs.append(ModelSpec(BUNDLED_MODEL_NAME))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ModelConfigError(f"model {spec.name!r} given twice")
        seen.add(spec.name)
    return specs


def _read_models_file(path: Path, key_env: str) -> list[ModelSpec]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{path}: cannot read models file: {exc}") from exc
    entries = raw.get("models") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise ModelConfigError(f"{path}: expected a list of models (or a mapping with 'models')")
    specs = []
    for index, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ModelConfigError(f"{path}: model #{index} needs a 'name'")
        unknown = set(entry) - {"name", "base_url", "api_key_env"}
        if unknown:
            raise ModelConfigError(f"{path}: model {entry['name']!r}: unknown key {sorted(unknown)[0]!r}")
        if entry.get("base_url") is None and entry["name"] != BUNDLED_MODEL_NAME:
            raise ModelConfigError(f"{path}: model {entry['name']!r} needs a base_url")
        specs.append(ModelSpec(entry["name"], entry.get("base_url"), entry.get("api_key_env") or key_env))
    return specs
