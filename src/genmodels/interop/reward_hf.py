"""transformers' ``LlamaForSequenceClassification(num_labels=1)`` ↔ genmodels' reward model
(:class:`genmodels.models.score_head.RewardModel`: a decoder and a score head).

Layout facts: the decoder's keys are ``LlamaForCausalLM``'s ``model.*`` (:class:`.decoder_hf.LlamaConverter`);
there is no ``lm_head``, and the head is ``score.weight`` ``(num_labels, hidden_size)``, no bias. The score is read
at the rightmost token that is not ``pad_token_id`` (which config.json carries), as :mod:`..models.score_head`
does. Our decoder is built with a tied head (the embedding: no weight the folder lacks; the LM head is unused
by a reward model); an exported model writes ``tie_word_embeddings: false`` and no ``lm_head``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..files import read_json, write_safetensors
from ..models.score_head import RewardModel
from .base import ConversionError, take
from .decoder_hf import LlamaConverter
from .hf import build_from_hf_state, read_hf_weights

ARCH = "LlamaForSequenceClassification"
SCORE = "score.weight"


def is_reward_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a transformers sequence-classification Llama (config.json names it)."""
    file = Path(path) / "config.json"
    return file.is_file() and ARCH in (read_json(file).get("architectures") or [])


def load_reward_hf(path: str | Path, build: Callable) -> RewardModel:
    """Our reward model from a local ``LlamaForSequenceClassification`` folder with one label; every key and
    shape checked (nothing loaded partially), errors naming the folder. ``build(config)`` builds the decoder."""
    path = Path(path)
    hf = read_json(path / "config.json")
    if ARCH not in (hf.get("architectures") or []):
        raise ConversionError(f"{path}: config.json's architectures {hf.get('architectures')} do not name {ARCH}")
    labels = hf.get("num_labels", len(hf.get("id2label") or {0: None}))
    if labels != 1:
        raise ConversionError(f"{path}: num_labels={labels}; a reward model has one score (num_labels=1)")
    conv = LlamaConverter()
    cfg = conv.config_from_hf({**hf, "tie_word_embeddings": True})
    cfg.extra = {**cfg.extra, "hf_architecture": ARCH}
    sd = read_hf_weights(path)
    score = take(sd, SCORE)
    if tuple(score.shape) != (1, cfg.d_model):
        raise ConversionError(f"{path}: {SCORE} has shape {tuple(score.shape)}, want (1, {cfg.d_model})")
    lm = build_from_hf_state(conv, cfg, sd, build, str(path))
    model = RewardModel(lm, pad_token_id=cfg.pad_token_id)
    with torch.no_grad():
        model.score.weight.copy_(score.to(model.score.weight.dtype))
    return model


def export_reward_hf(model: RewardModel, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers loads as ``LlamaForSequenceClassification``
    with equal scores."""
    path = Path(path)
    conv = LlamaConverter()
    cfg = model.config
    hf = conv.config_to_hf(cfg)
    hf.update({"architectures": [ARCH], "tie_word_embeddings": False, "pad_token_id": model.pad_token_id,
               "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})
    sd = conv.state_to_hf({k: v.detach().cpu() for k, v in model.lm.state_dict().items()}, cfg)
    sd.pop("lm_head.weight", None)
    sd[SCORE] = model.score.weight.detach().cpu()
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.contiguous() for k, v in sd.items()}, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return path
