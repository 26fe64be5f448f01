"""What the benchmarks share: the CPU's name (printed with every figure) and a step timer."""
from __future__ import annotations

import time
from typing import Callable

from genmodels.training.metrics import cpu_name  # noqa: F401  (the one definition; the benchmarks print it)


def step_times(step: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    """Wall seconds of ``n`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times
