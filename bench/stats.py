"""Small statistics shared by the benchmarks (nearest-rank percentiles, rates)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list (``q`` in 0..1)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def latency_summary(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (nearest rank) of latencies given in seconds."""
    values = sorted(seconds)
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(values, 0.50) * 1000, 2),
        "p90": round(percentile(values, 0.90) * 1000, 2),
        "p99": round(percentile(values, 0.99) * 1000, 2),
        "max": round(values[-1] * 1000, 2),
    }


def rate(count: int, seconds: float) -> float:
    """``count / seconds`` rounded to 0.1, 0 for an empty interval."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
