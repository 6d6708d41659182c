"""Live progress: a line at once and every interval while requests are in flight (answered/total, rates,
ETA, per model), on the terminal and in progress.log, with and without xdist; -qq silences the terminal."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import harness.generation  # noqa: F401  (loaded once here: pytester's in-process runs drop what they import)
import harness.progress  # noqa: F401
import harness.testing.scripted  # noqa: F401
from harness.progress import (Figures, ModelCounts, Monitor, Rates, Snapshot, clock, log_line, plain_line,
                              progress_interval)
from tests.conftest import run_inline, scripted_models, write_suite

LINE = re.compile(r"llm-harness (\d+:\d\d) · (\d+)/(\d+) answered")


def cases(n: int) -> list[dict[str, str]]:
    return [{"id": f"c{i:03d}", "input": f"q{i}\nANSWER: a", "target": "a"} for i in range(n)]


def snapshot(answered: int, total: int = 100, cached: int = 0, errors: int = 0, tokens: int = 0) -> Snapshot:
    return Snapshot({"m": ModelCounts(total, answered, cached, errors)}, in_flight=4, output_tokens=tokens)


# -- the figures --------------------------------------------------------------------------------

def test_rates_and_eta_come_from_the_window_not_the_cache():
    rates = Rates(window_s=30)
    assert rates.add(0.0, snapshot(40, cached=40)) == (None, None, None)  # only cached so far: no rate yet
    rps, tps, eta = rates.add(10.0, snapshot(60, cached=40, tokens=200))
    assert rps == pytest.approx(2.0) and tps == pytest.approx(20.0)
    assert eta == pytest.approx(40 / 2.0)  # 40 left at 2 requests/s
    rps, _, eta = rates.add(20.0, snapshot(100, cached=40, tokens=400))
    assert eta == 0.0


def test_rate_forgets_a_slow_start_after_the_window():
    rates = Rates(window_s=10)
    rates.add(0.0, snapshot(0))
    rates.add(100.0, snapshot(10))  # 0.1/s during a slow warm-up
    rates.add(105.0, snapshot(20))
    rps, _, _ = rates.add(115.0, snapshot(40))  # 2/s over the last 10-15 s
    assert rps == pytest.approx(20 / 10)


def test_plain_line_shows_every_figure_and_each_model():
    two = Snapshot({"gemma-greedy": ModelCounts(50, 20, 5, 1), "gemma-t07": ModelCounts(50, 10, 0, 0)},
                   in_flight=16, output_tokens=900)
    line = plain_line(Figures(two, 42.0, 3.14159, 93.0, 75.0))
    assert line.startswith("llm-harness 0:42 · 30/100 answered · cached 5 · errors 1 · in flight 16")
    assert "3.1 req/s" in line and "93.0 tok/s" in line and "ETA 1:15" in line
    assert "gemma-greedy 20/50 (1 err)" in line and "gemma-t07 10/50" in line
    assert "ETA after the first replies" in plain_line(Figures(snapshot(0), 0.4, None, None, None))
    assert plain_line(Figures(snapshot(100), 61, 1.6, 2.0, 0.0, done=True)).startswith(
        "llm-harness done in 1:01 · 100/100 answered")


def test_log_line_is_key_value_and_names_cannot_break_it():
    odd = Snapshot({"my model\x1b[2J": ModelCounts(10, 3)}, in_flight=2)
    text = log_line(Figures(odd, 5.0, None, 1.5, None))
    first, second = text.splitlines()
    assert "answered=3 total=10 cached=0 errors=0 in_flight=2" in first and "req_s=- tok_s=1.50" in first
    assert second.split()[1] == "model=my_model\\x1b[2J"  # one token, the escape shown, not sent
    assert clock(3725) == "1:02:05" and clock(None) == "--"


def test_verbosity_sets_the_terminal_interval(pytestconfig, monkeypatch):
    monkeypatch.setattr(pytestconfig, "get_verbosity", lambda *a: 0)
    assert progress_interval(pytestconfig, 10) == 10
    monkeypatch.setattr(pytestconfig, "get_verbosity", lambda *a: -1)
    assert progress_interval(pytestconfig, 10) == 30
    monkeypatch.setattr(pytestconfig, "get_verbosity", lambda *a: -2)
    assert progress_interval(pytestconfig, 10) == 0


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text, figures) -> None:
        self.lines.append(text)

    def close(self) -> None:
        pass


class Source:
    def __init__(self) -> None:
        self.snap, self.done = snapshot(0), False

    def progress(self) -> Snapshot:
        return self.snap

    def finished(self) -> bool:
        return self.done


def test_monitor_writes_at_once_then_per_interval_and_a_last_line(tmp_path):
    now = [0.0]
    terminal, log = Lines(), Lines()
    monitor = Monitor(terminal, log, terminal_s=10, now=lambda: now[0])
    log_file = tmp_path / "engine.log"
    log_file.write_text(f"2026-12-04 04:00:01,000 INFO cpu_server: converting {Path.home()}/model.gguf (one-time)\n")
    monitor.phase("starting bundled for gemma", log_file)
    now[0] = 12.0
    monitor.tick()
    assert terminal.lines[-1] == "llm-harness 0:12 · starting bundled for gemma · converting ~/model.gguf (one-time)"
    monitor.phase_done()
    source = Source()
    monitor.watch(source)  # the first line at once
    assert LINE.match(terminal.lines[-1]).groups() == ("0:00", "0", "100")
    count = len(terminal.lines)
    now[0] = 15.0
    source.snap = snapshot(10)
    monitor.tick()
    assert len(terminal.lines) == count  # 3 s after the last: not yet
    now[0] = 22.5
    monitor.tick()
    assert "10/100 answered" in terminal.lines[-1]
    assert "1.0 req/s" in terminal.lines[-1] and "ETA 1:34" in terminal.lines[-1]  # 10 in 10.5 s, 90 left
    source.snap, source.done = snapshot(100), True
    now[0] = 30.0
    count = len(terminal.lines)
    monitor.stop()
    # the last line goes to the log, and to the terminal's summary (not between items' dots)
    assert len(terminal.lines) == count
    assert monitor.final_line.startswith("llm-harness done in 0:18 · 100/100 answered")
    assert "5.6 req/s" in monitor.final_line  # the whole run's rate: 100 in 18 s
    assert log.lines[-1] == monitor.final_line
    monitor.stop()  # idempotent
    assert log.lines[-1] == monitor.final_line and len(log.lines) == 4


# -- in a run -----------------------------------------------------------------------------------

def progress_lines(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in LINE.finditer(text)]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_run_shows_progress_at_once_and_while_it_runs(pytester, workers):
    scripted_models(pytester, delay_ms=40)
    write_suite(pytester.path / "evals", "slow", cases(60), gates=["accuracy >= 0.5"])
    # at most 2 in flight, 40 ms each: about 1.2 s of requests, a line every 0.2 s
    result = run_inline(pytester, "-n", workers, "evals", "--llm-progress", "0.2", "--llm-concurrency", "2",
                        "-p", "no:cacheprovider")
    result.assert_outcomes(passed=61)
    text = result.stdout.str()
    lines = progress_lines(text)
    assert lines[0] == ("0:00", 0, 60), text  # at once, before any reply
    assert any(0 < answered < 60 for _, answered, _ in lines), text  # while requests were in flight
    assert re.search(r"ETA \d+:\d\d", text), text
    assert re.search(r"llm-harness done in \d+:\d\d · 60/60 answered · errors 0 · [\d.]+ req/s", text), text
    log = (pytester.path / "out" / "progress.log").read_text(encoding="utf-8")
    assert re.search(r"^\S+Z progress answered=0 total=60 ", log, re.M), log
    assert re.search(r"^\S+Z done answered=60 total=60 cached=0 errors=0 ", log, re.M), log
    assert re.search(r"^\S+Z model=stub answered=60 total=60 ", log, re.M), log


def test_comparison_run_counts_each_model_and_the_cache(pytester):
    scripted_models(pytester)
    write_suite(pytester.path / "evals", "two", cases(12))
    run_inline(pytester, "evals", "--llm-progress", "0.2", models="models2.yaml").assert_outcomes(passed=24)
    # again, with stub's replies in the cache and stub-b's cleared from it
    (pytester.path / "out" / "progress.log").unlink()
    result = run_inline(pytester, "evals", "--llm-progress", "0.2", "--llm-set", "seed=7", models="models2.yaml")
    result.assert_outcomes(passed=24)
    text = result.stdout.str()
    assert re.search(r"llm-harness done in \S+ · 24/24 answered · errors 0 .*\| stub 12/12 · stub-b 12/12", text), text
    # a new seed is a new cache key: nothing cached; the same run again answers all 24 from the cache
    assert "cached" not in text.split("llm-harness done")[1].splitlines()[0]


def test_cached_replies_count_as_answered_at_once(pytester):
    scripted_models(pytester, delay_ms=20)
    write_suite(pytester.path / "evals", "half", cases(20))
    run_inline(pytester, "evals", "--llm-limit", "10", "--llm-progress", "0.2").assert_outcomes(passed=10)
    result = run_inline(pytester, "evals", "--llm-progress", "0.2")
    result.assert_outcomes(passed=20)
    lines = progress_lines(result.stdout.str())
    assert lines[0][1:] == (10, 20), result.stdout.str()  # the cached half, before any request
    assert re.search(r"done in \S+ · 20/20 answered · cached 10 · errors 0", result.stdout.str())


@pytest.mark.parametrize("workers", ["0", "2"])
def test_qq_silences_the_terminal_but_not_the_log(pytester, workers):
    scripted_models(pytester, delay_ms=5)
    write_suite(pytester.path / "evals", "quiet", cases(10))
    result = run_inline(pytester, "-n", workers, "evals", "--llm-progress", "0.2", "-qq", "-p", "no:cacheprovider")
    assert result.ret == 0 and "quiet  stub   10/10" in result.stdout.str()  # -qq prints no outcome line
    assert "llm-harness" not in result.stdout.str().replace("llm-harness summary", "")
    assert "done answered=10 total=10" in (pytester.path / "out" / "progress.log").read_text(encoding="utf-8")


def test_progress_zero_turns_the_terminal_lines_off(pytester):
    scripted_models(pytester)
    write_suite(pytester.path / "evals", "off", cases(5))
    result = run_inline(pytester, "evals", "--llm-progress", "0")
    result.assert_outcomes(passed=5)
    assert not progress_lines(result.stdout.str()) and "done in" not in result.stdout.str()
    assert Path(pytester.path / "out" / "progress.log").exists()


SLOW_VLLM = """#!{python}
import os, sys, time
args = sys.argv[1:]
flags = dict(zip(args[2::2], args[3::2]))
print("INFO 12-04 04:00:00 loader.py:42] Loading safetensors checkpoint shards: 3/4", flush=True)
time.sleep(2.0)
os.execv(sys.executable, [sys.executable, "-m", "harness.testing.stub_server", "--host", flags["--host"],
                          "--port", flags["--port"], "--models", flags["--served-model-name"]])
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_starting_engine_says_what_it_is_doing_and_for_how_long(pytester, workers):
    vllm = pytester.path / "vllm"
    vllm.write_text(SLOW_VLLM.format(python=sys.executable))
    vllm.chmod(0o755)
    (pytester.path / "models.yaml").write_text(
        f"- {{name: served-7b, engine: vllm, model_path: /models/served-7b, options: {{executable: '{vllm}'}}}}\n")
    write_suite(pytester.path / "evals", "geo", [{"id": "a", "input": "q\nANSWER: x", "target": "x"}])
    result = pytester.runpytest_inprocess("-n", workers, "--llm-models-file", "models.yaml", "--llm-report-dir",
                                          "out", "--llm-cache", "off", "--llm-progress", "0.5", "evals")
    assert result.ret == 0, result.stdout.str()
    text = result.stdout.str()
    # the server's log says it is loading; the line says so, with the time it has taken
    starting = re.findall(r"llm-harness (\d+):(\d\d) · starting vllm for served-7b · (.*)", text)
    assert starting and any(int(s) >= 1 for _, s, _ in starting), text
    assert any("Loading safetensors checkpoint shards: 3/4" in what for _, _, what in starting), text
    assert "starting vllm for served-7b" in (pytester.path / "out" / "progress.log").read_text(encoding="utf-8")
