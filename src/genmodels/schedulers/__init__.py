"""Diffusion noise schedules and samplers with diffusers' API, usable without our models.

Each scheduler gives diffusers 0.42.1's numbers (per step, float32) and reads / writes diffusers'
scheduler configs::

    scheduler = DDIMScheduler.from_config(diffusers_scheduler.config)
    scheduler.set_timesteps(50)
    x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

- :mod:`.schedule`: β schedules, ᾱ, timestep spacings;
- :mod:`.prediction`: x̂0 / ε̂ per prediction type, clipping, dynamic thresholding, the forward process;
- :mod:`.config`: ``config`` / ``from_config`` / ``save_config`` in diffusers' form;
- :mod:`.ddpm`, :mod:`.ddim`, :mod:`.dpm_solver`: the three samplers.
"""
from .base import SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .prediction import PREDICTION_TYPES
from .schedule import BETA_SCHEDULES, TIMESTEP_SPACINGS

SCHEDULERS = {cls.diffusers_class: cls for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler)}

__all__ = [
    "BETA_SCHEDULES", "PREDICTION_TYPES", "SCHEDULERS", "TIMESTEP_SPACINGS",
    "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "SchedulerOutput",
]
