"""Architectures assembled from :mod:`genmodels.nn` by a config."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .decoder import DecoderLM
from .encoder import EncoderModel
from .seq2seq import Seq2SeqCache, Seq2SeqLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {"decoder": DecoderLM, "encoder": EncoderModel, "seq2seq": Seq2SeqLM}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model class of ``config.family``."""
    if config.family not in MODEL_CLASSES:
        raise ValueError(f"model family {config.family!r} is not available; have {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[config.family](config)


__all__ = ["DecoderLM", "EncoderModel", "Seq2SeqCache", "Seq2SeqLM", "MODEL_CLASSES", "build_model"]
