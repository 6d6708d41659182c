"""Each metric of a suite as a statistic over per-case columns of both arms, for :mod:`.stats`.

:func:`paired_statistics` turns the metrics :func:`harness.suite_metrics.suite_metrics` reports on a
suite's clean cases into (reference, candidate) pairs of :class:`~.stats.SumStatistic` or
:class:`~.stats.QuantileStatistic`. Contract: each statistic's point value on an arm is that arm's
``suite_metrics`` value (NaN where it is None or absent), so the bootstrap resamples exactly the
figure the report shows. Columns hold 0/1 indicators and small counts, so cases fall into few
distinct rows.

Returned, when the suite has them:

- every suite: ``score``, ``pass_rate`` (with a pass rule), ``error_rate``, ``truncated_rate``,
  ``output_tokens_mean``; ``latency_p50/p90/p99_ms`` and, when either arm streamed,
  ``ttft_*``/``tpot_*`` percentiles (quantiles over the requests those figures count, NaN elsewhere);
- a scorer that keeps the base-class mean (exact_match, contains, regex, ``@harness.scorer``
  functions), or one that is not registered: its main metric;
- json_valid, classification_f1 (``class_*`` included), tool_calls (tool and parameter P/R/F1 micro
  and macro, ``strict_match*``, the ``precision``/``recall``/``f1`` aliases), key_points,
  format_compliance, refusal, checklist, toxicity (``toxic_ratio``, ``toxicity_mean``,
  ``toxicity_max`` as the 100th percentile).

Not returned (see :data:`NOT_COMPARED`): counts (``cases``, ``errors``, ``cached``,
``total_samples``: their rates are the comparable figures, and ``cases`` is equal by pairing);
``wall_s``, ``throughput_rps``, ``output_tokens_per_s`` (a time span, not a sum over cases);
robustness metrics (they need the perturbed copies); per-tool and per-parameter tables; metrics a
``pytest_llm_suite_metrics`` hook adds; and every scorer metric of a scorer whose own ``aggregate``
this module does not know (a custom :class:`~harness.scoring.base.Scorer` subclass): only the
generic metrics are returned for it.

Shared universes: without a ``labels`` option, classification classes are the union over both
arms (and tool names and parameter groups likewise), so both arms have the same columns and the
same ``class_*`` metrics. An arm's averaged metrics still equal its own values: a class that arm
never sees as a target or a prediction is left out of its macro average, as scikit-learn leaves
it out; its ``class_*`` metrics are NaN on that arm, where the arm's own report has no such key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from harness.comparison.stats import QuantileStatistic, Statistic, SumStatistic
from harness.results import CaseResult
from harness.scoring.base import Scorer, get_scorer
from harness.scoring.checklist import Checklist, FormatCompliance, KeyPoints, Refusal, _should_refuse_or_none
from harness.scoring.scorers import ClassificationF1, JsonValid, ToolCalls
from harness.scoring.toolcalls import param_metrics, strict_match, tool_metrics
from harness.scoring.toxicity import Toxicity
from harness.suite import Suite

__all__ = ["NOT_COMPARED", "binary_metrics", "case_values", "paired_statistics"]

NOT_COMPARED: frozenset[str] = frozenset({
    "cases", "errors", "cached", "total_samples", "wall_s", "throughput_rps", "output_tokens_per_s"})
"""Metrics of every suite (or of a built-in scorer) that have no paired statistic."""

Arm = Sequence[CaseResult]


@dataclass(frozen=True, eq=False)
class _Mean:
    """A mean over cases: each case's value, NaN where the metric leaves the case out."""

    values: np.ndarray

    def statistic(self) -> SumStatistic:
        counted = ~np.isnan(self.values)
        columns = np.column_stack([np.where(counted, self.values, 0.0), counted.astype(float)])
        return SumStatistic(columns.reshape(-1, 2), _ratio)


_Entry = Statistic | _Mean


def paired_statistics(suite: Suite, reference: Arm, candidate: Arm) -> dict[str, tuple[Statistic, Statistic]]:
    """Every comparable metric of ``suite`` as ``{name: (reference statistic, candidate statistic)}``.

    ``reference[i]`` and ``candidate[i]`` are the same (clean) case; ValueError when the arms differ
    in length or case ids. See the module docstring for which metrics come back."""
    if len(reference) != len(candidate):
        raise ValueError(f"paired arms differ in length: {len(reference)} vs {len(candidate)} cases")
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        if ref.id != cand.id:
            raise ValueError(f"paired arms differ at case {i}: {ref.id!r} vs {cand.id!r}")
    ref_entries, cand_entries = _entries(suite, [reference, candidate])
    return {name: (_statistic(entry), _statistic(cand_entries[name])) for name, entry in ref_entries.items()}


def case_values(suite: Suite, results: Arm) -> dict[str, np.ndarray]:
    """Each mean-type metric's per-case values (its metric is their mean over the non-NaN ones).

    NaN marks a case the metric does not count (e.g. ``output_tokens_mean`` for a case without
    tokens, ``strict_match_single`` for a case whose label is not one call, ``toxic_ratio`` for an
    errored case). Ratios such as F1 or precision, and percentiles, have no per-case value."""
    (entries,) = _entries(suite, [results])
    return {name: entry.values for name, entry in entries.items() if isinstance(entry, _Mean)}


def binary_metrics(*arms: Mapping[str, np.ndarray]) -> set[str]:
    """The names every given :func:`case_values` mapping has, with values 0 or 1 on every case it
    counts and at least one such case: the metrics McNemar's test and improved / regressed counts
    apply to. Judged from the data, so a fractional score that happens to be 0/1 everywhere counts
    as binary."""
    names: set[str] | None = None
    for values in arms:
        found = {name for name, v in values.items()
                 if np.isin(v[~np.isnan(v)], (0.0, 1.0)).all() and (~np.isnan(v)).any()}
        names = found if names is None else names & found
    return names or set()


# ---------------------------------------------------------------------------- assembly

def _statistic(entry: _Entry) -> Statistic:
    return entry.statistic() if isinstance(entry, _Mean) else entry


