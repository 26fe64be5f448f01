"""``genmodels sample PATH`` (an image grid) and ``genmodels evaluate PATH`` (the offline metrics) —
a few lines over :func:`genmodels.generation.images.sample` and :func:`genmodels.metrics.evaluate_images`.

PATH is a model folder or a training run (its ``final/``). Both work for every image family: the
sampler options ``--steps``, ``--scheduler``, ``--guidance`` are passed only when given, and a model
that samples by itself (a GAN) refuses those it does not take, naming the flag.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_image_parsers(sub, finite_float) -> None:
    s = sub.add_parser("sample", help="sample images from a diffusion (or GAN) model folder or training run "
                                      "into a PNG grid")
    _common(s, finite_float, n=64)
    s.add_argument("--class", dest="label", type=int, default=None,
                   help="the class of every image (default: classes in turn)")
    s.add_argument("--out", default="samples.png",
                   help="the grid to write: .png (default samples.png) or .jpg/.jpeg; an existing file is "
                        "replaced only if genmodels wrote it")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file genmodels did not write")
    s.add_argument("--no-progress", action="store_true", help="no progress bar over the steps")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="offline image metrics of a model's samples: class accuracy, KID, "
                                        "precision/recall, FID (cached classifier)")
    _common(e, finite_float, n=500)
    e.set_defaults(func=cmd_evaluate)


def _common(p: argparse.ArgumentParser, finite_float, n: int) -> None:
    p.add_argument("path", help="a model folder or a training run")
    p.add_argument("--n", type=int, default=n, help=f"number of images (default {n})")
    p.add_argument("--steps", type=int, default=None, help="diffusion sampler steps (default 25)")
    p.add_argument("--scheduler", default=None, help="diffusion sampler: ddim (default), ddpm or dpm")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="classifier-free guidance scale w (default 1: none; conditional models)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _load(path: str, command: str):
    """The model of PATH, refused in one line (naming the command that fits it) unless it samples images."""
    import genmodels
    from .cli_common import model_dir
    from .registry import SAMPLES, require
    model = genmodels.load(model_dir(path))
    require(model, SAMPLES, f"`genmodels {command}`", path)
    return model


def _options(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance}


def cmd_sample(args: argparse.Namespace) -> int:
    from .generation.image_file import check_image_target
    from .generation.images import sample, save_grid
    from .training.memory import keep_freed_memory
    check_image_target(args.out, args.overwrite)  # refuse --out before loading or sampling
    keep_freed_memory()  # the sampling loop reuses its pages instead of faulting fresh ones in each step
    model = _load(args.path, "sample")
    images = sample(model, n=args.n, labels=args.label, seed=args.seed, progress=not args.no_progress,
                    **_options(args))
    print(save_grid(images, args.out, overwrite=args.overwrite))
    return 0


def reference_config(path: str):
    """The image data a model is scored against: its run's ``config.yaml`` data section when PATH is a
    run (or its final/), else the digits default at the model's size."""
    import yaml

    from .data.images import ImageDataConfig
    p = Path(path)
    for cfg in (p / "config.yaml", p.parent / "config.yaml"):
        if cfg.is_file():
            data = (yaml.safe_load(cfg.read_text()) or {}).get("data")
            if isinstance(data, dict) and "source" in data:
                ref = ImageDataConfig.from_dict(data, "data")
                if ref.path is not None and not Path(ref.path).expanduser().is_dir():  # (runs record it absolute
                    raise ValueError(f"data.path={ref.path!r} from {cfg}: no such folder here (a relative path "  # since
                                     "is read from the folder the run was trained in: evaluate from there)")  # #19)
                return ref
    return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .generation.images import sample
    from .metrics import evaluate_images
    from .metrics.evaluate import min_samples
    if args.n < min_samples():  # before loading anything
        raise ValueError(f"--n {args.n} is too few: the metrics need at least {min_samples()} samples "
                         f"(precision/recall compares each with its {min_samples() - 1} nearest neighbours)")
    model = _load(args.path, "evaluate")
    ref, where = _reference(args.path, model.config)
    k = getattr(model.config, "num_classes", 0)
    labels = torch.arange(args.n) % k if k else None
    images = sample(model, n=args.n, labels=labels, seed=args.seed, progress=True, **_options(args))
    scores = {"reference": where, **evaluate_images(images, labels, ref, seed=args.seed)}
    for key, value in scores.items():
        print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    return 0


def _reference(path: str, config):
    """``(data config, description)``: what PATH's samples are scored against (B-13 of the 2026-12-07 probe).
    A run's own data (its config.yaml); otherwise the digits at the model's size, said in the description and
    in a warning when the model does not make 8×8 grey images (the digits' own), refused where the digits
    cannot take its size."""
    import warnings

    from .data.images import DIGITS_SIZE, ImageDataConfig
    ref = reference_config(path)
    if ref is not None:
        what = ref.source if ref.source == "digits" else f"folder {ref.path}"
        return ref, f"{what} at {ref.image_size}x{ref.image_size}, {ref.channels} channel(s) (the run's config.yaml)"
    size, channels = config.image_size, getattr(config, "in_channels", getattr(config, "channels", 1))
    if size % DIGITS_SIZE:
        raise ValueError(f"{path} is not a training run (no config.yaml names its data), so its samples would be "
                         f"scored against the digits, which come only in multiples of 8x8; this model makes "
                         f"{size}x{size} images: evaluate the run it was trained in")
    where = f"digits at {size}x{size}, {channels} channel(s) ({path} is not a run: no config.yaml names its data)"
    if (size, channels) != (DIGITS_SIZE, 1):
        warnings.warn(f"{path} is not a training run, so it is scored against the digits resized to {size}x{size} "
                      f"with {channels} channel(s) (they are 8x8 grey): the scores mean little unless the model was "
                      "trained on them; evaluate the run it was trained in to score it against its own data")
    return ImageDataConfig(image_size=size, channels=channels), where
