"""One entry point for scoring generated images offline: :func:`evaluate_images`.

Generated images and the real training images both go through the scoring classifier
(:mod:`.classifier`, trained once on the real training split and cached); then, in its feature space:

- ``accuracy``: share of conditional samples the classifier assigns to the class they were asked
  for (only when ``labels`` is given). Accuracy alone rewards collapse: read it with recall and KID;
- ``kid`` / ``kid_std``: classifier-KID (:mod:`.kid`, Bińkowski et al. 2018);
- ``precision`` / ``recall``: k-NN manifolds, k = 3 (:mod:`.precision_recall`, Kynkäänniemi et al. 2019);
- ``fid``: classifier-FID (:mod:`.fid`, Heusel et al. 2017), when ``fid=True``;
(the features are scaled by :func:`feature_scale`, fixed by the real images.)

- ``classifier_val_accuracy``: the classifier's accuracy on the real validation images — how far
  its judgement can be trusted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.images import ImageData, ImageDataConfig, load_images
from ..generation.checks import check_finite_images
from .classifier import ClassifierSettings, ImageClassifier, load_or_train_classifier
from .fid import frechet_distance
from .kid import kid
from .precision_recall import precision_recall

__all__ = ["evaluate_images", "feature_scale", "min_samples", "reference_data"]

PR_K = 3  # precision/recall's k-th nearest neighbour (Kynkäänniemi et al. 2019)


def min_samples(k: int = PR_K) -> int:
    """The fewest generated images :func:`evaluate_images` scores: precision/recall's k-th neighbour needs
    k + 1 of them (KID needs 2). A recipe or command checks its count against it before any work."""
    return k + 1


def reference_data(reference: ImageData | ImageDataConfig | dict[str, Any] | None) -> ImageData:
    """``reference`` as loaded splits: ImageData as is, a config (or its dict) loaded, None the digits default."""
    if isinstance(reference, ImageData):
        return reference
    if reference is None or isinstance(reference, (ImageDataConfig, dict)):
        return load_images(reference)
    raise TypeError(f"reference must be ImageData, an ImageDataConfig, a data-section dict or None; "
                    f"got {type(reference).__name__}")


def feature_scale(real: torch.Tensor) -> float:
    """1/√(mean ‖φ‖²/d) over the real features: after it the real features have E[φᵀφ/d] = 1, the scale
    KID's kernel (φᵀψ/d + 1)³ is made for (Inception's pooled features are near it). Fixed by the
    reference and the classifier only, so every generator is measured in the same space."""
    return float(real.double().square().sum(1).mean().div(real.shape[1]).rsqrt())


def _check(samples: torch.Tensor, labels: torch.Tensor | None, data: ImageData) -> None:
    shape = data.train.image_shape
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or tuple(samples.shape[1:]) != shape:
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must be a (N, {shape[0]}, {shape[1]}, {shape[2]}) tensor like the reference "
                         f"images; got {got}")
    check_finite_images(samples, "samples")
    if labels is None:
        return
    k = data.train.num_classes
    if not isinstance(labels, torch.Tensor) or labels.shape != (samples.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({samples.shape[0]},), one per sample")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        raise ValueError(f"labels must be class indices in [0, {k}); got {int(labels.min())}..{int(labels.max())}")


def evaluate_images(samples: torch.Tensor, labels: torch.Tensor | None = None,
                    reference: ImageData | ImageDataConfig | dict[str, Any] | None = None, *,
                    classifier: ImageClassifier | None = None,
                    settings: ClassifierSettings = ClassifierSettings(),
                    cache_dir: str | Path | None = None, kid_subsets: int = 100,
                    kid_subset_size: int | None = None, k: int = PR_K, fid: bool = True,
                    seed: int = 0) -> dict[str, float | int | None]:
    """Score ``samples (N, C, H, W)`` in [-1, 1] (with the classes they were asked for, ``labels (N,)``)
    against ``reference`` (default: the digits splits). Returns a dict of floats (module docstring)
    plus ``n_samples`` and ``n_reference``; ``classifier`` skips the cache look-up."""
    data = reference_data(reference)
    _check(samples, labels, data)
    info: dict[str, Any] = {"val_accuracy": None}
    if classifier is None:
        classifier, info = load_or_train_classifier(data.train, data.val, settings, cache_dir)
    real, _ = classifier.embed(data.train.images)  # (N_real, F)
    fake, logits = classifier.embed(samples)  # (N, F), (N, K)
    scale = feature_scale(real)
    real, fake = real * scale, fake * scale
    out: dict[str, float | int | None] = {"n_samples": samples.shape[0], "n_reference": len(data.train),
                                          "classifier_val_accuracy": info["val_accuracy"]}
    if labels is not None:
        out["accuracy"] = float((logits.argmax(-1) == labels.cpu()).double().mean())
    out["kid"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size, seed)
    out["precision"], out["recall"] = precision_recall(real, fake, k, seed)
    if fid:
        out["fid"] = frechet_distance(real, fake)
    return out
