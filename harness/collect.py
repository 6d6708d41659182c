"""pytest collectors and items: a JSONL file of a suite, one item per case and model.

No model calls and no scoring happen here: items read the replies generation produced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pytest

from harness.results import CaseResult
from harness.scoring.scorers import get_scorer
from harness.suite import Case, Suite, SuiteError, load_cases, suite_files_in, suite_for_dataset


def item_name(case_id: str, model: str, multi_model: bool) -> str:
    return f"{case_id}[{model}]" if multi_model else case_id


def cases_of(suite: Suite, dataset: Path) -> list[Case]:
    """A dataset's cases, then, for a robustness suite, their perturbed copies."""
    cases = load_cases(suite, dataset)
    if suite.robustness is None:
        return cases
    from harness.robustness import perturbed_cases

    return cases + perturbed_cases(suite.robustness, cases)


def suite_cases(suite: Suite) -> list[tuple[Path, Case]]:
    return [(dataset, case) for dataset in suite.datasets for case in cases_of(suite, dataset)]


class CaseFailed(Exception):
    """A case that ran and did not pass its rule (or hit a model error)."""

    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.reason or "failed")
        self.result = result


def is_suite_dataset(file_path: Path) -> bool:
    return file_path.suffix == ".jsonl" and bool(suite_files_in(file_path.parent))


class JsonlFile(pytest.File):
    """The cases of one dataset of a suite."""

    def collect(self) -> Iterable[pytest.Item]:
        try:
            suite = suite_for_dataset(self.path)
            if suite is None:
                return []
            cases = cases_of(suite, self.path.resolve())
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from exc
        try:
            get_scorer(suite.scorer, suite.scorer_options)
        except (ValueError, TypeError) as exc:
            raise self.CollectError(f"{suite.path}: {exc}") from exc
        from harness.run import run_state

        models = run_state(self.config).model_names
        for marker in suite.markers:
            self.config.addinivalue_line("markers", f"{marker}: declared by suite {suite.name}")
        # decorators built once: a marker by name costs a registry lookup per item (100,000 cases)
        marks = [pytest.mark.llm_eval, *(getattr(pytest.mark, marker) for marker in suite.markers)]
        attacked = [*marks, pytest.mark.llm_robustness]
        multi = len(models) > 1
        return [CaseItem.from_parent(self, name=item_name(case.id, model, multi), suite=suite, case=case,
                                     model=model, marks=attacked if case.attack else marks)
                for case in cases for model in models]


class CaseItem(pytest.Item):
    """One case on one model: reads its reply, extracts, scores, applies the pass rule."""

    def __init__(self, *, suite: Suite, case: Case, model: str, marks: list[Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.case = case
        self.model = model
        self.case_result: CaseResult | None = None
        for mark in marks if marks is not None else ["llm_eval", *suite.markers]:
            self.add_marker(mark)

    def runtest(self) -> None:
        from harness.judge import judge_case
        from harness.run import run_state

        state = run_state(self.config)
        reply = state.reply_for(self.nodeid, self.suite, self.case, self.model)
        dataset = self.path.relative_to(self.config.rootpath).as_posix() \
            if self.path.is_relative_to(self.config.rootpath) else str(self.path)
        try:
            result = judge_case(self.suite, self.case, self.model, self.nodeid, dataset, reply)
        except Exception as exc:  # a scorer bug scores 0 with its reason; the run goes on
            result = CaseResult(self.suite.name, self.case.id, self.model, self.nodeid, dataset, self.case.line,
                                None, self.case.target, output=reply.get("text"), score=0.0,
                                passed=False if self.suite.pass_rule else None,
                                reason=f"scorer raised {type(exc).__name__}: {exc}",
                                latency_ms=reply.get("latency_ms"), output_tokens=reply.get("output_tokens"),
                                attack=self.case.attack)
        self.case_result = result
        if result.passed is False:
            raise CaseFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            return format_case(excinfo.value.result)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.case.line - 1, f"{self.suite.name}::{self.name}"


def _show(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=None)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def format_case(result: CaseResult) -> str:
    """Everything a reader needs to see why a case failed."""
    prompt = result.prompt
    if isinstance(prompt, list):
        prompt = "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt)
    lines = [
        f"case {result.id} of suite {result.suite} on {result.model} ({result.dataset}:{result.line})",
        f"reason:    {result.reason}",
        f"score:     {result.score}",
        f"target:    {_show(result.target)}",
        f"extracted: {_show(result.extracted)}",
        f"output:    {_show(result.output)}",
        "prompt:",
        *("    " + line for line in _show(prompt, 4000).splitlines()),
    ]
    return "\n".join(lines)
