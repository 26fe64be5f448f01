"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"), equal to
diffusers 0.42.1's ``DDPMScheduler`` number for number.

Notation (paper symbol -> variable): ᾱ_t -> ``alpha_bar``; ᾱ_{t'} -> ``alpha_bar_prev`` with t' the
next entry of ``timesteps`` (diffusers' table lookup, so skipped steps are exact); α_t = ᾱ_t/ᾱ_{t'},
β_t = 1 − α_t (the effective single-step values when steps are skipped); x̂0 -> ``x0``.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DiscreteScheduler, Generator, SchedulerOutput, randn
from .config import records_config
from .prediction import clip_or_threshold, original_sample
from .schedule import check_choice

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(DiscreteScheduler):
    """DDPM with diffusers' argument names and defaults (``clip_sample=True``, ``leading`` spacing).

    ``variance_type``: ``fixed_small`` σ² = β̃_t = (1−ᾱ_{t'})/(1−ᾱ_t)·β_t (eq. 7), ``fixed_large``
    σ² = β_t, their ``_log`` forms, ``learned`` (the network's second half of channels is σ²) and
    ``learned_range`` (Nichol & Dhariwal 2021, eq. 15: log σ² = v·log β_t + (1−v)·log β̃_t, v = (out+1)/2).
    """

    diffusers_class = "DDPMScheduler"

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self._build_schedule()
        self.one = torch.tensor(1.0)  # ᾱ before t = 0
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())  # (T,) int64
        self.variance_type = variance_type

    def previous_timestep(self, timestep: int) -> int:
        """t': the entry after ``timestep`` in ``timesteps`` (−1 after the last); t − 1 before set_timesteps."""
        return timestep - 1 if self.num_inference_steps is None else self._next_visited(timestep)

    def _variance(self, t: int, prev_t: int, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """σ² of p(x_{t'} | x_t) (or σ, or log σ², per ``variance_type``; see the class docstring)."""
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta = 1 - alpha_bar / alpha_bar_prev
        variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, min=1e-20)  # β̃_t, eq. 7
        kind = self.variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if kind == "fixed_large":
            return beta
        if kind == "fixed_large_log":
            return torch.log(beta)
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(beta) + (1 - frac) * torch.log(variance)
        return variance

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t -> x_{t'} ~ p_θ(x_{t'} | x_t) (Ho et al. 2020, Algorithm 2).

        ``model_output``: (B, C, H, W), or (B, 2C, H, W) with a learned variance; ``sample``: x_t.

        1. t' = :meth:`previous_timestep`; ᾱ_t, ᾱ_{t'} (1 when t' < 0); α_t = ᾱ_t/ᾱ_{t'}, β_t = 1 − α_t.
        2. x̂0 from the output per ``prediction_type`` (:mod:`.prediction`), then clipped or thresholded.
        3. The posterior mean (eq. 7): μ̃ = √ᾱ_{t'}·β_t/(1−ᾱ_t)·x̂0 + √α_t·(1−ᾱ_{t'})/(1−ᾱ_t)·x_t.
        4. For t > 0 add σ·z, z ~ N(0, I) drawn with ``generator`` after the mean (σ per ``variance_type``).
        """
        t = self._timestep(timestep)
        prev_t = self.previous_timestep(t)
        channels = sample.shape[1]
        predicted_variance = None
        if model_output.shape[1] == 2 * channels and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, channels, dim=1)
        elif model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")

        # 1. the schedule at t and t'
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        one_minus_bar, one_minus_bar_prev = 1 - alpha_bar, 1 - alpha_bar_prev
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha

        # 2. x̂0, clipped or thresholded
        x0 = original_sample(self._config["prediction_type"], model_output, sample, alpha_bar**0.5, one_minus_bar**0.5)
        x0 = clip_or_threshold(x0, self._config)

        # 3. the posterior mean μ̃_t(x_t, x̂0), eq. 7
        x0_coef = (alpha_bar_prev**0.5 * beta) / one_minus_bar
        xt_coef = alpha**0.5 * one_minus_bar_prev / one_minus_bar
        prev_sample = x0_coef * x0 + xt_coef * sample

        # 4. + σ z
        if t > 0:
            z = randn(tuple(model_output.shape), generator, model_output.device, model_output.dtype)
            variance = self._variance(t, prev_t, predicted_variance)
            if self.variance_type == "fixed_small_log":
                noise = variance * z  # already σ
            elif self.variance_type == "learned_range":
                noise = torch.exp(0.5 * variance) * z
            else:
                noise = variance**0.5 * z
            prev_sample = prev_sample + noise

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
