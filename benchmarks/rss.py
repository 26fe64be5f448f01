"""This process's resident memory from /proc (Linux), for the benchmarks' peak-memory figures. Imports nothing
heavy, so reading it adds nothing to what it measures."""
from __future__ import annotations

import re


def status_mb(key: str) -> float:
    """``key`` of /proc/self/status in MB: ``VmRSS`` (resident now), ``VmHWM`` (its high-water mark)."""
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{key}:\s+(\d+)", fh.read()).group(1)) / 1024


def reset_peak() -> None:
    """Restart ``VmHWM`` at the current RSS (``/proc/self/clear_refs`` <- 5; Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
