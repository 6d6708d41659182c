"""Classification metrics defined as scikit-learn defines them, vectorised for the bootstrap.

Everything is computed from how many cases fall in each (true, predicted) cell, so the same
code gives the point values (one row of counts) and the bootstrap distribution (one row per
resample). Classes are the given labels, else every label seen as a target or a prediction
(scikit-learn's ``unique_labels``); an undefined ratio is 0 (``zero_division=0``). With
labels given, predictions outside them count for no class, as in scikit-learn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.scoring.stats import CONFIDENCE, RESAMPLES, SEED, draw_counts, percentile_interval, wilson

AVERAGES = ("micro", "macro", "weighted")


class Cells:
    """The distinct (true, predicted) pairs of a dataset, their counts, and per-class indicators."""

    def __init__(self, pairs: Sequence[tuple[str, str | None]], labels: Sequence[str] | None = None) -> None:
        kinds: dict[tuple[str, str], int] = {}
        for pair in pairs:
            kinds[pair] = kinds.get(pair, 0) + 1
        self.kinds = list(kinds)
        self.counts = np.array(list(kinds.values()), dtype=np.int64)
        self.fixed_labels = labels is not None
        # None is "no prediction" (extraction failed): a miss, never a class
        seen = {t for t, _ in self.kinds if t is not None} | {p for _, p in self.kinds if p is not None}
        self.classes = list(dict.fromkeys(labels)) if labels is not None else sorted(seen)
        index = {c: i for i, c in enumerate(self.classes)}
        shape = (len(self.kinds), len(self.classes))
        self.true_is = np.zeros(shape)
        self.pred_is = np.zeros(shape)
        for k, (true, pred) in enumerate(self.kinds):
            if true in index:
                self.true_is[k, index[true]] = 1
            if pred in index:
                self.pred_is[k, index[pred]] = 1
        self.hit_is = self.true_is * self.pred_is
        self.correct = np.array([t == p for t, p in self.kinds], dtype=float)

    def metrics(self, draws: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for each row of counts (shape: resamples x kinds)."""
        draws = np.atleast_2d(draws).astype(float)
        tp = draws @ self.hit_is
        predicted = draws @ self.pred_is
        support = draws @ self.true_is
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            recall = np.where(support > 0, tp / support, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        # scikit-learn averages over the classes present (as target or prediction) unless labels are given
        present = np.ones_like(tp) if self.fixed_labels else ((support + predicted) > 0).astype(float)
        n_present = np.maximum(present.sum(axis=1), 1)
        total_support = support.sum(axis=1)
        out: dict[str, np.ndarray] = {"accuracy": draws @ self.correct / np.maximum(draws.sum(axis=1), 1)}
        micro_tp, micro_pred, micro_true = tp.sum(axis=1), predicted.sum(axis=1), support.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["precision_micro"] = np.where(micro_pred > 0, micro_tp / micro_pred, 0.0)
            out["recall_micro"] = np.where(micro_true > 0, micro_tp / micro_true, 0.0)
            p, r = out["precision_micro"], out["recall_micro"]
            out["f1_micro"] = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
                out[f"{name}_macro"] = (per_class * present).sum(axis=1) / n_present
                out[f"{name}_weighted"] = np.where(total_support > 0, (per_class * support).sum(axis=1)
                                                   / np.maximum(total_support, 1), 0.0)
        for i, c in enumerate(self.classes):
            out[f"class_precision.{c}"] = precision[:, i]
            out[f"class_recall.{c}"] = recall[:, i]
            out[f"class_f1.{c}"] = f1[:, i]
        return out

    def confusion(self) -> dict[str, object]:
        """Rows: true class, columns: predicted class (scikit-learn's ``confusion_matrix``)."""
        index = {c: i for i, c in enumerate(self.classes)}
        matrix = [[0] * len(self.classes) for _ in self.classes]
        for (true, pred), count in zip(self.kinds, self.counts):
            if true in index and pred in index:
                matrix[index[true]][index[pred]] += int(count)
        return {"labels": list(self.classes), "matrix": matrix}


def classification_metrics(pairs: Sequence[tuple[str, str | None]],
                           labels: Sequence[str] | None = None) -> dict[str, float | None]:
    """Accuracy; precision, recall and F1 micro, macro and weighted; and per class."""
    if not pairs:
        return {"accuracy": None, **{f"{m}_{a}": None for m in ("precision", "recall", "f1") for a in AVERAGES}}
    cells = Cells(pairs, labels)
    return {name: float(values[0]) for name, values in cells.metrics(cells.counts).items()}


def classification_intervals(pairs: Sequence[tuple[str, str | None]], labels: Sequence[str] | None = None,
                             resamples: int = RESAMPLES, seed: int = SEED,
                             confidence: float = CONFIDENCE) -> dict[str, tuple[float | None, float | None]]:
    """Wilson for accuracy; percentile bootstrap for the averaged precision, recall and F1."""
    if not pairs:
        return {}
    cells = Cells(pairs, labels)
    n = len(pairs)
    intervals: dict[str, tuple[float | None, float | None]] = {
        "accuracy": wilson(sum(t == p for t, p in pairs), n, confidence)}
    # one set of resamples for every metric, so their intervals agree with each other
    resampled = cells.metrics(draw_counts(cells.counts, resamples, seed))
    for name in (f"{m}_{a}" for m in ("precision", "recall", "f1") for a in AVERAGES):
        intervals[name] = percentile_interval(resampled[name], confidence)
    return intervals


def confusion_matrix(pairs: Sequence[tuple[str, str]], labels: Sequence[str] | None = None) -> dict[str, object]:
    return Cells(pairs, labels).confusion()
