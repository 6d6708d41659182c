"""What a run's threads besides its main one may do: the request loop, the progress lines and the scoring of the
cases only gates need run code, they do not import it, and no two threads score at once.

Why: a CI rehearsal's run hung once (Python 3.11, a test whose garbage has a raising finalizer), its main thread
waiting forever in write_xlsx's ``from openpyxl import Workbook`` for a module lock no live thread held, after
openpyxl had been imported on a thread of its own (likely CPython gh-91351: an import interrupted by a garbage
collection whose finalizers import). Two threads importing at once is the pattern to keep out of a run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_suite

WATCH_IMPORTS = """
import sys
import threading


class Watch:  # records each module first imported by a thread other than the main one, and openpyxl's thread
    def find_spec(self, name, path=None, target=None):
        thread = threading.current_thread()
        if name == "openpyxl":
            with open("openpyxl_thread.txt", "a") as handle:
                handle.write(thread.name + "\\n")
        if thread is not threading.main_thread() and name not in sys.modules:
            with open("other_threads.txt", "a") as handle:
                handle.write(f"{thread.name} {name}\\n")
        return None


sys.meta_path.insert(0, Watch())
"""


# without xdist with only the gate selected: the request loop, progress and the gate-only scoring thread all run
@pytest.mark.parametrize(("workers", "only_gates"), [("0", True), ("2", False)])
def test_a_runs_imports_happen_on_its_main_thread(pytester: pytest.Pytester, stub_url: str, workers: str,
                                                  only_gates: bool) -> None:
    """A run's other threads (the request loop, progress, the judges, the scoring of cases only gates need) import
    nothing: its main thread imports aiohttp when it makes the client, openpyxl in the writers' warm-up, and what
    the gate-only scoring thread runs before it starts (``-k gate``). The request loop used to import aiohttp on
    its first request while the main thread imported the writers' libraries."""
    cases = [{"id": f"c{i}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"} for i in range(3)]
    write_suite(pytester.path / "evals", "geo", cases, gates=["accuracy >= 0.5"], **{"pass": "record"})
    pytester.makeconftest(WATCH_IMPORTS)
    result = pytester.runpytest_subprocess("--llm-base-url", stub_url, "--llm-model", "stub", "-n", workers,
                                           "--llm-report-dir", "out", "--llm-cache", "off", "-p", "no:cacheprovider",
                                           "evals", *(["-k", "gate"] if only_gates else []), timeout=120)
    result.assert_outcomes(passed=1 if only_gates else 4)
    assert (pytester.path / "openpyxl_thread.txt").read_text().split() == ["MainThread"]
    others = pytester.path / "other_threads.txt"
    assert not others.exists(), others.read_text()
    assert (pytester.path / "out" / "report.xlsx").stat().st_size > 0


TIMED_SCORER = """
import os
import threading
import time

import harness


@harness.scorer("timed_match")
def timed_match(prediction, target, case):
    started = time.monotonic()
    time.sleep(0.02)  # the GIL is let go: without the scoring lock another thread's case would score meanwhile
    with open("scored.jsonl", "a") as handle:
        handle.write(f'[{os.getpid()}, "{threading.current_thread().name}", {started}, {time.monotonic()}]\\n')
    return prediction == target
"""


def test_cases_scored_on_two_threads_are_scored_one_at_a_time(pytester: pytest.Pytester, stub_url: str) -> None:
    """With some cases selected and the gate of their suite too, the selected cases are scored by their items on the
    main thread and the others, which only the gate needs, on a thread of their own: never two at once (a scorer's
    first call may import its libraries). Without xdist only: under it, a worker scores on its main thread alone
    and the controller on its gate-only thread alone, so no process has two threads that score."""
    cases = [{"id": f"x{i:02}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"} for i in range(12)]
    write_suite(pytester.path / "evals", "geo", cases, scorer="timed_match", gates=["timed_match >= 0.5"],
                **{"pass": "record"})
    pytester.makeconftest(TIMED_SCORER)
    result = pytester.runpytest_subprocess("--llm-base-url", stub_url, "--llm-model", "stub", "--llm-report-dir",
                                           "out", "--llm-cache", "off", "-p", "no:cacheprovider", "evals",
                                           "-k", "gate or x00 or x01 or x02 or x03 or x04 or x05", timeout=120)
    result.assert_outcomes(passed=7)
    scored = [json.loads(line) for line in (pytester.path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 12
    assert {thread for _, thread, _, _ in scored} == {"MainThread", "llm-harness-gate-cases"}
    assert len({pid for pid, _, _, _ in scored}) == 1
    spans = sorted((start, end) for _, _, start, end in scored)
    assert all(end <= later for (_, end), (later, _) in zip(spans, spans[1:])), spans
