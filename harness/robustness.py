"""Robustness suites: every case again under seeded input perturbations, and what they cost.

A suite file with a ``robustness:`` section gets, besides its cases, one perturbed copy of each
case per attack (item ``<id>~<attack>``, marker ``llm_robustness``), sent to the same engine and
judged by the same scorer. The suite's quality metrics stay those of the clean cases; the
robustness metrics compare each clean case with its perturbed copies:

- ``<metric>_drop``: the compared metric (the scorer's main one, or ``metric:``) on the clean
  cases minus on their perturbed copies, over all attacks and per attack (``typos.f1_drop``),
  with a paired bootstrap interval;
- ``success_rate``: the attack success rate, the share of cases answered correctly when clean
  whose perturbed copy is answered wrongly (flipped answers), with its Wilson interval;
- ``changed_rate``: the share of perturbed copies whose prediction differs from the clean one.

``robustness_adv.json`` holds these in the seeds' indicator format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Collection, Sequence

from harness.scoring.perturb import ATTACKS, DEFAULT_RATE, perturb

if TYPE_CHECKING:
    from harness.results import CaseResult
    from harness.scoring.scorers import Scorer

ROBUSTNESS_KEYS = {"attacks", "seed", "rate", "metric", "templates"}
SEPARATOR = "~"


@dataclass(frozen=True)
class RobustnessSpec:
    """A suite's ``robustness:`` section."""

    attacks: tuple[str, ...] = ATTACKS
    seed: int = 0
    rate: float = DEFAULT_RATE
    metric: str | None = None  # None: the scorer's main metric
    templates: tuple[str, ...] = ()  # paraphrase templates; empty: the built-in ones

    def config_dict(self) -> dict[str, Any]:
        return {"attacks": list(self.attacks), "seed": self.seed, "rate": self.rate, "metric": self.metric,
                "templates": list(self.templates)}


def parse_robustness(raw: Any) -> RobustnessSpec | None:
    """The spec from its suite-file form; ValueError says what is wrong."""
    if raw in (None, False):
        return None
    if raw is True:
        return RobustnessSpec()
    if not isinstance(raw, dict):
        raise ValueError("'robustness' must be true or a mapping (attacks, seed, rate, metric, templates)")
    unknown = sorted(set(raw) - ROBUSTNESS_KEYS)
    if unknown:
        raise ValueError(f"unknown robustness key {unknown[0]!r}; known: {', '.join(sorted(ROBUSTNESS_KEYS))}")
    attacks = raw.get("attacks", list(ATTACKS))
    if isinstance(attacks, str):
        attacks = list(ATTACKS) if attacks == "all" else [attacks]
    if not isinstance(attacks, list) or not attacks:
        raise ValueError("robustness.attacks must be a non-empty list of attacks")
    for attack in attacks:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("robustness.seed must be an integer")
    rate = raw.get("rate", DEFAULT_RATE)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
        raise ValueError("robustness.rate must be a number in (0, 1]: the share of words an attack touches")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ValueError("robustness.metric must be a metric name, e.g. f1")
    templates = raw.get("templates") or []
    if not isinstance(templates, list) or not all(isinstance(t, str) and "{input}" in t for t in templates):
        raise ValueError("robustness.templates must be a list of strings, each with {input}")
    return RobustnessSpec(tuple(dict.fromkeys(attacks)), seed, float(rate), metric, tuple(templates))


def perturbed_cases(spec: RobustnessSpec, cases: Sequence[Any]) -> list[Any]:
    """One perturbed copy of every case per attack, in case order."""
    out = []
    for case in cases:
        for attack in spec.attacks:
            new_input = _perturb_input(case.input, attack, spec, case.id)
            out.append(replace(case, id=f"{case.id}{SEPARATOR}{attack}", input=new_input, attack=attack))
    return out


def _perturb_input(value: Any, attack: str, spec: RobustnessSpec, key: str) -> Any:
    """A text input is perturbed; a chat input has its last user message perturbed."""
    if isinstance(value, str):
        return perturb(value, attack, seed=spec.seed, key=key, rate=spec.rate, templates=spec.templates)
    messages = [dict(m) for m in value]
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            message["content"] = perturb(message["content"], attack, seed=spec.seed, key=key, rate=spec.rate,
                                         templates=spec.templates)
            break
    return messages


def is_robustness_metric(metric: str) -> bool:
    """Whether a metric (or its bound, ``f1_drop.lower``) is computed from the perturbed copies."""
    name = metric.removesuffix(".lower").removesuffix(".upper")
    prefix, _, rest = name.partition(".")
    if rest and prefix in ATTACKS:
        name = rest
    return (name in ("perturbed_cases", "success_rate", "changed_rate") or name.endswith("_drop")
            or name.startswith("perturbed_"))


def source_id(result: CaseResult) -> str:
    return result.id.rsplit(SEPARATOR, 1)[0] if result.attack else result.id


def _correct(result: CaseResult) -> bool:
    if result.error is not None:
        return False
    return bool(result.passed) if result.passed is not None else (result.score or 0.0) >= 1.0


def _prediction(result: CaseResult) -> str:
    return json.dumps(result.extracted, sort_keys=True, ensure_ascii=False, default=str)


