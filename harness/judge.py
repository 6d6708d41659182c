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
        metadata=case.metadata, error=reply.get("error"),
    )
    if result.error:
        result.score, result.passed, result.reason = 0.0, False, f"model error: {result.error}"
        return result
    try:
        result.extracted = run_pipeline(suite.extract, result.output or "")
    except ExtractionError as exc:
        result.extracted = ""
        result.score, result.passed, result.reason = 0.0, False, f"extraction failed: {exc}"
        result.data = {"pred": None}
        return result
    scored = scorer_for(suite).score(result.extracted, case.target, case)
    result.score = float(scored.value)
    result.reason = scored.reason
    result.data = dict(scored.data)
    if suite.pass_rule is None:
        result.passed = None
    else:
        result.passed = parse_gate(suite.pass_rule).holds(result.score)
        if not result.passed and not result.reason:
            result.reason = f"score {result.score:.3g} fails '{suite.pass_rule}'"
    return result
