"""Small files (the house style, ../shared/DESIGN.md): no source file of the library, its C kernels, the
benchmarks or the tests grows past 400 lines — a file that does is doing two things; split it by concept."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400
WHERE = {"src/genmodels": ("*.py", "*.c", "*.h"), "benchmarks": ("*.py",), "tests": ("*.py",)}


def sizes() -> dict[str, int]:
    return {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
            for folder, patterns in WHERE.items() for pattern in patterns for p in (ROOT / folder).rglob(pattern)}


def test_every_source_file_is_at_most_400_lines():
    found = sizes()
    assert len(found) > 500 and any(name.endswith(".c") for name in found)  # it reads the tree, kernels included
    assert {name: n for name, n in found.items() if n > LIMIT} == {}
