"""What words mean, offline: their all-MiniLM-L6-v2 sentence vectors (the installed model; genmodels.embed), cached.

SPAE (Yu et al. 2023) pulls its top layer toward the tokens CLIP finds closest to the image; offline, with no
CLIP, the image's meaning is its class word ("seven") and "close" is MiniLM cosine similarity (a stated
deviation, ../shared/reference/diffusion.md §6). This module gives:

    word_vectors(words)                   (N, 384) unit vectors, cached under <cache>/spae/minilm-<key>.safetensors
    relevance(words, class_words)         (C, K) cosine similarity of each class word to each codebook word
    semantic_targets(rel, top_k)          (C, K) the paper's target distribution: uniform over the top_k words
    nearest_class(words, class_words)     the class whose word is nearest each word (the top-word measurement)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MODEL: dict[str, torch.nn.Module] = {}


def _minilm() -> torch.nn.Module:
    if "minilm" not in _MODEL:
        from .interop.lm_vocab import installed_model
        from .io import load
        _MODEL["minilm"] = load(installed_model("minilm"))
    return _MODEL["minilm"]


def word_vectors(words: list[str] | tuple[str, ...], cache_root: Path | None = None) -> torch.Tensor:
    """MiniLM's unit sentence vectors of ``words`` (N, 384), computed once per word list and cached."""
    from safetensors.torch import load_file, save_file

    from .metrics.classifier import default_cache_root
    key = hashlib.sha256(json.dumps(list(words)).encode()).hexdigest()[:16]
    f = Path(cache_root or default_cache_root()) / "spae" / f"minilm-{key}.safetensors"
    if f.is_file():
        return load_file(str(f))["vectors"]
    from .embed import embed
    vectors = embed(_minilm(), list(words)).float()  # (N, 384), normalised by the model's recipe
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + f".tmp{id(vectors)}")
    save_file({"vectors": vectors.contiguous()}, str(tmp))
    tmp.replace(f)
    return vectors


def relevance(words: list[str], class_words: tuple[str, ...], cache_root: Path | None = None) -> torch.Tensor:
    """cos(MiniLM(class word c), MiniLM(word k)): (C, K)."""
    return word_vectors(class_words, cache_root) @ word_vectors(words, cache_root).t()


def semantic_targets(rel: torch.Tensor, top_k: int) -> torch.Tensor:
    """(C, K) rows summing to 1: mass 1/top_k on each class's ``top_k`` most relevant words."""
    top = rel.topk(top_k, dim=-1).indices  # (C, top_k)
    return torch.zeros_like(rel).scatter_(1, top, 1.0 / top_k)


def nearest_class(words: list[str], class_words: tuple[str, ...], cache_root: Path | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class ids (N,), similarity to each class word (N, C))`` of each word in ``words``."""
    sim = word_vectors(words, cache_root) @ word_vectors(class_words, cache_root).t()  # (N, C)
    return sim.argmax(-1), sim
