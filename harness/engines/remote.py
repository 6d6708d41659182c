"""Engine kind ``openai``: any OpenAI-compatible server someone else runs (one or more replicas)."""

from __future__ import annotations

from typing import Any

from harness.engines.registry import Engine, EngineContext
from harness.models import ModelSpec


class RemoteEngine(Engine):
    kind = "openai"

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        return None if spec.base_urls else "needs a base_url"

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        from harness.engines.managed import wait_ready

        settings = ctx.settings
        if settings.wait_ready_s > 0:
            # the InternBootcamp practice: a server still loading is waited for, not failed on
            for url in self.spec.base_urls:
                wait_ready(url, self.spec.name, settings.wait_ready_s, interval_s=settings.wait_interval_s,
                           api_key=self.api_key())
        return {**super().start(ctx), "kind": "openai-compatible"}

    def identity(self) -> dict[str, Any]:
        return {"name": self.spec.name, "engine": "openai-compatible"}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        return {"source": self.spec.base_url, "weights_sha256": None}
