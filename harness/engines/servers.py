"""Engine kinds ``vllm``, ``sglang`` and ``llama-cpp``: GPU servers the harness starts from a
``model_path`` (command lines in :mod:`harness.engines.launchers`)."""

from __future__ import annotations

from typing import Any

from harness.engines.lease import ManagedServer
from harness.engines.managed import EngineStartError
from harness.engines.registry import EngineContext
from harness.models import ModelSpec


class _Server(ManagedServer):
    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        if not spec.model_path:
            return f"engine {spec.engine} needs a model_path"
        return super().check(spec)

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        from harness.engines.launchers import launch_for

        spec = self.spec
        assert spec.model_path is not None  # checked when the models file was read
        try:
            launch = launch_for(self.kind, spec.model_path, spec.name, port, dict(spec.options), spec.args, spec.gpus)
        except ValueError as exc:
            raise EngineStartError(f"model {spec.name!r}: {exc}") from exc
        return launch.argv, launch.env, {**launch.to_dict(), "options": dict(spec.options)}


class VLLMServer(_Server):
    kind = "vllm"


class SGLangServer(_Server):
    kind = "sglang"


class LlamaCppServer(_Server):
    kind = "llama-cpp"
