"""How far a suite's judge can be trusted, from its case results: :func:`judge_quality`.

Metrics (gates can use them, e.g. ``judge_kappa.lower >= 0.6``):

- ``judge_error_rate``: judged cases without a usable verdict (request failed, unreadable or tied);
- ``judge_latency_p50_ms``, ``judge_latency_p90_ms``, ``judge_output_tokens``: the judge's own
  requests, apart from the model's (cache hits left out of latency);
- with human labels (the ``human_label`` field): ``judge_labelled``, ``judge_accuracy`` and
  ``judge_kappa`` (Cohen's, as scikit-learn's) with ``.lower``/``.upper`` bootstrap intervals;
- with ``samples > 1``: ``judge_self_agreement`` (agreeing sample pairs) and ``judge_fleiss_kappa``;
- pairwise judges: ``judge_position_consistency``, how often the two orders gave the same verdict;
  human labels are the compared model's outcome (win, tie or loss).

Verdicts compare with human labels on the judge's scale: labels match ignoring case; a numeric
scale of whole numbers with at most 11 points (1 to 5, 0 to 10) compares the rounded verdict
with quadratic weights; any other numeric scale compares pass/fail at ``pass_threshold`` (the
middle of the scale when none is set).
"""

from __future__ import annotations

from typing import Any, Sequence

from harness.judging.spec import JudgeSpec
from harness.results import CaseResult

__all__ = ["judge_quality", "scale_labels"]

_MAX_ORDINAL = 11
PAIRWISE_OUTCOMES = ("win", "tie", "loss")  # a pairwise verdict, for the compared model


def scale_labels(spec: JudgeSpec) -> tuple[list[Any], str | None]:
    """The categories verdicts and human labels are compared on, and the kappa weights."""
    if spec.pairwise:
        return list(PAIRWISE_OUTCOMES), None
    if not spec.numeric:
        return list(spec.labels), None
    if _ordinal(spec):
        return list(range(int(spec.lo), int(spec.hi) + 1)), "quadratic"
    return ["pass", "fail"], None


def _ordinal(spec: JudgeSpec) -> bool:
    return spec.lo.is_integer() and spec.hi.is_integer() and spec.hi - spec.lo + 1 <= _MAX_ORDINAL


def _category(spec: JudgeSpec, value: Any) -> Any:
    """A verdict or a human label as one of :func:`scale_labels`; None when it is not on the scale."""
    if value is None or isinstance(value, bool):
        return None
    if spec.pairwise:
        text = str(value).strip().casefold()
        return text if text in PAIRWISE_OUTCOMES else None
    if not spec.numeric:
        text = str(value).strip().casefold()
        return next((label for label in spec.labels if label.casefold() == text), None)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if _ordinal(spec):
        rounded = int(round(number))
        return rounded if spec.lo <= rounded <= spec.hi else None
    threshold = spec.pass_threshold if spec.pass_threshold is not None else (spec.lo + spec.hi) / 2
    return "pass" if number >= threshold else "fail"


def judge_quality(spec: JudgeSpec, judge: str, model: str | None,
                  results: Sequence[CaseResult]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The judge's metrics over one suite's results on one model, and its report table (``model``
    None: the self-grading note is left out)."""
    from harness.scoring.metrics import percentile
    from harness.scoring.stats import wilson, with_interval

    judged = [r for r in results if r.judge is not None and not r.judge.get("reference")]
    failed = sum("verdict" not in r.judge for r in judged)  # type: ignore[operator]
    latencies = [float(r.judge["latency_ms"]) for r in judged  # type: ignore[index]
                 if not r.judge.get("cached") and r.judge.get("latency_ms")]  # type: ignore[union-attr]
    metrics: dict[str, float | None] = {
        "judge_cases": float(len(judged)),
        "judge_error_rate": failed / len(judged) if judged else None,
        "judge_latency_p50_ms": percentile(latencies, 50),
        "judge_latency_p90_ms": percentile(latencies, 90),
        "judge_output_tokens": float(sum(r.judge.get("output_tokens") or 0 for r in judged)),  # type: ignore[union-attr]
    }
    with_interval(metrics, "judge_error_rate", wilson(failed, len(judged)))
    table: dict[str, Any] = {"model": judge, "rubric": spec.builtin or "custom", "scale": list(spec.scale)}
    if judge == model:
        table["self_grading"] = (f"the judge {judge!r} grades its own replies (self-grading): its verdicts on "
                                 f"them may be biased; use a judge that is not under test (role: judge)")
    if spec.pairwise and judged:
        from harness.judging.agreement import position_consistency

        position = position_consistency([r.judge.get("first") for r in judged],  # type: ignore[union-attr]
                                        [r.judge.get("swapped") for r in judged])  # type: ignore[union-attr]
        position.pop("verdicts", None)
        table["position"] = position
        metrics["judge_position_consistency"] = position["consistent"]
    against = next((r.judge.get("against") for r in judged if r.judge.get("against")), None)  # type: ignore[union-attr]
    if spec.pairwise and judge == against:
        table["self_grading"] = (f"the judge {judge!r} is the reference model these answers are compared with: "
                                 f"it grades its own answers (self-grading); use a judge that is not under test")
    if spec.pairwise and any(r.judge and r.judge.get("reference") for r in results):
        return metrics, table  # the reference's own cases: nothing was judged
    labels, weights = scale_labels(spec)
    labelled = [r for r in results if r.human_label is not None]
    if labelled:
        from harness.judging.agreement import agreement

        verdicts = [_category(spec, (r.judge or {}).get("verdict")) for r in labelled]
        humans = [_category(spec, r.human_label) for r in labelled]
        found = agreement(verdicts, humans, labels=labels, weights=weights)
        found["not_on_scale"] = sum(h is None for h in humans)
        table["agreement"] = found
        metrics["judge_labelled"] = float(found["n"])
        for name in ("accuracy", "kappa"):
            metrics[f"judge_{name}"] = found[name]
            metrics[f"judge_{name}.lower"], metrics[f"judge_{name}.upper"] = (found.get(f"{name}.lower"),
                                                                              found.get(f"{name}.upper"))
    if spec.samples > 1:
        from harness.judging.agreement import self_agreement

        samples = [[_category(spec, v) for v in r.judge["sample_verdicts"]] for r in judged  # type: ignore[index]
                   if len(r.judge.get("sample_verdicts") or ()) == spec.samples]  # type: ignore[union-attr]
        if samples:
            found = self_agreement(samples)
            found.pop("per_case", None)
            table["self_agreement"] = found
            metrics["judge_self_agreement"] = found["mean_agreement"]
            metrics["judge_fleiss_kappa"] = found["fleiss_kappa"]
    return metrics, table
