"""Gate expressions (`f1 >= 0.75`): parsing and judging. Pure functions."""

from __future__ import annotations

import math
import numbers
import operator
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from harness.results import GateResult

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# a suite metric (`f1.lower`), or a comparison figure of one (`delta(accuracy).lower`)
_METRIC = r"[A-Za-z_]\w*\(\s*[A-Za-z_][\w.]*\s*\)(?:\.(?:lower|upper))?|[A-Za-z_][\w.]*"
_GATE_RE = re.compile(rf"^\s*({_METRIC})\s*(>=|<=|==|!=|>|<)\s*(?:({_NUMBER})|(?:baseline|reference)\s*\*\s*({_NUMBER}))\s*$")

# figures of a paired comparison (see harness.comparison.compare): judged on this model against the
# run's reference model or the saved baseline, never on one model's results alone
COMPARISON_FUNCTIONS = ("delta", "p_value", "mcnemar_p", "ratio")
COMPARISON_COUNTS = ("improved_cases", "regressed_cases", "unchanged_cases", "unmatched_cases")


def base_metric(metric: str) -> str:
    """The suite metric a comparison figure is of: `delta(f1).lower` -> `f1`; others unchanged."""
    return metric.split("(", 1)[1].split(")", 1)[0] if "(" in metric else metric


def is_comparison(metric: str) -> bool:
    """Whether a gate's metric compares two arms (``delta(f1).lower``, ``regressed_cases``)."""
    return metric in COMPARISON_COUNTS or metric.split("(", 1)[0] in COMPARISON_FUNCTIONS and "(" in metric


@dataclass(frozen=True)
class Gate:
    expr: str
    metric: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


def parse_gate(expr: str) -> Gate:
    """Parse `metric op number`; ValueError says what is wrong."""
    match = _GATE_RE.match(expr)
    if not match:
        raise ValueError(
            f"cannot parse {expr!r}: expected '<metric> <op> <number>' with op one of {', '.join(OPS)} "
            f"(or a comparison: 'delta(accuracy) >= -0.02', 'latency_p99_ms <= baseline * 1.25')"
        )
    metric, op, number, factor = match.groups()
    metric = re.sub(r"\s+", "", metric)
    if "(" in metric and metric.split("(", 1)[0] not in COMPARISON_FUNCTIONS:
        raise ValueError(f"cannot parse {expr!r}: unknown function {metric.split('(', 1)[0]!r}; "
                         f"comparison gates use {', '.join(f + '(metric)' for f in COMPARISON_FUNCTIONS)}")
    if factor is not None:
        # `latency_p99_ms <= baseline * 1.25`: relative to the reference arm
        if "(" in metric:
            raise ValueError(f"cannot parse {expr!r}: 'baseline * k' compares a plain metric, e.g. "
                             f"'latency_p99_ms <= baseline * 1.25'")
        return Gate(expr.strip(), f"ratio({metric})", op, float(factor))
    return Gate(expr.strip(), metric, op, float(number))


def evaluate_gate(gate: Gate, metrics: Mapping[str, float | None]) -> GateResult:
    """Hold one gate against a suite's metrics: an unknown or valueless metric fails it."""
    value = metrics.get(gate.metric)
    base = dict(expr=gate.expr, metric=gate.metric, op=gate.op, threshold=gate.threshold, value=value)
    if gate.metric not in metrics:
        known = ", ".join(sorted(metrics))
        return GateResult(**base, status="failed", reason=f"unknown metric {gate.metric!r}; this suite has: {known}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GateResult(**base, status="failed", reason=f"{gate.metric} has no value (no case could be judged)")
    if not isinstance(value, numbers.Real):  # a pytest_llm_suite_metrics hook's (numpy's numbers are Real)
        return GateResult(**{**base, "value": None}, status="failed",
                          reason=f"{gate.metric} is {value!r} ({type(value).__name__}), not a number")
    if gate.holds(value):
        return GateResult(**base, status="passed", reason=f"{gate.metric} = {value:.4g} {gate.op} {gate.threshold:g}")
    return GateResult(
        **base, status="failed", reason=f"{gate.metric} = {value:.4g}, needs {gate.op} {gate.threshold:g}"
    )


def unjudged_gate(gate: Gate, value: float | None, reason: str) -> GateResult:
    """A gate that was not held to its metric (not selected, or the run stopped first)."""
    return GateResult(expr=gate.expr, metric=gate.metric, op=gate.op, threshold=gate.threshold, value=value,
                      status="skipped", reason=reason)
