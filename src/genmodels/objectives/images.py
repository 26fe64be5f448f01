"""What the image objectives (diffusion, GAN) share: the ``images`` data kind, their evaluation with the
offline metrics, the end-of-run sample grid and the command that samples again.

- evaluation (every ``train.eval_every`` steps and at the end): the validation loss over up to
  ``eval_batches`` micro-batches of the validation split, with a fixed noise generator (comparable
  between evaluations; the training RNG is not touched), then ``eval_samples`` images sampled
  from the objective's sampling weights (the EMA) with the recipe's sampler, classes in turn, seed
  ``train.seed``, scored by :func:`genmodels.metrics.evaluate_images` (class accuracy, KID,
  precision/recall in the cached classifier's feature space) — all into metrics.jsonl.
- end of run: ``samples.png`` (``sample.n`` images, classes in turn, seed ``sample.seed``) and the
  command that samples again.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError
from ..registry import SAMPLES
from .base import Batch, Objective, ObjectiveOptions

EVAL_METRICS = ("accuracy", "kid", "precision", "recall")  # what metrics.jsonl keeps of evaluate_images


@dataclass
class ImageOptions(ObjectiveOptions):
    """The options every image objective reads."""

    eval_samples: int = 200  # images sampled (classes in turn, fixed seed) for the metrics at each evaluation

    def validate(self) -> None:
        from ..metrics.evaluate import PR_K, min_samples
        v = self.eval_samples
        if not isinstance(v, int) or isinstance(v, bool) or v < min_samples():
            raise ConfigError(f"{self.where('eval_samples')}={v!r} must be an integer >= {min_samples()} (the "
                              f"evaluation's precision/recall compares each image with its {PR_K} nearest neighbours)")


def sampler_options(sample_cfg) -> dict:
    """The sampler options the recipe's ``sample:`` section sets (None: the family's default, not passed)."""
    return {k: getattr(sample_cfg, k) for k in ("steps", "scheduler", "guidance") if getattr(sample_cfg, k) is not None}


class ImageObjective(Objective):
    """Base of the objectives that train on images (``{"images": (B, C, H, W), "labels": (B,)}``)."""

    Options = ImageOptions
    data_kinds = ("images",)
    requires = (SAMPLES,)
    unit = "images"
    flops_apply = False  # FLOPs per token do not describe a step (MFU is not shown)
    perplexity = False
    usage = "sample"

    @classmethod
    def check(cls, options: ImageOptions, model_config, recipe) -> None:
        """The model must take the images the data section makes."""
        m, d = model_config, recipe.data
        for field_name, data_name in (("image_size", "image_size"), ("in_channels", "channels")):
            if getattr(m, field_name, getattr(d, data_name)) != getattr(d, data_name):
                raise ConfigError(f"model.{field_name}={getattr(m, field_name)} differs from data.{data_name}="
                                  f"{getattr(d, data_name)}; the model must take the images the data section makes")

    def check_data(self, data) -> None:
        """The model's classes must be the data's (0: unconditional, any data)."""
        k = getattr(self.model.config, "num_classes", 0)
        n = data.images.train.num_classes
        if k not in (0, n):
            names = data.images.class_names
            raise ConfigError(f"model.num_classes={k} differs from the data's {n} classes "
                              f"({', '.join(names[:5])}{', …' if n > 5 else ''}); "
                              "set model.num_classes to it (or 0: unconditional)")

    def units(self, batch: Batch) -> int:
        return batch["images"].shape[0]

    def sampling_model(self) -> torch.nn.Module:
        return self.model

    def prepare_evaluation(self, data) -> None:
        """Load the scoring classifier the evaluations use (trained once and cached on first use) now, so that a
        time budget counts its one-off cost before it fits the schedule."""
        from ..metrics.classifier import load_or_train_classifier
        load_or_train_classifier(data.images.train, data.images.val)

    def evaluate(self, ctx) -> tuple[float | None, dict[str, float]]:
        vl = validation_loss(self, ctx.data.val, ctx.micro_bs, ctx.n_batches, ctx.info.device, ctx.seed)
        extra = evaluate_samples(self, ctx.data, ctx.sample, ctx.seed, ctx.options.eval_samples) \
            if ctx.info.is_main else {}
        return vl, extra

    def samples(self, model, ctx) -> list[str]:
        """``samples.png`` from the final model (best-effort: a warning line on failure); no text samples."""
        from ..generation.images import sample, save_grid
        try:
            images = sample(model, n=ctx.sample.n, seed=ctx.sample.seed, **sampler_options(ctx.sample))
            grid = save_grid(images, ctx.run_dir / "samples.png", overwrite=True)  # the run's own (rundir.py claimed it)
            ctx.say(f"samples: {grid}")
        except Exception as e:  # a picture is a courtesy: it never costs the run its summary
            ctx.say(f"warning: samples.png not written ({type(e).__name__}: {' '.join(str(e).split())})")
        return []

    def next_command(self, run_dir: Path, program: str, sample_cfg) -> str:
        """The command that samples the run's final model again: the grid of ``samples.png`` exactly (its
        ``sample.n``, sampler and seed), into a new file beside it (never over the run's own grid)."""
        opts = "".join(f" --{k} {v}" for k, v in sampler_options(sample_cfg).items())
        out, i = run_dir / "samples-again.png", 1
        while out.exists() or out.is_symlink():
            i += 1
            out = run_dir / f"samples-again-{i}.png"
        return (f"  sample:     {program} sample {shlex.quote(str(run_dir))} --n {sample_cfg.n}{opts} "
                f"--seed {sample_cfg.seed} --out {shlex.quote(str(out))}")


@torch.no_grad()
def validation_loss(objective, val, micro_bs: int, n_batches: int, device, seed: int) -> float | None:
    """Mean loss over the first ``n_batches`` validation micro-batches, noise from a generator seeded
    ``seed`` (the same draws at every evaluation); None without validation images."""
    if len(val) == 0:
        return None
    was = objective.training
    objective.eval()
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    n = min(n_batches, max(1, -(-len(val) // micro_bs)))
    total = 0.0
    try:
        for i in range(n):
            idx = [j % len(val) for j in range(i * micro_bs, (i + 1) * micro_bs)]
            batch = {k: v.to(device, non_blocking=True) for k, v in val.batch(idx).items()}
            loss, _ = objective(batch, generator=g)
            total += float(loss)
    finally:
        objective.train(was)
    return total / n


def evaluate_samples(objective, data, sample_cfg, seed: int, n: int, cache_dir=None) -> dict[str, float]:
    """The offline metrics of ``n`` images from the objective's sampling weights. Leaves the
    global random streams as they were: how often a run evaluates never changes what its training draws (and
    so a resumed run equals an uninterrupted one whether or not the scoring classifier was cached)."""
    from ..generation.images import sample
    from ..metrics import evaluate_images
    model = objective.sampling_model()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        k = getattr(model.config, "num_classes", 0)
        labels = torch.arange(n) % k if k else None
        images = sample(model, n=n, labels=labels, seed=seed, **sampler_options(sample_cfg))
        scores = evaluate_images(images, labels, data.images, cache_dir=cache_dir, fid=False, seed=seed)
    return {key: scores[key] for key in EVAL_METRICS if scores.get(key) is not None}
