"""A folder of images read with Pillow: labels from sub-folder names, unreadable files named.

Layout (torchvision's ``ImageFolder``): ``root/<class>/**/<image>``; the classes are the sorted
names of the sub-folders that hold at least one image file. A folder whose images all sit directly
in ``root`` is one class named after the folder; images both in ``root`` and in sub-folders are
refused (which class would the top-level ones be?). Files are matched by suffix (case-insensitive);
hidden files and folders (``.name``) are left out.

Each image is decoded, converted to ``L`` (1 channel) or ``RGB`` (3; an alpha channel is dropped),
then resized to ``S×S``: with ``crop`` the shorter side goes to ``S`` and the centre is cut out
(``PIL.ImageOps.fit``: one resize of the centre box, whose filter reads the pixels just outside the
box, as resizing the whole image before cropping would); without it the image is stretched.
Pixels x in 0..255 become x/127.5 − 1 in [-1, 1].

The settings come from a ``data:`` section (:class:`~genmodels.data.images.ImageDataConfig`: ``path``,
``extensions``, ``image_size``, ``channels``, ``interpolation``, ``crop``); :mod:`genmodels.data.images`
makes the dataset of what this module reads (this module imports nothing of it).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["image_files", "read_image_folder"]

_WARN_NAMES = 20  # the warning names this many files; the summary names all
_RESAMPLE = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(root: Path, extensions: list[str]) -> tuple[list[tuple[Path, str]], list[str], int]:
    """``([(file, class name)], sorted class names, ignored)``: the image files under ``root`` by
    suffix, each with its class (its top-level sub-folder), and the count of other visible files."""
    suffixes = {e.lower() for e in extensions}
    files = sorted(p for p in root.rglob("*") if p.is_file() and _visible(p, root))
    images = [p for p in files if p.suffix.lower() in suffixes]
    ignored = len(files) - len(images)
    top = [p for p in images if p.parent == root]
    nested = [p for p in images if p.parent != root]
    if top and nested:
        raise ValueError(f"image folder {root} holds images both directly ({top[0].name}, …) and in "
                         f"class sub-folders ({nested[0].relative_to(root)}, …); put every image in a "
                         "class sub-folder, or all of them at the top for one class")
    if top:
        return [(p, root.name) for p in top], [root.name], ignored
    labelled = [(p, p.relative_to(root).parts[0]) for p in nested]
    return labelled, sorted({c for _, c in labelled}), ignored


def _read(path: Path, config: Any) -> np.ndarray:
    """One image as uint8 ``(S, S, C)``; Pillow's errors propagate (the caller names the file)."""
    from PIL import Image, ImageOps

    resample = getattr(Image.Resampling, _RESAMPLE[config.interpolation])
    size = (config.image_size, config.image_size)
    with Image.open(path) as im:
        im.load()
        im = im.convert("L" if config.channels == 1 else "RGB")
        im = ImageOps.fit(im, size, method=resample) if config.crop else im.resize(size, resample=resample)
        a = np.asarray(im, dtype=np.uint8)
    return a.reshape(config.image_size, config.image_size, config.channels)


def read_image_folder(config: Any) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], dict[str, Any]]:
    """All readable images of ``config.path`` (an ImageDataConfig) as ``(images (N, C, S, S) float32 in
    [-1, 1], labels (N,) int64, class names)`` and a summary (see :class:`~genmodels.data.images.ImageData`).

    A file Pillow cannot decode (not an image, truncated, too large) is skipped, listed by its path
    relative to the folder with the reason in ``summary["skipped_files"]`` and in a warning, and
    counted in ``summary["skipped"]``. A missing folder, one with no image files, or one whose
    image files are all unreadable is a ValueError naming it.
    """
    from PIL import Image

    root = Path(config.path).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise ValueError(f"data.path={config.path!r}: no such folder")
    labelled, class_names, ignored = image_files(root, config.extensions)
    if not labelled:
        raise ValueError(f"image folder {root} holds no image files (suffixes {', '.join(config.extensions)})")
    index = {c: i for i, c in enumerate(class_names)}
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    for path, cls in labelled:
        try:
            arrays.append(_read(path, config))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            skipped.append(f"{path.relative_to(root)}: {type(e).__name__}: {e}")
            continue
        labels.append(index[cls])
    if skipped:
        listed = "; ".join(skipped[:_WARN_NAMES])
        more = f"; … and {len(skipped) - _WARN_NAMES} more" if len(skipped) > _WARN_NAMES else ""
        warnings.warn(f"skipped {len(skipped)} of {len(labelled)} image files in {root} that could not be "
                      f"read: {listed}{more} (all in summary['skipped_files'])", stacklevel=3)
    if not arrays:
        raise ValueError(f"image folder {root}: none of its {len(labelled)} image files could be read "
                         f"(first: {skipped[0]})")
    kept = sorted(set(labels))
    if len(kept) < len(class_names):  # a class whose every file was unreadable: renumber the rest
        lost = [class_names[i] for i in range(len(class_names)) if i not in kept]
        warnings.warn(f"image folder {root}: no readable image in class folder(s) {', '.join(lost)}; "
                      "they are left out of the classes", stacklevel=3)
        remap = {old: new for new, old in enumerate(kept)}
        labels = [remap[y] for y in labels]
        class_names = [class_names[i] for i in kept]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (N, C, S, S) in 0..255
    x = (x / 127.5 - 1.0).contiguous()
    summary = {"source": "folder", "path": str(root), "found": len(labelled), "loaded": len(arrays),
               "skipped": len(skipped), "skipped_files": skipped, "ignored": ignored}
    return x, torch.tensor(labels, dtype=torch.int64), tuple(class_names), summary
