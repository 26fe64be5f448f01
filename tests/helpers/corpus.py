"""The small folder corpus the training and arena tests train on (fast runs, no download)."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the cat sat on a mat and dog ran to big red ball while sun shines over green hill "
         "def return import class self value print for in if else").split()


def write_corpus(root: Path, n_files: int = 30) -> Path:
    """``n_files`` small text files of random sentences in ``root`` (~70 KB for 30), the same every time."""
    rng = random.Random(0)
    for i in range(n_files):
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(40)]
        (root / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return root
