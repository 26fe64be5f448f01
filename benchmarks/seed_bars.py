"""One bar chart for results over seeds (benchmarks/baize_report.py, benchmarks/sdf_report.py): per group
(an arm, a stage) and split, a bar at the mean with the sample standard deviation as its error bar and
each seed's value as a dot."""
from __future__ import annotations

import statistics
from pathlib import Path


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value: no spread to show)."""
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def seed_bars(groups: list[tuple[str, dict[str, list[float]]]], splits: tuple[str, ...], title: str,
              png: Path, width: float = 0.26) -> None:
    """``groups``: ``(label, {split: [value per seed]})`` in drawing order -> ``png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    labelled: set[str] = set()
    for i, (label, by_split) in enumerate(groups):
        for j, split in enumerate(splits):
            xs = by_split.get(split, [])
            if not xs:
                continue
            m, s = mean_std(xs)
            x = j + (i - (len(groups) - 1) / 2) * width
            ax.bar(x, m, width, yerr=None if s != s else s, capsize=4, color=f"C{i}",
                   label=None if label in labelled else label)
            labelled.add(label)
            ax.scatter([x] * len(xs), xs, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("exact match")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
