"""The one wire format for case, gate and suite results (JSON primitives only).

Case results ride on pytest reports from xdist workers to the controller, so every
field must survive execnet serialisation: str, int, float, bool, None, list, dict.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1
REPORT_SCHEMA = "pytest-llm-harness/report"


@dataclass(slots=True)
class CaseResult:
    """What one case produced: the request, the reply, its judgement.

    Slotted: the controller of a large run holds one per case until the reports are written (a
    per-instance ``__dict__`` of 31 fields was about a kilobyte a case)."""

    suite: str
    id: str
    model: str
    nodeid: str
    dataset: str
    line: int
    prompt: Any  # rendered text (completion) or a list of chat messages
    target: Any
    output: str | None = None
    extracted: Any = None
    score: float | None = None
    passed: bool | None = None
    reason: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    output_tokens: int | None = None
    cached: bool = False  # the reply came from the response cache (kept out of latency figures)
    attempts: int | None = None
    ttft_ms: float | None = None  # streaming only
    tpot_ms: float | None = None  # streaming only
    sent_at: float | None = None  # epoch seconds: first attempt sent
    done_at: float | None = None  # epoch seconds: final answer received
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-style tool calls of a chat reply
    truncated: bool = False  # the reply was cut off at max_tokens (finish_reason "length")
    attack: str | None = None  # robustness copies: the perturbation of the input
    cluster: str | None = None  # the case's cluster (`cluster` field): paired intervals resample clusters
    metadata: dict[str, Any] = field(default_factory=dict)
    human_label: Any = None  # a person's verdict (the ``human_label`` field): a judge's agreement is measured on it
    # a model-graded case: the judge's model, prompt, raw replies, verdict and reasoning (harness.judging.scores)
    judge: dict[str, Any] | None = None
    # scorer-specific values that suite aggregation needs (e.g. predicted label)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # shallow on purpose: asdict's deep copy costs more than scoring a case
        return dict(zip(_CASE_FIELDS, case_values(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CaseResult":
        return cls(**{k: v for k, v in raw.items() if k in _CASE_FIELD_SET})


_CASE_FIELDS = tuple(f.name for f in fields(CaseResult))
_CASE_FIELD_SET = frozenset(_CASE_FIELDS)
# a result's fields in declaration order (``CaseResult(*values)`` makes it again), in one C call:
# it runs per case per report writer, and per case as the results file is written
case_values = operator.attrgetter(*_CASE_FIELDS)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """``value`` made of what the wire carries and report.json shows, the same with and without xdist: numpy's
    numbers and arrays (``tolist``) become Python's, subclasses of the built-in types those types, any other
    object its text. What is plain already comes back as it is (the usual case: no copy)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, dict):
        items = [(key if type(key) in _PLAIN else _plain_key(key), plain(item)) for key, item in value.items()]
        if kind is dict and all(a is b and x is y for (a, x), (b, y) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(item) for item in value]
        if kind in (list, tuple, set, frozenset) and all(a is b for a, b in zip(items, value)):
            return value
        base = next(t for t in (list, tuple, set, frozenset) if isinstance(value, t))
        return base(items)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy's scalars and arrays
        try:
            return plain(tolist())
        except Exception:  # noqa: BLE001 - then its text, as for any other object
            pass
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return str(value)


def _plain_key(key: Any) -> Any:
    converted = plain(key)
    return converted if type(converted) in _PLAIN or type(converted) is tuple else str(converted)


@dataclass
class GateResult:
    """One gate judged on one suite and model."""

    expr: str
    metric: str
    op: str
    threshold: float
    value: float | None
    status: str  # "passed" | "failed" | "skipped"
    reason: str = ""

    @property
    def passed(self) -> bool | None:
        return None if self.status == "skipped" else self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "GateResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class SuiteResult:
    """Metrics and gates of one suite on one model."""

    name: str
    model: str
    main_metric: str
    metrics: dict[str, float | None]
    gates: list[GateResult]
    cases: int  # results judged in this run
    total_cases: int  # cases the suite holds
    subset: bool  # True when -k/--lf ran only part of the suite
    tables: dict[str, Any] = field(default_factory=dict)  # e.g. the confusion matrix, for reports

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gates"] = [g.to_dict() for g in self.gates]
        return d
