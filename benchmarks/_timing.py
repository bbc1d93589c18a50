"""What the benchmarks share: the median wall time of repeated calls (same process)."""

import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """The median over ``repeats`` calls of ``fn()`` of its wall time, in seconds."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)