def robustness_metrics(spec: RobustnessSpec, scorer: Scorer | None, main: str, clean: Sequence[CaseResult],
                       perturbed: Sequence[CaseResult], known: Collection[str] = ()) -> dict[str, float | None]:
    """Drop of the compared metric, attack success rate and changed rate: overall and per attack.

    ``known`` holds the clean suite's metric names: a ``metric:`` not among them gets no
    figures, so a gate on its drop fails naming the metrics the suite has."""
    from harness.scoring.stats import wilson, with_interval

    metric = spec.metric or main
    metrics: dict[str, float | None] = {"perturbed_cases": float(len(perturbed))}
    if known and metric not in known:
        return metrics
    by_id = {r.id: r for r in clean}
    groups: list[tuple[str, list[tuple[CaseResult, CaseResult]]]] = []
    pairs_all = [(by_id[source_id(r)], r) for r in perturbed if source_id(r) in by_id]
    groups.append(("", pairs_all))
    for attack in spec.attacks:
        groups.append((f"{attack}.", [p for p in pairs_all if p[1].attack == attack]))
    for prefix, pairs in groups:
        before = _value(scorer, metric, [c for c, _ in pairs])
        after = _value(scorer, metric, [p for _, p in pairs])
        drop = before - after if before is not None and after is not None else None
        metrics[f"{prefix}perturbed_{metric}"] = after
        metrics[f"{prefix}{metric}_drop"] = drop
        with_interval(metrics, f"{prefix}{metric}_drop", _drop_interval(scorer, metric, pairs))
        correct = [(c, p) for c, p in pairs if _correct(c)]
        flipped = sum(not _correct(p) for _, p in correct)
        metrics[f"{prefix}success_rate"] = flipped / len(correct) if correct else None
        with_interval(metrics, f"{prefix}success_rate", wilson(flipped, len(correct)))
        changed = sum(_prediction(c) != _prediction(p) for c, p in pairs)
        metrics[f"{prefix}changed_rate"] = changed / len(pairs) if pairs else None
    return metrics


def _value(scorer: Scorer | None, metric: str, results: Sequence[CaseResult]) -> float | None:
    if not results:
        return None
    if scorer is None or metric == "score":
        return sum(r.score or 0.0 for r in results) / len(results)
    return scorer.aggregate(results).get(metric)


def _drop_interval(scorer: Scorer | None, metric: str,
                   pairs: Sequence[tuple[CaseResult, CaseResult]]) -> tuple[float | None, float | None]:
    """Paired bootstrap: resample cases, each with its clean and perturbed result together.

    Classification metrics resample counts of (label, clean prediction, perturbed prediction)
    kinds; a mean score resamples the per-case differences. Other metrics get no interval."""
    from harness.scoring.scorers import ClassificationF1, Scorer
    from harness.scoring.stats import bootstrap_mean

    if not pairs:
        return None, None
    if isinstance(scorer, ClassificationF1) and metric != "score":
        return _classification_drop_interval(scorer, metric, pairs)
    # the base aggregate's main metric is the mean score: its drop is the mean paired difference
    is_mean = scorer is None or metric == "score" or (
        metric == scorer.main_metric and type(scorer).aggregate is Scorer.aggregate)
    if is_mean:
        return bootstrap_mean([(c.score or 0.0) - (p.score or 0.0) for c, p in pairs])
    return None, None


def _classification_drop_interval(scorer: Any, metric: str,
                                  pairs: Sequence[tuple[CaseResult, CaseResult]]) -> tuple[float | None, float | None]:
    import numpy as np

    from harness.scoring.classification import Cells
    from harness.scoring.stats import draw_counts, percentile_interval

    if metric in ("f1", "precision", "recall"):  # the scorer's averaged figure, named without its average
        metric = f"{metric}_{scorer.opts['average']}"
    labels = scorer._labels()
    clean_pairs, perturbed_pairs = scorer._pairs([c for c, _ in pairs]), scorer._pairs([p for _, p in pairs])
    triples: dict[tuple[Any, Any, Any], int] = {}
    for (label, before), (_, after) in zip(clean_pairs, perturbed_pairs):
        triples[(label, before, after)] = triples.get((label, before, after), 0) + 1
    kinds = list(triples)
    draws = draw_counts(list(triples.values()))
    values = []
    for position in (1, 2):
        cells = Cells([(k[0], k[position]) for k in kinds], labels)
        index = {kind: i for i, kind in enumerate(cells.kinds)}
        to_cells = np.zeros((len(kinds), len(cells.kinds)))
        for t, kind in enumerate(kinds):
            to_cells[t, index[(kind[0], kind[position])]] = 1
        resampled = cells.metrics(draws @ to_cells)
        if metric not in resampled:
            return None, None
        values.append(resampled[metric])
    return percentile_interval(values[0] - values[1])


def robustness_indicator(metrics: dict[str, Any], spec: dict[str, Any] | None, main: str) -> dict[str, Any]:
    """The seeds' ``robustness_adv.json``: {indicator, attack_type, success_rate, f1_drop}, plus
    the figures of each attack and how many perturbed cases they rest on."""
    attacks = list((spec or {}).get("attacks") or [])
    metric = (spec or {}).get("metric") or main
    return {
        "indicator": "robustness_adv",
        "attack_type": "+".join(attacks),
        "success_rate": metrics.get("success_rate"),
        "f1_drop": metrics.get(f"{metric}_drop"),
        "metric": metric,
        "samples": int(metrics.get("perturbed_cases") or 0),
        "attacks": [{"attack_type": attack, "success_rate": metrics.get(f"{attack}.success_rate"),
                     "f1_drop": metrics.get(f"{attack}.{metric}_drop")} for attack in attacks],
    }
