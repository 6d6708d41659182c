"""``harness.load_run(path)``: a run's report.json as pandas DataFrames, for notebooks.

    run = harness.load_run("reports/latest")
    run.metrics.query("metric == 'accuracy'")   # suite, model, metric, value, lower, upper, main
    run.cases.groupby(["suite", "model"]).passed.mean()

pandas is imported when ``load_run`` is called, never when ``harness`` is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT = "report.json"
COMPARISON = "comparison.json"  # what `python -m harness.comparison report` writes instead

METRIC_COLUMNS = ["suite", "model", "metric", "value", "lower", "upper", "main"]
GATE_COLUMNS = ["suite", "model", "expr", "metric", "op", "threshold", "value", "status", "passed", "reason"]
PAIR_COLUMNS = ["suite", "reference", "candidate", "matched", "refused"]


@dataclass(frozen=True)
class RunFrames:
    """One run's report as DataFrames (``report`` is the parsed report.json itself).

    - ``cases``: one row per case of report.json (suite, id, model, prompt, output, score, passed, error, ...);
    - ``metrics``: one row per suite x model x metric: ``value``, its interval ``lower``/``upper`` (NaN when
      the metric has none) and ``main`` (the suite's main metric);
    - ``gates``: one row per gate of each suite and model: expr, metric, op, threshold, value, status, passed,
      reason;
    - ``comparisons``: one row per suite x reference x candidate x metric of the run's comparison (a run of
      several models, or against ``--llm-baseline``): the ``reference`` and ``candidate`` models, the metric's
      ``reference_value`` and ``candidate_value``, ``delta`` with its
      ``lower``/``upper``, ``p``, ``p_holm``, improved/regressed counts, ...; a refused pair is one row with
      no metric and its ``refused`` reason. None when the run compared nothing.
    """

    path: Path
    report: dict[str, Any] = field(repr=False)
    cases: Any  # pandas.DataFrame
    metrics: Any
    gates: Any
    comparisons: Any | None


def report_path(path: str | Path) -> Path:
    """report.json of a report folder (``reports/<run id>``, ``reports/latest``, ``--llm-report-dir``), or
    the file itself; a folder of a standalone comparison report gives its comparison.json."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (REPORT, COMPARISON):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no {REPORT}: is it a pytest-llm-harness report folder?")
    if not path.is_file():
        raise FileNotFoundError(f"no such report: {path}")
    return path


def load_run(path: str | Path) -> RunFrames:
    """A run's report (a report folder, ``reports/latest`` or a report.json) as :class:`RunFrames`."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("harness.load_run needs pandas: pip install pandas") from exc
    from harness.results import REPORT_SCHEMA

    file = report_path(path)
    with open(file, encoding="utf-8") as handle:
        report = json.load(handle)
    if not isinstance(report, dict):
        raise ValueError(f"{file} is not a pytest-llm-harness report")
    if file.name == COMPARISON and "pairs" in report:  # a standalone comparison: its block alone
        report = {"suites": [], "cases": [], "comparison": report}
    elif report.get("schema") != REPORT_SCHEMA:
        raise ValueError(f"{file} is not a pytest-llm-harness report (schema {report.get('schema')!r}, "
                         f"expected {REPORT_SCHEMA!r})")
    suites = report.get("suites") or []
    cases = pd.DataFrame(report.get("cases") or [])
    metrics = pd.DataFrame(_metric_rows(suites), columns=METRIC_COLUMNS)
    gate_rows = [{"suite": suite.get("name"), "model": suite.get("model"), **gate}
                 for suite in suites for gate in suite.get("gates") or []]
    extra = [key for key in dict.fromkeys(key for row in gate_rows for key in row) if key not in GATE_COLUMNS]
    gates = pd.DataFrame(gate_rows, columns=GATE_COLUMNS + extra)
    comparison = report.get("comparison")
    comparisons = pd.DataFrame(_comparison_rows(comparison)) if isinstance(comparison, dict) else None
    return RunFrames(file, report, cases, metrics, gates, comparisons)


def _metric_rows(suites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for suite in suites:
        metrics = suite.get("metrics") or {}
        for name, value in metrics.items():
            if name.endswith((".lower", ".upper")) and name.rsplit(".", 1)[0] in metrics:
                continue  # an interval bound: a column of its metric's row
            rows.append({"suite": suite.get("name"), "model": suite.get("model"), "metric": name, "value": value,
                         "lower": metrics.get(f"{name}.lower"), "upper": metrics.get(f"{name}.upper"),
                         "main": name == suite.get("main_metric")})
    return rows


def _comparison_rows(block: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for pair in block.get("pairs") or []:
        head = {key: pair.get(key) for key in PAIR_COLUMNS}
        for row in pair.get("rows") or [{"metric": None}]:
            # a row's reference/candidate are the metric's values; the pair's are the models' names
            values = {f"{key}_value" if key in ("reference", "candidate") else key: value for key, value in row.items()}
            rows.append({**head, **values})
    return rows
