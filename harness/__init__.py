"""pytest-llm-harness: LLM evaluation suites as pytest items, quality gates as outcomes."""

from harness.analysis import RunFrames, load_run
from harness.engines.client import Reply, Request
from harness.engines.registry import Engine, EngineContext
from harness.llm_client import LLMClient, LLMError
from harness.results import CaseResult, GateResult, SuiteResult
from harness.scoring.scorers import Score, Scorer, scorer
from harness.suite import Case, Suite, SuiteError

__all__ = [
    "Case", "CaseResult", "Engine", "EngineContext", "GateResult", "LLMClient", "LLMError", "Reply", "Request",
    "RunFrames", "Score", "Scorer", "Suite", "SuiteError", "SuiteResult", "load_run", "scorer",
]
