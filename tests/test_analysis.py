"""`harness.load_run`: a run's report.json as DataFrames, row for row (runs in this process on the
scripted engine)."""

from __future__ import annotations

import json

import pandas  # noqa: F401 - loaded before any pytester run, which would otherwise unload it after the run
import pytest

import harness
from tests.conftest import answer_cases, load_report, run_inline, scripted_models, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])


def two_suites(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5", "error_rate == 0"])
    write_suite(pytester.path / "evals", "geo2", CASES[:2], **{"pass": "record", "gates": ["accuracy >= 0.9"]})


def metric_names(suite: dict) -> list[str]:
    metrics = suite["metrics"]
    return [name for name in metrics if not (name.endswith((".lower", ".upper"))
                                             and name.rsplit(".", 1)[0] in metrics)]


def test_frames_match_report_json(pytester):
    two_suites(pytester)
    run_inline(pytester, "evals")
    report = load_report(pytester)
    run = harness.load_run(pytester.path / "out")
    assert run.path == pytester.path / "out" / "report.json" and run.report == report

    assert len(run.cases) == len(report["cases"]) == 5
    assert list(run.cases[["suite", "id"]].itertuples(index=False, name=None)) == \
        [(c["suite"], c["id"]) for c in report["cases"]]
    assert run.cases.groupby("suite").score.sum().to_dict() == {"geo": 2.0, "geo2": 2.0}

    assert len(run.gates) == sum(len(s["gates"]) for s in report["suites"]) == 3
    assert run.gates[["suite", "expr", "passed"]].values.tolist() == [
        ["geo", "accuracy >= 0.5", True], ["geo", "error_rate == 0", True], ["geo2", "accuracy >= 0.9", True]]

    assert len(run.metrics) == sum(len(metric_names(s)) for s in report["suites"])
    assert list(run.metrics.columns) == ["suite", "model", "metric", "value", "lower", "upper", "main"]
    geo = next(s for s in report["suites"] if s["name"] == "geo")["metrics"]
    accuracy = run.metrics.query("suite == 'geo' and metric == 'accuracy'").iloc[0]
    assert (accuracy.model, accuracy.value, accuracy.lower, accuracy.upper, accuracy.main) == \
        ("stub", geo["accuracy"], geo["accuracy.lower"], geo["accuracy.upper"], True)
    assert run.metrics.query("metric == 'cases'").value.tolist() == [3.0, 2.0]
    assert run.metrics.query("metric == 'cases'").lower.isna().all()  # a count has no interval
    assert run.comparisons is None  # one model: nothing compared


def test_comparison_run_and_reports_latest(pytester):
    two_suites(pytester)
    scripted_models(pytester)
    # no --llm-report-dir: reports/<run id>, and reports/latest pointing at it
    pytester.runpytest_inprocess("--llm-models-file", "models2.yaml", "--llm-cache-path", "cache.sqlite", "evals")
    run = harness.load_run(pytester.path / "reports" / "latest")
    report = json.loads((pytester.path / "reports" / "latest" / "report.json").read_text(encoding="utf-8"))
    assert len(run.cases) == len(report["cases"]) == 10
    assert sorted(set(run.cases.model)) == ["stub", "stub-b"]
    assert len(run.gates) == sum(len(s["gates"]) for s in report["suites"]) == 6
    assert len(run.metrics) == sum(len(metric_names(s)) for s in report["suites"])
    assert set(run.metrics.groupby(["suite", "model"]).groups) == {
        ("geo", "stub"), ("geo", "stub-b"), ("geo2", "stub"), ("geo2", "stub-b")}

    pairs = report["comparison"]["pairs"]
    assert len(run.comparisons) == sum(len(pair["rows"]) for pair in pairs) > 0
    assert set(run.comparisons[["suite", "reference", "candidate"]].itertuples(index=False, name=None)) == {
        ("geo", "stub", "stub-b"), ("geo2", "stub", "stub-b")}
    main = run.comparisons.query("suite == 'geo' and main").iloc[0]
    row = next(r for r in pairs[0]["rows"] if r["main"])
    assert (main.metric, main.reference_value, main.candidate_value, main.delta) == \
        (row["metric"], row["reference"], row["candidate"], row["delta"])

    # the file itself, and a standalone comparison report's comparison.json
    assert len(harness.load_run(run.path).cases) == 10
    (pytester.path / "cmp").mkdir()
    (pytester.path / "cmp" / "comparison.json").write_text(json.dumps(report["comparison"]), encoding="utf-8")
    alone = harness.load_run(pytester.path / "cmp")
    assert len(alone.comparisons) == len(run.comparisons) and alone.cases.empty and alone.gates.empty


def test_not_a_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no report.json"):
        harness.load_run(tmp_path)
    (tmp_path / "report.json").write_text('{"schema": "something/else"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a pytest-llm-harness report"):
        harness.load_run(tmp_path)
