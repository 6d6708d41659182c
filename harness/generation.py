"""Generation: every planned case's request sent concurrently, while the items read the replies.

Requests go out in collection order through the process's request loop, at most
``concurrency`` in flight for the whole run (workers never send eval requests themselves).
Replies are posted to the run's board as they arrive, so the item of the first case runs
while later requests are still in flight. A request that failed transiently (timeout, 429,
5xx, connection error, cut-off body) is held back and sent once more after the main pass
(the seeds' two-step practice) before its case is marked as an error. The request's deadline
(``--llm-deadline``) is a budget over all its passes: a re-send gets only what the earlier
passes left, and none when they spent it. A client that raises fails that one case, with the
reason, never the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from harness.board import Board
from harness.engines.client import AUTH_STATUS, Reply
from harness.engines.loop import submit
from harness.interruptible import wait_event, wait_future
from harness.progress import ModelCounts, Snapshot
from harness.redact import redact_url

if TYPE_CHECKING:
    from harness.judging.stage import JudgeStage
    from harness.plan import Task

FLUSH_S = 0.01  # board and cache writes are batched over this window

Posted = tuple[str, dict[str, Any]]
STOPPED = "generation stopped before the judge answered"


class GenerationAborted(RuntimeError):
    """The server refused the credentials: the run stops with one message instead of N failures."""


class Generation:
    """Sends every task's request on the background loop and posts each final reply to the board."""

    def __init__(self, tasks: Sequence[Task], clients: dict[str, Any], concurrency: int,
                 board: Board, on_replies: Callable[[list[Posted]], None] | None = None,
                 passes: int = 1, judging: JudgeStage | None = None,
                 answered: Sequence[tuple[Task, dict[str, Any]]] = (), cached: dict[str, int] | None = None) -> None:
        self.tasks = list(tasks)
        # per model, for the live progress line: what is planned, answered and failed (cached replies included)
        self._counts: dict[str, ModelCounts] = {}
        for model, hits in (cached or {}).items():
            self._counts[model] = ModelCounts(total=hits, answered=hits, cached=hits)
        for task in self.tasks:
            self._counts.setdefault(task.model, ModelCounts()).total += 1
        self.in_flight = 0
        self.judging = judging
        self.answered = list(answered)  # cached replies of judged cases: judged, then posted
        self._judges: set[asyncio.Task[None]] = set()
        self._unjudged: dict[str, dict[str, Any]] = {}  # node id -> reply waiting for its judge
        self.clients = clients
        self.concurrency = max(1, concurrency)
        self.board = board
        self.on_replies = on_replies
        self.passes = max(0, passes)
        self.done = 0
        self.errors = 0
        self.succeeded = 0
        self.resent = 0
        self.output_tokens = 0
        self.first_sent: float | None = None
        self.last_done: float | None = None
        self.aborted: str | None = None
        self._posted: list[Posted] = []
        self._spent: dict[str, float] = {}  # node id -> seconds its earlier passes took (held tasks only)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._first = threading.Event()
        self._started = threading.Event()
        self._ended = threading.Event()
        self._future: Any = None

    @property
    def total(self) -> int:
        return len(self.tasks)

    def start(self) -> None:
        self._future = submit(self._run())

    def wait_first(self) -> None:
        """Block until the first case is answered: a rejected API key stops the run before any item."""
        wait_event(self._first)
        if self.aborted:
            self.join()
            raise GenerationAborted(self.aborted)

    def finished(self) -> bool:
        return self._future is not None and self._future.done()

    def join(self) -> None:
        """Wait for the end; re-raise a failure of the generation loop itself."""
        if self._future is None:
            return
        try:
            wait_future(self._future)
        except BaseException as exc:  # noqa: BLE001 - cancelled on purpose, or a bug worth raising
            import concurrent.futures

            if not isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
                raise

    def cancel(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.cancel()
            # a task that started runs its own clean-up (last flush, board finished) after this;
            # one cancelled before it started has none to wait for
            if self._started.is_set():
                self._ended.wait(30)

    def progress(self) -> Snapshot:
        """The requests at this moment, for the live progress line (read from another thread)."""
        return Snapshot({model: dataclasses.replace(counts) for model, counts in list(self._counts.items())},
                        in_flight=self.in_flight, output_tokens=self.output_tokens,
                        judged=self.judging.sent if self.judging is not None else 0)

    def stats(self) -> dict[str, Any]:
        """The models' requests; with a judge, ``wall_s`` and ``requests_per_s`` cover its requests too
        (they share the pool) and ``judge`` counts them apart."""
        judged = self.judging.sent if self.judging is not None else 0
        last = max(filter(None, (self.last_done, self.judging.last_done if self.judging else None)), default=None)
        wall = (last - self.first_sent) if self.first_sent and last else None
        clients = list(self.clients.values())
        stats: dict[str, Any] = {"requests": self.total, "answered": self.done, "errors": self.errors,
                                 "resent": self.resent, "output_tokens": self.output_tokens,
                                 "wall_s": round(wall, 3) if wall else None,
                                 "requests_per_s": round((self.done + judged) / wall, 3) if wall else None,
                                 "output_tokens_per_s": round(self.output_tokens / wall, 3) if wall else None}
        limiter = next((c.limiter for c in clients if c.limiter is not None), None)
        if limiter is not None:
            stats["in_flight"] = limiter.stats()
        if self.judging is not None:
            stats["judge"] = self.judging.stats()
        return stats

    # -- on the request loop ----------------------------------------------------------------
    async def _run(self) -> None:
        self._started.set()
        held: list[tuple[Task, Reply]] = []
        try:
            for task, payload in self.answered:
                if self.judging is not None:
                    self.judging.arrived(task, payload)
                self._judge_then_post(task, payload)
            held = await self._pass(self.tasks, final=self.passes == 0)
            for number in range(self.passes):
                if not held or self.aborted:
                    break
                self.resent += len(held)
                held = await self._pass([task for task, _ in held], final=number == self.passes - 1)
            if self.judging is not None:
                self.judging.close()  # every answer is in: a pairwise judgement without its partner gives up
            while self._judges:
                await asyncio.gather(*self._judges)
        finally:
            for task, reply in held:  # only when aborted or cancelled: still, no case is lost
                self._post(task, reply)
            if self.judging is not None:
                self.judging.close()
            for judging in list(self._judges):
                judging.cancel()
            if self._judges:
                await asyncio.gather(*self._judges, return_exceptions=True)
            for nodeid, payload in list(self._unjudged.items()):  # judgements cancelled before they began
                payload["judge"] = {"model": None, "prompt": None, "error": STOPPED}
                self._publish(nodeid, payload)
            self._flush()
            self.board.finish(self.aborted)
            self._first.set()
            self._ended.set()

    async def _pass(self, tasks: list[Task], final: bool) -> list[tuple[Task, Reply]]:
        held: list[tuple[Task, Reply]] = []
        # an in-process engine takes all of its model's requests in one call
        batched: dict[str, list[Task]] = {}
        sent: list[Task] = []
        for task in tasks:
            if hasattr(self.clients[task.model], "send_many"):
                batched.setdefault(task.model, []).append(task)
            else:
                sent.append(task)
        pending: Iterator[Task] = iter(sent)
        workers = [asyncio.create_task(self._worker(pending, held, final))
                   for _ in range(min(self.concurrency, len(sent)))]
        workers += [asyncio.create_task(self._batch(group, held, final)) for group in batched.values()]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
        return held

    async def _worker(self, pending: Iterator[Task], held: list[tuple[Task, Reply]], final: bool) -> None:
        # one shared iterator: requests leave in collection order, `concurrency` at a time
        for task in pending:
            if self.aborted:
                return
            if self.first_sent is None:
                self.first_sent = time.time()
            self.in_flight += 1
            try:
                reply = await self._send(task)
            finally:
                self.in_flight -= 1
            if not self._settle(task, reply, held, final):
                return

    async def _send(self, task: Task) -> Reply:
        """One task's request, within what is left of its deadline; a client's exception becomes its error."""
        client = self.clients[task.model]
        request = task.request
        deadline_s = getattr(client, "deadline_s", None)
        spent = self._spent.get(task.nodeid)
        if spent is not None and deadline_s:
            request = dataclasses.replace(request, deadline_at=time.monotonic() + deadline_s - spent)
        begun = time.monotonic()
        try:
            reply = await client.send(request)
        except Exception as exc:  # noqa: BLE001 - one request's failure, not the run's
            reply = Reply(None, f"client error: {type(exc).__name__}: {exc}", (time.monotonic() - begun) * 1000)
        if reply.error is not None and reply.transient:
            self._spent[task.nodeid] = (spent or 0.0) + time.monotonic() - begun
            if deadline_s and self._spent[task.nodeid] >= deadline_s - 0.01:
                reply.transient = False  # nothing left for a later pass
        return reply

    async def _batch(self, tasks: list[Task], held: list[tuple[Task, Reply]], final: bool) -> None:
        client = self.clients[tasks[0].model]
        requests = [t.request for t in tasks]
        if self.first_sent is None:
            self.first_sent = time.time()
        self.in_flight += len(tasks)
        try:
            replies = await client.send_many(requests)
        except Exception as exc:  # an engine crash fails its cases, with the reason, and nothing else
            replies = [Reply(None, f"engine error: {type(exc).__name__}: {exc}", 0.0) for _ in tasks]
        finally:
            self.in_flight -= len(tasks)
        for task, reply in zip(tasks, replies):
            self._settle(task, reply, held, final)

    def _settle(self, task: Task, reply: Reply, held: list[tuple[Task, Reply]], final: bool) -> bool:
        """Post a final reply or hold a transient failure for the next pass; False stops the run."""
        if reply.status in AUTH_STATUS and not self.succeeded:
            # wrong key on the first requests: every other request would fail the same way
            self.aborted = (f"{task.model} at {redact_url(self.clients[task.model].base_url)} refused the request "
                            f"({reply.error}); check the API key variable (--llm-api-key-env)")
            return False
        if reply.error is not None and reply.transient and not final:
            held.append((task, reply))
        else:
            self._post(task, reply)
        return True

    def _post(self, task: Task, reply: Reply) -> None:
        self.done += 1
        counts = self._counts[task.model]
        counts.answered += 1
        counts.errors += reply.error is not None
        self.errors += reply.error is not None
        self.succeeded += reply.error is None
        self.output_tokens += reply.output_tokens or 0
        if reply.done_at is not None:
            self.last_done = max(self.last_done or 0.0, reply.done_at)
        payload = reply.to_dict()
        if self.judging is not None and self.judging.wants(task):
            self.judging.arrived(task, payload)  # a pairwise judgement may wait for this answer, failed or not
            if reply.error is None:
                self._judge_then_post(task, payload)
                return
        self._publish(task.nodeid, payload)

    def _judge_then_post(self, task: Task, payload: dict[str, Any]) -> None:
        """Ask the judge about a case's reply, then post both; a judge cut short posts the reply with
        the reason, so no case is lost."""
        assert self.judging is not None
        judging = self.judging

        self._unjudged[task.nodeid] = payload

        async def judge() -> None:
            try:
                await judging.judge(task, payload)
            except asyncio.CancelledError:
                payload["judge"] = {"model": None, "prompt": None, "error": STOPPED}
                raise
            except Exception as exc:  # noqa: BLE001 - a judging bug fails its case, with the reason
                payload["judge"] = {"model": None, "prompt": None,
                                    "error": f"judging raised {type(exc).__name__}: {exc}"}
            finally:
                self._publish(task.nodeid, payload)

        job = asyncio.get_running_loop().create_task(judge())
        self._judges.add(job)
        job.add_done_callback(self._judges.discard)

    def _publish(self, nodeid: str, payload: dict[str, Any]) -> None:
        self._unjudged.pop(nodeid, None)
        self._posted.append((nodeid, payload))
        self._first.set()
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        batch, self._posted = self._posted, []
        if batch:
            self.board.put_many(batch)
            if self.on_replies is not None:
                self.on_replies(batch)
