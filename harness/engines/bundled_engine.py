"""Engine kind ``bundled``: the default model (gemma-3-270m) served on the CPU by ``harness.engines.cpu_server``."""

from __future__ import annotations

from typing import Any

from harness.engines.bundled import BUNDLED_MODEL_NAME
from harness.engines.cpu_engine import cpu_server_argv
from harness.engines.lease import ManagedServer
from harness.engines.registry import EngineContext
from harness.models import ModelSpec


class BundledEngine(ManagedServer):
    kind = "bundled"
    record_kind = "bundled-cpu"

    def alongside(self) -> bool:
        return True  # a CPU server: it may start while another does

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        if spec.name != BUNDLED_MODEL_NAME:
            return "needs a base_url, or an engine (cpu, vllm, sglang, llama-cpp, vllm-offline, ...) and a model_path"
        return super().check(spec)

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        # 50 ms: requests sent together land in one batch instead of a small first one
        argv = cpu_server_argv("bundled", self.spec.name, port, ctx, batch_wait_ms=50)
        return argv, {}, {"argv": argv, "max_batch": ctx.settings.max_batch}

    def identity(self) -> dict[str, Any]:
        from harness.engines.bundled import bundled_sha256

        return {"name": self.spec.name, "engine": "bundled-cpu", "weights_sha256": bundled_sha256()}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        from harness.engines.bundled import bundled_sha256, bundled_source

        return {"source": bundled_source(), "weights_sha256": bundled_sha256()}
