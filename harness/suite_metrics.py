"""Suite metrics over a suite's case results on one model, and its gates held to them."""

from __future__ import annotations

from typing import Any, Collection, Sequence

from harness.gates import evaluate_gate, parse_gate, unjudged_gate
from harness.results import CaseResult, SuiteResult
from harness.scoring.metrics import percentile
from harness.scoring.scorers import Scorer, get_scorer
from harness.scoring.stats import mean_interval, wilson, with_interval
from harness.suite import Suite


def _scorer(suite: Suite) -> Scorer | None:
    try:
        return get_scorer(suite.scorer, suite.scorer_options)
    except ValueError:
        return None


def suite_metrics(suite: Suite, results: Sequence[CaseResult]) -> tuple[str, dict[str, float | None]]:
    """The main metric's name and every metric of one suite on one model.

    In a robustness suite the quality metrics are those of the clean cases; errors, latency and
    throughput count every request, perturbed copies included."""
    clean = [r for r in results if r.attack is None]
    perturbed = [r for r in results if r.attack is not None]
    main, metrics = _metrics(suite, clean)
    if suite.judge is not None:
        metrics.update(_judge_figures(suite, clean, None)[0])
    if suite.robustness is not None:
        from harness.robustness import robustness_metrics

        metrics.update(_operational(results))
        metrics.update(robustness_metrics(suite.robustness, _scorer(suite), main, clean, perturbed, set(metrics)))
    return main, metrics


def _judge_figures(suite: Suite, results: Sequence[CaseResult],
                   model: str | None) -> tuple[dict[str, float | None], dict[str, Any]]:
    """A judged suite's judge metrics and report table, over its clean cases (harness.judging.quality)."""
    from harness.judging.quality import judge_quality

    clean = [r for r in results if r.attack is None]
    judge = next((r.judge["model"] for r in clean if r.judge and r.judge.get("model")), None)
    return judge_quality(suite.judge, judge or suite.judge.model or "", model, clean)


def _operational(results: Sequence[CaseResult]) -> dict[str, float | None]:
    """Errors, latency and throughput over every request of a suite."""
    n = len(results)
    errors = sum(r.error is not None for r in results)
    latencies = [r.latency_ms for r in results if r.error is None and not r.cached and r.latency_ms is not None]
    metrics: dict[str, float | None] = {
        "errors": float(errors),
        "cached": float(sum(r.cached for r in results)),
        "error_rate": errors / n if n else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p90_ms": percentile(latencies, 90),
        "latency_p99_ms": percentile(latencies, 99),
        **throughput(results),
    }
    with_interval(metrics, "error_rate", wilson(errors, n))
    truncated = sum(r.truncated for r in results)  # replies cut off at max_tokens
    metrics["truncated_rate"] = truncated / n if n else None
    with_interval(metrics, "truncated_rate", wilson(truncated, n))
    return metrics


def _metrics(suite: Suite, results: Sequence[CaseResult]) -> tuple[str, dict[str, float | None]]:
    n = len(results)
    tokens = [r.output_tokens for r in results if r.output_tokens is not None]
    metrics: dict[str, float | None] = {
        "cases": float(n),
        **_operational(results),
        "score": sum(r.score or 0.0 for r in results) / n if n else None,
        "output_tokens_mean": sum(tokens) / len(tokens) if tokens else None,
    }
    # quality figures carry their 95% interval; operational ones (latency, throughput) do not
    with_interval(metrics, "score", mean_interval([r.score or 0.0 for r in results]))
    if suite.pass_rule is not None:
        passed = sum(r.passed is True for r in results)
        metrics["pass_rate"] = passed / n if n else None
        with_interval(metrics, "pass_rate", wilson(passed, n))
    scorer = _scorer(suite)
    if scorer is None:
        main = suite.scorer
        metrics[main] = metrics["score"]
        metrics[f"{main}.lower"], metrics[f"{main}.upper"] = metrics["score.lower"], metrics["score.upper"]
    else:
        main = scorer.main_metric
        metrics.update(scorer.aggregate(results))
    return main, metrics


def throughput(results: Sequence[CaseResult]) -> dict[str, float | None]:
    """Requests/s and output tokens/s over the wall time from first send to last answer; TTFT/TPOT.

    Cache hits are left out (they were not sent); failed requests count in the wall time but
    not as throughput."""
    live = [r for r in results if not r.cached and r.sent_at is not None and r.done_at is not None]
    answered = [r for r in live if r.error is None]
    wall = max(r.done_at for r in live) - min(r.sent_at for r in live) if live else 0.0  # type: ignore[type-var]
    metrics: dict[str, float | None] = {
        "wall_s": wall if live else None,
        "throughput_rps": len(answered) / wall if wall > 0 else None,
        "output_tokens_per_s": sum(r.output_tokens or 0 for r in answered) / wall if wall > 0 else None,
    }
    for name in ("ttft_ms", "tpot_ms"):
        values = [getattr(r, name) for r in answered if getattr(r, name) is not None]
        if values:
            stem = name.removesuffix("_ms")
            for q in (50, 90, 99):
                metrics[f"{stem}_p{q}_ms"] = percentile(values, q)
    return metrics


