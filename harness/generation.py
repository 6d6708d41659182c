"""Generation: every planned case's request sent concurrently, before the items that read them.

Requests go out in collection order through the process's request loop, at most
``concurrency`` in flight for the whole run (workers never send eval requests themselves).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from harness.engines.client import OpenAICompatClient, Reply, Request
from harness.engines.loop import submit
from harness.prompts import render
from harness.suite import Case, Suite

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Task:
    nodeid: str
    suite: Suite
    case: Case
    model: str


def build_request(suite: Suite, case: Case, model: str) -> Request:
    gen = suite.generation
    params = {
        "max_tokens": gen.get("max_tokens", DEFAULT_MAX_TOKENS),
        "temperature": gen.get("temperature", 0.0),
        "top_p": gen.get("top_p"),
        "stop": gen.get("stop"),
        "seed": gen.get("seed"),
    }
    return Request(suite.api, model, render(suite, case), params, dict(suite.extra_body))


class Generation:
    """Sends every task's request on the background loop; the caller drains replies from any thread."""

    def __init__(self, tasks: list[Task], clients: dict[str, OpenAICompatClient], concurrency: int) -> None:
        self.tasks = tasks
        self.clients = clients
        self.concurrency = max(1, concurrency)
        self.done = 0
        self.errors = 0
        self._replies: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._count_lock = threading.Lock()
        self._future: Any = None

    @property
    def total(self) -> int:
        return len(self.tasks)

    def start(self) -> None:
        self._future = submit(self._run())

    def finished(self) -> bool:
        return self._future is not None and self._future.done()

    def result(self) -> None:
        """Re-raise an unexpected failure of the generation loop itself."""
        if self._future is not None:
            self._future.result()

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self._replies.get_nowait())
            except queue.Empty:
                return out

    async def _run(self) -> None:
        pending: Iterator[Task] = iter(self.tasks)
        workers = [asyncio.create_task(self._worker(pending)) for _ in range(min(self.concurrency, self.total))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _worker(self, pending: Iterator[Task]) -> None:
        # one shared iterator: requests leave in collection order, `concurrency` at a time
        for task in pending:
            try:
                reply = await self.clients[task.model].send(build_request(task.suite, task.case, task.model))
            except Exception as exc:  # a rendering bug must not lose the case
                reply = Reply(None, f"request not sent: {type(exc).__name__}: {exc}", 0.0)
            with self._count_lock:
                self.done += 1
                self.errors += reply.error is not None
            self._replies.put((task.nodeid, reply.to_dict()))
