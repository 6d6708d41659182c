"""A warm-cache re-run: a suite whose replies all come from the response cache measured no time,
so its latency and throughput gates skip with the reason (the run still passes); a partly cached
suite is timed on the requests it sent. The indicator files say why a figure is null."""

from __future__ import annotations

import json

import pytest
import yaml

from harness.results import CaseResult
from harness.suite import load_suite
from harness.suite_metrics import suite_result
from tests.conftest import answer_cases, load_report, run_inline, scripted_models, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])
GATES = ["latency_p99_ms <= 10000", "accuracy >= 0.5", "throughput_rps >= 0.001"]
UNMEASURED = ("no request of this suite was sent in this run (3 of 3 replies from the response cache): "
              "latency not measured")


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def run(pytester: pytest.Pytester, workers: str) -> pytest.RunResult:
    # every run of a test shares the test's cache file (cache.sqlite): the second run is all hits
    return run_inline(pytester, "-n", workers, "-rs", "evals")


def gates_of(pytester: pytest.Pytester) -> dict[str, dict]:
    return {g["expr"]: g for g in load_report(pytester)["suites"][0]["gates"]}


def test_a_fully_cached_rerun_skips_timing_gates_and_passes(pytester, workers):
    scripted_models(pytester, delay_ms=2)  # a wall time above zero, so throughput has a value on the first run
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES, **{"pass": "record"})
    first = run(pytester, workers)
    first.assert_outcomes(passed=6)
    assert all(g["status"] == "passed" for g in gates_of(pytester).values())

    second = run(pytester, workers)
    assert second.ret == 0
    second.assert_outcomes(passed=4, skipped=2)
    second.stdout.fnmatch_lines([f"SKIPPED [[]2[]] *: {UNMEASURED}"])
    gates = gates_of(pytester)
    for expr in ("latency_p99_ms <= 10000", "throughput_rps >= 0.001"):
        assert gates[expr]["status"] == "skipped" and gates[expr]["passed"] is None
        assert gates[expr]["reason"] == UNMEASURED and gates[expr]["value"] is None
    assert gates["accuracy >= 0.5"]["status"] == "passed"
    assert load_report(pytester)["suites"][0]["metrics"]["cached"] == 3

    # the indicator files say why their figures are null
    out = pytester.path / "out"
    for path in (out / "latency_p99.json", out / "indicators" / "stub" / "geo" / "throughput_rps.json"):
        indicator = json.loads(path.read_text())
        assert indicator["note"] == ("all 3 replies from the response cache: no request was sent in this run, "
                                     "so none was timed")


def test_a_half_cached_run_still_judges_latency(pytester, workers):
    scripted_models(pytester, delay_ms=2)
    write_suite(pytester.path / "evals", "geo", CASES[:2], gates=["latency_p99_ms <= 0.001"], **{"pass": "record"})
    run(pytester, workers).assert_outcomes(passed=2, failed=1)
    write_suite(pytester.path / "evals", "geo", CASES, gates=["latency_p99_ms <= 0.001"], **{"pass": "record"})
    result = run(pytester, workers)
    # judged on the one request sent (a 2 ms reply): an impossible bound still fails
    result.assert_outcomes(passed=3, failed=1)
    suite = load_report(pytester)["suites"][0]
    assert suite["metrics"]["cached"] == 2
    gate = suite["gates"][0]
    assert gate["status"] == "failed" and gate["value"] >= 1
    latency = json.loads((pytester.path / "out" / "latency_p99.json").read_text())
    assert latency["requests"] == 1 and "note" not in latency


def _results(cached: list[bool]) -> list[CaseResult]:
    return [CaseResult("geo", f"c{i}", "stub", f"n{i}", "cases.jsonl", i, "p", "t", output="t", score=1.0,
                       cached=hit, latency_ms=None if hit else 5.0, sent_at=None if hit else 1.0,
                       done_at=None if hit else 1.5) for i, hit in enumerate(cached)]


def test_suite_result_skips_only_unmeasured_timing_gates(tmp_path):
    gates = ["latency_p50_ms <= 100", "wall_s <= 10", "output_tokens_per_s >= 0", "error_rate == 0",
             "latency_typo_ms <= 1"]
    folder = write_suite(tmp_path, "geo", CASES, gates=gates, **{"pass": "record"})
    suite = load_suite(folder / "suite.yaml")

    cached = suite_result(suite, "stub", _results([True, True]), 2)
    status = {g.expr: (g.status, g.reason) for g in cached.gates}
    reason = ("no request of this suite was sent in this run (2 of 2 replies from the response cache): "
              "latency not measured")
    for expr in gates[:3]:
        assert status[expr] == ("skipped", reason)
    assert status["error_rate == 0"][0] == "passed"
    assert status["latency_typo_ms <= 1"][0] == "failed"  # a typo is an unknown metric, cached or not

    partly = suite_result(suite, "stub", _results([True, False]), 2)
    status = {g.expr: g.status for g in partly.gates}
    assert status["latency_p50_ms <= 100"] == "passed" and status["wall_s <= 10"] == "passed"

    none_sent = suite_result(suite, "stub", [], 2)  # nothing at all: not the cache's doing, the gates fail
    assert {g.expr: g.status for g in none_sent.gates}["latency_p50_ms <= 100"] == "failed"


def test_indicator_notes_for_quality_figures(tmp_path):
    from harness.report.indicators import write_indicators

    suites = [{"name": "tox", "model": "stub", "metrics": {"cases": 2.0, "error_rate": 1.0, "toxic_ratio": None}}]
    write_indicators({"cases": [], "suites": suites, "run": {}}, tmp_path)
    toxicity = json.loads((tmp_path / "toxicity.json").read_text())
    assert toxicity["toxic_ratio"] is None
    assert toxicity["note"] == "every request is an error: no case could be judged"
    assert yaml.safe_load((tmp_path / "indicators" / "stub" / "tox" / "toxicity.json").read_text()) == toxicity
