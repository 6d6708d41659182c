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

from harness.engines.client import AUTH_STATUS, OpenAICompatClient, Reply, Request
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


class GenerationAborted(RuntimeError):
    """The server refused the credentials: the run stops with one message instead of N failures."""


class Generation:
    """Sends every task's request on the background loop; the caller drains replies from any thread."""

    def __init__(self, tasks: list[Task], clients: dict[str, OpenAICompatClient], concurrency: int) -> None:
        self.tasks = tasks
        self.clients = clients
        self.concurrency = max(1, concurrency)
        self.done = 0
        self.errors = 0
        self.succeeded = 0
        self.aborted: str | None = None
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
        """Re-raise a failure of the generation loop itself, or the reason it stopped the run."""
        if self._future is not None:
            self._future.result()
        if self.aborted:
            raise GenerationAborted(self.aborted)

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
            if self.aborted:
                return
            try:
                reply = await self.clients[task.model].send(build_request(task.suite, task.case, task.model))
            except Exception as exc:  # a rendering bug must not lose the case
                reply = Reply(None, f"request not sent: {type(exc).__name__}: {exc}", 0.0)
            if reply.status in AUTH_STATUS and not self.succeeded:
                # wrong key on the first requests: every other request would fail the same way
                self.aborted = (f"{task.model} at {self.clients[task.model].base_url} refused the request "
                                f"({reply.error}); check the API key variable (--llm-api-key-env)")
                return
            with self._count_lock:
                self.done += 1
                self.errors += reply.error is not None
                self.succeeded += reply.error is None
            self._replies.put((task.nodeid, reply.to_dict()))