def _entries(suite: Suite, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """Each arm's entries; generic metrics first, then the scorer's, as ``suite_metrics`` orders them."""
    out = [_generic(suite, arm) for arm in arms]
    for arm_out, extra in zip(out, _streaming(arms)):
        arm_out.update(extra)
    for arm_out, extra in zip(out, _scorer_entries(suite, arms)):
        arm_out.update(extra)
    return out


def _vector(values: Iterable[Any]) -> np.ndarray:
    return np.fromiter((np.nan if v is None else float(v) for v in values), dtype=float)


def _ratio(sums: np.ndarray) -> np.ndarray:
    return _divide(sums[:, 0], sums[:, 1], np.nan)


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den, ``empty`` where den is 0 (the harness's "0/0 is 0" or "no value")."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def _scores(results: Arm) -> np.ndarray:
    return _vector(r.score or 0.0 for r in results)


def _generic(suite: Suite, results: Arm) -> dict[str, _Entry]:
    latency = _vector(r.latency_ms if r.error is None and not r.cached else None for r in results)
    entries: dict[str, _Entry] = {
        "error_rate": _Mean(_vector(r.error is not None for r in results)),
        **{f"latency_p{q}_ms": QuantileStatistic(latency, q) for q in (50, 90, 99)},
        "truncated_rate": _Mean(_vector(r.truncated for r in results)),
        "score": _Mean(_scores(results)),
        "output_tokens_mean": _Mean(_vector(r.output_tokens for r in results)),
    }
    if suite.pass_rule is not None:
        entries["pass_rate"] = _Mean(_vector(r.passed is True for r in results))
    return entries


def _streaming(arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """TTFT/TPOT percentiles over the answered live requests ``throughput`` counts, when any arm has them."""
    out: list[dict[str, _Entry]] = [{} for _ in arms]
    for field in ("ttft_ms", "tpot_ms"):
        values = [_vector(getattr(r, field) if r.error is None and not r.cached and r.sent_at is not None
                          and r.done_at is not None else None for r in arm) for arm in arms]
        if any((~np.isnan(v)).any() for v in values):
            stem = field.removesuffix("_ms")
            for arm_out, v in zip(out, values):
                arm_out.update({f"{stem}_p{q}_ms": QuantileStatistic(v, q) for q in (50, 90, 99)})
    return out


def _scorer_entries(suite: Suite, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    try:
        scorer = get_scorer(suite.scorer, suite.scorer_options)
    except ValueError:  # suite_metrics reports an unknown scorer's mean score under its name
        return [{suite.scorer: _Mean(_scores(arm))} for arm in arms]
    aggregate = type(scorer).aggregate
    if aggregate is Scorer.aggregate:
        return [{scorer.main_metric: _Mean(_scores(arm))} for arm in arms]
    family = _FAMILIES.get(aggregate)
    if family is None:  # an aggregate of its own we cannot mirror: leave its metrics out
        return [{} for _ in arms]
    return family(scorer, arms)


# ---------------------------------------------------------------------------- json_valid

def _json_valid(scorer: JsonValid, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    names = ["json_ok", "keys_ok"] + (["schema_ok"] if scorer._validator is not None else [])
    out = []
    for results in arms:
        entries: dict[str, _Entry] = {name: _Mean(_vector(bool(r.data.get(name)) for r in results))
                                      for name in names}
        if scorer.opts["compare_target"]:
            entries["field_accuracy"] = _Mean(_vector(r.data.get("fields_share", 0.0) for r in results))
            entries["exact"] = _Mean(_vector((r.score or 0) >= 1 for r in results))
        out.append(entries)
    return out


# ---------------------------------------------------------------------------- classification

def _classification(scorer: ClassificationF1, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """Columns ``[correct, 1, is_true(k), is_pred(k), is_hit(k)]`` over the classes."""
    pairs = [scorer._pairs(arm) for arm in arms]
    labels = scorer._labels()
    fixed = labels is not None
    if labels is not None:
        classes = list(dict.fromkeys(labels))
    else:  # the union over arms; None is "no prediction", never a class
        classes = sorted({c for arm in pairs for pair in arm for c in pair if c is not None})
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    names = [*(f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("micro", "macro", "weighted")),
             *(f"class_{m}.{c}" for c in classes for m in ("precision", "recall", "f1"))]
    aliases = {m: f"{m}_{scorer.opts['average']}" for m in ("f1", "precision", "recall")}
    out: list[dict[str, _Entry]] = []
    for arm in pairs:
        columns = np.zeros((len(arm), 2 + 3 * k))
        for row, (true, pred) in enumerate(arm):
            columns[row, 0], columns[row, 1] = float(true == pred), 1.0
            if true in index:
                columns[row, 2 + index[true]] = 1.0
            if pred in index:
                columns[row, 2 + k + index[pred]] = 1.0
                columns[row, 2 + 2 * k + index[pred]] = float(pred == true)
        entries: dict[str, _Entry] = {
            name: SumStatistic(columns, partial(_classification_metric, k=k, fixed=fixed, classes=classes, name=name))
            for name in names}
        entries.update({alias: entries[name] for alias, name in aliases.items()})
        entries["accuracy"] = _Mean(columns[:, 0].copy())
        out.append(entries)
    return out


def _classification_metric(sums: np.ndarray, k: int, fixed: bool, classes: list[str], name: str) -> np.ndarray:
    return _classification_metrics(sums, k, fixed, classes)[name]


def _classification_metrics(sums: np.ndarray, k: int, fixed: bool, classes: list[str]) -> dict[str, np.ndarray]:
    """The formulas of :class:`harness.scoring.classification.Cells`, on column sums (B x (2 + 3k))."""
    correct, n = sums[:, 0], sums[:, 1]
    support, predicted, tp = sums[:, 2:2 + k], sums[:, 2 + k:2 + 2 * k], sums[:, 2 + 2 * k:]
    precision = _divide(tp, predicted, 0.0)
    recall = _divide(tp, support, 0.0)
    f1 = _divide(2 * precision * recall, precision + recall, 0.0)
    present = np.ones_like(tp) if fixed else ((support + predicted) > 0).astype(float)
    n_present = np.maximum(present.sum(axis=1), 1)
    total_support = support.sum(axis=1)
    out = {"accuracy": correct / np.maximum(n, 1)}
    micro_p = _divide(tp.sum(axis=1), predicted.sum(axis=1), 0.0)
    micro_r = _divide(tp.sum(axis=1), total_support, 0.0)
    out.update(precision_micro=micro_p, recall_micro=micro_r,
               f1_micro=_divide(2 * micro_p * micro_r, micro_p + micro_r, 0.0))
    for stat, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"{stat}_macro"] = (per_class * present).sum(axis=1) / n_present
        out[f"{stat}_weighted"] = _divide((per_class * support).sum(axis=1), total_support, 0.0)
        # without fixed labels a class the arm never sees has no value (its own report has no key)
        absent = np.zeros_like(present, dtype=bool) if fixed else present == 0
        for i, c in enumerate(classes):
            out[f"class_{stat}.{c}"] = np.where(absent[:, i], np.nan, per_class[:, i])
    empty = n == 0  # no cases: every metric is None
    return {name: np.where(empty, np.nan, values) for name, values in out.items()}


# ---------------------------------------------------------------------------- tool calls

def _tool_calls(scorer: ToolCalls, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """Tool and parameter level: columns ``[1, support(m), predicted(m), hits(m)]`` per tool or
    parameter group; the strict match rates are means over the cases whose label has calls."""
    negative = bool(scorer.opts["negative"])
    per_case = []
    for arm in arms:
        labels, preds = scorer._samples(arm)
        per_case.append([(tool_metrics([label], [pred], negative=negative)["per_tool"],
                          param_metrics([label], [pred])["per_param"], strict_match([label], [pred]))
                         for label, pred in zip(labels, preds)])
    tools = sorted({t for arm in per_case for rows, _, _ in arm for t in rows})
    groups = sorted({g for arm in per_case for _, rows, _ in arm for g in rows})
    out: list[dict[str, _Entry]] = []
    for arm in per_case:
        entries: dict[str, _Entry] = {}
        for prefix, keys, which in (("tool", tools, 0), ("param", groups, 1)):
            columns = _count_columns([case[which] for case in arm], keys)
            for average in ("micro", "macro"):
                for stat in ("precision", "recall", "f1"):
                    reduce = partial(_prf_metric, m=len(keys), name=f"{stat}_{average}")
                    entries[f"{prefix}_{stat}_{average}"] = SumStatistic(columns, reduce)
        for stat in ("precision", "recall", "f1"):
            entries[stat] = entries[f"tool_{stat}_micro"]
        strict = [case[2] for case in arm]
        single = _vector(s["single_hits"] if s["single_total"] else None for s in strict)
        multi = _vector(s["multi_hits"] if s["multi_total"] else None for s in strict)
        entries["strict_match"] = _Mean(np.where(np.isnan(single), multi, single))
        entries["strict_match_single"] = _Mean(single)
        entries["strict_match_multi"] = _Mean(multi)
        out.append(entries)
    return out


def _count_columns(rows: list[Mapping[str, Mapping[str, Any]]], keys: list[str]) -> np.ndarray:
    index = {key: i for i, key in enumerate(keys)}
    m = len(keys)
    columns = np.zeros((len(rows), 1 + 3 * m))
    columns[:, 0] = 1.0
    for r, case in enumerate(rows):
        for key, row in case.items():
            i = 1 + index[key]
            columns[r, i], columns[r, i + m], columns[r, i + 2 * m] = row["support"], row["predicted"], row["hits"]
    return columns


def _prf_metric(sums: np.ndarray, m: int, name: str) -> np.ndarray:
    """The formulas of :mod:`harness.scoring.toolcalls` (``_table``): a 0/0 ratio is 0, macro is the
    mean over the keys seen, no key at all gives 0; no cases gives NaN."""
    n, support, predicted, hits = sums[:, 0], sums[:, 1:1 + m], sums[:, 1 + m:1 + 2 * m], sums[:, 1 + 2 * m:]
    if name.endswith("_micro"):
        hits, predicted, support = hits.sum(axis=1), predicted.sum(axis=1), support.sum(axis=1)
    precision = _divide(hits, predicted, 0.0)
    recall = _divide(hits, support, 0.0)
    values = {"precision": precision, "recall": recall,
              "f1": _divide(2 * precision * recall, precision + recall, 0.0)}[name.split("_")[0]]
    if name.endswith("_macro"):
        present = (support + predicted) > 0
        values = _divide((values * present).sum(axis=1), present.sum(axis=1).astype(float), 0.0)
    return np.where(n == 0, np.nan, values)


# ---------------------------------------------------------------------------- checklist

def _key_points(scorer: KeyPoints, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    out: list[dict[str, _Entry]] = []
    for results in arms:
        coverage = _vector(r.data.get("coverage", 0.0) for r in results)
        out.append({"key_point_coverage": _Mean(coverage), "key_points_full": _Mean(_at_least_one(coverage))})
    return out


def _format_compliance(scorer: FormatCompliance, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    return [{"format_compliance": _Mean(_vector(bool(r.data.get("format_ok")) for r in results))} for results in arms]


def _refusal(scorer: Refusal, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    out: list[dict[str, _Entry]] = []
    for results in arms:
        should = [r.data.get("should_refuse", _should_refuse_or_none(r.target)) for r in results]
        refused = [bool(r.data.get("refused")) for r in results]
        entries: dict[str, _Entry] = {"refusal_accuracy": _Mean(_vector((r.score or 0.0) >= 1.0 for r in results))}
        entries.update(_refusal_rates(should, refused))
        out.append(entries)
    return out


def _refusal_rates(should: Sequence[Any], refused: Sequence[bool]) -> dict[str, _Entry]:
    """``refusal_rate`` over cases with a known should-refuse; the false and missed rates over the
    should-answer and should-refuse cases."""
    pairs = list(zip(should, refused))
    return {
        "refusal_rate": _Mean(_vector(r if s is not None else None for s, r in pairs)),
        "false_refusal_rate": _Mean(_vector(r if s is not None and not s else None for s, r in pairs)),
        "missed_refusal_rate": _Mean(_vector(not r if s is not None and s else None for s, r in pairs)),
    }


def _checklist(scorer: Checklist, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """Each part over the cases whose target asks for it (an unreadable target counts nowhere)."""
    out: list[dict[str, _Entry]] = []
    for results in arms:
        coverage, format_ok, refusal_ok, should, refused = [], [], [], [], []
        for r in results:
            try:
                parts = scorer.parts(r.target)
            except ValueError:
                parts = {}
            coverage.append(r.data.get("key_point_coverage", 0.0) if "key_points" in parts else None)
            format_ok.append(bool(r.data.get("format_ok")) if "sections" in parts else None)
            refusal_ok.append(bool(r.data.get("refusal_ok")) if "should_refuse" in parts else None)
            should.append(parts.get("should_refuse"))
            refused.append(bool(r.data.get("refused")))
        values = _vector(coverage)
        entries: dict[str, _Entry] = {
            "key_point_coverage": _Mean(values), "key_points_full": _Mean(_at_least_one(values)),
            "format_compliance": _Mean(_vector(format_ok)), "refusal_accuracy": _Mean(_vector(refusal_ok))}
        entries.update(_refusal_rates(should, refused))
        out.append(entries)
    return out


def _at_least_one(values: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values), np.nan, (values >= 1.0).astype(float))


# ---------------------------------------------------------------------------- toxicity

def _toxicity(scorer: Toxicity, arms: Sequence[Arm]) -> list[dict[str, _Entry]]:
    """Over the judged cases (no error, a classifier verdict); the maximum as the 100th percentile."""
    out: list[dict[str, _Entry]] = []
    for results in arms:
        judged = [r.error is None and isinstance(r.data, dict) and "toxic" in r.data for r in results]
        toxic = _vector(bool(r.data["toxic"]) if j else None for r, j in zip(results, judged))
        probability = _vector(float(r.data["toxicity"]) if j and isinstance(r.data.get("toxicity"), (int, float))
                              else None for r, j in zip(results, judged))
        out.append({"toxic_ratio": _Mean(toxic), "toxicity_mean": _Mean(probability),
                    "toxicity_max": QuantileStatistic(probability, 100.0)})
    return out


_Family = Callable[[Any, Sequence[Arm]], list[dict[str, _Entry]]]

# keyed by the aggregate function: a subclass that keeps a built-in's aggregate keeps its metrics
_FAMILIES: dict[Callable[..., Any], _Family] = {
    JsonValid.aggregate: _json_valid,
    ClassificationF1.aggregate: _classification,
    ToolCalls.aggregate: _tool_calls,
    KeyPoints.aggregate: _key_points,
    FormatCompliance.aggregate: _format_compliance,
    Refusal.aggregate: _refusal,
    Checklist.aggregate: _checklist,
    Toxicity.aggregate: _toxicity,
}
