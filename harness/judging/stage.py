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

from harness.engines.client import Reply, Request

if TYPE_CHECKING:
    from harness.cache import ResponseCache
    from harness.judging.spec import JudgeSpec
    from harness.plan import Task
    from harness.suite import Case, Suite

__all__ = ["JudgeCall", "JudgeStage", "judge_call"]

# what a judge reply keeps on the case (the rest of a Reply is the transport's business)
_KEPT = ("text", "error", "latency_ms", "output_tokens", "finish_reason", "truncated", "attempts", "cached")


@dataclass(frozen=True)
class JudgeCall:
    """A case's judge requests (``samples`` copies of one request), or why there are none."""

    model: str
    prompt: list[dict[str, str]] | None
    requests: tuple[Request, ...]
    error: str | None = None


def judge_call(spec: JudgeSpec, model: str, suite: Suite, case: Case, text: str | None) -> JudgeCall | None:
    """The judge requests for one case's reply ``text``; None when the reply's extraction fails (the
    case scores 0 for that, with no judge to ask)."""
    from harness.judging.rubric import RubricRenderError, render_judge_prompt
    from harness.scoring.extract import ExtractionError, run_pipeline

    try:
        prediction = run_pipeline(suite.extract, text or "")
    except ExtractionError:
        return None
    try:
        messages = render_judge_prompt(spec, input=case.input, output=text, target=case.target,
                                       metadata=case.metadata, prediction=prediction)
    except RubricRenderError as exc:
        return JudgeCall(model, None, (), str(exc))
    request = Request("chat", model, messages, {"max_tokens": spec.max_tokens, "temperature": spec.temperature})
    return JudgeCall(model, messages, (request,) * spec.samples)


class JudgeStage:
    """Asks the judge about each answered case; counts what it sent (runs on the request loop)."""

    def __init__(self, judge_of: Callable[[Task], tuple[JudgeSpec, str] | None], clients: dict[str, Any],
                 identities: dict[str, dict[str, Any]], cache: ResponseCache | None) -> None:
        self.judge_of = judge_of
        self.clients = clients
        self.identities = identities
        self.cache = cache
        self.cases = 0
        self.sent = 0
        self.cached = 0
        self.errors = 0
        self.output_tokens = 0
        self.latencies: list[float] = []

    def wants(self, task: Task) -> bool:
        return self.judge_of(task) is not None

    async def judge(self, task: Task, payload: dict[str, Any]) -> None:
        """Attach the judge's replies to a case's reply ``payload`` (``payload["judge"]``)."""
        found = self.judge_of(task)
        if found is None:
            return
        spec, model = found
        call = judge_call(spec, model, task.ref.suite, task.ref.case, payload.get("text"))
        if call is None:
            return
        self.cases += 1
        if call.error is not None:
            payload["judge"] = {"model": model, "prompt": None, "error": call.error}
            return
        from harness.cache import cache_key

        keys = [cache_key(self.identities[model], request, sample=i) for i, request in enumerate(call.requests)]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        replies = await asyncio.gather(*(self._ask(model, request, hits.get(key))
                                         for key, request in zip(keys, call.requests)))
        if self.cache is not None:
            self.cache.put_many((key, model, reply) for key, reply in zip(keys, replies) if not reply.get("cached"))
        payload["judge"] = {"model": model, "prompt": call.prompt,
                            "replies": [{k: reply.get(k) for k in _KEPT} for reply in replies]}

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
