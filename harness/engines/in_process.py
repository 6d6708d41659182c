"""An engine loaded into the controller (vLLM offline) behind the same interface as the HTTP client.

Generation hands such an engine all of a model's requests at once (``send_many``: one engine
call, prefix-sorted), in a thread so the request loop keeps serving other models' HTTP traffic.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Sequence

from harness.engines.client import Reply, Request


class InProcessClient:
    """Wraps an engine object with ``generate(requests) -> list[Reply]`` (e.g. VLLMOffline)."""

    limiter = None  # the engine schedules its own batch; the in-flight ceiling is for HTTP servers

    def __init__(self, engine: Any, label: str) -> None:
        self.engine = engine
        self.base_url = label
        self.base_urls = [label]
        self._lock = threading.Lock()  # one engine call at a time: the engine owns the GPU

    def _generate(self, requests: Sequence[Request]) -> list[Reply]:
        with self._lock:
            sent_at = time.time()
            replies = self.engine.generate(list(requests))
            done_at = time.time()
        for reply in replies:
            reply.sent_at, reply.done_at, reply.replica = sent_at, done_at, self.base_url
        return replies

    async def send(self, request: Request) -> Reply:
        return (await asyncio.to_thread(self._generate, [request]))[0]

    async def send_many(self, requests: Sequence[Request]) -> list[Reply]:
        return await asyncio.to_thread(self._generate, requests)

    async def close(self) -> None:
        pass
