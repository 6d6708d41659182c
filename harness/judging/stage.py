"""Judge requests as follow-ups of generation: :class:`JudgeStage`.

When a judged case's reply arrives, generation hands it here before posting it: the judge's
prompt is rendered over the case and the reply (:func:`judge_call`), its ``samples`` requests
go out at once through the judge model's client (the same pipelined client, in-flight ceiling,
retries and deadline as every request), and the replies are attached to the case's reply as
``reply["judge"]`` for case scoring (:mod:`harness.judging.scores`) to read. So judging
overlaps generation instead of following it.

Judge replies are cached in the response cache under the judge model's identity and the judge
request (``sample`` telling apart the k samples of one case), apart from the case's own reply:
a re-run answers both from the cache and sends nothing, and a changed rubric re-asks only the
judge. A judge request that still fails after the client's retries is not re-sent in a later
pass; its case is an error naming the failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

# imported with this module, on the run's main thread: judge_call and JudgeStage run on the request loop's
# thread, which imports nothing of its own (see harness.engines.client.OpenAICompatClient)
from harness.cache import cache_key
from harness.engines.client import Reply, Request
from harness.judging.pairwise import render_pairwise
from harness.judging.rubric import RubricRenderError, render_judge_prompt
from harness.scoring.extract import ExtractionError, run_pipeline

if TYPE_CHECKING:
    from harness.cache import ResponseCache
    from harness.judging.spec import JudgeSpec
    from harness.plan import Task
    from harness.suite import Case, Suite

__all__ = ["JudgeCall", "JudgeStage", "judge_call"]

VERDICT_PREFIX = "VERDICT:"
# what a judge reply keeps on the case (the rest of a Reply is the transport's business)
_KEPT = ("text", "error", "latency_ms", "output_tokens", "finish_reason", "truncated", "attempts", "cached")


@dataclass(frozen=True)
class JudgeCall:
    """A case's judge requests (``samples`` copies of one request), or why there are none."""

    model: str
    prompt: list[dict[str, str]] | str | None
    requests: tuple[Request, ...]
    error: str | None = None
    prefix: str = ""  # api: completion with a rubric ending in "VERDICT:": read before the reply


def judge_call(spec: JudgeSpec, model: str, suite: Suite, case: Case, text: str | None) -> JudgeCall | None:
    """The judge requests for one case's reply ``text``; None when the reply's extraction fails (the
    case scores 0 for that, with no judge to ask)."""
    try:
        prediction = run_pipeline(suite.extract, text or "")
    except ExtractionError:
        return None
    try:
        messages = render_judge_prompt(spec, input=case.input, output=text, target=case.target,
                                       metadata=case.metadata, prediction=prediction)
    except RubricRenderError as exc:
        return JudgeCall(model, None, (), str(exc))
    params: dict[str, Any] = {"max_tokens": spec.max_tokens, "temperature": spec.temperature}
    if spec.api == "completion":
        text = messages[-1]["content"]
        prefix = VERDICT_PREFIX if text.rstrip().endswith(VERDICT_PREFIX) else ""
        if prefix:
            text = text.rstrip()  # a YAML block's last newline would end the line the verdict belongs on
            params["stop"] = ["\n"]  # the verdict is the rest of that line
        request = Request("completion", model, text, params)
        return JudgeCall(model, text, (request,) * spec.samples, prefix=prefix)
    request = Request("chat", model, messages, params)
    return JudgeCall(model, messages, (request,) * spec.samples)


def _case_key(task: Task) -> tuple[Any, ...]:
    """One case of one suite, whichever model answered it."""
    ref = task.ref
    return (ref.suite.path, ref.dataset, ref.case.line, ref.case.attack)


