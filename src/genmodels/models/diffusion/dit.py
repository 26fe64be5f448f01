"""DiT: the Diffusion Transformer (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers", §3).

    x = Patchify(x_t) + pos                 (B, T, D), T = (H/p)², fixed 2-D sin-cos positions
    c = emb(t) + E[y]                        timestep MLP (256-wide sinusoid) + optional class embedding
    x = DiTBlock(x, c) × depth               adaLN-Zero blocks (nn/adaln.py)
    x = Linear(LN(x) ⊙ (1 + γ) + β)          (β, γ) = W·SiLU(c) + b, to p·p·C_out per token
    out = Unpatchify(x)                      (B, C_out, H, W)

At initialisation (the paper's §3.2, its ``initialize_weights``): Linear layers Xavier-uniform with
zero biases, the patch projection Xavier-uniform on its flattened kernel, the embeddings N(0, 0.02),
and every adaLN modulation and the output linear zero — each block is the identity and the model
outputs 0. Called as the UNet is: ``model(sample, timestep, class_labels=None)``. Label dropout for
guidance is the training objective's business, not the model's.
"""
from __future__ import annotations

import torch
from torch import nn

from ...nn.adaln import AdaLNModulation, modulate
from ...nn.attention import AttentionInputs, SelfAttention
from ...nn.mlp import MLP
from ...nn.patch import PatchEmbed, sincos_2d, unpatchify
from ...nn.timestep import TimestepEmbedding
from .config import DIT_FREQ_DIM, DiffusionConfig
from .inputs import ClassEmbedding, Denoiser, check_sample, conditioning

LN_EPS = 1e-6  # the paper's LayerNorm ε (no affine parameters)
_NO_MASK = AttentionInputs()  # every patch attends to every patch


class DiTBlock(nn.Module):
    """x (B, T, D), c (B, D) -> (B, T, D): adaLN-Zero around self-attention and a tanh-GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads, heads, dim // heads, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio), "gelu_tanh", bias=True)
        self.modulation = AdaLNModulation(dim, dim, 6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)  # each (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), _NO_MASK)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """x (B, T, D), c (B, D) -> (B, T, p·p·C_out): adaptive LayerNorm, then a zero-initialised linear."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.modulation = AdaLNModulation(dim, dim, 2)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(Denoiser):
    """``model(sample (B, C, H, W), timestep, class_labels (B,) | None)`` -> prediction (B, C_out, H, W)."""

    backbone = "dit"

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        cfg = config
        d, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.image_size // p
        self.patch = PatchEmbed(cfg.in_channels, d, p)
        self.register_buffer("pos", sincos_2d(d, self.grid)[None], persistent=False)  # (1, T, D), fixed
        self.time_embed = TimestepEmbedding(DIT_FREQ_DIM, d, cfg.flip_sin_to_cos, cfg.freq_shift)
        self.class_embed = ClassEmbedding(cfg, d) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, p * p * cfg.output_channels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (module docstring); the modulations are zero from AdaLNModulation."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.proj.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.fc1.weight, std=0.02)
        nn.init.normal_(self.time_embed.fc2.weight, std=0.02)
        for mod in [b.modulation for b in self.blocks] + [self.final.modulation]:
            nn.init.zeros_(mod.linear.weight)
            nn.init.zeros_(mod.linear.bias)
        nn.init.zeros_(self.final.linear.weight)

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        check_sample(sample, cfg, cfg.patch_size, exact=True)
        c = conditioning(self.time_embed, self.class_embed, sample, timestep, class_labels)  # (B, D)
        x = self.patch(sample) + self.pos.to(sample.dtype)  # (B, T, D)
        for block in self.blocks:
            x = block(x, c)
        x = self.final(x, c)  # (B, T, p·p·C_out)
        return unpatchify(x, cfg.patch_size, cfg.output_channels, (self.grid, self.grid))
