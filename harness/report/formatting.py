"""How reports show numbers and texts: the Markdown and HTML reports format alike.

None shows as an em dash, metrics to four significant digits (large ones with separators),
latencies to 0.1 ms, deltas with their sign, p-values down to "<0.001"."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def num4(value: Any) -> str:
    # metrics to 4 significant digits, large ones with separators and no exponent
    return f"{value:,.0f}" if finite(value) and abs(value) >= 10_000 else num(value)


def ms1(value: Any) -> str:
    # milliseconds to 0.1
    return f"{value:,.1f}" if finite(value) else num(value)


def ms(value: Any) -> str:
    return f"{ms1(value)} ms" if finite(value) else num(value)


def signed(value: Any, latency: bool) -> str:
    # a delta carries its sign: which way the candidate moved is the point
    if not finite(value):
        return num(value)
    return f"{value:+,.1f}" if latency else f"{value:+,.0f}" if abs(value) >= 10_000 else f"{value:+.4g}"


def p_value(value: Any) -> str:
    if not finite(value):
        return num(value)
    return "<0.001" if value < 0.001 else f"{value:.3g}"


def pct(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1%}"
    return num(value)


def interval(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics.get(f"{name}.lower"), metrics.get(f"{name}.upper")
    return "" if low is None or high is None else f" [{num(low)}, {num(high)}]"


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(
            f"{m.get('role')}: {as_text(m.get('content'))}" if isinstance(m, dict) else as_text(m)
            for m in prompt
        )
    return as_text(prompt)


def is_bad(case: dict[str, Any]) -> bool:
    """A case that errored, was judged a failure, or (record-only suites) scored below 1."""
    if case.get("error") is not None or case.get("passed") is False:
        return True
    if (case.get("data") or {}).get("pairwise") == "reference":
        return False  # a pairwise judge's reference: its answers were not judged
    score = case.get("score")
    return case.get("passed") is None and isinstance(score, (int, float)) and score < 1
