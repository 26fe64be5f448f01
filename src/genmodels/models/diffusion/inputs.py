"""What every denoiser of the family shares: its base class, and what it checks and embeds before its
network — the sample's shape, the timestep and the class labels (with the null class of
classifier-free guidance, Ho & Salimans, 2022). Errors name the argument."""
from __future__ import annotations

import torch
from torch import nn

from ...nn.timestep import batch_timesteps
from .config import DiffusionConfig


class Denoiser(nn.Module):
    """Base of the family's networks: ``model(sample, timestep, class_labels=None)`` -> prediction; holds
    ``config`` (whose ``backbone`` must be the subclass's) and ``tokenizer`` (None: images need none)."""

    family = "diffusion"
    backbone = ""  # the config.backbone a subclass builds

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        if config.backbone != self.backbone:
            raise ValueError(f"model.backbone={config.backbone!r}: {type(self).__name__} builds backbone "
                             f"{self.backbone!r}")
        self.config = config
        self.tokenizer = None


def check_sample(sample: torch.Tensor, cfg: DiffusionConfig, multiple: int, exact: bool = False) -> None:
    """``sample`` must be (B, in_channels, H, W) with H, W multiples of ``multiple`` (or, ``exact``,
    equal to ``image_size``)."""
    if not isinstance(sample, torch.Tensor) or sample.dim() != 4:
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise ValueError(f"sample has shape {shape}; it must be a (B, C, H, W) tensor")
    b, c, h, w = sample.shape
    if c != cfg.in_channels:
        raise ValueError(f"sample has {c} channels; this model takes in_channels={cfg.in_channels}")
    if exact and (h, w) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"sample is {h}×{w}; this model takes image_size={cfg.image_size} "
                         f"({cfg.image_size}×{cfg.image_size})")
    if h % multiple or w % multiple:
        raise ValueError(f"sample is {h}×{w}; height and width must be multiples of {multiple}")


class ClassEmbedding(nn.Embedding):
    """labels (B,) -> (B, D): one learned row per class, plus the null class's row when the config has
    one (label ``num_classes``). A conditional model needs labels; an unconditional one refuses them."""

    def __init__(self, cfg: DiffusionConfig, dim: int):
        super().__init__(cfg.label_rows, dim)
        self.num_classes, self.null_label = cfg.num_classes, cfg.null_label

    def forward(self, labels: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        if labels is None:
            hint = f" (label {self.null_label} is the null class)" if self.null_label is not None else ""
            raise ValueError(f"class_labels is required: this model is conditioned on {self.num_classes} "
                             f"classes{hint}")
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
                or labels.shape != (batch,):
            what = f"shape {tuple(labels.shape)}, {labels.dtype}" if isinstance(labels, torch.Tensor) else labels
            raise ValueError(f"class_labels ({what}) must be an integer tensor of shape ({batch},)")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_embeddings:
            raise ValueError(f"class_labels must be in [0, {self.num_embeddings}); got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return super().forward(labels)


def conditioning(time_embed: nn.Module, class_embed: ClassEmbedding | None, sample: torch.Tensor, timestep,
                 class_labels: torch.Tensor | None) -> torch.Tensor:
    """``emb(t) + E[y]`` (B, D) for the sample's batch: the timestep embedding (``timestep`` an int, a 0-d
    or a (B,) tensor) plus, for a conditional model, the class embedding. An unconditional model refuses
    labels (they would be silently ignored)."""
    b = sample.shape[0]
    emb = time_embed(batch_timesteps(timestep, b, sample.device))  # (B, D)
    if class_embed is not None:
        return emb + class_embed(class_labels, b)
    if class_labels is not None:
        raise ValueError("class_labels were given, but this model is unconditional (num_classes=0)")
    return emb
