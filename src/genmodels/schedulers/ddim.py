"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"), equal to
diffusers 0.42.1's ``DDIMScheduler`` number for number.

Notation (paper symbol -> variable): α_t (the paper's, = ᾱ_t of DDPM) -> ``alpha_bar``;
α_{t−1} -> ``alpha_bar_prev``; ε_θ(x_t, t) -> ``eps``; f_θ(x_t, t) = x̂0 -> ``x0``; σ_t(η) -> ``std``;
"direction pointing to x_t" -> ``direction``.

**The previous timestep.** diffusers steps from t to t' = t − T//N. That is the next visited
timestep only under ``leading`` spacing (and ``trailing`` when N divides T). Under ``linspace``
(T=1000, N=10 visits 999, 888, …, 0 but steps to ᾱ_899, ᾱ_788, …) and under ``trailing`` with
N ∤ T (N=3 visits 999, 666, 332 but steps 666 -> ᾱ_333), the update lands on a noise level the
next step does not start from (diffusers #12633, #11347). By default we do the same, so a user who
switches gets the same images. ``exact_previous_timestep=True`` looks t' up in ``timesteps``
instead (DDPM's rule), which changes exactly those steps; it is our option, so ``save_config``
refuses it (diffusers cannot express it).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import DiscreteScheduler, Generator, SchedulerOutput, check_number, randn
from .config import records_config
from .prediction import clip_or_threshold, noise_from_original, original_sample, predicted_noise


class DDIMScheduler(DiscreteScheduler):
    """DDIM with diffusers' argument names and defaults (``clip_sample=True``, ``leading`` spacing,
    ``set_alpha_to_one=True``: ᾱ after the last step is 1, else ᾱ_0)."""

    diffusers_class = "DDIMScheduler"
    extension_options = {"exact_previous_timestep": False}

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        exact_previous_timestep: bool = False,
    ):
        self._build_schedule()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def previous_timestep(self, timestep: int) -> int:
        """t' = t − T//N as diffusers (default), or the next entry of ``timesteps`` (−1 after the last)
        with ``exact_previous_timestep`` (module docstring)."""
        n = self._require_timesteps()
        if self._config["exact_previous_timestep"]:
            return self._next_visited(timestep)
        return timestep - self._config["num_train_timesteps"] // n

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_t -> x_{t'} (Song et al. 2021, eq. 12 with σ_t(η) of eq. 16).

        ``model_output``, ``sample``: (B, C, H, W). η = ``eta`` (0: deterministic DDIM, 1: DDPM-like).

        1. t' = :meth:`previous_timestep`; ᾱ_t, ᾱ_{t'} (``final_alpha_cumprod`` when t' < 0).
        2. x̂0 and ε̂ from the output per ``prediction_type`` (:mod:`.prediction`).
        3. Clip or threshold x̂0; with ``use_clipped_model_output`` re-derive ε̂ from the clipped x̂0 (GLIDE).
        4. σ_t = η·√((1−ᾱ_{t'})/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'}) (eq. 16).
        5. x_{t'} = √ᾱ_{t'}·x̂0 + √(1 − ᾱ_{t'} − σ_t²)·ε̂ (eq. 12), plus σ_t·z when η > 0, z drawn with
           ``generator`` or given as ``variance_noise`` (not both).
        """
        self._require_timesteps()
        check_number("eta", eta, 0.0)
        t = self._timestep(timestep)
        prev_t = self.previous_timestep(t)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")

        # 1. the schedule at t and t'
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        one_minus_bar = 1 - alpha_bar

        # 2. x̂0 and ε̂ (eq. 12's "predicted x0")
        kind, alpha, sigma = self._config["prediction_type"], alpha_bar**0.5, one_minus_bar**0.5
        x0 = original_sample(kind, model_output, sample, alpha, sigma)
        eps = predicted_noise(kind, model_output, sample, x0, alpha, sigma)

        # 3. clip or threshold x̂0
        x0 = clip_or_threshold(x0, self._config)

        # 4. σ_t(η), eq. 16
        variance = ((1 - alpha_bar_prev) / one_minus_bar) * (1 - alpha_bar / alpha_bar_prev)
        std = eta * variance**0.5
        if use_clipped_model_output:
            eps = noise_from_original(sample, x0, alpha, sigma)

        # 5. x_{t'}, eq. 12
        direction = (1 - alpha_bar_prev - std**2) ** 0.5 * eps
        prev_sample = alpha_bar_prev**0.5 * x0 + direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn(tuple(model_output.shape), generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + std * variance_noise

        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
