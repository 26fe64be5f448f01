"""Narrow-head attention: genmodels' native kernel vs PyTorch's fused CPU kernel, forward and forward+backward.

    .venv/bin/python benchmarks/bench_narrow_attention.py [--threads 2] [--repeats 7]

Work: the pixel attention of the diffusion UNet in bench_diffusion.py at training batch 16 — 256 pixels,
128 channels as 16 heads of 8 (and as 8 heads of 16), q/k/v sliced from one fused projection
(B, T, 3·C) as SelfAttention slices them. The two outputs and input gradients are checked equal
before timing. Times: best of ``--repeats`` (wall time).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name, step_times  # noqa: E402


def best(fn, repeats: int) -> float:
    return min(step_times(fn, repeats, warmup=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from genmodels import native
    from genmodels.native.attention import narrow_attention
    lib = native.library()
    if lib is None:
        sys.exit(f"native kernels unavailable: {native.unavailable_reason()}")
    print(f"CPU: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; "
          f"{a.threads} thread(s); kernel built with {lib.gm_attention_lanes()} fp32 lanes; best of {a.repeats}")
    print(f"{'shape (B, H, T, d)':22s} {'work':16s} {'PyTorch fused':>14s} {'native':>10s} {'ratio':>6s}")
    for d in (8, 16):
        b, h, t = a.batch, 128 // d, a.tokens
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(b, t, 3 * h * d, generator=g, requires_grad=True)
        q, k, v = qkv.view(b, t, 3 * h, d).transpose(1, 2).split(h, dim=1)
        grad = torch.randn(b, h, t, d, generator=g)
        ours, theirs = narrow_attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
        g_ours = torch.autograd.grad(ours, qkv, grad, retain_graph=True)[0]
        g_theirs = torch.autograd.grad(theirs, qkv, grad, retain_graph=True)[0]
        assert (ours - theirs).abs().max() < 1e-4 and (g_ours - g_theirs).abs().max() < 1e-3
        work = {
            "forward": (lambda: F.scaled_dot_product_attention(q, k, v), lambda: narrow_attention(q, k, v)),
            "forward+backward": (
                lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), qkv, grad),
                lambda: torch.autograd.grad(narrow_attention(q, k, v), qkv, grad)),
        }
        for name, (ref, fast) in work.items():
            with torch.set_grad_enabled(name != "forward"):
                t_ref, t_fast = best(ref, a.repeats), best(fast, a.repeats)
            print(f"{str((b, h, t, d)):22s} {name:16s} {1e3 * t_ref:11.1f} ms {1e3 * t_fast:7.1f} ms "
                  f"{t_ref / t_fast:5.2f}x")


if __name__ == "__main__":
    main()
