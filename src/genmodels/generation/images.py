"""Sampling images: :func:`sample` for every image family, the diffusion sampler loop, image grids.

    genmodels.sample(model, n=64, labels=None, steps=25, scheduler="ddim", guidance=1.0, seed=None)
        -> (n, C, H, W) float32 in [-1, 1]

**Dispatch (the hook other families plug into).** A model class that samples by itself (a GAN) has a
method ``sample(n, labels=None, seed=None, **options) -> (n, C, H, W)`` and a class attribute
``sample_options`` (the option names it takes, e.g. ``()``); :func:`sample` passes it only the options
the caller set, and refuses any other by name (``steps (--steps) does not apply ...``). A model without
that method is a denoiser (the diffusion family: ``model(x_t, t, class_labels=)`` and the schedule in
its config) and is sampled here, with options ``steps``, ``scheduler``, ``guidance``.

**Diffusion sampling.** x_T ~ N(0, I) from ``seed``; for each of the scheduler's ``steps`` timesteps
(``ddim``: DDIM, η = 0; ``ddpm``: ancestral DDPM; ``dpm``: DPM-Solver++ 2M) the network's output is
combined with classifier-free guidance (Ho & Salimans 2022, eq. 6)

    ε̃ = ε_u + w·(ε_c − ε_u)

from ONE batched forward over [x; x] with labels [y; null] (the same linear combination is applied to
a v or x0 output), then ``scheduler.step`` gives x_{t−1}; w = 1 is one plain conditional forward.
The result is clamped to [-1, 1]. ``labels`` None on a class-conditional model: classes in turn
(0, 1, …, K−1, 0, …); an int: every image of that class; a sequence or tensor: one per image.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SCHEDULER_NAMES = ("ddim", "ddpm", "dpm")
_SCHEDULER_CLASSES = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm": DPMSolverMultistepScheduler}
DIFFUSION_OPTIONS = ("steps", "scheduler", "guidance")
DEFAULTS = {"steps": 25, "scheduler": "ddim", "guidance": 1.0}

__all__ = ["DEFAULTS", "SCHEDULER_NAMES", "check_sample_settings", "make_scheduler", "sample", "sample_labels",
           "save_grid"]


def _own_sampler(model_or_class) -> bool:
    """Whether a model (or model class) samples by itself (the GAN hook in the module docstring)."""
    return callable(getattr(model_or_class, "sample", None)) and hasattr(model_or_class, "sample_options")


def check_sample_settings(config, options: dict[str, Any], prefix: str = "") -> None:
    """ValueError (ConfigError from a recipe) naming the option (``prefix`` + name and its CLI flag)
    that ``config``'s model cannot take or whose value is bad. Options set to None are not given."""
    from ..config import ConfigError
    from ..registry import get_family
    given = {k: v for k, v in options.items() if v is not None}
    model_class = get_family(config.family).model_class
    allowed = tuple(model_class.sample_options) if _own_sampler(model_class) else DIFFUSION_OPTIONS
    for k in given:
        if k not in allowed:
            raise ConfigError(f"{prefix}{k} (--{k}) does not apply to a model of family {config.family!r}; "
                              f"it takes {', '.join(allowed) or 'none of steps, scheduler, guidance'}")
    if _own_sampler(model_class):
        return
    steps, sched, w = given.get("steps"), given.get("scheduler"), given.get("guidance")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"{prefix}steps={steps!r} (--steps) must be an integer >= 1")
    if steps is not None and steps > config.num_train_timesteps:
        raise ConfigError(f"{prefix}steps={steps} (--steps) must be at most the model's num_train_timesteps="
                          f"{config.num_train_timesteps}")
    if sched is not None and sched not in SCHEDULER_NAMES:
        raise ConfigError(f"{prefix}scheduler={sched!r} (--scheduler) is not allowed; choose one of "
                          f"{', '.join(SCHEDULER_NAMES)}")
    if w is not None:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{prefix}guidance={w!r} (--guidance) must be a finite number >= 0")
        if w != 1 and config.null_label is None:
            why = "unconditional (num_classes=0)" if config.num_classes == 0 else "without a null class"
            raise ConfigError(f"{prefix}guidance={w} (--guidance) needs a class-conditional model with a null "
                              f"class; this model is {why}: leave guidance at 1")


def sample_labels(num_classes: int, n: int, labels: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    """The (n,) int64 labels for ``labels`` (module docstring), checked against ``num_classes``; None for an
    unconditional model (which refuses labels)."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels (--class) were given, but the model is unconditional (num_classes=0)")
        return None
    if labels is None:
        return torch.arange(n) % num_classes
    if isinstance(labels, bool):
        raise ValueError(f"labels={labels!r} (--class) must be a class index or one per image")
    y = torch.full((n,), labels, dtype=torch.int64) if isinstance(labels, int) else torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
        raise ValueError(f"labels (--class) must be one class index or {n} integers (one per image); "
                         f"got {tuple(y.shape)} {y.dtype}")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise ValueError(f"class {bad} (--class) is out of range: this model has classes 0..{num_classes - 1}")
    return y.to(torch.int64)


def make_scheduler(config, name: str):
    """The sampler ``name`` for a DiffusionConfig's training schedule."""
    return _SCHEDULER_CLASSES[name](num_train_timesteps=config.num_train_timesteps,
                                    beta_schedule=config.beta_schedule, beta_start=config.beta_start,
                                    beta_end=config.beta_end, prediction_type=config.prediction_type)


def sample(model: nn.Module, n: int = 64, labels=None, steps: int | None = None, scheduler: str | None = None,
           guidance: float | None = None, seed: int | None = None, progress: bool = False) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] from ``model`` (module docstring). None options take the family's
    defaults (diffusion: 25 steps of DDIM, guidance 1); ``progress`` shows a bar over the steps."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} (--n) must be an integer >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed={seed!r} (--seed) must be an integer >= 0")
    options = {"steps": steps, "scheduler": scheduler, "guidance": guidance}
    check_sample_settings(model.config, options)
    given = {k: v for k, v in options.items() if v is not None}
    if _own_sampler(model):
        return model.sample(n, labels=labels, seed=seed, **given)
    opts = {**DEFAULTS, **given}
    return _diffusion_sample(model, n, sample_labels(model.config.num_classes, n, labels), opts["steps"],
                             opts["scheduler"], float(opts["guidance"]), seed, progress)


def _denoiser(model: nn.Module, dev: torch.device, dtype: torch.dtype):
    """The network sampling calls: on CPU in fp32 a UNet2D runs through FastUNet (channels_last, prepacked
    oneDNN convolutions; equal to the module forward to fp32 rounding, tests/models/diffusion/test_fast_paths.py),
    anything else through the module itself."""
    from ..models.diffusion.fast import FastUNet
    from ..models.diffusion.unet import UNet2D
    if isinstance(model, UNet2D) and dev.type == "cpu" and dtype == torch.float32:
        return FastUNet(model)
    return model


@torch.inference_mode()
def _diffusion_sample(model: nn.Module, n: int, labels: torch.Tensor | None, steps: int, scheduler_name: str,
                      w: float, seed: int | None, progress: bool) -> torch.Tensor:
    c = model.config
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        dev, dtype = p.device, p.dtype
        g = torch.Generator(device="cpu")
        g.manual_seed(seed if seed is not None else torch.seed() % 2**63)
        sched = make_scheduler(c, scheduler_name)
        sched.set_timesteps(steps)
        shape = (n, c.in_channels, c.image_size, c.image_size)
        x = (torch.randn(shape, generator=g, dtype=torch.float32) * sched.init_noise_sigma).to(dev, dtype)
        y = labels.to(dev) if labels is not None else None
        guided = w != 1.0
        if guided:  # one batched forward over [cond; uncond]
            y = torch.cat([y, torch.full_like(y, c.null_label)])
        timesteps = sched.timesteps
        denoise = _denoiser(model, dev, dtype)
        if progress:
            import sys

            from tqdm import tqdm
            timesteps = tqdm(timesteps, desc="sample", unit="step", file=sys.stderr, dynamic_ncols=True)
        for t in timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
            out = denoise(inp, t.to(dev), class_labels=y)  # (n or 2n, C, H, W)
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + w * (cond - uncond)
            x = sched.step(out, t, x, generator=g).prev_sample
        return x.float().clamp(-1.0, 1.0).cpu()
    finally:
        model.train(was_training)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write ``images (N, C, H, W)`` in [-1, 1] as one PNG grid (Pillow), ``nrow`` per row (default √N),
    each image enlarged ``scale``× (nearest; default: to about 64 pixels), 1-pixel gaps."""
    from PIL import Image

    from ..files import atomic_write_bytes
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W); got {tuple(images.shape)}")
    n, ch, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    scale = scale or max(1, 64 // max(h, w))
    rows = math.ceil(n / nrow)
    pix = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pix = pix.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (N, C, hs, ws)
    hs, ws = h * scale, w * scale
    grid = torch.full((ch, rows * (hs + 1) + 1, nrow * (ws + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (hs + 1):1 + r * (hs + 1) + hs, 1 + q * (ws + 1):1 + q * (ws + 1) + ws] = pix[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if ch == 1 else arr)  # L or RGB
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
