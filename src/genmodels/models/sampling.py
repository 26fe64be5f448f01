"""What every image family shares while sampling, below generation/ so a model's own sampler (the GAN)
uses it without climbing: the class labels of a request and the default chunk size.

``labels`` None on a class-conditional model: classes in turn (0, 1, …, K−1, 0, …); an int: every
image of that class; a sequence or tensor: one per image. An unconditional model refuses labels.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

SAMPLE_PIXELS = 2 ** 16  # pixels per network call while sampling: 1024 images of 8×8, 64 of 32×32


def default_batch_size(config) -> int:
    """Images per network call while sampling: about :data:`SAMPLE_PIXELS` pixels (8×8: 1024, 32×32: 64)."""
    return max(1, SAMPLE_PIXELS // (config.image_size ** 2))


def sample_labels(num_classes: int, n: int, labels: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    """The (n,) int64 labels for ``labels`` (module docstring), checked against ``num_classes``; None for an
    unconditional model (which refuses labels)."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels (--class) were given, but the model is unconditional (num_classes=0)")
        return None
    if labels is None:
        return torch.arange(n) % num_classes
    if isinstance(labels, bool) or type(labels).__name__ == "bool_":  # Python's or numpy's bool
        raise ValueError(f"labels={labels!r} (--class) must be a class index or one per image")
    if isinstance(labels, numbers.Integral) or (isinstance(labels, torch.Tensor) and labels.ndim == 0 and
                                                not labels.is_floating_point() and labels.dtype != torch.bool):
        if not 0 <= int(labels) < num_classes:
            raise _out_of_range(int(labels), num_classes)
        labels = torch.full((n,), int(labels), dtype=torch.int64)  # one class index (int, numpy or 0-d tensor)
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
        raise ValueError(f"labels (--class) must be one class index or {n} integers (one per image); "
                         f"got {tuple(y.shape)} {y.dtype}")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
        raise _out_of_range(int(y.min()) if int(y.min()) < 0 else int(y.max()), num_classes)
    return y.to(torch.int64)


def _out_of_range(label: int, num_classes: int) -> ValueError:
    return ValueError(f"class {label} (--class) is out of range: this model has classes 0..{num_classes - 1}")
