"""RetNet parameter and FLOP counts (the registry's ``counts``; see genmodels.models.flops)."""
from __future__ import annotations

from .config import RetNetConfig


class RetNetCounts:
    """Embedding, N × (two RMSNorms, q/k (D×D), v/g (D×D_v), out (D_v×D), fc1/gate/fc2), final norm, head."""

    @staticmethod
    def _layer_matmul(cfg: RetNetConfig) -> int:
        d, dv, ff = cfg.d_model, cfg.value_dim, cfg.d_ff
        return 2 * d * d + 3 * d * dv + 3 * d * ff

    @classmethod
    def matmul_parameters(cls, cfg: RetNetConfig) -> int:
        return cfg.n_layers * cls._layer_matmul(cfg) + cfg.vocab_size * cfg.d_model

    @staticmethod
    def attention_layers(cfg: RetNetConfig) -> int:
        """Every layer: training's parallel form costs QKᵀ and the weighted sum over the context as
        attention does (the recurrent decode step does not, but MFU measures training)."""
        return cfg.n_layers

    @classmethod
    def parameter_count(cls, cfg: RetNetConfig) -> int:
        v, d = cfg.vocab_size, cfg.d_model
        return (v * d + cfg.n_layers * (cls._layer_matmul(cfg) + 2 * d) + d
                + (0 if cfg.tie_embeddings else v * d))
