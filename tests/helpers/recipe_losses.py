"""Running a shipped recipe (configs/*.yaml) for a few steps, made small by ``--set`` overrides, and reading
back its per-step training losses exactly as metrics.jsonl holds them. One definition for the recorder
(tests/fixtures/make_recipe_losses.py) and the check (tests/training/test_nothing_moves.py).

Float results depend on the CPU's kernels (Zen 3 AVX2, Zen 4 AVX-512, Intel AMX pick different matmul
paths) and on torch's version, so a record is keyed by :func:`cpu_key`."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = FIXTURES / "recipe-corpus"  # frozen: genmodels/nn/*.py of e15f1f6 as .txt (17 files, 81 KB)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what picks torch's CPU kernels


def cpu_flags() -> list[str]:
    """The ISA flags of :data:`ISA_FLAGS` this CPU has (from /proc/cpuinfo; none elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def cpu_key() -> str:
    """``"<cpu name> | <flags> | torch <version>"``: runs with equal keys give bit-identical losses."""
    import torch
    from genmodels.training.metrics import cpu_name
    flags = ",".join(cpu_flags()) or "no-simd-flags"
    return f"{cpu_name()} | {flags} | {platform.machine()} | torch {torch.__version__}"


def resolve(overrides: list[str]) -> list[str]:
    """The stored overrides with ``{corpus}`` made the path of this checkout's frozen corpus."""
    return [o.replace("{corpus}", str(CORPUS)) for o in overrides]


def loss_keys(record: dict) -> list[str]:
    """The loss fields of a training record: ``loss`` (token families, diffusion), ``D/loss`` and ``G/loss`` (GAN)."""
    return sorted(k for k in record if k == "loss" or k.endswith("/loss"))


def read_losses(run_dir: Path) -> dict[str, list[float]]:
    """Each loss field of metrics.jsonl's training records, in step order (JSON floats are Python's repr:
    exact)."""
    out: dict[str, list[float]] = {}
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in sorted((r for r in records if loss_keys(r) and "val_loss" not in r), key=lambda r: r["step"]):
        for k in loss_keys(r):
            out.setdefault(k, []).append(r[k])
    return out


def train_recipe(name: str, overrides: list[str], run_dir: Path,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, list[float]]:
    """Train ``configs/<name>.yaml`` with ``overrides`` (``{corpus}`` resolved) into ``run_dir``; its losses."""
    from genmodels.training import load_config, train
    cfg = load_config(CONFIGS / f"{name}.yaml", resolve(overrides) + [f"run_dir={run_dir}"])
    train(cfg, progress=False, log=log)
    return read_losses(run_dir)
