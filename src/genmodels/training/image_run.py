"""The trainer's image side (diffusion, GANs): data, batches, evaluation with the offline metrics,
the end-of-run sample grid. :mod:`.trainer` (set-up, the end) and :mod:`.loop` (evaluation) call these
where a token run tokenizes, packs and generates text; everything else (steps, checkpoints, resume,
budget, plots) is shared.

- data: :func:`genmodels.data.images.load_images` of the recipe's image ``data:`` section; batches
  ``{"images": (B, C, H, W), "labels": (B,)}`` drawn by the shared, checkpointed BatchSampler; the
  run's fingerprint is the images' (a resume on other images is refused).
- evaluation (every ``train.eval_every`` steps and at the end): the validation loss over up to
  ``eval_batches`` micro-batches of the validation split, with a fixed noise generator (comparable
  between evaluations; the training RNG is not touched), then ``train.eval_samples`` images sampled
  from the objective's sampling weights (the EMA) with the recipe's sampler, classes in turn, seed
  ``train.seed``, scored by :func:`genmodels.metrics.evaluate_images` (class accuracy, KID,
  precision/recall in the cached classifier's feature space) — all into metrics.jsonl.
- end of run: ``samples.png`` (``sample.n`` images, classes in turn, seed ``sample.seed``) and the
  command that samples again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError
from ..data.images import ImageData, ImageDataset, load_images

EVAL_METRICS = ("accuracy", "kid", "precision", "recall")  # what metrics.jsonl keeps of evaluate_images


@dataclass
class ImageSplit:
    """A split as the trainer reads it: ``get_batch(index) -> (images, labels)`` and a length."""

    dataset: ImageDataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return self.dataset.images[index], self.dataset.labels[index]


@dataclass
class ImageRunData:
    """The run's images (the token side's ``Data``: train / val splits; no tokenizer)."""

    images: ImageData
    train: ImageSplit
    val: ImageSplit
    tokenizer: None = None
    eos_id: None = None

    @property
    def fingerprint(self) -> str:
        return "images:" + self.images.train.fingerprint()[:32] + self.images.val.fingerprint()[:32]


def prepare_image_data(cfg, say) -> ImageRunData:
    """Load and split the recipe's images; check the model's classes against the data's."""
    data = load_images(cfg.data)
    s = data.summary
    say(f"data: {s['source']} {s['train']} train / {s['val']} validation images {tuple(s['image_shape'])}, "
        f"{s['classes']} classes" + (f", {s['skipped']} unreadable file(s) skipped" if s["skipped"] else ""))
    if len(data.train) == 0:
        raise ConfigError("data: no training images")
    k = getattr(cfg.model_config(), "num_classes", 0)
    if k not in (0, data.train.num_classes):
        raise ConfigError(f"model.num_classes={k} differs from the data's {data.train.num_classes} classes "
                          f"({', '.join(data.class_names[:5])}{', …' if data.train.num_classes > 5 else ''}); "
                          "set model.num_classes to it (or 0: unconditional)")
    return ImageRunData(data, ImageSplit(data.train), ImageSplit(data.val))


def image_batch(xy: tuple[torch.Tensor, torch.Tensor], device) -> dict[str, torch.Tensor]:
    x, y = xy
    return {"images": x.to(device, non_blocking=True), "labels": y.to(device, non_blocking=True)}


def sampler_options(sample_cfg) -> dict:
    """The sampler options the recipe's ``sample:`` section sets (None: the family's default, not passed)."""
    return {k: getattr(sample_cfg, k) for k in ("steps", "scheduler", "guidance") if getattr(sample_cfg, k) is not None}


@torch.no_grad()
def validation_loss(objective, val: ImageSplit, micro_bs: int, n_batches: int, device, seed: int) -> float | None:
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
            loss, _ = objective(image_batch(val.get_batch(idx), device), generator=g)
            total += float(loss)
    finally:
        objective.train(was)
    return total / n


def evaluate_samples(objective, data: ImageRunData, cfg, cache_dir=None) -> dict[str, float]:
    """The offline metrics of ``train.eval_samples`` images from the objective's sampling weights. Leaves the
    global random streams as they were: how often a run evaluates never changes what its training draws (and
    so a resumed run equals an uninterrupted one whether or not the scoring classifier was cached)."""
    from ..generation.images import sample
    from ..metrics import evaluate_images
    model = objective.sampling_model()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        n = cfg.train.eval_samples
        k = getattr(model.config, "num_classes", 0)
        labels = torch.arange(n) % k if k else None
        images = sample(model, n=n, labels=labels, seed=cfg.train.seed, **sampler_options(cfg.sample))
        scores = evaluate_images(images, labels, data.images, cache_dir=cache_dir, fid=False, seed=cfg.train.seed)
    return {key: scores[key] for key in EVAL_METRICS if scores.get(key) is not None}


def write_samples(model, cfg, run_dir: Path, say) -> Path | None:
    """``samples.png`` from the final model (best-effort: a warning line on failure)."""
    from ..generation.images import sample, save_grid
    try:
        images = sample(model, n=cfg.sample.n, seed=cfg.sample.seed, **sampler_options(cfg.sample))
        return save_grid(images, run_dir / "samples.png", overwrite=True)  # the run's own (rundir.py claimed it)
    except Exception as e:  # a picture is a courtesy: it never costs the run its summary
        say(f"warning: samples.png not written ({type(e).__name__}: {' '.join(str(e).split())})")
        return None


def prepare_metrics(data: ImageRunData, cache_dir=None) -> None:
    """Load the scoring classifier the evaluations use (trained once and cached on first use) now, so that a
    time budget counts its one-off cost before it fits the schedule."""
    from ..metrics.classifier import load_or_train_classifier
    load_or_train_classifier(data.images.train, data.images.val, cache_dir=cache_dir)


def sample_command(run_dir: Path, cfg, program: str = "genmodels") -> str:
    """The command that samples the run's final model again: the grid of ``samples.png`` exactly (its
    ``sample.n``, sampler and seed), into a new file beside it (never over the run's own grid)."""
    import shlex
    opts = "".join(f" --{k} {v}" for k, v in sampler_options(cfg.sample).items())
    out, i = run_dir / "samples-again.png", 1
    while out.exists() or out.is_symlink():
        i += 1
        out = run_dir / f"samples-again-{i}.png"
    return (f"{program} sample {shlex.quote(str(run_dir))} --n {cfg.sample.n}{opts} --seed {cfg.sample.seed} "
            f"--out {shlex.quote(str(out))}")
