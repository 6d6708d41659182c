"""Paired comparisons at scale: two arms on 100,000 cases, 10,000 shared bootstrap resamples.

Prints the seconds each full paired estimate takes (point values, delta interval, p-value; one run
each, this machine):

    python benchmarks/paired_speed.py --cases 100000 --resamples 10000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.comparison.stats import (EXACT_BUDGET, PairedEstimate, QuantileStatistic,  # noqa: E402
                                      Statistic, SumStatistic, paired_bootstrap)

CLASSES = 5


def mean(values: np.ndarray) -> SumStatistic:
    return SumStatistic(np.column_stack([values, np.ones_like(values)]), lambda s: s[:, 0] / s[:, 1])


def macro_f1(truth: np.ndarray, pred: np.ndarray) -> SumStatistic:
    """One-hot columns ``[is_true(k), is_pred(k), is_hit(k)]``; a prediction outside the classes counts for none."""
    classes = np.arange(CLASSES)
    is_true = (truth[:, None] == classes).astype(float)
    is_pred = (pred[:, None] == classes).astype(float)
    return SumStatistic(np.hstack([is_true, is_pred, is_true * is_pred]), _macro_f1)


def _macro_f1(sums: np.ndarray) -> np.ndarray:
    support, predicted, tp = np.split(sums, 3, axis=1)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0).mean(axis=1)


def timed(label: str, pair: tuple[Statistic, Statistic], resamples: int) -> None:
    started = time.perf_counter()
    estimate: PairedEstimate = paired_bootstrap({label: pair}, resamples=resamples)[label]
    seconds = time.perf_counter() - started
    print(f"{label:44} {seconds:7.3f} s  delta={estimate.delta:+.4f} "
          f"[{estimate.lower:+.4f}, {estimate.upper:+.4f}] p={estimate.p:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.cases, args.resamples
    print(f"{n} cases, {b} resamples, both arms")
    right = rng.random(n) < 0.70
    timed("mean of 0/1 scores", (mean(right.astype(float)),
                                 mean((right ^ (rng.random(n) < 0.1)).astype(float))), b)
    score = rng.random(n)
    how = "binned" if n * b > EXACT_BUDGET else "exact"  # every case its own kind: n draws a resample
    timed(f"mean of continuous scores ({how})", (mean(score), mean(np.clip(score + rng.normal(0.01, 0.2, n), 0, 1))), b)
    truth = rng.integers(0, CLASSES, n)
    noise = rng.integers(0, CLASSES + 1, n)  # CLASSES: a prediction outside the classes
    timed("macro F1 over 5 classes (one-hot columns)",
          (macro_f1(truth, np.where(rng.random(n) < 0.8, truth, noise)),
           macro_f1(truth, np.where(rng.random(n) < 0.82, truth, noise))), b)
    latency = rng.lognormal(6, 0.5, n)
    timed("p99 latency", (QuantileStatistic(latency, 99), QuantileStatistic(latency * rng.lognormal(0, 0.1, n), 99)), b)


if __name__ == "__main__":
    main()
