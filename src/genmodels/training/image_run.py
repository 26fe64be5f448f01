"""The ``images`` data kind (diffusion, GANs): the recipe's image ``data:`` and ``sample:`` sections, the
images loaded and split, batches ``{"images": (B, C, H, W), "labels": (B,)}`` drawn by the shared,
checkpointed BatchSampler; the run's fingerprint is the images' (a resume on other images is refused).
Evaluation, the sample grid and the command that samples again are the image objectives'
(:mod:`genmodels.objectives.images`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..data.images import ImageData, ImageDataConfig, ImageDataset, load_images
from ..data.kinds import DataKind, register_data_kind
from ..values import integer, seed


@dataclass
class ImageSampleConfig:
    """The ``sample:`` section of an image recipe: the grid written at the end of a run, and the
    sampler the evaluations use (null: the sampler's default; a GAN takes none of steps, scheduler, guidance)."""

    n: int = 64  # images in the end-of-run grid (classes in turn)
    steps: int | None = None  # diffusion: sampler steps (default 25)
    scheduler: str | None = None  # diffusion: ddim | ddpm | dpm (default ddim)
    guidance: float | None = None  # diffusion: classifier-free guidance scale w (default 1: none)
    seed: int = 0

    def validate(self, model_config) -> None:
        """ConfigError naming the sample field that is bad, or that the model's sampler does not take."""
        from ..generation.images import check_sample_settings
        integer("sample.n", self.n, 1)
        seed("sample.seed", self.seed)
        check_sample_settings(model_config, {"steps": self.steps, "scheduler": self.scheduler,
                                             "guidance": self.guidance}, "sample.")


@dataclass
class ImageSplit:
    """A split as the trainer reads it: ``get_batch(index) -> (images, labels)`` and a length."""

    dataset: ImageDataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get_batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return self.dataset.images[index], self.dataset.labels[index]

    def batch(self, index) -> dict[str, torch.Tensor]:
        x, y = self.get_batch(index)
        return {"images": x, "labels": y}


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


def prepare_image_data(dc: ImageDataConfig, say) -> ImageRunData:
    """Load and split the recipe's images."""
    data = load_images(dc)
    s = data.summary
    say(f"data: {s['source']} {s['train']} train / {s['val']} validation images {tuple(s['image_shape'])}, "
        f"{s['classes']} classes" + (f", {s['skipped']} unreadable file(s) skipped" if s["skipped"] else ""))
    if len(data.train) == 0:
        raise ConfigError("data: no training images")
    return ImageRunData(data, ImageSplit(data.train), ImageSplit(data.val))


def _describe(dc: ImageDataConfig) -> str:
    return f"image set (data.source={dc.source!r}, data.path={dc.path!r}, ...)"


IMAGES = register_data_kind(DataKind(name="images", config_class=ImageDataConfig, sample_class=ImageSampleConfig,
                                     prepare=prepare_image_data, describe=_describe))


