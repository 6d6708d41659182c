"""Suite-level metric formulas. Pure functions over plain values."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def classification_metrics(
    pairs: Sequence[tuple[str, str | None]], labels: Sequence[str] | None = None
) -> dict[str, float | None]:
    """Accuracy, micro/macro precision, recall and F1, and F1 per class.

    ``pairs`` are (true label, predicted label or None for no prediction). Classes are the
    given labels, else every true label seen; a prediction outside them is a miss only."""
    if not pairs:
        return {"accuracy": None, "precision_macro": None, "recall_macro": None, "f1_macro": None,
                "precision_micro": None, "recall_micro": None, "f1_micro": None}
    classes = list(dict.fromkeys(labels if labels is not None else [t for t, _ in pairs]))
    tp = {c: 0 for c in classes}
    fp = {c: 0 for c in classes}
    fn = {c: 0 for c in classes}
    for true, pred in pairs:
        if pred == true:
            if true in tp:
                tp[true] += 1
            continue
        if true in fn:
            fn[true] += 1
        if pred in fp:
            fp[pred] += 1

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    metrics: dict[str, float | None] = {"accuracy": sum(t == p for t, p in pairs) / len(pairs)}
    per_p = {c: ratio(tp[c], tp[c] + fp[c]) for c in classes}
    per_r = {c: ratio(tp[c], tp[c] + fn[c]) for c in classes}
    per_f = {c: f1(per_p[c], per_r[c]) for c in classes}
    metrics["precision_macro"] = sum(per_p.values()) / len(classes)
    metrics["recall_macro"] = sum(per_r.values()) / len(classes)
    metrics["f1_macro"] = sum(per_f.values()) / len(classes)
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    metrics["precision_micro"] = ratio(total_tp, total_tp + total_fp)
    metrics["recall_micro"] = ratio(total_tp, total_tp + total_fn)
    metrics["f1_micro"] = f1(metrics["precision_micro"], metrics["recall_micro"])
    for c in classes:
        metrics[f"class_f1.{c}"] = per_f[c]
    return metrics
