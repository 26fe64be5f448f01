"""A semantic pyramid of codebook tokens with streaming average quantisation (SPAE, Yu et al. 2023, arXiv
2306.17842, §3.2), or plain residual quantisation to compare with.

Layer l = 1 … L quantises the encoder map z (B, D, G, G) at its own grid g_l (e.g. 1, 2, 4: 1 + 4 + 16 tokens),
from z pooled to that grid, z_l = avgpool_{g_l}(z). Coarse tokens are broadcast over the positions they cover
(nearest upsampling), so S_{l−1} = Σ_{i<l} up(ê(k_i)) is the running sum of the layers above, read at g_l.

Streaming average quantisation (SAQ: :class:`StreamingAverage`)::

    k_l = argmin_k ‖ l·z_l − S_{l−1} − ê(k) ‖          (the token that brings the mean of l tokens nearest z_l)
    ẑ_l = S_l / l                                    (the reconstruction after l layers: the tokens' mean)

Residual quantisation (:class:`ResidualSum`)::

    k_l = argmin_k ‖ z_l − S_{l−1} − ê(k) ‖            ẑ_l = S_l

Residual quantisation needs entries of shrinking norm for its shrinking residuals; word embeddings have about
the same norm, so its later layers cannot refine (they overshoot). SAQ asks every layer for a full-norm vector
and averages: the error falls as 1/l on a table of equal-norm entries (tests/nn/test_pyramid.py).

The rule is a part passed in (``PyramidQuantizer(codebook, grids, rule=StreamingAverage())``), never a branch in
the forward. Straight-through per depth: the decoder reads c_l + sg(ẑ_l − c_l), where c_l is what ẑ_l
estimates — the mean of up(z_i), i ≤ l, under SAQ; up(z_l) under the residual rule — and each depth adds
VQ-VAE's terms ‖sg(c_l) − ẑ_l‖² (the projection) and β·‖c_l − sg(ẑ_l)‖² (the encoder), β the caller's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .codebook import LexicalCodebook, nearest


class StreamingAverage:
    """SAQ: layer l quantises l·z_l − S_{l−1}; the reconstruction is the mean S_l / l."""

    name = "saq"

    def target(self, z_l: torch.Tensor, partial: torch.Tensor, l: int) -> torch.Tensor:
        return l * z_l - partial

    def estimate(self, partial: torch.Tensor, l: int) -> torch.Tensor:
        return partial / l

    def continuous(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """What ẑ_l estimates: the mean of the pooled maps of layers 1 … l (each at the finest grid)."""
        return torch.stack(pooled).mean(0)


class ResidualSum:
    """Residual quantisation: layer l quantises z_l − S_{l−1}; the reconstruction is the sum S_l."""

    name = "residual"

    def target(self, z_l: torch.Tensor, partial: torch.Tensor, l: int) -> torch.Tensor:
        return z_l - partial

    def estimate(self, partial: torch.Tensor, l: int) -> torch.Tensor:
        return partial

    def continuous(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return pooled[-1]


RULES = {"saq": StreamingAverage, "residual": ResidualSum}


@dataclass
class PyramidOutput:
    """A pyramid's tokens and, per depth l = 1 … L, the decoder inputs and VQ loss terms."""

    ids: list[torch.Tensor]  # per layer (B, g_l²) int64, row-major over the layer's grid
    inputs: list[torch.Tensor] = field(default_factory=list)  # per depth (B, D, G, G): c_l + sg(ẑ_l − c_l)
    codebook: torch.Tensor | None = None  # scalar: mean over depths of ‖sg(c_l) − ẑ_l‖²
    commitment: torch.Tensor | None = None  # scalar: mean over depths of ‖c_l − sg(ẑ_l)‖²
    top: torch.Tensor | None = None  # (B, D): the first layer's target (what its token was chosen for)


def _up(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, D, g, g) -> (B, D, size, size): each entry broadcast over the cells it covers."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")


class PyramidQuantizer(nn.Module):
    """Layers of ``grids`` (side lengths, each dividing the next: (1, 2, 4) gives 1 + 4 + 16 tokens) over a
    :class:`~genmodels.nn.codebook.LexicalCodebook`, aggregated by ``rule`` (:class:`StreamingAverage` or
    :class:`ResidualSum`)."""

    def __init__(self, codebook: LexicalCodebook, grids: tuple[int, ...], rule=None):
        super().__init__()
        self.codebook, self.grids = codebook, tuple(grids)
        self.rule = StreamingAverage() if rule is None else rule

    @property
    def tokens(self) -> int:
        """Tokens per image: Σ g_l²."""
        return sum(g * g for g in self.grids)

    def forward(self, z: torch.Tensor) -> PyramidOutput:
        """``z`` (B, D, G, G), G = the last grid -> the tokens and the straight-through inputs of every depth."""
        size, table = self.grids[-1], self.codebook.table()  # (K, D)
        partial = torch.zeros_like(z).detach()  # (B, D, G, G): S_l, the broadcast sum of the chosen entries
        out, pooled, commits, books = PyramidOutput(ids=[]), [], [], []
        for l, g in enumerate(self.grids, 1):
            z_l = F.adaptive_avg_pool2d(z, g)  # (B, D, g, g)
            s_l = F.adaptive_avg_pool2d(partial, g)  # exact: the sum is constant over each cell of this grid
            target = self.rule.target(z_l, s_l, l).detach()
            b, d = z.shape[:2]
            ids = nearest(target.permute(0, 2, 3, 1).reshape(-1, d), table.detach()).view(b, g * g)  # (B, g²)
            chosen = table[ids].view(b, g, g, d).permute(0, 3, 1, 2)  # (B, D, g, g), gradient to P
            partial = partial + _up(chosen, size)
            if l == 1 and g == 1:
                out.top = z_l.flatten(1)  # (B, D): both rules' first target (S_0 = 0)
            pooled.append(_up(z_l, size))
            z_hat = self.rule.estimate(partial, l)  # (B, D, G, G)
            c = self.rule.continuous(pooled)
            out.ids.append(ids)
            out.inputs.append(c + (z_hat - c).detach())
            books.append((c.detach() - z_hat).pow(2).mean())
            commits.append((c - z_hat.detach()).pow(2).mean())
        out.codebook, out.commitment = torch.stack(books).mean(), torch.stack(commits).mean()
        return out

    def embed(self, ids: list[torch.Tensor], depth: int | None = None) -> torch.Tensor:
        """The reconstruction ẑ after ``depth`` layers (default all given) from the tokens: per layer (B, g_l²)
        -> (B, D, G, G)."""
        depth = len(ids) if depth is None else depth
        size, table = self.grids[-1], self.codebook.table()
        partial = None
        for l, (g, k) in enumerate(zip(self.grids[:depth], ids[:depth]), 1):
            e = table[k].view(k.shape[0], g, g, -1).permute(0, 3, 1, 2)  # (B, D, g, g)
            partial = _up(e, size) if partial is None else partial + _up(e, size)
        return self.rule.estimate(partial, depth)
