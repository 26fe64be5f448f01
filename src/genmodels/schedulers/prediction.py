"""What the network predicts, turned into x̂0 and ε̂; clipping and dynamic thresholding of x̂0.

Notation: the forward process is x_t = α_t·x0 + σ_t·ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)
(Ho et al. 2020, eq. 4). A network output ``out`` is read per ``prediction_type``:

- ``epsilon`` (Ho et al. 2020): out = ε̂, so x̂0 = (x_t − σ_t·ε̂)/α_t (DDIM, Song et al. 2021, eq. 12).
- ``sample``: out = x̂0, so ε̂ = (x_t − α_t·x̂0)/σ_t.
- ``v_prediction`` (Salimans & Ho 2022, §4, eq. 10 ff.): v = α_t·ε − σ_t·x0, so
  x̂0 = α_t·x_t − σ_t·v̂ and ε̂ = α_t·v̂ + σ_t·x_t.

x̂0 is then clamped to ±``clip_sample_range`` (``clip_sample``), or dynamically thresholded
(Saharia et al. 2022, Imagen §2.3): s = clamp(quantile(|x̂0|, ratio), 1, max) per sample, then
x̂0 ← clamp(x̂0, −s, s)/s.

The operations keep diffusers' order (α and σ are 0-d float32 tensors), so the numbers agree bit
for bit, not just to a tolerance.
"""
from __future__ import annotations

import torch

from .schedule import check_choice

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def original_sample(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """x̂0 from the network output at a step where x_t = α·x0 + σ·ε."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "sample":
        return model_output
    return alpha * sample - sigma * model_output


def noise_from_original(
    sample: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """ε̂ = (x_t − α·x̂0)/σ: the noise implied by an x̂0 (used for ``sample`` and clipped-x̂0 DDIM)."""
    return (sample - alpha * x0) / sigma


def predicted_noise(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, x0: torch.Tensor,
    alpha: torch.Tensor, sigma: torch.Tensor,
) -> torch.Tensor:
    """ε̂ from the network output (``x0`` is :func:`original_sample`'s, before any clipping)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return noise_from_original(sample, x0, alpha, sigma)
    return alpha * model_output + sigma * sample


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Saharia et al. 2022 §2.3: per sample s = clamp(quantile(|x̂0|, ratio), 1, max); clamp(x̂0, ±s)/s.

    ``x0``: (B, C, *spatial). The quantile runs in float32 (half has no CPU quantile).
    """
    dtype = x0.dtype
    batch, channels, *rest = x0.shape  # (B, C, *spatial)
    flat = x0.float() if dtype not in (torch.float32, torch.float64) else x0
    flat = flat.reshape(batch, -1)  # (B, C·H·W)
    s = torch.quantile(flat.abs(), ratio, dim=1)  # (B,)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)  # (B, 1); s = 1 is plain clipping to ±1
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def clip_or_threshold(x0: torch.Tensor, config: dict) -> torch.Tensor:
    """x̂0 after ``thresholding`` (which wins) or ``clip_sample`` (± ``clip_sample_range``), per ``config``."""
    if config["thresholding"]:
        return dynamic_threshold(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config.get("clip_sample", False):
        return x0.clamp(-config["clip_sample_range"], config["clip_sample_range"])
    return x0


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) → (B, 1, …, 1) with ``ndim`` dimensions, to broadcast over a sample."""
    values = values.flatten()
    while values.ndim < ndim:
        values = values.unsqueeze(-1)
    return values


def forward_coefficients(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) = (√ᾱ_t, √(1−ᾱ_t)) per sample, shaped to broadcast over ``like`` (its dtype, device)."""
    if not isinstance(timesteps, torch.Tensor) or timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor of shape (B,), got {timesteps!r}")
    if timesteps.numel() and not (0 <= int(timesteps.min()) and int(timesteps.max()) < len(alphas_cumprod)):
        raise ValueError(
            f"timesteps must lie in [0, num_train_timesteps={len(alphas_cumprod)}), got {timesteps.tolist()}"
        )
    bar = alphas_cumprod.to(device=like.device, dtype=like.dtype)
    timesteps = timesteps.to(like.device)
    return _per_sample(bar[timesteps] ** 0.5, like.ndim), _per_sample((1 - bar[timesteps]) ** 0.5, like.ndim)


def add_noise(
    alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The forward process q(x_t | x0) (Ho et al. 2020, eq. 4): x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
    alpha, sigma = forward_coefficients(alphas_cumprod, timesteps, x0)
    return alpha * x0 + sigma * noise


def get_velocity(
    alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target (Salimans & Ho 2022, §4): v = √ᾱ_t·ε − √(1−ᾱ_t)·x0."""
    alpha, sigma = forward_coefficients(alphas_cumprod, timesteps, x0)
    return alpha * noise - sigma * x0
