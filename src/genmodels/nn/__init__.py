"""Components: each concept in its own small module; none of them knows about Hugging Face."""
from .attention import AttentionInputs, CrossAttention, PackedRows, SelfAttention, reference_attention, sdpa_attention
from .embedding import TokenEmbedding
from .head import LMHead, MLMHead, Pooler
from .kv_cache import CachingModel, DecodingCache, KVCache, LayerKVCache
from .masks import build_mask, padding_position_ids
from .mlp import MLP, GatedMLP, make_mlp
from .moe import Routing, SparseMoE, StackedExperts, TopKRouter, record_routing
from .norm import LayerNorm, RMSNorm, make_norm
from .position import (ALiBi, LearnedPositionalEmbedding, RelativePositionBias, RotaryEmbedding,
                       SinusoidalPositionalEmbedding, alibi_slopes, apply_rotary, relative_position_bucket)
from .retention import MultiScaleRetention, retention_chunkwise, retention_parallel, retention_recurrent

__all__ = [
    "ALiBi", "AttentionInputs", "CachingModel", "CrossAttention", "DecodingCache", "GatedMLP", "KVCache", "LMHead",
    "LayerKVCache", "LayerNorm", "LearnedPositionalEmbedding", "MLMHead", "MLP", "MultiScaleRetention", "PackedRows",
    "Pooler", "RMSNorm",
    "RelativePositionBias", "RotaryEmbedding", "Routing", "SelfAttention", "SinusoidalPositionalEmbedding",
    "SparseMoE", "StackedExperts", "TokenEmbedding", "TopKRouter",
    "alibi_slopes", "apply_rotary", "build_mask", "make_mlp", "make_norm", "padding_position_ids",
    "record_routing", "reference_attention", "relative_position_bucket", "retention_chunkwise",
    "retention_parallel", "retention_recurrent", "sdpa_attention",
]
