"""What a person reads during a run: metrics.jsonl, loss.png (expert_load.png for a sparse MoE
model), FLOP accounting and MFU.

FLOPs per trained token (forward + backward, the PaLM appendix-B count):

    6 · N_matmul + 12 · L · d_attn · T

N_matmul counts the weights used in matrix products — every parameter with dim ≥ 2 except the
input embedding table (a lookup), with the head counted once even when tied. For Llama config
A (7.10M params) that is 30.0M·6 + 3.1M ≈ 33 MFLOP/token, as in reference/machine.md.
MFU = achieved FLOP/s ÷ peak FLOP/s; the peak is measured once at start with an fp32 matmul.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write_bytes
from ..models.flops import flops_per_token as _flops_per_token
from ..objectives.router import EXPERT_LOAD  # metric moe_load_e<i>: expert i's share of the router's picks


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows (printed with every benchmark and arena
    figure)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at context ``seq_len``: see models/flops.py."""
    return _flops_per_token(model.config, seq_len, training=True)


def measure_matmul_peak(size: int = 1024, seconds: float = 0.5, device: torch.device | str = "cpu") -> float:
    """Sustained fp32 matmul FLOP/s (best of repeated ``size``² products for about ``seconds``)."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)  # its own stream: a resumed run's restored RNG must not move
    a = torch.randn(size, size, device=dev, generator=g)
    b = torch.randn(size, size, device=dev, generator=g)
    c = torch.empty(size, size, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.mm(a, b, out=c)  # warm-up
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b, out=c)
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 3 * 2 * size ** 3 / dt)
    return best


class MetricsLog:
    """Append-only ``metrics.jsonl``; one JSON object per line (train or eval records)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep records up to ``step`` (on resume: what follows is recomputed)."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())  # never half-cut

    def append(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


UNITS = ("images", "pairs", "tokens")  # what a run counts (Objective.unit): the x axis of its plots
_STANDARD = {"step", *UNITS, "loss", "lr", "grad_norm", "mfu", "time_s", "val_loss", "val_ppl"}


def _names(records: list[dict], keep) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if keep(k) and isinstance(v, (int, float)):
                names[k] = None
    return list(names)


def objective_metric_names(records: list[dict]) -> list[str]:
    """The objective's own metrics in ``records`` (not the loop's: losses, lr, rates, time), in order;
    per-expert loads are left to :func:`plot_expert_load`."""
    return _names(records, lambda k: k.rsplit("/", 1)[-1] not in _STANDARD and not k.endswith("_s")
                  and EXPERT_LOAD not in k)  # (a phase's D/loss, D/lr, D/grad_norm are the loop's)


def expert_load_names(records: list[dict]) -> list[str]:
    """The per-expert load metrics in ``records`` (empty for a dense model)."""
    return _names(records, lambda k: EXPERT_LOAD in k)


def _save_figure(fig, path: Path, plt) -> None:
    """Write ``fig`` to ``path`` atomically (a temporary file, then a rename) and close it."""
    tmp = Path(path).with_name(f".{Path(path).stem}.tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def plot_expert_load(records: list[dict], path: Path, title: str = "") -> bool:
    """Each expert's share of the router's picks (mean over the MoE layers) against tokens seen,
    with the balanced share 1/E dashed; written atomically. False (nothing written) when the
    records hold no loads (a dense model)."""
    names = expert_load_names(records)
    if not names:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        for name in names:
            ax.plot(*zip(*[(r["tokens"], r[name]) for r in records if r.get(name) is not None]),
                    label=name.replace(EXPERT_LOAD, "expert "), lw=0.8)
        ax.axhline(1 / len(names), color="k", ls="--", lw=0.8, label="balanced (1/E)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("share of the router's picks")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    except BaseException:
        plt.close(fig)
        raise
    _save_figure(fig, path, plt)
    return True


def plot_losses(records: list[dict], path: Path, title: str = "") -> None:
    """Train and validation loss against tokens seen (and, in a second panel, the objective's own
    metrics when the records hold any); written atomically (Agg backend). Raises on
    failure, leaving no temporary file (the trainer turns a failure into one warning line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = next((u for u in UNITS if any(u in r for r in records)), "tokens")  # what the run counts
    # the train loss, or each phase's (a GAN: D/loss, G/loss)
    train = {k: [(r[x], r[k]) for r in records if r.get(k) is not None]
             for k in _names(records, lambda k: k == "loss" or k.endswith("/loss"))}
    val = [(r[x], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    extra = objective_metric_names(records)
    if extra:  # the objective's own metrics in a second panel below the losses
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        for name in extra:
            ax2.plot(*zip(*[(r[x], r[name]) for r in records if r.get(name) is not None]), label=name, lw=0.8)
        if extra:
            ax2.set_xlabel(x)
            ax2.grid(alpha=0.3)
            ax2.legend()
        for k, points in train.items():
            ax.plot(*zip(*points), label="train" if k == "loss" else f"{k.split('/')[0]} (train)", lw=0.8, alpha=0.8)
        if val:
            ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
        ax.set_xlabel(x)
        ax.set_ylabel("loss" if x == "images" else "loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    except BaseException:
        plt.close(fig)
        raise
    _save_figure(fig, path, plt)
