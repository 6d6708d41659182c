"""Requests of one suite share their parameter dicts (a million built requests need not hold a million
copies), except where a ``pytest_llm_build_request`` hook could change them in place."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.prompts import build_request
from harness.suite import load_cases, load_suite
from tests.conftest import answer_cases, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome")])


class _Hook:
    """A hook relay with one pytest_llm_build_request implementation that changes c1's dict in place."""

    def __init__(self) -> None:
        caller: Any = self._rewrite
        caller.get_hookimpls = lambda: [object()]
        self.pytest_llm_build_request = caller

    @staticmethod
    def _rewrite(suite: Any, case: Any, model: str, request: Any) -> None:
        if case.id == "c1":
            request.params["temperature"] = 0.9
        return None


def _cases(tmp_path: Path) -> tuple[Any, list[Any]]:
    suite = load_suite(write_suite(tmp_path, "geo", CASES) / "suite.yaml")
    return suite, load_cases(suite, suite.datasets[0])


def test_requests_of_a_suite_share_equal_parameter_dicts(tmp_path: Path) -> None:
    suite, (c1, c2) = _cases(tmp_path)
    no_hooks = SimpleNamespace(pytest_llm_build_request=SimpleNamespace(get_hookimpls=lambda: []))
    first, second = (build_request(suite, case, "stub", hook=no_hooks) for case in (c1, c2))
    assert first.params is second.params and first.extra_body is second.extra_body
    assert first.params == {**second.params} and first.prompt != second.prompt
    # a new request with new dicts leaves the shared ones alone
    changed = dataclasses.replace(first, params={**first.params, "temperature": 0.5})
    assert second.params["temperature"] == 0.0 and changed.params["temperature"] == 0.5


def test_a_build_request_hook_that_changes_a_dict_in_place_changes_only_its_case(tmp_path: Path) -> None:
    suite, (c1, c2) = _cases(tmp_path)
    hook = _Hook()
    first, second = (build_request(suite, case, "stub", hook=hook) for case in (c1, c2))
    assert first.params["temperature"] == 0.9 and second.params["temperature"] == 0.0
    assert first.params is not second.params
