"""Components: each concept in its own small module; none of them knows about Hugging Face."""
from .attention import AttentionInputs, CrossAttention, PackedRows, SelfAttention, reference_attention, sdpa_attention
from .embedding import TokenEmbedding
from .head import LMHead, MLMHead, Pooler
from .kv_cache import KVCache, LayerKVCache
from .masks import build_mask, padding_position_ids
from .mlp import MLP, GatedMLP, make_mlp
from .norm import LayerNorm, RMSNorm, make_norm
from .position import (ALiBi, LearnedPositionalEmbedding, RelativePositionBias, RotaryEmbedding,
                       SinusoidalPositionalEmbedding, alibi_slopes, apply_rotary, relative_position_bucket)

__all__ = [n for n in dir() if not n.startswith("_")]
