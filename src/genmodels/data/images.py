"""Image data for the image families (diffusion, GANs): tensors in [-1, 1], labels, class names.

Pipeline: an :class:`ImageDataConfig` (the recipe's ``data:`` section for image families) ->
:func:`load_images` -> :class:`ImageData` (a stratified train / validation split of
:class:`ImageDataset`, plus a summary of what was read) -> :class:`ImageBatches` (shuffled batches
with a resumable position, the token pipeline's :class:`~genmodels.data.packing.BatchSampler`).

Sources:

- ``digits`` (the offline default): scikit-learn's 1,797 8×8 handwritten digits (values 0–16,
  mapped by x/8 − 1 to [-1, 1]), labels 0–9, optionally upsampled to ``image_size`` (a multiple of 8)
  with ``torch.nn.functional.interpolate`` (``interpolation``: bilinear by default, align_corners
  False; bicubic overshoot is clamped back to [-1, 1]).
- ``folder``: any folder of images read with Pillow (:mod:`genmodels.data.image_folder`): class
  labels from the sorted sub-folder names, each image converted to 1 or 3 channels and resized
  (shorter side to ``image_size``, then a centre crop; or stretched when ``crop`` is false);
  uint8 x maps to x/127.5 − 1. Unreadable files are skipped, named in a warning and counted in the
  summary.

The split is stratified (each class keeps its share in both parts) with a fixed seed: scikit-learn's
``train_test_split(test_size=val_fraction, stratify=labels, random_state=seed)``, so the digits
default (0.2, seed 0) is the 1,437 / 360 split of the reference benchmark (reference/diffusion.md §5).
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, StrictConfig
from .image_folder import read_image_folder
from .packing import BatchSampler

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_SOURCES", "INTERPOLATIONS", "ImageBatches", "ImageData",
           "ImageDataConfig", "ImageDataset", "digits_images", "load_images", "stratified_split"]

IMAGE_SOURCES = ("digits", "folder")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGITS_SIZE = 8  # sklearn digits are 8×8
DIGITS_MAX = 16.0  # pixel values 0..16


@dataclass
class ImageDataConfig(StrictConfig):
    """The ``data:`` section of an image recipe; every error names the field (``data.image_size``)."""

    section = "data"

    source: str = "digits"  # digits | folder
    path: str | None = None  # the image folder (source folder only)
    image_size: int = 8  # H = W after loading (digits: a multiple of 8, upsampled from 8×8)
    channels: int = 1  # 1 (grey) or 3 (RGB; digits repeat the grey channel)
    interpolation: str = "bilinear"  # nearest | bilinear | bicubic (upsampling digits, resizing files)
    crop: bool = True  # folder: shorter side to image_size, then a centre crop; false: stretch
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))  # folder files read
    val_fraction: float = 0.2  # share of each class held out for validation (0: none)
    seed: int = 0  # the split's seed

    def validate(self) -> None:
        if self.source not in IMAGE_SOURCES:
            raise ConfigError(f"{self.where('source')}={self.source!r} is not allowed; "
                              f"choose one of {', '.join(IMAGE_SOURCES)}")
        if self.source == "folder" and not self.path:
            raise ConfigError(f"{self.where('path')} is required when source is 'folder' (the image folder)")
        if self.source == "digits" and self.path is not None:
            raise ConfigError(f"{self.where('path')}={self.path!r} is only read for source 'folder'; "
                              "remove it for digits")
        if self.image_size < 1:
            raise ConfigError(f"{self.where('image_size')}={self.image_size} must be >= 1")
        if self.source == "digits" and self.image_size % DIGITS_SIZE:
            raise ConfigError(f"{self.where('image_size')}={self.image_size} must be a multiple of 8 for digits "
                              "(8, 16, 32: the 8×8 images upsampled)")
        if self.channels not in (1, 3):
            raise ConfigError(f"{self.where('channels')}={self.channels} must be 1 or 3")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{self.where('interpolation')}={self.interpolation!r} is not allowed; "
                              f"choose one of {', '.join(INTERPOLATIONS)}")
        if not self.extensions or any(not e.startswith(".") for e in self.extensions):
            raise ConfigError(f"{self.where('extensions')}={self.extensions!r} must be a non-empty list of "
                              "suffixes starting with '.'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{self.where('val_fraction')}={self.val_fraction} must be in [0, 1)")


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` float32 in [-1, 1], labels ``(N,)`` int64 in ``[0, len(class_names))``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(f"images must be a float32 (N, C, H, W) tensor; got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be an int64 ({self.images.shape[0]},) tensor; got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.class_names):
            raise ValueError(f"labels must be in [0, {len(self.class_names)}) (one per class name)")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageDataset:
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return ImageDataset(self.images[index].contiguous(), self.labels[index].contiguous(), self.class_names)

    def fingerprint(self) -> str:
        """SHA-256 of the pixels, labels, shape and class names: the key of caches built from this set
        (the metrics' classifier) and the check that a resumed run reads the same images."""
        h = hashlib.sha256()
        h.update(json.dumps({"shape": list(self.images.shape), "classes": list(self.class_names)}).encode())
        h.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass
class ImageData:
    """The two splits and what loading found: ``summary`` holds ``source``, ``path``, ``found``
    (candidate files), ``loaded``, ``skipped`` (unreadable, ``found = loaded + skipped``),
    ``skipped_files`` (``"name: reason"``), ``ignored`` (files with other suffixes), ``classes``,
    ``train``, ``val`` and ``image_shape``."""

    train: ImageDataset
    val: ImageDataset
    summary: dict[str, Any]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # shipped inside scikit-learn: no download

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)  # (1797, 8, 8) in 0..16, (1797,)


