"""Diffusion speed: genmodels' UNet2D + DDIM vs diffusers' UNet2DModel + DDIMScheduler, same weights, same noise.

    .venv/bin/python benchmarks/bench_diffusion.py [--threads 1] [--repeats 5] [--big-batch 64]
        [--big-steps 3] [--allocator keep|default] [--profile]

Work (the UNet of shared/reference/machine.md: UNet2DModel 6.47M, widths 64/128/128, two resnets per
level, attention at the middle level and in the mid block, 16 heads of 8, 32×32×3, random weights):
one UNet forward at batch 1; a DDIM-50 sampling loop at batch 1; ``--big-steps`` DDIM steps at batch
``--big-batch`` (per-step time: 50 steps at batch 64 take minutes on 2 cores); one training step at
batch 16 (forward, ε-MSE, backward, AdamW). diffusers' model is saved with ``save_pretrained`` and
loaded by ``genmodels.load``; outputs and final samples are checked equal before timing.

* genmodels sampling: ``FastUNet(model)`` (models/diffusion/fast.py: channels_last, prepacked oneDNN
  convolutions, fused adds, the native narrow-head attention) driven by ``genmodels.schedulers.DDIMScheduler``;
  training: the module forward (the definition; its pixel attention runs genmodels.native.attention,
  forward and backward) on a channels_last model, fused AdamW.
* diffusers: ``UNet2DModel`` + ``diffusers.DDIMScheduler`` as its pipelines run them; AdamW (defaults).

Both sides run in this process, interleaved, ``--repeats`` times; figures are medians. With one thread
(the default: the machine is shared) time is the process's CPU time, which a busy machine does not
inflate by preemption; with more threads it is wall time. ``--allocator keep`` (default) applies
``genmodels.training.memory.keep_freed_memory`` to the process (both sides): on this VM a page fault
costs ~1 ms per MB, which otherwise dominates batch-64 steps; ``default`` leaves glibc's setting.
Peaks: a prepacked 3×3 conv (128→128, 16×16, batch 16, NHWC) and a 1024² matmul, best of a few.
``--profile`` prints where the time goes (CPU time per operator class, measured per aten call; the native
attention kernel, a ctypes call rather than an aten op, is timed around its calls and counted as attention).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name  # noqa: E402  (what the benchmarks share)

ANCHOR = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128), layers_per_block=2,
              down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
CLASSES = [  # (label, aten op name prefixes), first match wins
    ("conv", ("conv", "_convolution", "mkldnn_conv", "_slow_conv", "convolution")),
    ("attention", ("scaled_dot_product", "_scaled_dot_product", "bmm", "_softmax", "softmax")),
    ("linear", ("linear", "addmm", "mm", "matmul")),
    ("group_norm", ("group_norm", "native_group_norm")),
    ("silu", ("silu",)),
    ("optimizer", ("_fused_adamw", "lerp", "addcdiv", "addcmul", "sqrt", "_foreach")),
]


class OpTimes(TorchDispatchMode):
    """CPU time of every aten call (this thread), summed per operator class."""

    def __init__(self):
        super().__init__()
        self.ns = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        label = next((c for c, prefixes in CLASSES if name.startswith(prefixes)), "other ops")
        self.ns[label] += time.thread_time_ns() - t0
        return out


def peaks(clock) -> tuple[float, float]:
    """(conv, matmul) fp32 FLOP/s: best of a few runs of a prepacked NHWC 3×3 conv and a 1024² matmul."""
    from genmodels.models.diffusion.fast import PackedConv, onednn_available
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    packed = PackedConv(conv, onednn_available())
    x = torch.randn(16, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best_conv = best_mm = 0.0
    with torch.inference_mode():
        for _ in range(7):
            t = clock()
            packed(x)
            best_conv = max(best_conv, 2 * 16 * 128 * 128 * 9 * 256 / (clock() - t))
            t = clock()
            torch.mm(a, b)
            best_mm = max(best_mm, 2 * 1024 ** 3 / (clock() - t))
    return best_conv, best_mm


def build():
    import diffusers

    import genmodels
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**ANCHOR).eval()
    folder = tempfile.mkdtemp(prefix="bench_diffusion_")
    theirs.save_pretrained(folder)
    ours = genmodels.load(folder).eval()
    return ours, theirs


def ddim_loop(denoise, scheduler, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """The sampling loop of docs/diffusion.md; ``steps`` stops after that many of the 50 steps."""
    with torch.inference_mode():
        for i, t in enumerate(scheduler.timesteps):
            if steps is not None and i == steps:
                break
            x = scheduler.step(denoise(x, t), t, x).prev_sample
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big-batch", type=int, default=64)
    ap.add_argument("--big-steps", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--allocator", choices=["keep", "default"], default="keep")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.allocator == "keep":
        from genmodels.training.memory import keep_freed_memory
        keep_freed_memory()
    import diffusers

    from genmodels.models.diffusion.fast import FastUNet
    from genmodels.schedulers import DDIMScheduler
    clock = time.process_time if a.threads == 1 else time.perf_counter
    ours, theirs = build()
    fast = FastUNet(ours)
    n_params = sum(p.numel() for p in ours.parameters())
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, 3, 32, 32, generator=g)
    xb = torch.randn(a.big_batch, 3, 32, 32, generator=g)
    sched_cfg = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    s_ours, s_theirs = DDIMScheduler(**sched_cfg), diffusers.DDIMScheduler(**sched_cfg)
    s_ours.set_timesteps(50)
    s_theirs.set_timesteps(50)

    def ours_fast(x, t):
        return fast(x, t)

    def theirs_call(x, t):
        return theirs(x, t).sample

    # ---- equal before timed -----------------------------------------------------------------------
    with torch.inference_mode():
        d_fwd = (fast(x1, 500) - theirs(x1, 500).sample).abs().max().item()
        d_mod = (ours(x1, 500) - theirs(x1, 500).sample).abs().max().item()
    d_loop = (ddim_loop(ours_fast, s_ours, x1) - ddim_loop(theirs_call, s_theirs, x1)).abs().max().item()
    assert max(d_fwd, d_mod) < 1e-4 and d_loop < 1e-3, (d_fwd, d_mod, d_loop)

    # ---- training step ----------------------------------------------------------------------------
    tb = a.train_batch
    x0, noise = torch.randn(tb, 3, 32, 32, generator=g), torch.randn(tb, 3, 32, 32, generator=g)
    tt = torch.randint(0, 1000, (tb,), generator=g)
    xt = s_ours.add_noise(x0, noise, tt)
    train_ours = copy.deepcopy(ours).train().to(memory_format=torch.channels_last)
    train_theirs = copy.deepcopy(theirs).train()
    opt_ours = torch.optim.AdamW(train_ours.parameters(), lr=1e-4, fused=True)
    opt_theirs = torch.optim.AdamW(train_theirs.parameters(), lr=1e-4)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)

    def train_step(model, opt, x, call):
        def step():
            loss = F.mse_loss(call(model, x), noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    work = {
        "forward b1": (lambda: fast(x1, 500), lambda: theirs(x1, 500).sample, lambda: ours(x1, 500)),
        "DDIM-50 b1": (lambda: ddim_loop(ours_fast, s_ours, x1), lambda: ddim_loop(theirs_call, s_theirs, x1), None),
        f"DDIM step b{a.big_batch}": (lambda: ddim_loop(ours_fast, s_ours, xb, a.big_steps),
                                      lambda: ddim_loop(theirs_call, s_theirs, xb, a.big_steps), None),
        f"train step b{tb}": (train_step(train_ours, opt_ours, xt_cl, lambda m, x: m(x, tt)),
                              train_step(train_theirs, opt_theirs, xt, lambda m, x: m(x, tt).sample), None),
    }
    flops = {}
    with torch.inference_mode():
        for name, x in (("forward b1", x1), (f"DDIM step b{a.big_batch}", xb)):
            with FlopCounterMode(display=False) as fc:
                ours(x, 500)
            flops[name] = fc.get_total_flops()
    flops["DDIM-50 b1"] = 50 * flops["forward b1"]
    flops[f"DDIM step b{a.big_batch}"] *= a.big_steps
    with FlopCounterMode(display=False) as fc:
        spare = copy.deepcopy(ours).train()
        train_step(spare, torch.optim.AdamW(spare.parameters()), xt, lambda m, x: m(x, tt))()
    flops[f"train step b{tb}"] = fc.get_total_flops()

    for fns in work.values():  # warm-up (packing, allocator, oneDNN primitive caches)
        for fn in fns:
            if fn is not None:
                fn()
    times = {name: ([], [], []) for name in work}
    conv_peak = mm_peak = 0.0
    for r in range(a.repeats):
        cp, mp = peaks(clock)
        conv_peak, mm_peak = max(conv_peak, cp), max(mm_peak, mp)
        for name, fns in work.items():
            for i, fn in enumerate(fns):
                if fn is not None and (i < 2 or r < 3):
                    t = clock()
                    fn()
                    times[name][i].append(clock() - t)
    med = {name: [statistics.median(v) if v else None for v in ts] for name, ts in times.items()}

    clock_name = "process CPU time (1 thread)" if a.threads == 1 else f"wall time ({a.threads} threads)"
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
          f"{torch.get_num_threads()} thread(s); {clock_name}; allocator: {a.allocator}; "
          f"load average at start/end: {_load()}")
    print(f"UNet2DModel {n_params / 1e6:.2f}M params; max |ours − diffusers|: forward {d_fwd:.1e} "
          f"(module path {d_mod:.1e}), DDIM-50 sample {d_loop:.1e}")
    print(f"peaks (measured): conv 3×3 NHWC {conv_peak / 1e9:.0f} GFLOP/s, matmul 1024² {mm_peak / 1e9:.0f} GFLOP/s")
    print(f"{'work':20s} {'diffusers':>11s} {'genmodels':>11s} {'ratio':>6s} {'ours GFLOP/s':>13s} "
          f"{'% conv peak':>11s}  (medians of {a.repeats})")
    for name, (o, h, ref) in med.items():
        per = f" ({1e3 * o / a.big_steps:.0f} vs {1e3 * h / a.big_steps:.0f} ms/step)" if "DDIM step" in name else ""
        print(f"{name:20s} {_ms(h):>11s} {_ms(o):>11s} {h / o:5.2f}x {flops[name] / o / 1e9:13.0f} "
              f"{100 * flops[name] / o / conv_peak:10.0f}%{per}")
        if ref is not None:
            print(f"{'  module path':20s} {'':>11s} {_ms(ref):>11s} {h / ref:5.2f}x {flops[name] / ref / 1e9:13.0f} "
                  f"{100 * flops[name] / ref / conv_peak:10.0f}%  (before: NCHW, eager conv2d)")
    if a.profile:
        _profile(work)
        eps = torch.randn_like(x1)
        t = time.thread_time_ns()
        for step_t in s_ours.timesteps:
            s_ours.step(eps, step_t, x1)
        print(f"  DDIM-50 b1: our scheduler's 50 steps alone take {(time.thread_time_ns() - t) / 1e6:.1f} ms")


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f} ms" if s < 10 else f"{s:.2f} s"


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]
    except OSError:
        return "?"


@contextlib.contextmanager
def _native_attention_timed(ops: OpTimes):
    """Count genmodels' native attention calls (ctypes, not aten ops) as "attention" in ``ops``."""
    from genmodels import native
    lib = native.library()
    names = ("gm_attention_forward", "gm_attention_backward")
    saved = {n: getattr(lib, n) for n in names} if lib is not None else {}

    def timed(f):
        def call(*args):
            t0 = time.thread_time_ns()
            try:
                return f(*args)
            finally:
                ops.ns["attention"] += time.thread_time_ns() - t0
        return call

    for n, f in saved.items():
        setattr(lib, n, timed(f))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(lib, n, f)


def _profile(work) -> None:
    print("\nwhere the time goes (CPU time per operator class, genmodels' native attention counted as attention; "
          "'python' = the rest of the call):")
    for name, fns in work.items():
        for side, fn in zip(("genmodels", "diffusers", "module path"), fns):
            if fn is None:
                continue
            ops = OpTimes()
            t = time.thread_time_ns()
            with ops, _native_attention_timed(ops):
                fn()
            total = time.thread_time_ns() - t
            parts = dict(ops.ns.most_common())
            parts["python"] = total - sum(ops.ns.values())
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
            print(f"  {name:18s} {side:11s} {total / 1e6:8.1f} ms: {shares}")

if __name__ == "__main__":
    main()
