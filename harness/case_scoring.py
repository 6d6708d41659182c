"""Scoring one case: its reply extracted, scored and held to the suite's pass rule."""

from __future__ import annotations

import numbers
import threading
from functools import lru_cache
from typing import Any

from harness.gates import parse_gate
from harness.judging.scores import JudgeFailed
from harness.results import CaseResult, plain
from harness.scoring.base import ScorerUnavailable
from harness.scoring.extract import ExtractionError, run_pipeline
from harness.scoring.scorers import Scorer, get_scorer
from harness.suite import Case, Suite


TRUNCATED_ERROR = "reply cut off at max_tokens (finish_reason=length)"
# one case scored at a time in a process: the controller scores the cases only gates need on a thread of its
# own beside the items', and a scorer's first call may import its libraries (jsonschema, a classifier); two
# threads importing at once is what hung a run once (see harness.report.warm_writers)
_SCORING = threading.RLock()


@lru_cache(maxsize=None)
def scorer_for(suite: Suite) -> Scorer:
    return get_scorer(suite.scorer, suite.scorer_options)


def score_reply(suite: Suite, case: Case, model: str, nodeid: str, dataset: str, reply: dict[str, Any],
                hook: Any = None) -> CaseResult:
    """Score one reply; a model error or a scorer that raises (or cannot be built) is the case's
    error, unusable output a score of 0 with its reason; never an exception. ``hook`` (a pytest
    hook relay) calls ``pytest_llm_case_result``.

    The prompt is left out: the controller, which built the request, fills it in."""
    result = CaseResult(
        suite=suite.name, id=case.id, model=model, nodeid=nodeid, dataset=dataset, line=case.line,
        prompt=None, target=case.target, output=reply.get("text"),
        latency_ms=reply.get("latency_ms"), output_tokens=reply.get("output_tokens"),
        metadata=case.metadata, error=reply.get("error"), cached=bool(reply.get("cached")),
        attempts=reply.get("attempts"), ttft_ms=reply.get("ttft_ms"), tpot_ms=reply.get("tpot_ms"),
        sent_at=reply.get("sent_at"), done_at=reply.get("done_at"), tool_calls=reply.get("tool_calls"),
        attack=case.attack, cluster=case.cluster,
        truncated=bool(reply.get("truncated") or reply.get("finish_reason") == "length"),
        human_label=case.human_label,
    )
    if result.truncated and result.error is None and suite.truncated == "error":
        # applied when scoring, not sending: the cached reply stays valid whatever the suite says
        result.error = TRUNCATED_ERROR
    with _SCORING:
        try:
            _score(suite, case, result, reply)
        except JudgeFailed as exc:
            # no verdict is not a wrong answer: an error with the judge's raw reply, never a silent 0
            result.score, result.error = 0.0, str(exc)
            result.reason = result.error
        except Exception as exc:  # noqa: BLE001
            # a scorer that raises did not judge the case: an error (error_rate counts it), not a wrong answer
            result.score, result.error = 0.0, _scorer_error(exc)
            result.reason = result.error
        if hook is not None:
            hook.pytest_llm_case_result(result=result, suite=suite, case=case)
            _check_hooked_score(result)
        # what a custom scorer or a hook put there travels to the controller and into report.json as plain values
        result.metadata, result.data = plain(result.metadata), plain(result.data)
        result.extracted = plain(result.extracted)
        if result.reason is not None and type(result.reason) is not str:
            result.reason = str(result.reason)
    # record-only suites leave `passed` unset: their gates alone judge
    if result.data.get("pairwise") == "reference" and result.error is None:
        result.passed = None  # the pairwise reference: the other models are judged against its answers
        return result
    threshold = suite.judge.pass_threshold if suite.judge is not None else None
    judge_passed = result.data.get("judge_passed") if threshold is not None else None
    if judge_passed is not None and result.error is None:
        result.passed = bool(judge_passed)  # the judge's pass_threshold decides
        if not result.passed:
            result.reason = f"{result.reason or 'judge verdict'} (below pass_threshold {threshold:g})"
    elif suite.pass_rule is not None:
        result.passed = result.error is None and parse_gate(suite.pass_rule).holds(result.score or 0.0)
        if not result.passed and not result.reason:
            result.reason = f"score {result.score:.3g} fails '{suite.pass_rule}'"
    return result


def _check_hooked_score(result: CaseResult) -> None:
    """A score a ``pytest_llm_case_result`` hook set must be a number, as a scorer's is: anything else would fail
    later, in the pass rule or the suite's metrics, pointing at the harness. It is the case's error instead."""
    score = result.score
    if score is None or type(score) is float:
        return
    if isinstance(score, numbers.Real):  # an int, a bool, numpy's float32: the float every score is
        result.score = float(score)
        return
    result.error = result.reason = (f"pytest_llm_case_result set score to {score!r} ({type(score).__name__}): "
                                    f"a score is a number")
    result.score = 0.0


def _scorer_error(exc: Exception) -> str:
    if isinstance(exc, ScorerUnavailable):
        return str(exc)
    return f"scorer raised {type(exc).__name__}: {exc}"


def _score(suite: Suite, case: Case, result: CaseResult, reply: dict[str, Any]) -> None:
    if result.error:
        result.score, result.reason = 0.0, f"model error: {result.error}"
        return
    try:
        scorer = scorer_for(suite)
    except Exception as exc:
        raise ScorerUnavailable(f"scorer {suite.scorer!r} cannot be built: {type(exc).__name__}: {exc}") from exc
    if result.tool_calls and not result.output:
        # a reply made of tool calls: they are the prediction, there is no text to extract from
        result.extracted = result.tool_calls
    else:
        try:
            result.extracted = run_pipeline(suite.extract, result.output or "")
        except ExtractionError as exc:
            result.extracted = ""
            result.score, result.reason = 0.0, f"extraction failed: {exc}"
            return
    if suite.judge is not None:
        from harness.judging.scores import judge_score

        result.judge = {}
        scored = judge_score(suite.scorer, suite.judge, reply.get("judge"), result.extracted, case.target,
                             result.judge)
    else:
        scored = scorer.score(result.extracted, case.target, case)
    result.score, result.reason, result.data = float(scored.value), scored.reason, dict(scored.data)
