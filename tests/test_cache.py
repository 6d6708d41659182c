"""The response cache: a finished run costs nothing the second time, a killed run resumes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from harness.cache import ResponseCache, cache_key
from harness.engines.client import Request
from tests.conftest import answer_cases, load_report, stub_stats, write_suite

CASES = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(6)])


def run(pytester, url, *args, models=("stub",), workers="0"):
    # pytest in this process (with -n 2 its workers are processes of their own) against the real stub server
    # process, which counts the requests that reach it
    model_args = [arg for model in models for arg in ("--llm-model", model)]
    return pytester.runpytest_inprocess("-n", workers, "--llm-base-url", url, *model_args, "--llm-report-dir",
                                        "out", "--llm-cache-path", "cache.sqlite", "-p", "no:cacheprovider",
                                        "evals", *args)


def sent(url: str, action) -> int:
    before = stub_stats(url)["requests"]
    action()
    return stub_stats(url)["requests"] - before


def entries(pytester, model: str | None = None) -> int:
    with sqlite3.connect(pytester.path / "cache.sqlite") as db:
        if model is None:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        return db.execute("SELECT COUNT(*) FROM replies WHERE model=?", (model,)).fetchone()[0]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_second_identical_run_sends_zero_requests(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.9"]})
    assert sent(stub_url, lambda: run(pytester, stub_url, workers=workers).assert_outcomes(passed=7)) == 6
    first = load_report(pytester)
    assert sent(stub_url, lambda: run(pytester, stub_url, workers=workers).assert_outcomes(passed=7)) == 0
    second = load_report(pytester)
    assert all(c["cached"] for c in second["cases"]) and not any(c["cached"] for c in first["cases"])
    assert [c["output"] for c in second["cases"]] == [c["output"] for c in first["cases"]]
    metrics = second["suites"][0]["metrics"]
    assert metrics["accuracy"] == 1.0 and metrics["cached"] == 6
    assert metrics["latency_p99_ms"] is None  # cache hits stay out of latency figures
    assert second["run"]["models"][0]["engine"]["base_url"] == stub_url


def test_two_models_never_share_an_entry(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    assert sent(stub_url, lambda: run(pytester, stub_url, models=("stub",))) == 6
    # the same prompts for another model are not answered from the first model's entries
    assert sent(stub_url, lambda: run(pytester, stub_url, models=("stub", "stub-b"))) == 6
    assert entries(pytester, "stub") == 6 and entries(pytester, "stub-b") == 6
    assert sent(stub_url, lambda: run(pytester, stub_url, models=("stub-b",))) == 0


NO_RETRY = ("--llm-retries", "0", "--llm-retry-passes", "0")


def test_changed_settings_miss_and_failures_are_not_cached(pytester, stub_url):
    cases = CASES[:2] + [{"id": "bad", "input": "FAIL:500", "target": "x"}]
    write_suite(pytester.path / "evals", "geo", cases, **{"pass": "record"})
    assert sent(stub_url, lambda: run(pytester, stub_url, *NO_RETRY)) == 3
    assert entries(pytester) == 2
    assert sent(stub_url, lambda: run(pytester, stub_url, *NO_RETRY)) == 1  # only the failure again
    write_suite(pytester.path / "evals", "geo", cases, generation={"max_tokens": 5}, **{"pass": "record"})
    assert sent(stub_url, lambda: run(pytester, stub_url, *NO_RETRY)) == 3


@pytest.mark.parametrize(("mode", "first", "second", "stored"),
                         [("off", 6, 6, None), ("read", 6, 6, 0), ("write", 6, 6, 6), ("read-write", 6, 0, 6)])
def test_cache_modes(pytester, stub_url, mode, first, second, stored):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    if mode == "read":
        ResponseCache(pytester.path / "cache.sqlite", "read-write").close()  # an empty cache to read
    assert sent(stub_url, lambda: run(pytester, stub_url, "--llm-cache", mode)) == first
    assert sent(stub_url, lambda: run(pytester, stub_url, "--llm-cache", mode)) == second
    if stored is None:
        assert not (pytester.path / "cache.sqlite").exists()
    else:
        assert entries(pytester) == stored


def test_killed_run_resumes_with_only_the_missing_requests(pytester, stub_url):
    cases = [{"id": f"s{i}", "input": f"SLEEP:150 ANSWER: x{i}", "target": f"x{i}"} for i in range(40)]
    write_suite(pytester.path / "evals", "slow", cases, **{"pass": "record"})
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "evals", "--llm-base-url", stub_url, "--llm-model",
                             "stub", "--llm-concurrency", "4", "--llm-cache-path", "cache.sqlite",
                             "--llm-report-dir", "out"], cwd=pytester.path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (pytester.path / "cache.sqlite").exists() and entries(pytester) >= 8:
                break
        except sqlite3.OperationalError:
            pass  # the run made the file and has not created its table yet
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    done = entries(pytester)
    assert 8 <= done < 40
    resumed = sent(stub_url, lambda: run(pytester, stub_url, "--llm-concurrency", "8").assert_outcomes(passed=40))
    assert resumed == 40 - done
    report = load_report(pytester)
    assert sorted(c["output"] for c in report["cases"]) == sorted(f"x{i}" for i in range(40))


def test_key_covers_model_request_and_settings():
    identity = {"name": "m", "engine": "openai-compatible"}
    base = Request("chat", "m", [{"role": "user", "content": "hi"}], {"max_tokens": 8, "temperature": 0.0})
    same = Request("chat", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0, "max_tokens": 8})
    assert cache_key(identity, base) == cache_key(identity, same)
    variants = [
        Request("chat", "m", [{"role": "user", "content": "hi!"}], base.params),
        Request("chat", "m", base.prompt, {**base.params, "temperature": 0.7}),
        Request("chat", "m", base.prompt, {**base.params, "seed": 1}),
        Request("chat", "m", base.prompt, base.params, {"chat_template_kwargs": {"enable_thinking": False}}),
        Request("completion", "m", "hi", base.params),
    ]
    keys = {cache_key(identity, r) for r in variants} | {cache_key(identity, base)}
    keys |= {cache_key({**identity, "weights_sha256": "x"}, base), cache_key(identity, base, sample=1)}
    assert len(keys) == len(variants) + 3
    assert json.dumps(identity)  # identities are plain JSON


def test_the_response_cache_is_flushed_to_disk_and_the_runs_board_is_not(tmp_path):
    # the cache outlives the run (a machine that crashes must not lose its replies); the xdist board lives in the
    # run's own folder, removed at its end: flushing it only delayed the run's exit (its close copied the log
    # into the file, with an fsync)
    from harness.board import SqliteBoard
    from harness.cache import ResponseCache

    cache = ResponseCache(tmp_path / "cache.sqlite", "read-write")
    cache.put_many([("k", "m", {"content": "x"})])
    board = SqliteBoard(tmp_path / "run" / "board.sqlite")
    try:
        synchronous = {"cache": cache._db.execute("PRAGMA synchronous").fetchone()[0],
                       "board": board._db.execute("PRAGMA synchronous").fetchone()[0]}
    finally:
        board.close()
        cache.close()
    assert synchronous == {"cache": 1, "board": 0}  # NORMAL (a WAL database is synced at its checkpoints), OFF
