"""The terminal summary: one row per suite and model, and where the reports went."""

from __future__ import annotations

from typing import Any

from harness.results import SuiteResult
from harness.textsafe import visible


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ms(value: Any) -> str:
    """Milliseconds as people read them: 0.23, 80.6, 1,578, 83,690 (never 8.369e+04)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _metric(result: SuiteResult) -> str:
    """The main metric with its 95% interval when it has one: accuracy=0.906 [0.76, 0.98]."""
    name = result.main_metric
    value, low, high = (result.metrics.get(name), result.metrics.get(f"{name}.lower"),
                        result.metrics.get(f"{name}.upper"))
    shown = f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={_fmt(value)}"
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        shown += f" [{low:.2g}, {high:.2g}]"
    return shown


def _rate(value: Any) -> str:
    return "-" if value is None else ("0" if value == 0 else f"{value:.1%}")


def summary_rows(results: list[SuiteResult]) -> list[list[str]]:
    rows = [["suite", "model", "cases", "main metric [95% CI]", "errors", "p99 ms", "gates"]]
    for r in results:
        passed = sum(g.status == "passed" for g in r.gates)
        failed = [g.expr for g in r.gates if g.status == "failed"]
        skipped = sum(g.status == "skipped" for g in r.gates)
        gates = f"{passed}/{len(r.gates)} passed"
        if failed:
            gates += f", FAILED: {'; '.join(failed)}"
        if skipped:
            gates += f", {skipped} not judged"
        cases = f"{r.cases}/{r.total_cases}" + (" subset" if r.subset else "")
        rows.append([r.name, r.model, cases, _metric(r), _rate(r.metrics.get("error_rate")),
                     _ms(r.metrics.get("latency_p99_ms")), gates])
    return rows


def render_table(rows: list[list[str]]) -> list[str]:
    rows = [[visible(cell, keep_newlines=False) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
