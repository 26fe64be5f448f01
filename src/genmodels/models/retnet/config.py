"""RetNetConfig: every choice of a Retentive Network (Sun et al., 2023, arXiv 2307.08621) as data.

The architecture is fixed by the paper (pre-norm RMSNorm, multi-scale retention, gated FFN, final
norm, untied head); the config only sizes it, and may scale the embedding and tie the head as torchscale
does (``embed_scale``: torchscale's √d unless ``no_scale_embedding``; a tied head reads the unscaled table). What a transformer config could ask for and retention
cannot honour (GQA, a sliding window, ALiBi, post-norm…) has no field here, so it is refused as an
unknown key naming ``model.<key>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import MAX_LAYERS, ConfigError, StrictConfig

ACTIVATIONS = ("gelu", "swish")


@dataclass
class RetNetConfig(StrictConfig):
    family: str = "retnet"
    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    value_dim: int = 432  # width of v / the swish gate (torchscale's value_embed_dim)
    d_ff: int = 432  # gated FFN hidden width
    max_seq_len: int = 512  # the context generation and training may use (retention itself has no limit)
    norm_eps: float = 1e-6  # RMSNorm ε (block and final norms)
    retention_eps: float = 1e-6  # per-head norm ε inside the retention
    chunk_size: int = 512  # chunkwise form's chunk (prefills longer than this use it)
    activation: str = "gelu"  # gelu | swish (the FFN's act in fc2(act(fc1 x) ⊙ gate x))
    tie_embeddings: bool = False  # the head reads the embedding table (unscaled: embed_scale is not applied)
    embed_scale: float = 1.0  # token embeddings × this (torchscale: √d_model unless args.no_scale_embedding)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # read by generation (decode.py) as for the transformers: positions are relative (the xPos-like
    # rotation), so no absolute-position table bounds the context, and no window compacts a cache.
    position: ClassVar[str] = "retention"
    sliding_window: ClassVar[None] = None
    mlm_head: ClassVar[bool] = False

    @property
    def dim_head(self) -> int:
        """Key width per head d_k (FLOP counts: the parallel form's QKᵀ costs as attention's)."""
        return self.d_model // self.n_heads

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "value_dim", "d_ff", "max_seq_len",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.where(name)}={getattr(self, name)} must be >= 1")
        self.check_at_most("n_layers", MAX_LAYERS)
        for name in ("norm_eps", "retention_eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.where(name)}={getattr(self, name)} must be >= 0")
        if not 0 < self.embed_scale < float("inf"):
            raise ConfigError(f"{self.where('embed_scale')}={self.embed_scale} must be a finite number > 0")
        if self.family != "retnet":
            raise ConfigError(f"{self.where('family')}={self.family!r} must be 'retnet' for a RetNetConfig")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{self.where('activation')}={self.activation!r} is not allowed; "
                              f"choose one of {', '.join(ACTIVATIONS)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"{self.where('d_model')}={self.d_model} must be divisible by "
                              f"n_heads={self.n_heads} into an even key width per head (the rotation pairs)")
        if self.value_dim % self.n_heads:
            raise ConfigError(f"{self.where('value_dim')}={self.value_dim} must be divisible by "
                              f"n_heads={self.n_heads}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise ConfigError(f"{self.where(name)}={v} must be in [0, vocab_size={self.vocab_size})")
