"""The arena (#27): architectures trained on the same data, budget and seeds, each through the normal
trainer in its own process, then measured alike and reported (docs/arena.md).

    genmodels arena arena/text-tiny.yaml --out runs/arena/text-tiny [--resume]

spec.py (the spec, validated field by field), runner.py (training processes, state, resume),
measure.py (the measuring process), report.py and plots.py (report.md, report.html, results.json).
"""
from .runner import run_arena
from .spec import ArenaSpec, load_spec

__all__ = ["ArenaSpec", "load_spec", "run_arena"]
