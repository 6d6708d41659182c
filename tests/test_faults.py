"""Fault injection against real stub processes: every case ends scored or marked as an error
with its reason, none lost; retries, deadlines, the second pass, 429 back-off, replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.engines.client import OpenAICompatClient, Request
from harness.engines.limiter import AdaptiveLimit
from harness.engines.managed import free_port
from tests.conftest import answer_cases, load_report, stub_reset, stub_stats, write_suite
from tests.conftest import stub_server as stub


def run(pytester: pytest.Pytester, url: str, *args: str, workers: str = "0") -> pytest.RunResult:
    # pytest in this process (with -n 2 its workers are processes of their own) against real stub processes
    return pytester.runpytest_inprocess("-n", workers, "--llm-base-url", url, "--llm-model", "stub",
                                        "--llm-report-dir", "out", "--llm-cache", "off", "-p", "no:cacheprovider",
                                        "evals", *args)


def by_id(report: dict) -> dict[str, dict]:
    return {case["id"]: case for case in report["cases"]}


FAULTS = [
    ("ok", "ANSWER: a"),
    ("flaky", "FLAKY:2 ANSWER: a"),  # 429 twice, then an answer
    ("burst5xx", "FAILN:2:503 ANSWER: a"),  # 503 twice, then an answer
    ("truncated", "TRUNCATE:1 ANSWER: a"),  # half a JSON body once
    ("reset", "RESET:1 ANSWER: a"),  # connection dropped once
    ("null", "NULL"),  # content: null
    ("empty", "EMPTY"),
    ("bad_request", "FAIL:422"),  # not retried
    ("down", "FAIL:500"),  # retried, re-sent in the second pass, then an error
    ("hang", "HANG"),  # never answers: the deadline ends it
]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_every_fault_ends_scored_or_errored_with_its_reason(pytester, workers):
    cases = [{"id": name, "input": prompt, "target": "a"} for name, prompt in FAULTS]
    write_suite(pytester.path / "evals", "faults", cases, **{"pass": "record"})
    with stub("--models", "stub") as (_, url):
        started = time.monotonic()
        result = run(pytester, url, "--llm-retries", "2", "--llm-timeout", "1", "--llm-deadline", "2.5",
                     workers=workers)
        elapsed = time.monotonic() - started
        requests = stub_stats(url)["requests"]
    assert result.ret == 0, result.stdout.str()
    cases = by_id(load_report(pytester))
    assert set(cases) == {name for name, _ in FAULTS}  # none lost
    for name in ("ok", "flaky", "burst5xx", "truncated", "reset"):
        assert cases[name]["error"] is None and cases[name]["score"] == 1.0, cases[name]
    assert cases["flaky"]["attempts"] == 3 and cases["burst5xx"]["attempts"] == 3
    assert "content null" in cases["null"]["error"] and cases["empty"]["error"] == "empty reply"
    assert cases["bad_request"]["error"].startswith("HTTP 422") and cases["bad_request"]["attempts"] == 1
    # the second pass has only what the first left of the 2.5 s deadline: its backoff may end it early
    assert cases["down"]["error"].startswith("HTTP 500") and 1 <= cases["down"]["attempts"] <= 3
    assert "timeout" in cases["hang"]["error"] and "deadline of 2.5 s" in cases["hang"]["error"]
    for name in ("null", "empty", "bad_request", "down", "hang"):
        assert cases[name]["score"] == 0.0 and cases[name]["reason"].startswith("model error")
    # 422 sent once, 500 three times in each of two passes, the hang twice per pass at most
    assert requests <= 1 + 3 + 3 + 2 + 2 + 1 + 1 + 1 + 6 + 6
    assert elapsed < 60


def test_a_5xx_burst_is_retried_away(pytester):
    cases = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(30)])
    write_suite(pytester.path / "evals", "burst", cases, gates=["accuracy == 1", "error_rate == 0"],
                **{"pass": "record"})
    with stub("--models", "stub", "--fail-first", "40", "--fail-status", "503") as (_, url):
        result = run(pytester, url, "--llm-concurrency", "8", "--llm-retries", "2")
        requests = stub_stats(url)["requests"]
    assert result.ret == 0, result.stdout.str()
    report = load_report(pytester)
    assert report["suites"][0]["metrics"]["accuracy"] == 1.0
    assert requests == 40 + 30  # every failed attempt retried, nothing sent twice once answered


def test_failures_after_retries_get_a_second_pass(pytester):
    # a case that fails 3 attempts (retries 2) in the main pass succeeds in the second pass
    write_suite(pytester.path / "evals", "two_step", [{"id": "x", "input": "FAILN:3:502 ANSWER: a", "target": "a"}],
                **{"pass": "record"})
    with stub("--models", "stub") as (_, url):
        result = run(pytester, url, "--llm-retries", "2")
        assert result.ret == 0
        assert load_report(pytester)["cases"][0]["error"] is None
        assert stub_stats(url)["requests"] == 4
        stub_reset(url)  # the stub forgets the prompt's failed attempts
        result = run(pytester, url, "--llm-retries", "2", "--llm-retry-passes", "0")
        assert stub_stats(url)["requests"] == 3
    assert load_report(pytester)["cases"][0]["error"].startswith("HTTP 502")


def test_429_backs_off_the_in_flight_limit_and_reports_it(pytester):
    cases = [{"id": f"c{i}", "input": f"q{i} FLAKY:1 ANSWER: a", "target": "a"} for i in range(24)]
    write_suite(pytester.path / "evals", "throttled", cases, **{"pass": "record"})
    with stub("--models", "stub", "--delay-ms", "20") as (_, url):
        result = run(pytester, url, "--llm-concurrency", "16", "--llm-retries", "3")
        peak = stub_stats(url)["max_in_flight"]
    assert result.ret == 0, result.stdout.str()
    report = load_report(pytester)
    in_flight = report["run"]["generation"]["in_flight"]
    assert in_flight["throttled"] >= 1 and in_flight["lowest_limit"] <= 8
    assert peak <= 16
    assert all(case["error"] is None for case in report["cases"])


def test_adaptive_limit_halves_on_429_and_climbs_back():
    async def scenario() -> list[int]:
        limit = AdaptiveLimit(16, cooldown_s=0.0)
        seen = []
        for throttled in [True, True, False] + [False] * 40:
            await limit.acquire()
            limit.release(throttled)
            seen.append(limit.allowed)
        return seen

    seen = asyncio.run(scenario())
    assert seen[:2] == [8, 4]
    assert seen[-1] > 4 and max(seen) <= 16
    assert all(b - a <= 1 for a, b in zip(seen[2:], seen[3:]))  # additive: at most +1 a step


def test_adaptive_limit_never_exceeds_its_ceiling():
    async def scenario() -> int:
        limit = AdaptiveLimit(5)
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            async with limit.slot() as slot:
                peak = max(peak, limit.in_flight)
                await asyncio.sleep(0.001 * (i % 3))
                slot.throttled = i % 11 == 0

        await asyncio.gather(*(one(i) for i in range(200)))
        return peak

    assert asyncio.run(scenario()) <= 5


def test_total_deadline_cuts_retries_and_attempts():
    with stub("--models", "stub") as (_, url):
        async def send() -> tuple[float, object]:
            client = OpenAICompatClient(url, timeout_s=10, retries=5, backoff_s=0.01, deadline_s=1.0)
            started = time.monotonic()
            try:
                return time.monotonic() - started, await client.send(Request("chat", "stub", [
                    {"role": "user", "content": "HANG"}]))
            finally:
                await client.close()

        _, reply = asyncio.run(send())
    assert reply.error is not None and "deadline of 1 s" in reply.error
    assert reply.latency_ms < 2500


def test_streaming_measures_ttft_and_tpot():
    with stub("--models", "stub", "--token-delay-ms", "30") as (_, url):
        async def send():
            client = OpenAICompatClient(url)
            try:
                message = {"role": "user", "content": "ANSWER: w1 w2 w3 w4 w5"}
                return await client.send(Request("chat", "stub", [message], stream=True))
            finally:
                await client.close()

        reply = asyncio.run(send())
    assert reply.error is None and reply.text == "w1 w2 w3 w4 w5" and reply.output_tokens == 5
    assert reply.ttft_ms is not None and reply.ttft_ms >= 25
    # TPOT = (latency - TTFT) / (tokens - 1): about the 30 ms between chunks
    assert reply.tpot_ms is not None and 20 <= reply.tpot_ms <= 200
    assert abs(reply.tpot_ms - (reply.latency_ms - reply.ttft_ms) / 4) < 1e-6


def test_stream_option_puts_ttft_in_suite_metrics(pytester):
    write_suite(pytester.path / "evals", "streamed", answer_cases([("c1", "x y z", "x y z"), ("c2", "a b", "a b")]),
                gates=["ttft_p99_ms <= 5000", "throughput_rps > 0"], **{"pass": "record"})
    with stub("--models", "stub", "--token-delay-ms", "5") as (_, url):
        result = run(pytester, url, "--llm-stream")
    assert result.ret == 0, result.stdout.str()
    metrics = load_report(pytester)["suites"][0]["metrics"]
    assert metrics["ttft_p50_ms"] is not None and metrics["tpot_p50_ms"] is not None
    assert metrics["accuracy"] == 1.0


def test_requests_spread_over_replicas_and_fail_over(pytester):
    cases = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(20)])
    write_suite(pytester.path / "evals", "spread", cases, gates=["error_rate == 0"], **{"pass": "record"})
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with stub("--models", "stub", "--delay-ms", "20") as (_, a), stub("--models", "stub", "--delay-ms", "20") as (_, b):
        result = run(pytester, f"{a},{b}", "--llm-concurrency", "8")
        counts = stub_stats(a)["requests"], stub_stats(b)["requests"]
        assert result.ret == 0, result.stdout.str()
        assert sum(counts) == 20 and min(counts) >= 5
        # a dead replica: its failures are retried on the live one, no case is lost
        result = run(pytester, f"{dead},{a}", "--llm-concurrency", "4", "--llm-retries", "3")
    assert result.ret == 0, result.stdout.str()
    assert all(case["error"] is None for case in load_report(pytester)["cases"])


def test_server_killed_mid_run_marks_the_rest_and_a_rerun_sends_only_those(pytester):
    cases = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(40)])
    write_suite(pytester.path / "evals", "killed", cases, gates=["error_rate == 0"], **{"pass": "record"})
    port = free_port()
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llm-model", "stub", "--llm-base-url",
            f"http://127.0.0.1:{port}/v1", "--llm-report-dir", "out", "--llm-cache-path", "cache.sqlite",
            "--llm-concurrency", "2", "--llm-retries", "0", "--llm-retry-passes", "0", "evals"]  # no backoff waits
    with stub("--models", "stub", "--delay-ms", "100", port=port) as (proc, url):
        run_proc = subprocess.Popen(args, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while stub_stats(url)["requests"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = run_proc.communicate(timeout=120)
    assert run_proc.returncode == 1, out.decode()  # the error_rate gate fails; the run itself completes
    cases = load_report(pytester)["cases"]
    assert len(cases) == 40
    failed = [c for c in cases if c["error"] is not None]
    assert failed and all("connection error" in c["error"] for c in failed)
    assert all(c["score"] == 1.0 for c in cases if c["error"] is None)
    with stub("--models", "stub", port=port) as (_, url):
        rerun = subprocess.run(args, cwd=pytester.path, capture_output=True, timeout=120)
        assert stub_stats(url)["requests"] == len(failed)
    assert rerun.returncode == 0, rerun.stdout.decode()
