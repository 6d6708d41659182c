"""Engine kind ``openai``: any OpenAI-compatible server someone else runs (one or more replicas)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from harness.engines.registry import Engine, EngineContext
from harness.models import ModelSpec
from harness.redact import basic_auth, redact_url, split_credentials


class RemoteEngine(Engine):
    kind = "openai"

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        return None if spec.base_urls else "needs a base_url"

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        settings = ctx.settings
        if settings.wait_ready_s > 0:
            # the InternBootcamp practice: a server still loading is waited for, not failed on
            for url in self.spec.base_urls:
                self._wait_ready(url, settings.wait_ready_s, settings.wait_interval_s)
        return {**super().start(ctx), "kind": "openai-compatible"}

    def _wait_ready(self, url: str, timeout_s: float, interval_s: float) -> None:
        """Wait until the server lists the model; credentials in the URL are sent as Basic auth
        and never appear in the message when it does not come up."""
        from harness.engines.managed import EngineStartError, wait_ready

        clean, credentials = split_credentials(url)
        if credentials is None and "?" not in url:
            wait_ready(url, self.spec.name, timeout_s, interval_s=interval_s, api_key=self.api_key())
            return
        from harness.engines.client import join_path

        key = self.api_key()
        headers = {}
        if credentials is not None:  # the URL's own credentials win, as in the client
            headers["Authorization"] = basic_auth(*credentials)
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(join_path(clean, "/models"), headers=headers)
        started = time.monotonic()
        while not _lists(request, self.spec.name):
            if time.monotonic() - started > timeout_s:
                raise EngineStartError(f"engine for {self.spec.name!r} at {redact_url(url)} not ready after "
                                       f"{timeout_s:g} s")
            time.sleep(interval_s)

    def identity(self) -> dict[str, Any]:
        return {"name": self.spec.name, "engine": "openai-compatible"}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        source = self.spec.base_url
        return {"source": redact_url(source) if source else source, "weights_sha256": None}


def _lists(request: urllib.request.Request, model: str) -> bool:
    """True when the models endpoint answers and lists the model."""
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            payload = json.loads(response.read())
        return any(isinstance(entry, dict) and entry.get("id") == model for entry in payload.get("data", []))
    except (urllib.error.URLError, OSError, ValueError, AttributeError, TypeError):
        return False
