"""What the benchmarks share: the CPU's name (printed with every figure) and a step timer."""
from __future__ import annotations

import platform
import time
from typing import Callable


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