def digits_images(image_size: int = DIGITS_SIZE, channels: int = 1,
                  interpolation: str = "bilinear") -> ImageDataset:
    """All 1,797 sklearn digits as an :class:`ImageDataset` (x/8 − 1, upsampled to ``image_size``)."""
    raw, target = _digits_raw()
    x = torch.from_numpy(raw / (DIGITS_MAX / 2) - 1.0).unsqueeze(1)  # (N, 1, 8, 8) in [-1, 1]
    if image_size != DIGITS_SIZE:
        align = None if interpolation == "nearest" else False
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation, align_corners=align)
        x = x.clamp(-1.0, 1.0)  # bicubic overshoots; nearest and bilinear stay inside
    x = x.expand(-1, channels, -1, -1).contiguous()  # (N, C, S, S)
    return ImageDataset(x.float(), torch.from_numpy(target), tuple(str(i) for i in range(10)))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int,
                     class_names: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, val)`` indices with each class's share kept in both (sklearn's
    ``train_test_split(stratify=labels, random_state=seed)``). ``val_fraction`` 0: no validation."""
    n = len(labels)
    if val_fraction == 0.0:
        return np.arange(n), np.arange(0)
    counts = np.bincount(labels, minlength=len(class_names))
    for k, c in enumerate(counts):
        if c < 2:
            name = class_names[k] if k < len(class_names) else str(k)
            raise ValueError(f"class {name!r} has {c} image(s); a stratified split (data.val_fraction="
                             f"{val_fraction}) needs at least 2 per class, or set data.val_fraction: 0")
    n_val = int(np.ceil(val_fraction * n))
    k = int((counts > 0).sum())
    if n_val < k or n - n_val < k:
        raise ValueError(f"data.val_fraction={val_fraction} of {n} images gives {n_val} validation and "
                         f"{n - n_val} training images; a stratified split needs at least one per class "
                         f"({k}) in each")
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(np.arange(n), test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def load_images(config: ImageDataConfig | dict[str, Any] | None = None) -> ImageData:
    """Read the configured images and split them (module docstring). Unreadable folder files are
    skipped and named in a warning and in ``summary["skipped_files"]``; a folder with no readable
    image is a ValueError naming it."""
    if config is None:
        config = ImageDataConfig()
    elif isinstance(config, dict):
        config = ImageDataConfig.from_dict(config)
    if config.source == "digits":
        full = digits_images(config.image_size, config.channels, config.interpolation)
        summary: dict[str, Any] = {"source": "digits", "path": None, "found": len(full), "loaded": len(full),
                                   "skipped": 0, "skipped_files": [], "ignored": 0}
    else:
        images, labels, class_names, summary = read_image_folder(config)
        full = ImageDataset(images, labels, class_names)
    train_idx, val_idx = stratified_split(full.labels.numpy(), config.val_fraction, config.seed, full.class_names)
    train, val = full.subset(train_idx), full.subset(val_idx)
    summary.update(classes=full.num_classes, train=len(train), val=len(val), image_shape=list(full.image_shape))
    return ImageData(train, val, summary)


class ImageBatches:
    """Endless shuffled ``(images (B, C, H, W), labels (B,))`` batches over a dataset, resumable exactly.

    The order is :class:`~genmodels.data.packing.BatchSampler`'s (a seeded permutation per epoch,
    incomplete last batch dropped, ranks taking slices of the global batch); ``state_dict`` adds the
    dataset's fingerprint, so resuming on other images is refused rather than silently continued.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.dataset = dataset
        self.sampler = BatchSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.sampler)  # steps per epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(next(self.sampler))
        return self.dataset.images[index], self.dataset.labels[index]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.dataset.fingerprint()
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("fingerprint")
        if saved is not None and saved != self.fingerprint():
            raise ValueError("cannot resume the image batches: the images differ from the run's "
                             f"(fingerprint {str(saved)[:12]}… saved, {self.fingerprint()[:12]}… now)")
        self.sampler.load_state_dict({k: v for k, v in state.items() if k != "fingerprint"})
