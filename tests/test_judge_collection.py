"""A judge that cannot work is a collection error naming the suite file (or, for the models
file and the command line, a usage error), before any request is sent."""

from __future__ import annotations

from typing import Any

# loaded before any pytester run (see tests/conftest.py): its pytest plugin imports it at every
# in-process run's end, and pytester would drop it each time
import hypothesis  # noqa: F401
import pytest
import yaml

from tests.conftest import run_inline, write_suite

MODELS = [{"name": "stub", "engine": "scripted"}, {"name": "judge", "engine": "scripted", "role": "judge"}]
RUBRIC = "Is this right? {{ output }}"
CASES = [{"id": "c1", "input": "ANSWER: yes", "target": "answer"}]


def setup(pytester: pytest.Pytester, scorer: dict[str, Any], models: list[dict[str, Any]] = MODELS) -> None:
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(models), encoding="utf-8")
    write_suite(pytester.path / "evals", "bad", CASES, scorer=scorer)
    # a sound suite beside it: the error is the bad suite's, not the run's
    write_suite(pytester.path / "evals", "good", [{"id": "g1", "input": "ANSWER: Paris", "target": "Paris"}])


def judge(**options: Any) -> dict[str, Any]:
    return {"name": "judge", "model": "judge", "rubric": RUBRIC, "scale": ["refuse", "answer"], **options}


BAD_SCORERS = {
    "undefined-variable": (judge(rubric="Is {{ answer }} right? {{ output }}"),
                           ("rubric uses undefined variable(s) answer; a rubric may read input, labels, metadata, "
                            "output, prediction, scale, target")),
    "no-output-shown": (judge(rubric="Is {{ input }} hard?"), "rubric never shows the answer to grade"),
    "judge-not-in-run": (judge(model="gpt-judge"), "judge model 'gpt-judge' is not a model of this run (stub, judge)"),
    "one-number-scale": (judge(scale=[1]), "a numeric scale has exactly two numbers, not 1: [1]"),
    "one-label-scale": (judge(scale=["ok"]), "one label 'ok' cannot tell replies apart"),
    "boolean-label": (judge(scale=[True, False]), "scale label True is a YAML boolean"),
    "no-judge-named": ({"name": "refusal", "method": "judge"},
                       ("scorer 'refusal' is graded by a judge model, and none is named: add model: NAME to the "
                        "scorer, or run with --llm-judge-model NAME")),
    "toxicity-threshold": ({"name": "toxicity", "classifier": "judge", "model": "judge", "threshold": 0.3},
                           "threshold applies to a toxicity classifier, not to a judge"),
    "greedy-samples": (judge(samples=3), "samples: 3 with temperature 0 asks the same greedy question 3 times"),
    "judge-option-without-method": ({"name": "refusal", "model": "judge"},
                                    "option 'model' is for a judge; add method: judge to grade with a model"),
    "unknown-method": ({"name": "key_points", "method": "llm"}, "method must be rules (the default) or judge"),
    "threshold-on-labels": (judge(pass_threshold=0.5), "pass_threshold applies to a numeric scale"),
}


@pytest.mark.parametrize("scorer, message", list(BAD_SCORERS.values()), ids=list(BAD_SCORERS))
def test_a_judge_that_cannot_work_is_a_collection_error_naming_the_suite_file(pytester, scorer, message):
    setup(pytester, scorer)
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    output = result.stdout.str()
    collecting = [line for line in result.outlines if "ERROR collecting" in line]
    # the bad suite's files fail to collect (its suite file and its dataset), the good suite does not
    assert collecting and all("evals/bad/" in line for line in collecting), collecting
    assert "collected 1 item" in output
    # each error names the suite file and its scorer line
    suite_file = pytester.path / "evals" / "bad" / "suite.yaml"
    line = next(n for n, text in enumerate(suite_file.read_text().splitlines(), 1) if text.startswith("scorer:"))
    errors = [text for text in result.outlines if message in text]
    assert errors and all(text.startswith(f"{suite_file}:{line}: ") for text in errors), output
    assert "sending" not in output  # nothing was sent


def test_a_collection_error_under_xdist_names_the_suite_file(pytester):
    setup(pytester, judge(model="gpt-judge"))
    result = run_inline(pytester, "-n", "2", "evals")
    # xdist runs the collected suites on (the good one passes) and fails the run on the error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("errors", outcomes.get("error", 0)) >= 1, outcomes
    result.stdout.fnmatch_lines(["*evals/bad/suite.yaml:*judge model 'gpt-judge' is not a model of this run*"])


def test_a_judge_role_other_than_test_or_judge_is_a_usage_error(pytester):
    setup(pytester, judge(), models=[MODELS[0], {**MODELS[1], "role": "bogus"}])
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*models.yaml: model 'judge': role must be one of test, judge, not 'bogus'*"])


def test_an_unknown_judge_model_option_is_a_usage_error(pytester):
    setup(pytester, {"name": "refusal", "method": "judge"})
    result = run_inline(pytester, "evals", "--llm-judge-model", "gpt-judge")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-judge-model 'gpt-judge' is not a model of this run (stub, judge)*"])


def test_the_judge_model_option_names_the_judge_of_a_scorer_without_one(pytester):
    # the same suite as no-judge-named above collects once --llm-judge-model names a judge of the run
    setup(pytester, {"name": "refusal", "method": "judge"})
    result = run_inline(pytester, "evals", "--collect-only", "-q", "--llm-judge-model", "judge")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["evals/bad/cases.jsonl::c1", "evals/good/cases.jsonl::g1"])
