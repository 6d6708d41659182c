"""Gate expressions (`f1 >= 0.75`): parsing and judging. Pure functions."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from harness.results import GateResult

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


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
            f"cannot parse {expr!r}: expected '<metric> <op> <number>' with op one of {', '.join(OPS)}"
        )
    metric, op, number = match.groups()
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
    if gate.holds(value):
        return GateResult(**base, status="passed", reason=f"{gate.metric} = {value:.4g} {gate.op} {gate.threshold:g}")
    return GateResult(
        **base, status="failed", reason=f"{gate.metric} = {value:.4g}, needs {gate.op} {gate.threshold:g}"
    )


def unjudged_gate(gate: Gate, value: float | None, reason: str) -> GateResult:
    """A gate that was not held to its metric (not selected, or the run stopped first)."""
    return GateResult(expr=gate.expr, metric=gate.metric, op=gate.op, threshold=gate.threshold, value=value,
                      status="skipped", reason=reason)
