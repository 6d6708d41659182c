"""Confidence intervals at scale: 10,000 bootstrap resamples over 100,000 cases.

Prints the seconds each interval takes (one run each, this machine):

    python benchmarks/bootstrap_speed.py --cases 100000 --resamples 10000

Paired intervals of two arms (harness.comparison.stats): benchmarks/paired_speed.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.scoring.classification import classification_intervals  # noqa: E402
from harness.scoring.stats import bootstrap_mean, mean_interval  # noqa: E402


def timed(label: str, action) -> None:
    started = time.perf_counter()
    interval = action()
    print(f"{label:58} {time.perf_counter() - started:7.3f} s  {interval}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.cases, args.resamples
    labels = ["a", "b", "c", "d", "e"]
    truth = rng.choice(labels, size=n)
    pred = np.where(rng.random(n) < 0.8, truth, rng.choice([*labels, "junk"], size=n))
    pairs = list(zip(truth.tolist(), pred.tolist()))
    print(f"{n} cases, {b} resamples")
    timed("classification: F1/P/R micro, macro, weighted (bootstrap)",
          lambda: classification_intervals(pairs, resamples=b)["f1_macro"])
    timed("mean of 0/1 scores (Wilson)", lambda: mean_interval(rng.integers(0, 2, n).tolist()))
    timed("mean of scores in {0, 0.25, ..., 1} (bootstrap)",
          lambda: bootstrap_mean(rng.integers(0, 5, n) / 4, resamples=b))
    timed("mean of continuous scores, binned into 512 kinds (bootstrap)",
          lambda: bootstrap_mean(rng.random(n), resamples=b))


if __name__ == "__main__":
    main()
