"""The scoring classifier: a small CNN trained once on the real training split, cached by the data.

Every offline image metric (:mod:`genmodels.metrics`) looks at images through it: its logits give
the class accuracy of conditional samples, its penultimate layer (``features``, 128-d after a ReLU)
is the feature space of KID, precision/recall and FID — the "classifier-FID/KID" recipe that
replaces the Inception network, whose weights would have to be downloaded (reference/diffusion.md §5).

Architecture (any ``C×S×S`` input, S ≥ 2; images above ``input_size`` (16) are first mean-pooled down
to it, which bounds the cost: 15 epochs take ~2 s at 8×8 and ~40 s at 16×16 on one core)::

    conv3×3(C→w) · ReLU · conv3×3(w→2w) · ReLU · maxpool 2 · conv3×3(2w→2w) · ReLU · mean-pool to 4×4
    → Linear(16·2w → 128) · ReLU   = features φ(x)            (N, 128)
    → Linear(128 → K)           = logits                  (N, K)

Training is bounded by epochs (Adam, constant learning rate, seeded init and order), so it costs
the same on any machine. The result is cached under
``<cache>/metrics/classifier-<key>/`` (``$GENMODELS_CACHE`` or ``~/.cache/genmodels``), where the key
hashes the training and validation images (:meth:`ImageDataset.fingerprint`) and the settings; the
weights' SHA-256 sits in ``meta.json``, written last. An entry that is missing, unreadable, of an old
format, for other data or settings, or whose weights do not match their digest, is rebuilt with a
warning, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.images import ImageDataset
from ..files import atomic_write_bytes, file_sha256

__all__ = ["ClassifierSettings", "ImageClassifier", "classifier_accuracy", "default_cache_root",
           "load_or_train_classifier", "train_classifier"]

_CACHE_FORMAT = 1
_WEIGHTS, _META = "model.safetensors", "meta.json"
_BATCH = 512  # rows per forward when scoring
_GRID = 4  # the last feature map is mean-pooled to 4×4 (keeps where strokes are, not only what)


@dataclass(frozen=True)
class ClassifierSettings:
    """What the classifier is and how it is trained (all part of the cache key)."""

    width: int = 32
    input_size: int = 16  # larger images are mean-pooled down to this side first
    feature_dim: int = 128
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class ImageClassifier(nn.Module):
    """The CNN of the module docstring; ``features(x)`` is the metrics' feature space."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128,
                 input_size: int = 16) -> None:
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim,
                       "input_size": input_size}
        self.input_size = input_size
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(_GRID), nn.Flatten(),
            nn.Linear(2 * width * _GRID * _GRID, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): ``(N, C, S, S)`` -> ``(N, feature_dim)``."""
        if x.shape[-1] > self.input_size or x.shape[-2] > self.input_size:
            x = nn.functional.adaptive_avg_pool2d(x, self.input_size)  # (N, C, input_size, input_size)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, K)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, batch: int = _BATCH) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, F), logits (N, K))`` in float32 on the CPU, ``batch`` rows at a time, in eval mode."""
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for chunk in images.split(batch):
            f = self.features(chunk.to(device, torch.float32))
            feats.append(f.cpu())
            logits.append(self.head(f).cpu())
        return torch.cat(feats), torch.cat(logits)


def classifier_accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose arg-max class is ``labels``."""
    if len(images) == 0:
        return float("nan")
    _, logits = model.embed(images)
    return float((logits.argmax(-1) == labels.cpu()).float().mean())


def train_classifier(train: ImageDataset, settings: ClassifierSettings = ClassifierSettings()) -> ImageClassifier:
    """Fit the classifier on ``train`` for ``settings.epochs`` epochs (cross-entropy, Adam); deterministic
    for a given seed and thread count."""
    if train.num_classes < 2:
        raise ValueError(f"the scoring classifier needs at least 2 classes; the data has {train.num_classes}")
    g = torch.Generator().manual_seed(settings.seed)
    # all of it under a forked RNG: dropout draws from the global generator, and a training run that scores its
    # samples must follow the same random stream whether this classifier was cached or trained on the spot
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = ImageClassifier(train.image_shape[0], train.num_classes, settings.width, settings.feature_dim,
                                settings.input_size)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        model.train()
        n = len(train)
        for _ in range(settings.epochs):
            order = torch.randperm(n, generator=g)
            for idx in order.split(settings.batch_size):
                loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model.eval()


def default_cache_root() -> Path:
    """``$GENMODELS_CACHE`` if set, else ``~/.cache/genmodels`` (the token caches' root)."""
    from ..data.token_cache import default_cache_root as root

    return root()


def _cache_key(train: ImageDataset, val: ImageDataset, settings: ClassifierSettings) -> str:
    payload = {"format": _CACHE_FORMAT, "train": train.fingerprint(), "val": val.fingerprint(),
               "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load_cached(folder: Path, key: str) -> tuple[ImageClassifier | None, dict[str, Any], str | None]:
    """``(model, meta, None)`` for a sound entry, else ``(None, {}, why)`` (``why`` "missing" if absent)."""
    from safetensors.torch import load_file

    weights, meta_path = folder / _WEIGHTS, folder / _META
    if not (weights.is_file() and meta_path.is_file()):
        return None, {}, "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_FORMAT or meta.get("key") != key:
            return None, {}, f"{meta_path} is for another format or data"
        if file_sha256(weights) != meta["sha256"]:
            return None, {}, f"{weights} does not match the SHA-256 in {meta_path} (corrupted)"
        model = ImageClassifier(**meta["model"])
        model.load_state_dict(load_file(weights), strict=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        return None, {}, f"{folder} is unreadable ({type(e).__name__}: {e})"
    return model.eval(), meta, None


def load_or_train_classifier(train: ImageDataset, val: ImageDataset,
                             settings: ClassifierSettings = ClassifierSettings(),
                             cache_dir: str | Path | None = None) -> tuple[ImageClassifier, dict[str, Any]]:
    """The classifier for these splits: from the cache when a sound entry exists, else trained (and
    cached). Returns ``(model, info)``; ``info`` has ``val_accuracy`` (on real validation images),
    ``cached`` (whether it came from the cache), ``path`` and ``key``. The caller's random stream is left as
    it was either way (a cached or a freshly trained classifier must not change what a training run draws
    next)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    key = _cache_key(train, val, settings)
    folder = root / "metrics" / f"classifier-{key[:24]}"
    with torch.random.fork_rng(devices=[]):  # building the module to load into draws its random init
        model, meta, why = _load_cached(folder, key)
    if model is not None:
        return model, {"val_accuracy": meta["val_accuracy"], "cached": True, "path": str(folder), "key": key}
    if why != "missing":
        warnings.warn(f"rebuilding the metrics classifier: {why}", stacklevel=2)
    model = train_classifier(train, settings)
    accuracy = classifier_accuracy(model, val.images, val.labels)
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    (folder / _META).unlink(missing_ok=True)  # an old meta must not vouch for the new weights mid-write
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write_bytes(folder / _WEIGHTS, blob)
    meta = {"format": _CACHE_FORMAT, "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
            "model": model.config, "settings": asdict(settings),
            "val_accuracy": None if np.isnan(accuracy) else accuracy,
            "train_images": len(train), "val_images": len(val)}
    atomic_write_bytes(folder / _META, json.dumps(meta, indent=2, sort_keys=True).encode())
    return model, {"val_accuracy": meta["val_accuracy"], "cached": False, "path": str(folder), "key": key}