class JudgeStage:
    """Asks the judge about each answered case; counts what it sent (runs on the request loop)."""

    def __init__(self, judge_of: Callable[[Task], tuple[JudgeSpec, str] | None], clients: dict[str, Any],
                 identities: dict[str, dict[str, Any]], cache: ResponseCache | None,
                 reference_of: Callable[[Task], str | None] | None = None) -> None:
        self.judge_of = judge_of
        self.reference_of = reference_of or (lambda task: None)
        # pairwise: the replies seen so far per case and model, and the judgements waiting for one
        self._replies: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
        self._waiting: dict[tuple[tuple[Any, ...], str], list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._closed = False
        self.clients = clients
        self.identities = identities
        self.cache = cache
        self.cases = 0
        self.sent = 0
        self.cached = 0
        self.errors = 0
        self.output_tokens = 0
        self.latencies: list[float] = []
        self.last_done: float | None = None  # epoch seconds of the last judge reply sent for

    def wants(self, task: Task) -> bool:
        return self.judge_of(task) is not None

    def arrived(self, task: Task, payload: dict[str, Any]) -> None:
        """Every final reply of a judged suite, failed ones included, as it arrives: a pairwise
        judgement waiting for this model's answer to the case can go ahead."""
        found = self.judge_of(task)
        if found is None or not found[0].pairwise:
            return
        key = _case_key(task)
        self._replies.setdefault(key, {})[task.model] = payload
        for waiter in self._waiting.pop((key, task.model), []):
            if not waiter.done():
                waiter.set_result(payload)

    def close(self) -> None:
        """No more replies will arrive: pairwise judgements still waiting for a partner give up."""
        self._closed = True
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiting.clear()

    async def judge(self, task: Task, payload: dict[str, Any]) -> None:
        """Attach the judge's replies to a case's reply ``payload`` (``payload["judge"]``)."""
        found = self.judge_of(task)
        if found is None:
            return
        spec, model = found
        if spec.pairwise:
            await self._pairwise(task, payload, spec, model)
            return
        call = judge_call(spec, model, task.ref.suite, task.ref.case, payload.get("text"))
        if call is None:
            return
        self.cases += 1
        if call.error is not None:
            payload["judge"] = {"model": model, "prompt": None, "error": call.error}
            return
        replies = await self._ask_all(model, call.requests)
        payload["judge"] = {"model": model, "prompt": call.prompt, "replies": replies,
                            **({"prefix": call.prefix} if call.prefix else {})}

    async def _ask_all(self, model: str, requests: tuple[Request, ...]) -> list[dict[str, Any]]:
        """Requests to the judge, from the cache where it holds them (``sample`` keys repeated ones)."""
        keys = [cache_key(self.identities[model], request, sample=requests[:i].count(request))
                for i, request in enumerate(requests)]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        replies = await asyncio.gather(*(self._ask(model, request, hits.get(key))
                                         for key, request in zip(keys, requests)))
        if self.cache is not None:
            self.cache.put_many((key, model, reply) for key, reply in zip(keys, replies) if not reply.get("cached"))
        return [{k: reply.get(k) for k in _KEPT} for reply in replies]

    async def _pairwise(self, task: Task, payload: dict[str, Any], spec: JudgeSpec, model: str) -> None:
        """A compared model's answer against its reference's answer to the same case, in both orders."""
        reference = self.reference_of(task)
        if reference is None:  # the reference's own cases: the others are judged against them
            payload["judge"] = {"model": model, "reference": True}
            return
        self.cases += 1
        key = _case_key(task)
        other = self._replies.get(key, {}).get(reference)
        if other is None and not self._closed:
            waiter: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault((key, reference), []).append(waiter)
            other = await waiter
        base = {"model": model, "pairwise": True, "against": reference}
        if other is None:
            payload["judge"] = {**base, "error": f"no answer of the reference model {reference!r} to this case "
                                                 f"(not selected with -k/-m, or generation stopped): nothing to compare"}
            return
        if other.get("error"):
            payload["judge"] = {**base, "error": f"the reference model {reference!r} failed on this case: "
                                                 f"{other['error']}"}
            return
        case = task.ref.case
        try:
            prompts = [render_pairwise(spec, input=case.input, output_a=a, output_b=b, target=case.target,
                                       metadata=case.metadata)
                       for a, b in ((other.get("text"), payload.get("text")), (payload.get("text"), other.get("text")))]
        except RubricRenderError as exc:
            payload["judge"] = {**base, "error": str(exc)}
            return
        params = {"max_tokens": spec.max_tokens, "temperature": spec.temperature}
        requests = tuple(Request("chat", model, prompt, params) for prompt in prompts)
        payload["judge"] = {**base, "prompt": prompts, "replies": await self._ask_all(model, requests)}

    async def _ask(self, model: str, request: Request, hit: dict[str, Any] | None) -> dict[str, Any]:
        if hit is not None:
            self.cached += 1
            return {**hit, "cached": True}
        begun = time.monotonic()
        try:
            reply = await self.clients[model].send(request)
        except Exception as exc:  # noqa: BLE001 - one judge request's failure is its case's error
            reply = Reply(None, f"client error: {type(exc).__name__}: {exc}", (time.monotonic() - begun) * 1000)
        self.sent += 1
        self.last_done = time.time()
        if reply.error is None:
            self.output_tokens += reply.output_tokens or 0
            self.latencies.append(reply.latency_ms)
        else:
            self.errors += 1
        return reply.to_dict()

    def stats(self) -> dict[str, Any]:
        """The judge's requests, apart from the models': sent, cached, errors, tokens, latency."""
        from harness.scoring.metrics import percentile

        return {"cases": self.cases, "requests": self.sent, "cached": self.cached, "errors": self.errors,
                "output_tokens": self.output_tokens, "latency_p50_ms": percentile(self.latencies, 50),
                "latency_p90_ms": percentile(self.latencies, 90)}
