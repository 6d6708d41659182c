"""A pytest plugin for the benchmarks: writes every case item's setup+call+teardown seconds to a file.

Loaded with `-p item_times` (benchmarks/ on PYTHONPATH) and LLM_BENCH_ITEM_TIMES=<file>; under
xdist the controller receives every worker's reports, so it sees them all.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

_times: dict[str, float] = defaultdict(float)
_PATH = os.environ.get("LLM_BENCH_ITEM_TIMES")  # unset: nothing is kept (controller_memory.py measures without it)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _PATH and ".jsonl::" in report.nodeid:
        _times[report.nodeid] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _PATH and not hasattr(session.config, "workerinput"):
        with open(_PATH, "w") as handle:
            json.dump(list(_times.values()), handle)