def by_dataset(suite: Suite, main: str, clean: Sequence[CaseResult],
               metrics: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per source file of a suite's clean cases, in data order: its cases, errors and main
    metric with its interval. A suite of one file reuses its own figures (``metrics``)."""
    groups: dict[str, list[CaseResult]] = {}
    for result in clean:
        groups.setdefault(result.dataset, []).append(result)
    rows = []
    for dataset, part in groups.items():
        figures = metrics if len(groups) == 1 else _metrics(suite, part)[1]
        rows.append({"dataset": dataset, "cases": len(part), "errors": sum(r.error is not None for r in part),
                     "metric": main, "value": figures.get(main), "lower": figures.get(f"{main}.lower"),
                     "upper": figures.get(f"{main}.upper")})
    return rows


NOT_SELECTED = "gate not selected (-k/-m/--lf): not judged"
# measured only on requests sent in this run (named in full: a typo stays an unknown metric)
TIMING_METRICS = frozenset({"throughput_rps", "output_tokens_per_s", "wall_s"} | {
    f"{stem}_p{q}_ms" for stem in ("latency", "ttft", "tpot") for q in (50, 90, 99)})


def _operational_metric(metric: str) -> bool:
    """Errors, caching, latency and throughput: measured on any model, judged or not."""
    base = metric.split(".", 1)[0]
    return is_timing_metric(base) or base in ("errors", "cached", "error_rate", "truncated_rate", "cases")


def is_timing_metric(metric: str) -> bool:
    """Latency and throughput figures (TTFT and TPOT too)."""
    return metric in TIMING_METRICS


def unmeasured_reason(results: Sequence[CaseResult]) -> str | None:
    """Why a suite has no timing figures, when every reply came from the response cache; else None
    (a partly cached suite is timed on the requests it sent)."""
    if not results or not all(r.cached for r in results):
        return None
    n = len(results)
    return (f"no request of this suite was sent in this run ({n} of {n} replies from the response cache): "
            f"latency not measured")


def suite_result(suite: Suite, model: str, results: Sequence[CaseResult], total_cases: int,
                 judged: Collection[str] | None = None, hook: Any = None,
                 unjudged_reason: str = NOT_SELECTED) -> SuiteResult:
    """Metrics and gates of one suite on one model.

    ``judged``: the gate expressions to hold to the metrics (None: all); the others are
    recorded as skipped with ``unjudged_reason``. ``hook`` (a pytest hook relay) lets
    ``pytest_llm_suite_metrics`` add or change metrics before any gate is judged."""
    main, metrics = suite_metrics(suite, results)
    judge_table = _judge_figures(suite, results, model)[1] if suite.judge is not None else None
    if hook is not None:
        hook.pytest_llm_suite_metrics(suite=suite, model=model, results=list(results), metrics=metrics)
    unmeasured = unmeasured_reason(results)
    reference_of_pairwise = any(r.data.get("pairwise") == "reference" for r in results)
    gates = []
    for expr in suite.gates:
        gate = parse_gate(expr)
        if judged is not None and gate.expr not in judged:
            gates.append(unjudged_gate(gate, metrics.get(gate.metric), unjudged_reason))
        elif reference_of_pairwise and not _operational_metric(gate.metric):
            gates.append(unjudged_gate(gate, None, "the reference of a pairwise judge: the other models' answers "
                                                   "are judged against this model's, which has no win rate of its own"))
        elif unmeasured and is_timing_metric(gate.metric) and metrics.get(gate.metric) is None:
            # a warm-cache re-run measured no time: nothing to hold the gate to, and no reason to fail it
            gates.append(unjudged_gate(gate, None, unmeasured))
        else:
            gates.append(evaluate_gate(gate, metrics))
    scorer = _scorer(suite)
    clean = [r for r in results if r.attack is None]  # tables, like quality metrics, are the clean cases
    tables = scorer.tables(clean) if scorer is not None and hasattr(scorer, "tables") else {}
    tables = {**tables, "by_dataset": by_dataset(suite, main, clean, metrics)}
    if judge_table is not None:
        tables["judge"] = judge_table
    subset = len(results) < total_cases
    return SuiteResult(suite.name, model, main, metrics, gates, len(results), total_cases, subset, tables)
