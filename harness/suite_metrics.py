"""Suite metrics over a suite's case results on one model, and its gates held to them."""

from __future__ import annotations

import math
import numbers
from array import array
from typing import Any, Collection, Iterable, Sequence

from harness.gates import evaluate_gate, parse_gate, unjudged_gate
from harness.result_store import take
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


class Columns:
    """The per-case figures the built-in metrics read, gathered in one pass over a suite's results
    (which may be on disk: harness.result_store). ``nan`` stands for a missing value."""

    def __init__(self, results: Iterable[CaseResult]) -> None:
        self.error, self.cached, self.truncated, self.passed, self.clean = (bytearray() for _ in range(5))
        self.latency, self.sent, self.done, self.tokens, self.score, self.ttft, self.tpot = (
            array("d") for _ in range(7))
        self.dataset: list[str] = []
        self.pairwise_reference = False
        nan = math.nan
        names: dict[str, str] = {}  # each result read from disk has its own copy of its dataset's name
        for r in results:
            self.error.append(r.error is not None)
            self.cached.append(bool(r.cached))
            self.truncated.append(bool(r.truncated))
            self.passed.append(r.passed is True)
            self.clean.append(r.attack is None)
            self.latency.append(nan if r.latency_ms is None else r.latency_ms)
            self.sent.append(nan if r.sent_at is None else r.sent_at)
            self.done.append(nan if r.done_at is None else r.done_at)
            self.tokens.append(nan if r.output_tokens is None else r.output_tokens)
            self.score.append(r.score or 0.0)
            self.ttft.append(nan if r.ttft_ms is None else r.ttft_ms)
            self.tpot.append(nan if r.tpot_ms is None else r.tpot_ms)
            self.dataset.append(names.setdefault(r.dataset, r.dataset))
            if not self.pairwise_reference and r.data and r.data.get("pairwise") == "reference":
                self.pairwise_reference = True

    def __len__(self) -> int:
        return len(self.error)

    def take(self, mask: Sequence[bool]) -> "Columns":
        """The rows where ``mask`` is true."""
        part = Columns(())
        for name in ("error", "cached", "truncated", "passed", "clean", "latency", "sent", "done", "tokens",
                     "score", "ttft", "tpot"):
            kept = getattr(part, name)
            kept.extend(v for v, keep in zip(getattr(self, name), mask) if keep)
        part.dataset = [v for v, keep in zip(self.dataset, mask) if keep]
        part.pairwise_reference = self.pairwise_reference
        return part


def _present(values: Iterable[float]) -> list[float]:
    return [v for v in values if v == v]  # nan is the one value unequal to itself


def suite_metrics(suite: Suite, results: Sequence[CaseResult],
                  columns: Columns | None = None) -> tuple[str, dict[str, float | None]]:
    """The main metric's name and every metric of one suite on one model.

    In a robustness suite the quality metrics are those of the clean cases; errors, latency and
    throughput count every request, perturbed copies included."""
    cols = columns if columns is not None else Columns(results)
    everything_clean = all(cols.clean)
    clean = results if everything_clean else take(results, cols.clean)
    clean_cols = cols if everything_clean else cols.take(cols.clean)
    main, metrics = _metrics(suite, clean, clean_cols)
    if suite.judge is not None:
        metrics.update(_judge_figures(suite, clean, None)[0])
    if suite.robustness is not None:
        from harness.robustness import robustness_metrics

        perturbed = take(results, [not c for c in cols.clean])
        metrics.update(_operational(cols))
        metrics.update(robustness_metrics(suite.robustness, _scorer(suite), main, clean, perturbed, set(metrics)))
    return main, metrics


def _judge_figures(suite: Suite, results: Sequence[CaseResult],
                   model: str | None) -> tuple[dict[str, float | None], dict[str, Any]]:
    """A judged suite's judge metrics and report table, over its clean cases (harness.judging.quality)."""
    from harness.judging.quality import judge_quality

    clean = [r for r in results if r.attack is None]
    judge = next((r.judge["model"] for r in clean if r.judge and r.judge.get("model")), None)
    return judge_quality(suite.judge, judge or suite.judge.model or "", model, clean)


def _operational(cols: Columns) -> dict[str, float | None]:
    """Errors, latency and throughput over every request of a suite."""
    n = len(cols)
    errors = sum(cols.error)
    latencies = _present(lat for lat, error, cached in zip(cols.latency, cols.error, cols.cached)
                         if not error and not cached)
    metrics: dict[str, float | None] = {
        "errors": float(errors),
        "cached": float(sum(cols.cached)),
        "error_rate": errors / n if n else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p90_ms": percentile(latencies, 90),
        "latency_p99_ms": percentile(latencies, 99),
        **throughput(cols),
    }
    with_interval(metrics, "error_rate", wilson(errors, n))
    truncated = sum(cols.truncated)  # replies cut off at max_tokens
    metrics["truncated_rate"] = truncated / n if n else None
    with_interval(metrics, "truncated_rate", wilson(truncated, n))
    return metrics


