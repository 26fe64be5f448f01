"""The noise schedule: β_t, ᾱ_t = Π_{s≤t}(1 − β_s), and which timesteps an N-step sampler visits.

Everything is built in float32 in diffusers' operation order (``torch.linspace`` then ``cumprod``):
a float64 build cast down moves ᾱ by ~4e-7 relative, which a 50-step DDIM loop amplifies to ~1e-4.

Beta schedules (T = ``num_train_timesteps``, t = 0 … T−1):

- ``linear`` (Ho et al. 2020, DDPM §4): β_t = linspace(β_start, β_end, T).
- ``scaled_linear`` (latent diffusion): β_t = linspace(√β_start, √β_end, T)².
- ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021, eq. 17): f(s) = cos²((s + 0.008)/1.008 · π/2),
  β_t = min(1 − f((t+1)/T) / f(t/T), 0.999), computed in Python floats then cast to float32.
- ``trained_betas``: the given β, as float32.
- ``rescale_betas_zero_snr`` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
  are Flawed", Algorithm 1): shift and scale √ᾱ so that √ᾱ_{T−1} = 0 while √ᾱ_0 is kept.

Timestep spacings (Lin et al. 2024, Table 2), for N inference steps, descending int64:

- ``leading``: arange(N)·(T//N) + steps_offset, reversed (T=1000, N=10: 900, 800, …, 0).
- ``trailing``: round(arange(T, 0, −T/N)) − 1 (999, 899, …, 99).
- ``linspace``: round(linspace(0, T−1, N)), reversed (999, 888, …, 0).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise a ValueError naming argument ``name`` and what is allowed unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2``: β_t = min(1 − f(t₂)/f(t₁), max_beta), f(s) = cos²((s+0.008)/1.008·π/2)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: √ᾱ ← (√ᾱ − √ᾱ_{T−1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T−1}), then back to β."""
    sqrt_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()  # (T,)
    first, last = sqrt_bar[0].clone(), sqrt_bar[-1].clone()
    sqrt_bar = (sqrt_bar - last) * (first / (first - last))
    bar = sqrt_bar**2
    alphas = torch.cat([bar[0:1], bar[1:] / bar[:-1]])  # undo the cumulative product
    return 1 - alphas


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """β_t (T,) float32 for one of :data:`BETA_SCHEDULES`, or ``trained_betas`` when given."""
    if trained_betas is not None:
        betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas must be a list of num_train_timesteps={num_train_timesteps} floats, "
                f"got shape {tuple(betas.shape)}"
            )
    else:
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        else:
            betas = _cosine_betas(num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s), (T,) float32 (Ho et al. 2020, eq. 4 notation)."""
    return torch.cumprod(1.0 - betas, dim=0)


def check_steps(num_inference_steps: object, num_train_timesteps: int) -> int:
    """``num_inference_steps`` as an int in [1, T], else a ValueError naming it."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be in [1, num_train_timesteps={num_train_timesteps}]"
        )
    return int(num_inference_steps)


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int) -> np.ndarray:
    """The N timesteps (descending int64) DDPM and DDIM visit under ``spacing`` (module docstring)."""
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    T, N = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.int64) + steps_offset
    return np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1


def dpm_spaced_timesteps(
    spacing: str, num_train_timesteps: int, last_timestep: int, num_inference_steps: int, steps_offset: int
) -> np.ndarray:
    """DPM-Solver's timesteps: N+1 points up to ``last_timestep`` with the final one dropped.

    ``last_timestep`` = T minus the steps whose λ_t falls below ``lambda_min_clipped``. Under
    ``linspace`` (the default) T=1000, N=10 gives 999, 899, …, 100; under ``trailing`` the stride is
    T/N (not last_timestep/N), as in diffusers.
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    N = num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, N + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (N + 1)
        return (np.arange(0, N + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    return np.arange(last_timestep, 0, -num_train_timesteps / N).round().copy().astype(np.int64) - 1
