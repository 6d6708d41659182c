"""Latency and throughput: suite metrics, gates on them, and the seeds' indicator files."""

from __future__ import annotations

import json

from harness.suite_metrics import throughput
from harness.report.indicators import latency_indicator, throughput_indicator
from harness.results import CaseResult
from tests.conftest import answer_cases, run_inline, scripted_models, write_suite


def result(sent: float, done: float, latency: float, tokens: int = 2, error: str | None = None,
           cached: bool = False) -> CaseResult:
    return CaseResult("s", "c", "m", "n", "d", 1, "p", "t", latency_ms=latency, output_tokens=tokens, error=error,
                      cached=cached, sent_at=sent, done_at=done)


def test_throughput_is_answered_requests_over_first_send_to_last_answer():
    results = [result(10.0, 10.5, 500), result(10.2, 11.0, 800), result(10.4, 12.0, 1600, error="HTTP 500"),
               result(0.0, 100.0, 5, cached=True)]  # a cache hit was not sent in this run
    metrics = throughput(results)
    assert metrics["wall_s"] == 2.0
    assert metrics["throughput_rps"] == 1.0  # two answered in 2 s; the failure counts in the wall time only
    assert metrics["output_tokens_per_s"] == 2.0
    assert "ttft_p50_ms" not in metrics  # not streamed


def test_indicator_formats_match_the_seeds():
    cases = [{"latency_ms": float(v), "sent_at": 0.0, "done_at": v / 100, "error": None, "cached": False}
             for v in range(1, 101)]
    assert latency_indicator(cases) == {"indicator": "latency_p99", "p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": 99.01,
                                        "requests": 100}
    assert throughput_indicator(cases, 8) == {"indicator": "throughput_rps", "rps": 100.0, "concurrency": 8,
                                              "duration_s": 1.0}
    assert throughput_indicator([], 8) == {"indicator": "throughput_rps", "rps": None, "concurrency": 8,
                                           "duration_s": None}


def test_latency_and_throughput_gates_and_files(pytester, stub_url):
    cases = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(10)])
    write_suite(pytester.path / "evals", "fast", cases, gates=["latency_p99_ms <= 5000", "throughput_rps >= 1"],
                **{"pass": "record"})
    write_suite(pytester.path / "evals", "slow", cases, gates=["throughput_rps >= 1000000"], **{"pass": "record"})
    scripted_models(pytester, delay_ms=5)  # a real wall time: no throughput of a million per second
    result = run_inline(pytester, "--llm-concurrency", "4", "--llm-cache", "off", "evals")
    assert result.ret == 1  # the impossible throughput gate fails the run
    result.stdout.fnmatch_lines(["FAILED evals/slow/suite.yaml::gate?throughput_rps >= 1000000?*"])
    out = pytester.path / "out"
    latency = json.loads((out / "latency_p99.json").read_text())
    assert set(latency) == {"indicator", "p50_ms", "p90_ms", "p99_ms", "requests"} and latency["requests"] == 20
    rps = json.loads((out / "throughput_rps.json").read_text())
    assert rps["concurrency"] == 4 and rps["rps"] > 0 and rps["duration_s"] > 0
    per_suite = json.loads((out / "indicators" / "stub" / "fast" / "latency_p99.json").read_text())
    assert per_suite["requests"] == 10 and per_suite["p50_ms"] <= per_suite["p99_ms"]


def test_several_models_get_indicator_folders_not_one_flat_file(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "a", "a")]), **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals", models="models2.yaml")
    assert result.ret == 0
    out = pytester.path / "out"
    assert not (out / "latency_p99.json").exists()
    for model in ("stub", "stub-b"):
        assert json.loads((out / "indicators" / model / "throughput_rps.json").read_text())["rps"] > 0
