"""The terminal summary reads as people read numbers: intervals, rates, milliseconds without exponents."""

from __future__ import annotations

from harness.results import GateResult, SuiteResult
from harness.summary import render_table, summary_rows


def _result(**metrics: float | None) -> SuiteResult:
    gate = GateResult("accuracy >= 0.8", "accuracy", ">=", 0.8, 0.9, "passed")
    return SuiteResult("capitals", "m", "accuracy", dict(metrics), [gate], 32, 40, True)


def test_the_summary_shows_the_interval_a_rate_and_readable_milliseconds():
    rows = summary_rows([
        _result(**{"accuracy": 0.90625, "accuracy.lower": 0.7578, "accuracy.upper": 0.9802, "error_rate": 0.125,
                   "latency_p99_ms": 83690.4}),
        _result(accuracy=1.0, error_rate=0.0, latency_p99_ms=0.2005),
        _result(accuracy=None, error_rate=None, latency_p99_ms=None),
    ])
    assert rows[0][3] == "main metric [95% CI]"
    assert rows[1][2:6] == ["32/40 subset", "accuracy=0.906 [0.76, 0.98]", "12.5%", "83,690"]
    assert rows[2][3:6] == ["accuracy=1", "0", "0.20"]
    assert rows[3][3:6] == ["accuracy=-", "-", "-"]
    assert not any("e+" in cell for row in rows for cell in row)
    lines = render_table(rows)
    # columns line up: each value starts under its header
    assert lines[1].startswith("-----")
    assert lines[0].index("errors") == lines[2].index("12.5%") and lines[0].index("p99 ms") == lines[2].index("83,690")
