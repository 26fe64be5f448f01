"""RetNet presets: data, each with its source."""
from __future__ import annotations

from typing import Any

from .config import RetNetConfig


def retnet_tiny(**kw: Any) -> RetNetConfig:
    """llama-tiny's width, depth, vocabulary and context (d 256, 4 layers, 4 heads, 8192 tokens, 512) with
    torchscale 0.3.0's ``retnet_base`` ratios: value_embed_dim = ffn_dim = 864/512 · d ≈ 1.69·d = 432
    (the parameter count lands near llama-tiny's)."""
    return RetNetConfig(**{**dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, value_dim=432, d_ff=432,
                                  max_seq_len=512, bos_token_id=0, eos_token_id=0), **kw})


def _paper(d_model: int, n_layers: int, n_heads: int):
    """Sun et al. 2023 (arXiv 2307.08621), the model-size table (hidden d, layers, heads), with the value and
    gated-FFN width of torchscale 0.3.0's ``retnet_1_3b`` / ``retnet_2_7b`` / ``retnet_6_7b``: 27/16·d (so
    2d² + 6·(27/16)d² ≈ 12d² per layer, a transformer's); context 2048 (their training length). The
    vocabulary follows the tokenizer (a recipe sets it); 8192 here until one does."""
    def make(**kw: Any) -> RetNetConfig:
        wide = 27 * d_model // 16
        return RetNetConfig(**{**dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, value_dim=wide,
                                      d_ff=wide, max_seq_len=2048), **kw})
    make.__doc__ = f"RetNet d={d_model}, {n_layers} layers, {n_heads} heads. " + (_paper.__doc__ or "")
    return make


PRESETS = {
    "retnet-tiny": retnet_tiny,
    "retnet-1.3b": _paper(2048, 24, 8),
    "retnet-2.7b": _paper(2560, 32, 10),
    "retnet-6.7b": _paper(4096, 32, 16),
}
