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


def summary_rows(results: list[SuiteResult]) -> list[list[str]]:
    rows = [["suite", "model", "cases", "main metric", "errors", "p99 ms", "gates"]]
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
        rows.append([r.name, r.model, cases, f"{r.main_metric}={_fmt(r.metrics.get(r.main_metric))}",
                     _fmt(r.metrics.get("error_rate")), _fmt(r.metrics.get("latency_p99_ms")), gates])
    return rows


def render_table(rows: list[list[str]]) -> list[str]:
    rows = [[visible(cell, keep_newlines=False) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
