"""Sampling images: :func:`sample` for every image family, the diffusion sampler loop, image grids.

    genmodels.sample(model, n=64, labels=None, steps=25, scheduler="ddim", guidance=1.0, seed=None)
        -> (n, C, H, W) float32 in [-1, 1]

**Dispatch (the hook other families plug into).** A model class that samples by itself (a GAN) has a
method ``sample(n, labels=None, seed=None, batch_size=None, **options) -> (n, C, H, W)`` and a class attribute
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

**Chunks.** The network runs on ``batch_size`` images at a time (default :func:`default_batch_size`:
about 2¹⁶ pixels), so its activations are bounded by the chunk, not by ``n``. The loop is step-major:
x_T, the scheduler's state and its noise are drawn for all ``n`` images as one batch, exactly as
unchunked, so a chunk size never changes which noise an image gets (equal to the one-batch result up
to the backend's batch-size rounding).

**Never a wrong image.** Non-finite weights are refused before any work, and a step whose output is not
finite stops the loop with the cause (the weights, ``--guidance`` too large, the network or the
scheduler step): NaN never reaches the clamp, which would keep it, nor a grid (:func:`save_grid` refuses
non-finite images through :func:`genmodels.generation.checks.check_finite_images`, as ``evaluate`` does).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.sampling import default_batch_size, sample_labels
from ..schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from .checks import check_finite_images, check_seed

SCHEDULER_NAMES = ("ddim", "ddpm", "dpm")
_SCHEDULER_CLASSES = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm": DPMSolverMultistepScheduler}
DIFFUSION_OPTIONS = ("steps", "scheduler", "guidance")
DEFAULTS = {"steps": 25, "scheduler": "ddim", "guidance": 1.0}

__all__ = ["DEFAULTS", "SCHEDULER_NAMES", "check_sample_settings", "default_batch_size", "make_scheduler", "sample",
           "sample_labels", "save_grid"]


def _own_sampler(model_or_class) -> bool:
    """Whether a model (or model class) samples by itself (the GAN hook in the module docstring)."""
    return callable(getattr(model_or_class, "sample", None)) and hasattr(model_or_class, "sample_options")


def check_sample_settings(config, options: dict[str, Any], prefix: str = "") -> None:
    """ValueError (ConfigError from a recipe) naming the option (``prefix`` + name and its CLI flag)
    that ``config``'s model cannot take or whose value is bad. Options set to None are not given."""
    from ..config import ConfigError
    from ..registry import SAMPLES, get_family, require
    require(config, SAMPLES, "genmodels.sample")
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
    if steps is None and DEFAULTS["steps"] > config.num_train_timesteps:
        raise ConfigError(f"{prefix}steps (--steps) is not set and its default, {DEFAULTS['steps']}, is more than the "
                          f"model's num_train_timesteps={config.num_train_timesteps}; set it to at most "
                          f"{config.num_train_timesteps}")
    if sched is not None and sched not in SCHEDULER_NAMES:
        raise ConfigError(f"{prefix}scheduler={sched!r} (--scheduler) is not allowed; choose one of "
                          f"{', '.join(SCHEDULER_NAMES)}")
    if (sched or DEFAULTS["scheduler"]) == "dpm":  # DPM-Solver++ refuses repeated timesteps (N = T): say so now
        try:
            make_scheduler(config, "dpm").set_timesteps(steps or DEFAULTS["steps"])
        except ValueError as e:
            raise ConfigError(f"{prefix}steps={steps or DEFAULTS['steps']} (--steps) with {prefix}scheduler=dpm "
                              f"(--scheduler): {e}") from None
    if w is not None:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{prefix}guidance={w!r} (--guidance) must be a finite number >= 0")
        if w != 1 and config.null_label is None:
            why = "unconditional (num_classes=0)" if config.num_classes == 0 else "without a null class"
            raise ConfigError(f"{prefix}guidance={w} (--guidance) needs a class-conditional model with a null "
                              f"class; this model is {why}: leave guidance at 1")


def make_scheduler(config, name: str):
    """The sampler ``name`` for a DiffusionConfig's training schedule."""
    return _SCHEDULER_CLASSES[name](num_train_timesteps=config.num_train_timesteps,
                                    beta_schedule=config.beta_schedule, beta_start=config.beta_start,
                                    beta_end=config.beta_end, prediction_type=config.prediction_type)


