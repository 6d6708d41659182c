"""Suite-level metric formulas. Pure functions over plain values."""

from __future__ import annotations

import math
from typing import Sequence

from harness.scoring.classification import classification_metrics

__all__ = ["percentile", "classification_metrics"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