def _metrics(suite: Suite, results: Sequence[CaseResult], cols: Columns) -> tuple[str, dict[str, float | None]]:
    n = len(cols)
    tokens = _present(cols.tokens)
    metrics: dict[str, float | None] = {
        "cases": float(n),
        **_operational(cols),
        "score": sum(cols.score) / n if n else None,
        "output_tokens_mean": sum(tokens) / len(tokens) if tokens else None,
    }
    # quality figures carry their 95% interval; operational ones (latency, throughput) do not
    with_interval(metrics, "score", mean_interval(cols.score.tolist()))
    if suite.pass_rule is not None:
        passed = sum(cols.passed)
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


def throughput(results: Sequence[CaseResult] | Columns) -> dict[str, float | None]:
    """Requests/s and output tokens/s over the wall time from first send to last answer; TTFT/TPOT.

    Cache hits are left out (they were not sent); failed requests count in the wall time but
    not as throughput."""
    cols = results if isinstance(results, Columns) else Columns(results)
    live = [i for i, (cached, sent, done) in enumerate(zip(cols.cached, cols.sent, cols.done))
            if not cached and sent == sent and done == done]
    answered = [i for i in live if not cols.error[i]]
    wall = max(cols.done[i] for i in live) - min(cols.sent[i] for i in live) if live else 0.0
    tokens = cols.tokens
    metrics: dict[str, float | None] = {
        "wall_s": wall if live else None,
        "throughput_rps": len(answered) / wall if wall > 0 else None,
        "output_tokens_per_s": sum(tokens[i] if tokens[i] == tokens[i] else 0 for i in answered) / wall
        if wall > 0 else None,
    }
    for name, column in (("ttft_ms", cols.ttft), ("tpot_ms", cols.tpot)):
        values = _present(column[i] for i in answered)
        if values:
            stem = name.removesuffix("_ms")
            for q in (50, 90, 99):
                metrics[f"{stem}_p{q}_ms"] = percentile(values, q)
    return metrics


def by_dataset(suite: Suite, main: str, clean: Sequence[CaseResult], metrics: dict[str, float | None],
               cols: Columns | None = None) -> list[dict[str, Any]]:
    """One row per source file of a suite's clean cases, in data order: its cases, errors and main
    metric with its interval. A suite of one file reuses its own figures (``metrics``)."""
    cols = cols if cols is not None else Columns(clean)
    datasets = list(dict.fromkeys(cols.dataset))
    rows = []
    for dataset in datasets:
        if len(datasets) == 1:
            figures, part = metrics, cols
        else:
            mask = [d == dataset for d in cols.dataset]
            part = cols.take(mask)
            figures = _metrics(suite, take(clean, mask), part)[1]
        rows.append({"dataset": dataset, "cases": len(part), "errors": sum(part.error),
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


def unmeasured_reason(cols: Columns) -> str | None:
    """Why a suite has no timing figures, when every reply came from the response cache; else None
    (a partly cached suite is timed on the requests it sent)."""
    if not len(cols) or not all(cols.cached):
        return None
    n = len(cols)
    return (f"no request of this suite was sent in this run ({n} of {n} replies from the response cache): "
            f"latency not measured")


def plain_metrics(metrics: dict[str, Any]) -> None:
    """What a ``pytest_llm_suite_metrics`` hook set, made plain in place: numpy's numbers become floats (a
    verdict travels to the xdist workers as JSON, and report.json is JSON); text stays text, which a gate
    on it fails saying so; any other object becomes its text."""
    for name, value in metrics.items():
        if value is None or type(value) in (float, int, bool, str):
            continue
        metrics[name] = float(value) if isinstance(value, numbers.Real) else str(value)


def suite_result(suite: Suite, model: str, results: Sequence[CaseResult], total_cases: int,
                 judged: Collection[str] | None = None, hook: Any = None,
                 unjudged_reason: str = NOT_SELECTED) -> SuiteResult:
    """Metrics and gates of one suite on one model.

    ``judged``: the gate expressions to hold to the metrics (None: all); the others are
    recorded as skipped with ``unjudged_reason``. ``hook`` (a pytest hook relay) lets
    ``pytest_llm_suite_metrics`` add or change metrics before any gate is judged."""
    cols = Columns(results)  # the one pass over every result the built-in figures need
    main, metrics = suite_metrics(suite, results, cols)
    judge_table = _judge_figures(suite, results, model)[1] if suite.judge is not None else None
    if hook is not None:
        hook.pytest_llm_suite_metrics(suite=suite, model=model, results=results, metrics=metrics)
        plain_metrics(metrics)
    unmeasured = unmeasured_reason(cols)
    reference_of_pairwise = cols.pairwise_reference
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
    everything_clean = all(cols.clean)  # tables, like quality metrics, are the clean cases
    clean = results if everything_clean else take(results, cols.clean)
    clean_cols = cols if everything_clean else cols.take(cols.clean)
    tables = scorer.tables(clean) if scorer is not None and hasattr(scorer, "tables") else {}
    tables = {**tables, "by_dataset": by_dataset(suite, main, clean, metrics, clean_cols)}
    if judge_table is not None:
        tables["judge"] = judge_table
    subset = len(cols) < total_cases
    return SuiteResult(suite.name, model, main, metrics, gates, len(cols), total_cases, subset, tables)
