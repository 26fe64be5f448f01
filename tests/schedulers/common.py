"""Shared pieces of the scheduler tests: ours and diffusers' side by side, seeded inputs, a tiny model."""
from __future__ import annotations

import diffusers
import torch

from genmodels.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

PAIRS = {
    "ddpm": (DDPMScheduler, diffusers.DDPMScheduler),
    "ddim": (DDIMScheduler, diffusers.DDIMScheduler),
    "dpm": (DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler),
}
SHAPE = (2, 3, 4, 4)  # (B, C, H, W)
STEP_TOL = dict(atol=1e-6, rtol=1e-5)  # per step, float32
LOOP_TOL = dict(atol=1e-5, rtol=1e-4)  # whole loops: relative (reference/diffusion.md §1.4)


def make_pair(name: str, **config):
    """(ours, diffusers') built from the same constructor arguments."""
    ours, theirs = PAIRS[name]
    return ours(**config), theirs(**config)


def seeded(seed: int, shape=SHAPE, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_steps_equal(ours, theirs, num_inference_steps: int, channels_out: int | None = None, **step_kwargs):
    """Same timesteps, then every step on the same seeded (output, x_t) and generator noise equal at 1e-6."""
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert ours.timesteps.dtype == theirs.timesteps.dtype == torch.int64
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    out_shape = (SHAPE[0], channels_out or SHAPE[1], *SHAPE[2:])
    for i, t in enumerate(theirs.timesteps):
        out, x = seeded(2 * i, out_shape), seeded(2 * i + 1, scale=2.0)
        kw_ours = {**step_kwargs, "generator": torch.Generator().manual_seed(1000 + i)}
        kw_theirs = {**step_kwargs, "generator": torch.Generator().manual_seed(1000 + i)}
        a = ours.step(out, t, x, **kw_ours)
        b = theirs.step(out, t, x, **kw_theirs)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, **STEP_TOL, msg=lambda m: f"step {i} (t={t}): {m}")
        if getattr(b, "pred_original_sample", None) is not None:  # diffusers' DPM output has none
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, **STEP_TOL)


def tiny_model():
    """A fixed random function of (x, t): a 3x3 conv of x, modulated by t (weights seeded, not learned)."""
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(3, 3, 3, 3, generator=g) * 0.2
    bias = torch.randn(3, generator=g) * 0.1

    def model(x: torch.Tensor, t) -> torch.Tensor:
        t = float(t)
        return torch.nn.functional.conv2d(x, weight, bias, padding=1) * (1 + t / 1000) + 0.05 * torch.sin(x * t / 100)

    return model


def deterministic_sample() -> torch.Tensor:
    """diffusers' ``dummy_sample_deter``: arange(768)/768 laid out (3, 8, 8, 4) -> (4, 3, 8, 8)."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def golden_model(x: torch.Tensor, t) -> torch.Tensor:
    """diffusers' ``dummy_model``: ε̂ = x·t/(t+1)."""
    return x * t / (t + 1)
