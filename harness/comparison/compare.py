"""One suite compared on two arms: every metric's paired difference, and the figures gates judge.

For each metric the suite has a paired statistic for (see :mod:`.statistics`): both values, the
difference (candidate minus reference) with a seeded paired bootstrap interval (cases, or clusters
when cases carry a ``cluster``, resampled jointly on both arms, the metric recomputed on each), a
bootstrap p-value, the per-case correlation, and cases improved / regressed / unchanged. Metrics
with a 0/1 value per case also get the exact McNemar test on their discordant pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from harness.comparison.pairing import Arm, Pairing, pair_cases
from harness.comparison.stats import correlation, mcnemar, minimum_detectable_difference, paired_bootstrap
from harness.gates import base_metric, is_comparison, parse_gate
from harness.results import CaseResult
from harness.scoring.stats import CONFIDENCE, RESAMPLES, SEED
from harness.suite import Suite

MIN_CASES = 30  # fewer paired cases: intervals and tests are too unreliable to conclude from
MIN_DISCORDANT = 10  # fewer discordant pairs: McNemar has little power
MAX_DISAGREEMENTS = 500  # cases listed per pair where the two arms' scores differ
LATENCY_PREFIXES = ("latency_", "ttft_", "tpot_")
NOT_OUTCOMES = frozenset({"output_tokens_mean"})


@dataclass
class PairComparison:
    """A suite on a candidate arm against a reference arm."""

    suite: str
    reference: str
    candidate: str
    pairing: Pairing = field(default_factory=Pairing)
    clusters: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)  # what comparison gates judge

    def to_dict(self) -> dict[str, Any]:
        p = self.pairing
        return {"suite": self.suite, "reference": self.reference, "candidate": self.candidate,
                "matched": len(p.reference), "clusters": self.clusters, "only_reference": p.only_reference,
                "only_candidate": p.only_candidate, "duplicates": p.duplicates, "changed_input": p.changed_input,
                "warnings": self.warnings, "refused": self.refused, "rows": self.rows,
                "disagreements": self.disagreements}


def refused(suite: str, reference: str, candidate: str, why: str) -> PairComparison:
    """A comparison that must not be made (the baseline's data or configuration differ)."""
    return PairComparison(suite, reference, candidate, refused=why)


def compare_suite(suite: Suite, reference: Arm, candidate: Arm, main: str, resamples: int = RESAMPLES,
                  seed: int = SEED, confidence: float = CONFIDENCE) -> PairComparison:
    """Pair the arms' clean cases and compare every metric (see the module docstring).

    Rows of the multiple-comparison family (``family``: the main metric and every metric a comparison
    gate of the suite names) carry the warnings about too little data; the others are exploratory."""
    from harness.comparison.statistics import binary_metrics, case_values, paired_statistics

    pairing = pair_cases(reference, candidate)
    out = PairComparison(suite.name, reference.name, candidate.name, pairing)
    ref, cand = pairing.reference, pairing.candidate
    n = len(ref)
    _pairing_warnings(out)
    counts = _case_counts(ref, cand)
    out.figures.update({"improved_cases": float(counts[0]), "regressed_cases": float(counts[1]),
                        "unchanged_cases": float(counts[2]), "unmatched_cases": float(pairing.unmatched)})
    if n == 0:
        out.warnings.append("no case is on both sides: nothing to compare")
        return out
    labels = [r.cluster for r in ref]
    clusters = labels if any(c is not None for c in labels) else None
    if clusters is not None:
        # an unlabelled case is a cluster of its own
        clusters = [c if c is not None else f"\0{i}" for i, c in enumerate(clusters)]
        out.clusters = len(set(clusters))
    statistics = paired_statistics(suite, ref, cand)
    estimates = paired_bootstrap(statistics, clusters, resamples, seed, confidence)
    values_ref, values_cand = case_values(suite, ref), case_values(suite, cand)
    # a 0/1 value per case (a count that happens to be 0 or 1 is not a pass/fail outcome)
    binary = (binary_metrics(values_ref) & binary_metrics(values_cand)) - NOT_OUTCOMES
    values_ref["passed"], values_cand["passed"] = _passed(suite, ref), _passed(suite, cand)
    binary.add("passed")
    scores_ref = np.array([r.score or 0.0 for r in ref])
    scores_cand = np.array([r.score or 0.0 for r in cand])
    named = {base_metric(parse_gate(expr).metric) for expr in suite.gates if is_comparison(parse_gate(expr).metric)}
    order = sorted(estimates, key=lambda m: (m != main, m.startswith(LATENCY_PREFIXES)))
    for metric in order:
        estimate = estimates[metric]
        latency = metric.startswith(LATENCY_PREFIXES)
        a, b = (values_ref[metric], values_cand[metric]) if metric in values_ref else (scores_ref, scores_cand)
        row: dict[str, Any] = {
            "metric": metric, "kind": "latency" if latency else "quality", "main": metric == main,
            "family": not latency and (metric == main or metric in named),
            "reference": estimate.reference, "candidate": estimate.candidate, "delta": estimate.delta,
            "lower": estimate.lower, "upper": estimate.upper, "p": estimate.p, "p_holm": None,
            "rho": None, "improved": None, "regressed": None, "unchanged": None,
            "mcnemar_p": None, "discordant": None, "mde": None, "warning": None}
        if not latency:
            both = ~(np.isnan(a) | np.isnan(b))
            row["rho"] = correlation(a[both], b[both])
            row["improved"], row["regressed"] = int((b[both] > a[both]).sum()), int((b[both] < a[both]).sum())
            row["unchanged"] = int(both.sum()) - row["improved"] - row["regressed"]
            kept = [c for c, keep in zip(clusters, both) if keep] if clusters is not None else None
            row["mde"] = minimum_detectable_difference((b - a)[both], kept)
        if metric in binary:
            _mcnemar(row, values_ref[metric], values_cand[metric], out.figures)
        out.rows.append(row)
        _figures(out.figures, metric, row)
    if "passed" not in estimates:
        row = {"metric": "passed"}
        _mcnemar(row, values_ref["passed"], values_cand["passed"], out.figures)
    _size_warnings(out, n, main)
    out.disagreements = _disagreements(ref, cand)
    return out


def _passed(suite: Suite, results: Sequence[CaseResult]) -> np.ndarray:
    """Per case pass (1) or fail (0): the pass rule's verdict; without one, a score of 1 and no error."""
    if suite.pass_rule is not None:
        return np.array([1.0 if r.passed else 0.0 for r in results])
    return np.array([1.0 if r.error is None and (r.score or 0.0) >= 1.0 else 0.0 for r in results])


def _mcnemar(row: dict[str, Any], a: np.ndarray, b: np.ndarray, figures: dict[str, float | None]) -> None:
    both = ~(np.isnan(a) | np.isnan(b))
    test = mcnemar((a[both] >= 0.5).tolist(), (b[both] >= 0.5).tolist())
    row["mcnemar_p"], row["discordant"] = test.p, test.improved + test.regressed
    figures[f"mcnemar_p({row['metric']})"] = test.p


def _figures(figures: dict[str, float | None], metric: str, row: dict[str, Any]) -> None:
    figures[f"delta({metric})"] = row["delta"]
    figures[f"delta({metric}).lower"] = row["lower"]
    figures[f"delta({metric}).upper"] = row["upper"]
    figures[f"p_value({metric})"] = row["p"]
    ref, cand = row["reference"], row["candidate"]
    figures[f"ratio({metric})"] = cand / ref if ref not in (None, 0) and cand is not None else None


def _case_counts(ref: Sequence[CaseResult], cand: Sequence[CaseResult]) -> tuple[int, int, int]:
    """Cases whose score rose, fell, stayed (an error scores 0)."""
    improved = sum((b.score or 0.0) > (a.score or 0.0) for a, b in zip(ref, cand))
    regressed = sum((b.score or 0.0) < (a.score or 0.0) for a, b in zip(ref, cand))
    return improved, regressed, len(ref) - improved - regressed


def _pairing_warnings(out: PairComparison) -> None:
    p = out.pairing
    for ids, what in ((p.only_reference, f"only on {out.reference}"), (p.only_candidate, f"only on {out.candidate}"),
                      (p.duplicates, "with a duplicate id"), (p.changed_input, "whose input changed")):
        if ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            out.warnings.append(f"{len(ids)} case(s) {what}, left out of the comparison: {shown}")


def _size_warnings(out: PairComparison, n: int, main: str) -> None:
    mde = next((row["mde"] for row in out.rows if row["metric"] == main), None)
    if n < MIN_CASES:
        detectable = f"; with {n} cases only a difference of about {mde:.3g} is detectable at 80% power" \
            if mde is not None else ""
        out.warnings.append(f"only {n} paired cases (fewer than {MIN_CASES}): the intervals cannot support a "
                            f"conclusion{detectable}")
    for row in out.rows:
        if row["family"] and row.get("discordant") is not None and row["discordant"] < MIN_DISCORDANT:
            detectable = f"; minimum detectable difference at 80% power: {row['mde']:.3g}" \
                if row.get("mde") is not None else ""
            row["warning"] = (f"{row['discordant']} discordant pair(s) (fewer than {MIN_DISCORDANT}): "
                              f"too few to conclude{detectable}")


def _disagreements(ref: Sequence[CaseResult], cand: Sequence[CaseResult]) -> list[dict[str, Any]]:
    rows = []
    for a, b in zip(ref, cand):
        if (a.score or 0.0) != (b.score or 0.0) or (a.error is None) != (b.error is None):
            rows.append({"id": a.id, "input": b.prompt if b.prompt is not None else a.prompt, "target": a.target,
                         "reference_output": a.output if a.error is None else f"error: {a.error}",
                         "candidate_output": b.output if b.error is None else f"error: {b.error}",
                         "reference_score": a.score, "candidate_score": b.score})
            if len(rows) >= MAX_DISAGREEMENTS:
                break
    return rows
