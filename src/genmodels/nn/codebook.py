"""A lexical codebook: a frozen language model's token embeddings as a VQ codebook (SPAE, Yu et al. 2023,
arXiv 2306.17842, after VQ-VAE, van den Oord et al. 2017, arXiv 1711.00937).

The codebook is C = {(k, e(k)) | k ∈ T ⊂ vocabulary}: the rows ``vectors`` (K, d_lm) of an LM's input-embedding
matrix for a subset T of its tokens (models/spae/lexicon.py picks T: e.g. whole lower-case words). They are a
*buffer*, never trained. A learned linear map P (d_lm → D) carries them to the encoder's width, so the entry k
the encoder compares against is ê(k) = P·e(k) + b (K, D).

Nearest-neighbour quantisation with the straight-through estimator (VQ-VAE eq. 1–3, β = 0.25 there)::

    k*   = argmin_k ‖z − ê(k)‖²                      (ties: the lowest k)
    z_q  = z + sg(ê(k*) − z)                          forward value ê(k*), gradient dL/dz_q passed to z
    L_vq = ‖sg(z) − ê(k*)‖²  +  β·‖z − sg(ê(k*))‖²      codebook term (trains P only) + commitment (the encoder)

The codebook term is VQ-VAE's middle term; with a frozen table it moves only the projection P (the table
itself has no gradient). Both terms are means over the entries (the pitfall of mean vs sum scaling: they are
per element, like the reconstruction's MSE) and are computed from ``z`` before the straight-through patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Quantized:
    """What :meth:`LexicalCodebook.quantize` gives: the straight-through vectors, the ids, and the two loss terms."""

    z_q: torch.Tensor  # (N, D) forward value ê(k*), gradient to z
    ids: torch.Tensor  # (N,) int64 codebook ids
    codebook: torch.Tensor  # scalar ‖sg(z) − ê‖² (mean)
    commitment: torch.Tensor  # scalar ‖z − sg(ê)‖² (mean; β is the caller's)


def nearest(target: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """argmin_k ‖target_n − table_k‖² for each row: ``target`` (N, D), ``table`` (K, D) -> (N,) int64.

    ‖t − e‖² = ‖t‖² − 2 t·e + ‖e‖²; the ‖t‖² term is the same for every k and is left out."""
    scores = table.pow(2).sum(-1)[None, :] - 2.0 * target @ table.t()  # (N, K)
    return scores.argmin(-1)


class LexicalCodebook(nn.Module):
    """K frozen LM embeddings (``vectors`` (K, d_lm), with each entry's token id in the LM, ``lm_ids`` (K,)) and
    the learned projection P to the encoder width D. Built empty (zeros) from sizes; :meth:`fill` copies a
    lexicon in, and a saved model's state dict carries both buffers, so it loads without the LM."""

    def __init__(self, size: int, lm_dim: int, dim: int):
        super().__init__()
        self.register_buffer("vectors", torch.zeros(size, lm_dim))  # (K, d_lm) e(k): frozen
        self.register_buffer("lm_ids", torch.zeros(size, dtype=torch.int64))  # (K,) the token id of entry k in the LM
        self.proj = nn.Linear(lm_dim, dim)  # P: d_lm -> D (learned)

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def fill(self, vectors: torch.Tensor, lm_ids: torch.Tensor) -> None:
        """Copy the lexicon's vectors (K, d_lm) and LM token ids (K,) into the buffers (shapes must match)."""
        if tuple(vectors.shape) != tuple(self.vectors.shape) or tuple(lm_ids.shape) != tuple(self.lm_ids.shape):
            raise ValueError(f"lexicon of shape {tuple(vectors.shape)} does not fit a codebook of "
                             f"{tuple(self.vectors.shape)}")
        self.vectors.copy_(vectors)
        self.lm_ids.copy_(lm_ids)

    def table(self) -> torch.Tensor:
        """ê = P·e + b for every entry: (K, D)."""
        return self.proj(self.vectors)

    def quantize(self, z: torch.Tensor, table: torch.Tensor | None = None) -> Quantized:
        """``z`` (N, D) -> its nearest entries, straight-through, with the VQ-VAE loss terms."""
        table = self.table() if table is None else table  # (K, D)
        ids = nearest(z.detach(), table.detach())  # (N,)
        e = table[ids]  # (N, D): gradient to P through the codebook term only
        codebook = (z.detach() - e).pow(2).mean()
        commitment = (z - e.detach()).pow(2).mean()
        z_q = z + (e - z).detach()
        return Quantized(z_q, ids, codebook, commitment)
