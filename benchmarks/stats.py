"""Small statistics helpers (no numpy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["inversions", "median", "percentile", "spread_pct"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def spread_pct(values: Sequence[float]) -> float:
    """(max - min) / median, in percent: how much the rounds of one run disagree."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return 100.0 * (max(values) - min(values)) / mid if mid else math.nan


def inversions(served: Sequence[int], arrived: Sequence[int]) -> int:
    """Pairs served in the opposite order of their arrival (0 for perfect FIFO)."""
    rank = {who: i for i, who in enumerate(arrived)}
    order = [rank[who] for who in served]
    return sum(
        1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j]
    )
