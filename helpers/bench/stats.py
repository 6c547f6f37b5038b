"""Statistics of the bench: percentiles (numpy's interpolation), medians, repeated timings."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


# ------------------------------------------------------------------ statistics
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between samples (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def measure_latency(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    """Call ``fn`` ``warmup`` times unmeasured, then ``repeats`` times; the seconds of each measured call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples
