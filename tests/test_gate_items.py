"""Gates as collected items: listed by --co, selected by -m/-k/--lf, judged on their whole suite,
identical with and without xdist. pytest runs in this process on the scripted engine (with -n,
its workers are real processes)."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import answer_cases, load_report, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])
GATES = ["accuracy >= 0.5", "error_rate == 0"]


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def run(pytester: pytest.Pytester, *args: str, workers: str = "0") -> pytest.RunResult:
    return run_inline(pytester, "-n", workers, *args)


def test_collect_only_lists_gates_after_cases(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES, **{"pass": "record"})
    result = run(pytester, "evals", "--co", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == ["evals/geo/cases.jsonl::c1", "evals/geo/cases.jsonl::c2", "evals/geo/cases.jsonl::c3",
                   "evals/geo/suite.yaml::gate[accuracy >= 0.5]", "evals/geo/suite.yaml::gate[error_rate == 0]"]
    marked = run(pytester, "evals", "--co", "-q", "-m", "llm_gate")
    assert [line for line in marked.outlines if "::" in line] == ids[3:]


def test_selecting_only_gates_still_judges_the_whole_suite(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES, **{"pass": "record"})
    for selection in (["-m", "llm_gate"], ["-k", "gate"]):
        result = run(pytester, "evals", *selection, workers=workers)
        result.assert_outcomes(passed=2)
        report = load_report(pytester)
        suite = report["suites"][0]
        # the controller generated and scored the cases the gates need, though no case item ran
        assert suite["cases"] == 3 and suite["subset"] is False
        assert suite["metrics"]["accuracy"] == pytest.approx(2 / 3)
        assert sorted(c["id"] for c in report["cases"]) == ["c1", "c2", "c3"]
        assert all(c["prompt"] for c in report["cases"])


def test_last_failed_after_a_failed_gate_reruns_the_gate_on_every_case(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.9"], **{"pass": "record"})
    first = run(pytester, "evals", workers=workers)
    first.assert_outcomes(passed=3, failed=1)
    rerun = run(pytester, "evals", "--lf", workers=workers)
    rerun.assert_outcomes(failed=1)
    rerun.stdout.fnmatch_lines(["*accuracy = 0.6667, needs >= 0.9; judged 3 of 3 cases*",
                                "*FAILED evals/geo/suite.yaml::gate[[]accuracy >= 0.9[]]*"])
    suite = load_report(pytester)["suites"][0]
    assert suite["cases"] == 3 and suite["gates"][0]["value"] == pytest.approx(2 / 3)


def test_gate_values_identical_across_worker_counts_and_dist_modes(pytester):
    cases = answer_cases([(f"k{i}", "yes" if i % 3 else "no", "yes") for i in range(40)])
    write_suite(pytester.path / "evals", "yn", cases, gates=["accuracy >= 0.5", "accuracy.lower >= 0.4"],
                **{"pass": "record"})
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES, **{"pass": "record"})
    seen = []
    for args in (["-n", "0"], ["-n", "2"], ["-n", "8"], ["-n", "2", "--dist", "loadfile"],
                 ["-n", "2", "--dist", "worksteal"]):
        result = run_inline(pytester, "evals", *args)
        result.assert_outcomes(passed=43 + 4)
        report = load_report(pytester)
        seen.append(([(s["name"], _quality(s["metrics"]), s["gates"]) for s in report["suites"]],
                     sorted((c["suite"], c["id"], c["score"]) for c in report["cases"])))
    assert all(s == seen[0] for s in seen[1:])
    assert len(seen[0][1]) == 43
    assert next(m for name, m, _ in seen[0][0] if name == "yn")["accuracy"] == pytest.approx(26 / 40)


def _quality(metrics: dict) -> dict:
    """Metrics that depend on the replies only (timing and cache figures vary from run to run)."""
    timing = ("latency", "throughput", "wall_s", "tokens_per_s", "cached", "ttft", "tpot")
    return {k: v for k, v in metrics.items() if not any(t in k for t in timing)}


def test_nested_conftest_scorer_and_hooks_give_identical_metrics_with_and_without_xdist(pytester):
    cases = answer_cases([(f"k{i}", "Bx" if i % 3 else "Cx", "By") for i in range(9)])
    folder = write_suite(pytester.path / "evals" / "deep", "letters", cases, scorer="first_letter",
                         gates=["letter_acc >= 0.6", "twice_cases == 18"], **{"pass": "record"})
    (folder / "conftest.py").write_text(textwrap.dedent("""
        import harness

        @harness.scorer("first_letter", main_metric="letter_acc")
        def first_letter(prediction, target, case):
            return str(prediction)[:1] == str(target)[:1]

        def pytest_llm_suite_metrics(suite, model, results, metrics):
            metrics["twice_cases"] = 2.0 * len(results)
    """))
    reports = []
    for n in ("0", "2"):
        result = run(pytester, "evals", "--llm-cache", "off", workers=n)
        result.assert_outcomes(passed=11)
        suite = load_report(pytester)["suites"][0]
        reports.append((suite["main_metric"], _quality(suite["metrics"]), suite["gates"]))
    assert reports[0] == reports[1]
    assert reports[0][0] == "letter_acc" and reports[0][1]["letter_acc"] == pytest.approx(6 / 9)


def test_a_crashing_hook_fails_the_gates_with_the_reason_instead_of_hanging(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5"], **{"pass": "record"})
    (pytester.path / "conftest.py").write_text(
        "def pytest_llm_suite_metrics(suite, model, results, metrics):\n    raise RuntimeError('metric bug')\n")
    result = run(pytester, "evals", workers=workers)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*suite metrics raised RuntimeError: metric bug*"])


def test_a_failing_case_under_exitfirst_never_leaves_a_gate_waiting(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5"])
    result = run(pytester, "evals", "-x", workers="2")
    assert result.ret in (1, 2)  # xdist ends a -x run as interrupted
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert any(c["id"] == "c3" and c["passed"] is False for c in report["cases"])


def test_a_case_whose_worker_crashed_is_an_error_and_its_gates_are_judged(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["error_rate == 0", "accuracy >= 0.3"],
                **{"pass": "record"})
    pytester.makeconftest("""
        import os

        def pytest_runtest_call(item):
            if item.name == "c2" and hasattr(item.config, "workerinput"):
                os._exit(1)  # the worker dies mid-case
    """)
    result = run(pytester, "evals", workers="2")
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert sorted(by_id) == ["c1", "c2", "c3"]  # no case lost
    assert by_id["c2"]["error"].startswith("worker crashed")
    suite = report["suites"][0]
    assert suite["metrics"]["error_rate"] == pytest.approx(1 / 3)
    assert [(g["expr"], g["status"]) for g in suite["gates"]] == [("error_rate == 0", "failed"),
                                                                   ("accuracy >= 0.3", "passed")]
    assert result.ret == 1


def test_a_case_that_never_reports_is_an_error_not_a_wait(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["error_rate == 0"], **{"pass": "record"})
    pytester.makeconftest("""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(item, nextitem):
            if item.name == "c2":
                return True  # swallowed: this item never reports
    """)
    result = run(pytester, "evals", workers=workers)
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert sorted(by_id) == ["c1", "c2", "c3"]  # not lost, and its gate did not wait for it
    assert by_id["c2"]["error"].startswith("no result: another plugin replaced this item's run protocol")
    assert report["suites"][0]["gates"][0]["status"] == "failed"
    result.assert_outcomes(passed=2, failed=2)
    assert result.ret == 1


def test_a_skipped_case_leaves_its_suite_and_the_gates_judge_the_rest(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy == 1"], **{"pass": "record"})
    pytester.makeconftest("""
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                if item.name == "c3":
                    item.add_marker(pytest.mark.skip(reason="known bad label"))
    """)
    result = run(pytester, "evals", workers=workers)
    result.assert_outcomes(passed=3, skipped=1)
    suite = load_report(pytester)["suites"][0]
    assert suite["cases"] == 2 and suite["subset"] is True
    assert suite["gates"][0]["status"] == "passed"


def test_cases_a_stopped_run_never_ran_are_listed_as_not_run(pytester):
    cases = answer_cases([("c1", "Oslo", "Bern"), ("c2", "Rome", "Rome"), ("c3", "Paris", "Paris")])
    write_suite(pytester.path / "evals", "geo", cases, gates=["accuracy >= 0.5"])
    result = run(pytester, "evals", "-x")
    result.assert_outcomes(failed=1)
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert sorted(by_id) == ["c1", "c2", "c3"]
    assert by_id["c2"]["error"] == "not run: the run stopped after 1 failure(s) (-x/--maxfail)"
    suite = report["suites"][0]
    assert suite["cases"] == 1 and suite["gates"][0]["status"] == "skipped"  # metrics over what ran
    result.stdout.fnmatch_lines(["*2 planned case(s) have no result, recorded as errors (the run stopped*"])
    assert report["run"]["reconciliation"] == {
        "planned": 3, "recorded": 1, "not_run": 2, "skipped": 0, "not_run_ids": [
            "evals/geo/cases.jsonl::c2", "evals/geo/cases.jsonl::c3"],
        "stopped": "the run stopped after 1 failure(s) (-x/--maxfail)"}
