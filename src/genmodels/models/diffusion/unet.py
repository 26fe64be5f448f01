"""UNet2D: the denoiser of DDPM (Ho et al., 2020, "Denoising Diffusion Probabilistic Models", appendix B),
after PixelCNN++'s U-Net, in the layout of diffusers' ``UNet2DModel``.

    τ = SiLU(emb(t) + E[y])                          time (nn/timestep.py) + optional class embedding
    h = conv_in(x);  skips = [h]
    down level ℓ = 0 … L−1:  (resnet → attention?) × n, each output pushed to skips;
                             then a stride-2 conv (not after the last level), pushed too
    middle:                  resnet → attention? → resnet
    up level ℓ = L−1 … 0:    (resnet(concat(h, skips.pop())) → attention?) × (n + 1);
                             then nearest ×2 + conv (not after level 0)
    ε̂ = conv_out(SiLU(GN(h)))                        (B, C_out, H, W)

Resnets, resamplers: :mod:`genmodels.nn.conv`; attention over pixels:
:mod:`genmodels.nn.spatial_attention` (our SelfAttention). Called as diffusers' UNet2DModel is:
``model(sample, timestep, class_labels=None)``, returning the prediction tensor itself.

The wiring above is written once (the levels' ``forward`` and :meth:`UNet2D.run`); each part is
computed by an ``ops`` object: :data:`MODULE_OPS` calls the modules (the definition, used by
``forward`` and for training), :mod:`.fast` computes the same parts faster for sampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.conv import Downsample2D, ResnetBlock2D, Upsample2D
from ...nn.spatial_attention import SpatialSelfAttention
from ...nn.timestep import TimestepEmbedding
from .config import DiffusionConfig
from .inputs import ClassEmbedding, Denoiser, check_sample, conditioning


class ModuleOps:
    """Each UNet part computed by its module's forward: the definition (autograd, any device)."""

    @staticmethod
    def resnet(m: ResnetBlock2D, h: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return m(h, tau)

    @staticmethod
    def layer(m: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """attention (or Identity), downsampler, upsampler, conv_in, conv_out."""
        return m(h)

    @staticmethod
    def norm_silu(m: nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
        return F.silu(m(h))


MODULE_OPS = ModuleOps()


class _Parts:
    """The part factories of one UNet, from its config: every resnet, attention and resampler."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg, self.temb = cfg, 4 * cfg.block_out_channels[0]

    def resnet(self, c_in: int, c_out: int) -> ResnetBlock2D:
        c = self.cfg
        return ResnetBlock2D(c_in, c_out, self.temb, c.norm_num_groups, c.norm_eps, c.dropout)

    def attention(self, channels: int, on: bool) -> nn.Module:
        c = self.cfg
        if not on:
            return nn.Identity()
        return SpatialSelfAttention(channels, c.attention_head_dim or channels, c.norm_num_groups, c.norm_eps)


class DownLevel(nn.Module):
    """One resolution on the way down: n × (resnet → attention), then the optional downsampler."""

    def __init__(self, parts: _Parts, c_in: int, c_out: int, attention: bool, downsample: bool):
        super().__init__()
        n = parts.cfg.layers_per_block
        self.resnets = nn.ModuleList(parts.resnet(c_in if i == 0 else c_out, c_out) for i in range(n))
        self.attentions = nn.ModuleList(parts.attention(c_out, attention) for _ in range(n))
        self.downsample = Downsample2D(c_out, parts.cfg.downsample_padding) if downsample else None

    def forward(self, h: torch.Tensor, tau: torch.Tensor, skips: list[torch.Tensor], ops=MODULE_OPS) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            h = ops.layer(attn, ops.resnet(resnet, h, tau))
            skips.append(h)
        if self.downsample is not None:
            h = ops.layer(self.downsample, h)  # (B, C, H/2, W/2)
            skips.append(h)
        return h


class MidBlock(nn.Module):
    """resnet → attention → resnet at the lowest resolution."""

    def __init__(self, parts: _Parts, channels: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([parts.resnet(channels, channels), parts.resnet(channels, channels)])
        self.attention = parts.attention(channels, attention)

    def forward(self, h: torch.Tensor, tau: torch.Tensor, ops=MODULE_OPS) -> torch.Tensor:
        return ops.resnet(self.resnets[1], ops.layer(self.attention, ops.resnet(self.resnets[0], h, tau)), tau)


class UpLevel(nn.Module):
    """One resolution on the way up: (n+1) × (resnet over [h, skip] → attention), then the optional upsampler.

    ``skip_channels`` lists, in the order they are popped, the widths of the skips this level reads."""

    def __init__(self, parts: _Parts, c_prev: int, c_out: int, skip_channels: list[int], attention: bool,
                 upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(parts.resnet((c_prev if i == 0 else c_out) + s, c_out)
                                     for i, s in enumerate(skip_channels))
        self.attentions = nn.ModuleList(parts.attention(c_out, attention) for _ in skip_channels)
        self.upsample = Upsample2D(c_out) if upsample else None

    def forward(self, h: torch.Tensor, tau: torch.Tensor, skips: list[torch.Tensor], ops=MODULE_OPS) -> torch.Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = ops.layer(attn, ops.resnet(resnet, h, tau))  # (B, C_out, H, W)
        if self.upsample is not None:
            h = ops.layer(self.upsample, h)  # (B, C, 2H, 2W)
        return h


class UNet2D(Denoiser):
    """``model(sample (B, C, H, W), timestep, class_labels (B,) | None)`` -> prediction (B, C_out, H, W)."""

    backbone = "unet"

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        cfg = config
        parts, widths = _Parts(cfg), cfg.block_out_channels
        levels, n = len(widths), cfg.layers_per_block
        self.time_embed = TimestepEmbedding(widths[0], parts.temb, cfg.flip_sin_to_cos, cfg.freq_shift)
        self.class_embed = ClassEmbedding(cfg, parts.temb) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)

        skip_widths = [widths[0]]  # what the down path pushes, in order
        self.down = nn.ModuleList()
        for i, c in enumerate(widths):
            last = i == levels - 1
            self.down.append(DownLevel(parts, widths[max(i - 1, 0)], c, i in cfg.attention_levels, not last))
            skip_widths += [c] * (n + (0 if last else 1))
        self.mid = MidBlock(parts, widths[-1], cfg.mid_attention)
        self.up = nn.ModuleList()
        c_prev = widths[-1]
        for i in reversed(range(levels)):
            popped = [skip_widths.pop() for _ in range(n + 1)]
            self.up.append(UpLevel(parts, c_prev, widths[i], popped, i in cfg.attention_levels, i > 0))
            c_prev = widths[i]
        self.norm_out = nn.GroupNorm(cfg.norm_num_groups, widths[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], cfg.output_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        check_sample(sample, self.config, 2 ** (len(self.config.block_out_channels) - 1))
        emb = conditioning(self.time_embed, self.class_embed, sample, timestep, class_labels)  # (B, 4·C₀)
        return self.run(sample, F.silu(emb), MODULE_OPS)  # τ: every resnet's time input, computed once

    def run(self, sample: torch.Tensor, tau: torch.Tensor, ops=MODULE_OPS) -> torch.Tensor:
        """The network after the conditioning: ``sample`` (B, C, H, W), ``tau`` = SiLU(emb) (B, 4·C₀)
        -> (B, C_out, H, W), each part computed by ``ops`` (the module docstring)."""
        h = ops.layer(self.conv_in, sample)  # (B, C₀, H, W)
        skips = [h]
        for level in self.down:
            h = level(h, tau, skips, ops)
        h = self.mid(h, tau, ops)
        for level in self.up:
            h = level(h, tau, skips, ops)
        return ops.layer(self.conv_out, ops.norm_silu(self.norm_out, h))  # (B, C_out, H, W)
