"""Tiny models and a randomiser shared by the core tests (no reference library needed)."""
from __future__ import annotations

import torch

import genmodels

VOCAB = 128


def randomise(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: default inits (norm weights 1, biases 0) hide bugs.

    Matrices, embeddings and biases ~ N(0, std); 1-D weights (the norm scales) ~ 1 + N(0, std). Centring
    the scales on 1 keeps the signal alive through the layers: with scales ~ N(0, 0.2) a tiny GPT-2
    greedily repeats one token, and generation tests could not tell a position bug from a correct run.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g) * std
            p.copy_(r + 1.0 if p.dim() == 1 and name.endswith("weight") else r)
    return model


def tiny_config(kind: str = "llama", **kw) -> genmodels.ModelConfig:
    """A 2-layer, 64-wide model of the named family layout (vocab 128)."""
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    if kind == "llama":
        return genmodels.preset("llama-tiny", **{**base, "n_kv_heads": 2, "d_ff": 176, **kw})
    if kind == "gpt2":
        return genmodels.preset("gpt2-tiny", **{**base, "d_ff": 256, **kw})
    raise ValueError(kind)


def tiny_model(kind: str = "llama", seed: int = 0, **kw) -> torch.nn.Module:
    return randomise(genmodels.build_model(tiny_config(kind, **kw)), seed=seed).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_pad_mask(lengths: list[int], total: int) -> torch.Tensor:
    """(B, total) 0/1 mask with each row's ``total - length`` leading pads."""
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, total - n:] = 1
    return mask
