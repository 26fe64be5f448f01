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
    s.add_argument("--out", default="samples.png", help="the PNG grid to write (default samples.png)")
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


def _load(path: str):
    import genmodels
    from .cli import model_dir
    return genmodels.load(model_dir(path))


def _options(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance}


def cmd_sample(args: argparse.Namespace) -> int:
    from .generation.images import sample, save_grid
    from .training.memory import keep_freed_memory
    keep_freed_memory()  # the sampling loop reuses its pages instead of faulting fresh ones in each step
    model = _load(args.path)
    images = sample(model, n=args.n, labels=args.label, seed=args.seed, progress=not args.no_progress,
                    **_options(args))
    print(save_grid(images, args.out))
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
                return ImageDataConfig.from_dict(data, "data")
    return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .generation.images import sample
    from .metrics import evaluate_images
    model = _load(args.path)
    ref = reference_config(args.path)
    if ref is None:
        c = model.config
        ref = {"image_size": getattr(c, "image_size", 8), "channels": getattr(c, "in_channels", 1)}
    k = getattr(model.config, "num_classes", 0)
    labels = torch.arange(args.n) % k if k else None
    images = sample(model, n=args.n, labels=labels, seed=args.seed, progress=True, **_options(args))
    scores = evaluate_images(images, labels, ref, seed=args.seed)
    for key, value in scores.items():
        print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    return 0
