"""What the three schedulers share: the step output, diffusers-compatible noise, the schedule tables,
the forward process and the argument checks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import SchedulerConfigMixin
from .prediction import PREDICTION_TYPES, add_noise, get_velocity
from .schedule import TIMESTEP_SPACINGS, alphas_cumprod, check_choice, check_steps, make_betas, spaced_timesteps


@dataclass
class SchedulerOutput:
    """One step's result: x_{t'} (``prev_sample``) and x̂0 (``pred_original_sample``), (B, C, H, W)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """The fields that are set, in order (diffusers' ``BaseOutput.to_tuple``)."""
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def __getitem__(self, index: int) -> torch.Tensor:
        """``step(...)[0]`` is ``prev_sample``, as with diffusers' outputs."""
        return self.to_tuple()[index]


Generator = torch.Generator | list[torch.Generator] | None


def randn(shape: tuple[int, ...], generator: Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn as diffusers' ``randn_tensor`` draws it, so a seeded generator
    gives the same numbers: on the generator's device (a CPU generator draws on the CPU), and per
    sample from a list of generators (one per batch element)."""
    rand_device = device
    if generator is not None:
        first = generator[0] if isinstance(generator, list) else generator
        if first.device.type != torch.device(device).type:
            if first.device.type != "cpu":
                raise ValueError(f"generator is on {first.device} but the sample is on {device}")
            rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        noise = torch.cat([torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator])
        return noise.to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def check_number(name: str, value: object, low: float, high: float = float("inf"), integer: bool = False) -> None:
    """A ValueError naming ``name`` unless ``value`` is a number (an int when ``integer``) in [low, high]."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


class DiscreteScheduler(SchedulerConfigMixin):
    """A scheduler over T discrete training timesteps with β/ᾱ tables (Ho et al. 2020, eq. 4).

    Subclasses call :meth:`_build_schedule` from ``__init__`` and implement ``set_timesteps`` / ``step``.
    """

    order = 1  # model evaluations per step, as diffusers' ``order``
    init_noise_sigma = 1.0  # std of x_T ~ N(0, I): variance-preserving, so 1

    def _build_schedule(self) -> None:
        c = self._config
        check_number("num_train_timesteps", c["num_train_timesteps"], 1, integer=True)
        check_number("beta_start", c["beta_start"], 0.0, 1.0)
        check_number("beta_end", c["beta_end"], 0.0, 1.0)
        check_choice("prediction_type", c["prediction_type"], PREDICTION_TYPES)
        check_choice("timestep_spacing", c["timestep_spacing"], TIMESTEP_SPACINGS)
        check_number("steps_offset", c["steps_offset"], 0, integer=True)
        check_number("dynamic_thresholding_ratio", c["dynamic_thresholding_ratio"], 0.0, 1.0)
        check_number("sample_max_value", c["sample_max_value"], 1.0)
        if "clip_sample_range" in c:  # DDPM and DDIM
            check_number("clip_sample_range", c["clip_sample_range"], 0.0)
        self.betas = make_betas(  # (T,)
            c["num_train_timesteps"], c["beta_start"], c["beta_end"], c["beta_schedule"],
            c["trained_betas"], c["rescale_betas_zero_snr"],
        )
        self.alphas = 1.0 - self.betas  # (T,)
        self.alphas_cumprod = alphas_cumprod(self.betas)  # (T,) ᾱ_t
        self.num_inference_steps: int | None = None

    def __len__(self) -> int:
        return self._config["num_train_timesteps"]

    def _timestep(self, timestep: int | torch.Tensor) -> int:
        """A step's timestep as an int in [0, T); a ValueError naming ``timestep`` otherwise."""
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1 or timestep.dtype.is_floating_point:
                raise ValueError(f"timestep must be an int or a one-element integer tensor, got {timestep!r}")
            timestep = timestep.item()
        if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
            raise ValueError(f"timestep must be an int, got {timestep!r}")
        if not 0 <= timestep < len(self):
            raise ValueError(f"timestep={timestep} is outside [0, num_train_timesteps={len(self)})")
        return int(timestep)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The network input at ``timestep``: x_t itself (variance-preserving schedulers need no scaling)."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ``timesteps`` (B,) int (Ho et al. 2020, eq. 4)."""
        return add_noise(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t·ε − √(1−ᾱ_t)·x0, the v-prediction target (Salimans & Ho 2022, §4)."""
        return get_velocity(self.alphas_cumprod, sample, noise, timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the N timesteps to visit (``timestep_spacing``, see :mod:`.schedule`)."""
        c = self._config
        self.num_inference_steps = check_steps(num_inference_steps, c["num_train_timesteps"])
        steps = spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], self.num_inference_steps,
                                 c["steps_offset"])
        self.timesteps = torch.from_numpy(steps).to(device)  # (N,) int64, descending

    def _next_visited(self, timestep: int) -> int:
        """The entry after ``timestep`` in ``timesteps`` (−1 after the last): the exact previous step."""
        where = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
        if len(where) == 0:
            raise ValueError(f"timestep={timestep} is not one of this scheduler's timesteps")
        index = int(where[0])
        return -1 if index == len(self.timesteps) - 1 else int(self.timesteps[index + 1])

    def _require_timesteps(self) -> int:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before step()")
        return self.num_inference_steps