def sample(model: nn.Module, n: int = 64, labels=None, steps: int | None = None, scheduler: str | None = None,
           guidance: float | None = None, seed: int | None = None, progress: bool = False,
           batch_size: int | None = None) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] from ``model`` (module docstring). None options take the family's
    defaults (diffusion: 25 steps of DDIM, guidance 1); ``progress`` shows a bar over the steps; the network
    sees ``batch_size`` images at a time (default :func:`default_batch_size`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} (--n) must be an integer >= 1")
    check_seed(seed, flag="--seed")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1 (images per network call)")
    options = {"steps": steps, "scheduler": scheduler, "guidance": guidance}
    check_sample_settings(model.config, options)
    given = {k: v for k, v in options.items() if v is not None}
    if _own_sampler(model):
        images = model.sample(n, labels=labels, seed=seed, batch_size=batch_size, **given)
        _refuse_nonfinite(images, model, "the model's sampler")
        return images
    opts = {**DEFAULTS, **given}
    return _diffusion_sample(model, n, sample_labels(model.config.num_classes, n, labels), opts["steps"],
                             opts["scheduler"], float(opts["guidance"]), seed, progress,
                             batch_size or default_batch_size(model.config))


def _nonfinite_weight(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN or ±inf, or None."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _refuse_nonfinite(x: torch.Tensor, model: nn.Module, where: str, why: str = "") -> None:
    """Rule 2 (docs/reliability.md): ValueError naming the cause when ``x`` holds NaN or ±inf."""
    if bool(torch.isfinite(x).all()):
        return
    bad = _nonfinite_weight(model)
    cause = (f"the model's weights are not finite ({bad} holds NaN or inf)" if bad is not None else
             why or "the weights are finite, so the network overflowed")
    raise ValueError(f"sampling stopped: {where} gave non-finite images: {cause}; no images were returned")


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
                      w: float, seed: int | None, progress: bool, batch_size: int) -> torch.Tensor:
    c = model.config
    bad = _nonfinite_weight(model)
    if bad is not None:  # every sample would be NaN: refuse before any work
        raise ValueError(f"cannot sample: the model's weights are not finite ({bad} holds NaN or inf)")
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
        timesteps = sched.timesteps
        denoise = _denoiser(model, dev, dtype)
        if progress:
            import sys

            from tqdm import tqdm
            timesteps = tqdm(timesteps, desc="sample", unit="step", file=sys.stderr, dynamic_ncols=True)
        for i, t in enumerate(timesteps):
            out = torch.cat([_guided(denoise, sched.scale_model_input(x[a:a + batch_size], t), t.to(dev),
                                     None if y is None else y[a:a + batch_size], w, c.null_label)
                             for a in range(0, n, batch_size)])  # (n, C, H, W), one chunk at a time
            where = f"step {i + 1} of {steps} (t={int(t)}, {scheduler_name})"
            _refuse_nonfinite(out, model, f"the network at {where}", _guidance_cause(w))
            x = sched.step(out, t, x, generator=g).prev_sample
            _refuse_nonfinite(x, model, f"the scheduler at {where}", _guidance_cause(w) or
                              "the network's output was finite, so the scheduler's update overflowed")
        return x.float().clamp(-1.0, 1.0).cpu()
    finally:
        model.train(was_training)


def _guided(denoise, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, w: float,
            null_label: int | None) -> torch.Tensor:
    """The network's output for ``x (B, C, H, W)``; with guidance w ≠ 1 one batched forward over [x; x] with
    labels [y; null], combined as uncond + w·(cond − uncond)."""
    if w == 1.0:
        return denoise(x, t, class_labels=y)
    out = denoise(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = out.chunk(2)
    return uncond + w * (cond - uncond)


def _guidance_cause(w: float) -> str:
    return (f"guidance={w:g} (--guidance) amplifies cond − uncond until it overflows; use a smaller guidance "
            "(1 = none)") if w > 1.0 else ""


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None,
              overwrite: bool = False) -> Path:
    """Write ``images (N, C, H, W)`` in [-1, 1] as one grid (Pillow), ``nrow`` per row (default √N),
    each image enlarged ``scale``× (nearest; default: to about 64 pixels), 1-pixel gaps. The file is
    PNG or JPEG as its suffix says, and replaces an existing file only when genmodels wrote it, or with
    ``overwrite=True`` (generation/image_file.py)."""
    from PIL import Image

    from .image_file import write_image
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W); got {tuple(images.shape)}")
    check_finite_images(images, f"images for the grid {path}")  # NaN would be written as black pixels
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
    return write_image(img, path, overwrite)
