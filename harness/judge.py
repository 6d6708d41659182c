"""Turning one reply into one judged case result: extraction, scoring, the pass rule."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from harness.gates import parse_gate
from harness.generation import build_request
from harness.results import CaseResult
from harness.scoring.extract import ExtractionError, run_pipeline
from harness.scoring.scorers import Scorer, get_scorer
from harness.suite import Case, Suite


@lru_cache(maxsize=None)
def scorer_for(suite: Suite) -> Scorer:
    return get_scorer(suite.scorer, suite.scorer_options)


def judge_case(suite: Suite, case: Case, model: str, nodeid: str, dataset: str,
               reply: dict[str, Any]) -> CaseResult:
    """Score one reply; a model error or unusable output becomes a recorded reason, never an exception."""
    request = build_request(suite, case, model)
    result = CaseResult(
        suite=suite.name, id=case.id, model=model, nodeid=nodeid, dataset=dataset, line=case.line,
        prompt=request.prompt, target=case.target, output=reply.get("text"),
        latency_ms=reply.get("latency_ms"), output_tokens=reply.get("output_tokens"),
        metadata=case.metadata, error=reply.get("error"), cached=bool(reply.get("cached")),
        attempts=reply.get("attempts"), ttft_ms=reply.get("ttft_ms"), tpot_ms=reply.get("tpot_ms"),
        sent_at=reply.get("sent_at"), done_at=reply.get("done_at"), tool_calls=reply.get("tool_calls"),
        attack=case.attack,
    )
    if result.error:
        result.score, result.reason = 0.0, f"model error: {result.error}"
    elif result.tool_calls and not result.output:
        # a reply made of tool calls: they are the prediction, there is no text to extract from
        result.extracted = result.tool_calls
        scored = scorer_for(suite).score(result.extracted, case.target, case)
        result.score, result.reason, result.data = float(scored.value), scored.reason, dict(scored.data)
    else:
        try:
            result.extracted = run_pipeline(suite.extract, result.output or "")
        except ExtractionError as exc:
            result.extracted = ""
            result.score, result.reason = 0.0, f"extraction failed: {exc}"
        else:
            scored = scorer_for(suite).score(result.extracted, case.target, case)
            result.score, result.reason, result.data = float(scored.value), scored.reason, dict(scored.data)
    # record-only suites leave `passed` unset: their gates alone judge
    if suite.pass_rule is not None:
        result.passed = result.error is None and parse_gate(suite.pass_rule).holds(result.score)
        if not result.passed and not result.reason:
            result.reason = f"score {result.score:.3g} fails '{suite.pass_rule}'"
    return result
