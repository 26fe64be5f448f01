"""Images as words of a frozen LM, and back: the public face of an SPAE model (models/spae/).

    image_to_words(model, images) -> [[words of layer 1], [layer 2], …] per image   (1 + 4 + 16 for 8×8 digits)
    words_to_image(model, words, depth=None) -> images (N, C, H, W) in [-1, 1]       (any depth: the first layers)
    reconstructions(model, images) -> (L + 1, N, C, H, W): the images, then each depth's reconstruction
    reconstruction_scores(model, images, labels, classifier) -> PSNR and classifier accuracy per depth
    save_reconstructions(model, images, path) -> one PNG: a row per depth under the source row

PSNR of images in [-1, 1] (peak-to-peak 2): 10·log10(2² / MSE), the mean over images of each image's value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .data.words import UNK, words_of


def _check_model(model, where: str | None = None) -> None:
    """Refuse (naming ``where``, the path it was loaded from, when given) a model that is not an SPAE with words."""
    if getattr(model, "family", None) != "spae":
        raise ValueError(f"an SPAE model is needed (genmodels.load of an spae run's final/); got "
                         f"{where + ': ' if where else ''}a model of family {getattr(model, 'family', None)!r}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the SPAE model has no word list (its folder lacks tokenizer.json); train it with "
                         "train.objective spae, which attaches the lexicon")


def _images(model, images: torch.Tensor) -> torch.Tensor:
    c = model.config
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (
            c.channels, c.image_size, c.image_size):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (N, {c.channels}, {c.image_size}, {c.image_size}) in [-1, 1]; got {shape}")
    return images.to(next(model.parameters()).device, torch.float32)


def image_to_words(model, images: torch.Tensor) -> list[list[list[str]]]:
    """Each image's pyramid: per layer, its words (row-major over the layer's grid)."""
    _check_model(model)
    words = words_of(model.tokenizer)
    ids = model.encode(_images(model, images))  # per layer (N, g²)
    return [[[words[k] for k in layer[n].tolist()] for layer in ids] for n in range(images.shape[0])]


def words_to_image(model, words: Sequence[Sequence[Sequence[str]]] | Sequence[Sequence[str]],
                   depth: int | None = None) -> torch.Tensor:
    """Images from pyramids of words: per image, per layer its words (or a flat list of 1 + 4 + … words: the
    layers in order). ``depth``: the first layers only (default: all the pyramids give, the same for each)."""
    _check_model(model)
    grids = model.config.levels
    vocab = model.tokenizer.get_vocab()
    per_image = []
    for i, pyramid in enumerate(words):
        flat = [w for layer in pyramid for w in layer] if pyramid and not isinstance(pyramid[0], str) else list(pyramid)
        bad = [w for w in flat if w not in vocab or w == UNK]
        if bad:
            raise ValueError(f"image {i}: {bad[0]!r} is not a word of the codebook ({len(vocab) - 1} words)")
        per_image.append([vocab[w] for w in flat])
    layers = _split(per_image, grids, depth)
    device = next(model.parameters()).device
    ids = [torch.tensor([row[j] for row in layers], dtype=torch.int64, device=device) for j in range(len(layers[0]))]
    return model.decode(ids)


def _split(per_image: list[list[int]], grids: Sequence[int], depth: int | None) -> list[list[list[int]]]:
    """Flat id lists -> per image, per layer (the first ``depth`` layers; each image as long as the others)."""
    sizes = [g * g for g in grids]
    n = len(per_image[0]) if per_image else 0
    if not per_image or any(len(p) != n for p in per_image):
        raise ValueError("give every image the same number of words")
    full = [sum(sizes[:j + 1]) for j in range(len(sizes))]
    if n not in full:
        raise ValueError(f"{n} words do not fill whole layers; a pyramid of {grids} takes one of {full}")
    depth = full.index(n) + 1 if depth is None else depth
    if not 1 <= depth <= full.index(n) + 1:
        raise ValueError(f"depth={depth} must be in 1 … {full.index(n) + 1} (the layers given)")
    out = []
    for p in per_image:
        layers, at = [], 0
        for s in sizes[:depth]:
            layers.append(p[at:at + s])
            at += s
        out.append(layers)
    return out


def read_image(model, path: str | Path) -> torch.Tensor:
    """An image file as the model takes it: (1, C, S, S) in [-1, 1] (grey or RGB, resized to ``image_size`` with
    bilinear filtering, as a folder data set reads it: data/image_folder.py); light ink on dark, as the digits."""
    from types import SimpleNamespace

    from .data.image_folder import _read
    c = model.config
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        a = _read(p, SimpleNamespace(image_size=c.image_size, channels=c.channels, interpolation="bilinear",
                                     crop=False))  # (S, S, C) uint8
    except Exception as e:  # Pillow's errors: name the file, one line
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@torch.no_grad()
def reconstructions(model, images: torch.Tensor) -> torch.Tensor:
    """(L + 1, N, C, H, W): the images, then their reconstructions from the first 1, 2, …, L layers."""
    x = _images(model, images)
    ids = model.encode(x)
    return torch.stack([x] + [model.decode(ids, d) for d in range(1, len(ids) + 1)]).cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: 10·log10(4 / MSE) for images in [-1, 1] (N, …) -> (N,)."""
    mse = (a - b).pow(2).flatten(1).mean(-1).clamp_min(1e-12)
    return 10.0 * torch.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_scores(model, images: torch.Tensor, labels: torch.Tensor | None = None,
                          classifier=None) -> dict[str, float]:
    """``psnr_<d>`` (mean dB) and, with a classifier (metrics/classifier.py), ``accuracy_<d>`` — the share of
    reconstructions classified as their source's label — for each depth d = 1 … L."""
    from .metrics.classifier import classifier_accuracy
    rec = reconstructions(model, images)
    out = {}
    for d in range(1, rec.shape[0]):
        out[f"psnr_{d}"] = float(psnr(rec[d], rec[0]).mean())
        if classifier is not None and labels is not None:
            out[f"accuracy_{d}"] = classifier_accuracy(classifier, rec[d], labels.cpu())
    return out


def save_reconstructions(model, images: torch.Tensor, path: str | Path, overwrite: bool = False) -> Path:
    """One PNG: the source images in the top row, each depth's reconstructions in a row below."""
    from .generation.images import save_grid
    rec = reconstructions(model, images)  # (L + 1, N, C, H, W)
    return save_grid(rec.flatten(0, 1), path, nrow=rec.shape[1], overwrite=overwrite)
