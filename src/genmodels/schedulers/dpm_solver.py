"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models"), equal to diffusers 0.42.1's ``DPMSolverMultistepScheduler``
(``algorithm_type="dpmsolver++"``) number for number.

Notation (paper symbol -> variable): the noise level σ = √((1−ᾱ)/ᾱ) -> ``sigmas`` (N+1 entries,
the last 0 or σ(0)); α_t = 1/√(1+σ²) and σ_t = σ·α_t (so x_t = α_t·x0 + σ_t·ε); λ_t = log(α_t/σ_t)
(half the log-SNR); h = λ_t − λ_s; the data prediction D = x̂0 -> ``model_outputs`` (the last
``solver_order`` of them).

With ``use_karras_sigmas`` the N noise levels follow Karras et al. 2022 ("Elucidating the Design
Space of Diffusion-Based Generative Models", eq. 5, ρ = 7):
σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, each mapped back to a (rounded)
training timestep by interpolating log σ.

State (``model_outputs``, ``lower_order_nums``, ``step_index``) is reset only by ``set_timesteps``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import DiscreteScheduler, Generator, SchedulerOutput, check_number
from .config import records_config
from .prediction import clip_or_threshold, original_sample
from .schedule import check_choice, check_steps, dpm_spaced_timesteps

SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


def karras_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Karras et al. 2022, eq. 5 (ρ = 7): N noise levels from σ_max down to σ_min, float64."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def sigma_to_timestep(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each σ: linear interpolation of log σ in the table.

    ``sigmas``: (N,) float64; ``log_sigmas``: (T,) float32, ascending in t.
    """
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # (N,)
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, N)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)  # (N,)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigmas.shape)


def alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) = (1/√(1+σ²), σ·α_t): the VP coefficients of a noise level σ."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def half_log_snr(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(α_t, σ_t, λ_t = log α_t − log σ_t) of a noise level σ (λ = +inf at σ = 0)."""
    alpha, sigma_t = alpha_sigma(sigma)
    return alpha, sigma_t, torch.log(alpha) - torch.log(sigma_t)


class DPMSolverMultistepScheduler(DiscreteScheduler):
    """DPM-Solver++(2M) by default (``solver_order=2``, ``midpoint``); orders 1 (= DDIM) to 3.

    Defaults are diffusers': ``linspace`` spacing over N+1 points with the last dropped,
    ``final_sigmas_type="zero"``, ``lower_order_final=True`` (first order on the last step, and on
    the last two when N < 15). The diffusers options not implemented here (SDE and noise-prediction
    variants, exponential / beta / Lu / flow sigmas, dynamic shifting, learned variances) are
    accepted at their defaults and refused otherwise, naming the option.
    """

    diffusers_class = "DPMSolverMultistepScheduler"
    fixed_options = {
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
        "use_flow_sigmas": False, "flow_shift": 1.0, "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    value_aliases = {"algorithm_type": {"deis": "dpmsolver++"},
                     "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}}

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        **fixed_options,
    ):
        c = self._config  # the recorded arguments, aliases applied (diffusers maps "deis", "bh2", …)
        check_choice("algorithm_type", c["algorithm_type"], ("dpmsolver++",))
        check_choice("solver_type", c["solver_type"], SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_number("solver_order", solver_order, 1, 3, integer=True)
        check_number("lambda_min_clipped", lambda_min_clipped, -float("inf"))
        if variance_type in ("learned", "learned_range"):
            raise ValueError(f"variance_type={variance_type!r} is not implemented; allowed: None (or a fixed_* type)")
        self._build_schedule()
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # keep σ_T finite, as diffusers
        self.alpha_t = torch.sqrt(self.alphas_cumprod)  # (T,)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)  # (T,)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)  # (T,)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # (T,) ascending in t
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        )
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self._config["solver_order"]
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """The index of the next step into ``timesteps`` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index when a pipeline starts midway (img2img); see :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start from ``timesteps[begin_index]`` (diffusers' img2img hook)."""
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the N timesteps and N+1 noise levels, and reset the solver's state.

        1. Drop the timesteps whose λ_t < ``lambda_min_clipped`` (needed for the cosine schedule).
        2. N timesteps per ``timestep_spacing`` (:func:`.schedule.dpm_spaced_timesteps`), or from
           Karras σ (module docstring).
        3. σ at those timesteps (``np.interp`` in float64), then the final σ (0 or σ(0)), as float32.
        4. Refuse a schedule that repeats a timestep (N = T under ``linspace``/``leading``, Karras σ on
           ``squaredcos_cap_v2``): ValueError naming ``set_timesteps``, the timestep and the cause. diffusers
           accepts it and then steps with h = 0 (NaN) or runs out of noise levels (IndexError).
        """
        c = self._config
        n = check_steps(num_inference_steps, c["num_train_timesteps"])
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), c["lambda_min_clipped"])
        last_timestep = int(c["num_train_timesteps"] - clipped.item())
        timesteps = dpm_spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], last_timestep, n,
                                         c["steps_offset"])
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()  # (T,) float32
        log_sigmas = np.log(sigmas)
        if c["use_karras_sigmas"]:
            sigmas = karras_sigmas(sigmas[0].item(), sigmas[-1].item(), n)  # (N,) descending
            timesteps = sigma_to_timestep(sigmas, log_sigmas)
            if c["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)  # (N,) float64
        if c["final_sigmas_type"] == "sigma_min":
            last = (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()
        else:
            last = 0.0
        timesteps = torch.from_numpy(timesteps).to(dtype=torch.int64)  # (N,)
        values, counts = timesteps.unique(return_counts=True)
        if (counts > 1).any():  # refused before any state changes: the scheduler keeps its previous schedule
            why = ("Karras sigmas on a schedule with a huge sigma_T such as squaredcos_cap_v2, diffusers #12771: "
                   "use use_karras_sigmas=False" if c["use_karras_sigmas"] else
                   f"more steps than the {c['timestep_spacing']!r} spacing has distinct training timesteps: "
                   "use fewer steps, or timestep_spacing='trailing'")
            raise ValueError(
                f"set_timesteps({n}): timestep {int(values[counts > 1][-1])} repeats ({why}); DPM-Solver++ needs "
                "distinct timesteps: a repeat is a step of length h = 0 and its update is NaN (diffusers gives NaN "
                "or runs out of noise levels with an IndexError)")
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))  # (N+1,)
        self.timesteps = timesteps.to(device=device)  # (N,)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def index_for_timestep(self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Where ``timestep`` sits in ``timesteps``: its second occurrence if repeated, the last index if absent."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        found = (schedule == timestep).nonzero()
        if len(found) == 0:
            return len(self.timesteps) - 1
        return int(found[1 if len(found) > 1 else 0])

    def data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """D = x̂0 at the current step (DPM-Solver++ integrates the data prediction, Lu et al. §4)."""
        alpha, sigma = alpha_sigma(self.sigmas[self._step_index])
        x0 = original_sample(self._config["prediction_type"], model_output, sample, alpha, sigma)
        return clip_or_threshold(x0, self._config)  # DPM has no clip_sample: thresholding only

    def _update(self, order: int, sample: torch.Tensor) -> torch.Tensor:
        """x_t from x_s with the last ``order`` data predictions (Lu et al. 2022, Algorithm 2 and §4).

        - order 1 (= DDIM): x_t = (σ_t/σ_s)·x_s − α_t(e^{−h} − 1)·D0.
        - order 2: D1 = (D0 − D_{-1})/r0 with r0 = h_{-1}/h; ``midpoint`` adds −½α_t(e^{−h} − 1)·D1,
          ``heun`` adds α_t((e^{−h} − 1)/h + 1)·D1.
        - order 3: D1, D2 from three predictions (Lu et al. 2022, DPM-Solver-3 in data form).
        """
        i, m = self._step_index, self.model_outputs
        alpha_t, sigma_t, lam_t = half_log_snr(self.sigmas[i + 1])
        _, sigma_s0, lam_s0 = half_log_snr(self.sigmas[i])
        h = lam_t - lam_s0
        decay = alpha_t * (torch.exp(-h) - 1.0)
        if order == 1:
            return (sigma_t / sigma_s0) * sample - decay * m[-1]
        lam_s1 = half_log_snr(self.sigmas[i - 1])[2]
        r0 = (lam_s0 - lam_s1) / h
        d1_0 = (1.0 / r0) * (m[-1] - m[-2])
        if order == 2:
            if self._config["solver_type"] == "midpoint":
                return (sigma_t / sigma_s0) * sample - decay * m[-1] - 0.5 * decay * d1_0
            return (sigma_t / sigma_s0) * sample - decay * m[-1] + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1_0
        r1 = (lam_s1 - half_log_snr(self.sigmas[i - 2])[2]) / h
        d1_1 = (1.0 / r1) * (m[-2] - m[-3])
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        return (
            (sigma_t / sigma_s0) * sample
            - decay * m[-1]
            + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One multistep update from ``timesteps[step_index]`` to the next noise level.

        ``model_output``, ``sample``: (B, C, H, W). ``generator`` and ``variance_noise`` exist for
        diffusers' signature; the ODE solver draws no noise.

        1. On the first call find ``step_index`` from ``timestep`` (or ``begin_index``).
        2. Convert the output to D0 = x̂0 (:meth:`data_prediction`) and push it onto ``model_outputs``.
        3. Choose the order: 1 on the first step and on the last when the final σ is 0,
           ``euler_at_final``, or ``lower_order_final`` with N < 15; at most 2 on the second step
           (and on the second-to-last under the same N < 15 rule); else ``solver_order``.
        4. :meth:`_update` in float32, cast back to the output's dtype; advance ``step_index``.

        ``return_dict=False`` gives ``(prev_sample,)`` as diffusers; the output object also carries
        ``pred_original_sample`` = D0 (diffusers leaves it out).
        """
        n = self._require_timesteps()
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        timestep = self._timestep(timestep)  # only the first call reads it: later steps follow step_index
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if self._step_index >= n:
            raise ValueError(f"step(): all {n} steps are done; call set_timesteps again")
        c, i = self._config, self._step_index
        few = c["lower_order_final"] and n < 15
        final_first = i == n - 1 and (c["euler_at_final"] or few or c["final_sigmas_type"] == "zero")
        final_second = i == n - 2 and few

        x0 = self.data_prediction(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], x0]
        if c["solver_order"] == 1 or self.lower_order_nums < 1 or final_first:
            order = 1
        elif c["solver_order"] == 2 or self.lower_order_nums < 2 or final_second:
            order = 2
        else:
            order = 3
        prev_sample = self._update(order, sample.to(torch.float32)).to(x0.dtype)
        self.lower_order_nums = min(self.lower_order_nums + 1, c["solver_order"])
        self._step_index += 1

        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = α_t·x0 + σ_t·ε at the noise level of ``timesteps`` in the *inference* table, as diffusers.

        The σ comes from ``sigmas[index of t in timesteps]`` (or ``step_index`` / ``begin_index``
        when set), so it is meant for img2img after ``set_timesteps``. Before ``set_timesteps``
        diffusers' tables pair t with σ(T−1−t) (the timesteps run down, the σ up); we give the same
        numbers and warn. For training targets use :class:`DDPMScheduler`'s ``add_noise``.
        """
        if self.num_inference_steps is None:
            warnings.warn(
                "DPMSolverMultistepScheduler.add_noise before set_timesteps pairs t with sigma(T-1-t), "
                "as diffusers does; use DDPMScheduler.add_noise for training", stacklevel=2,
            )
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            indices = [index] * timesteps.shape[0]
        sigma = sigmas[indices].flatten()
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)  # (B, 1, …, 1)
        alpha_t, sigma_t = alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise
