"""Parameter and FLOP counts (Kaplan et al., 2020; PaLM appendix B; nanoGPT's MFU estimate).

Per token, a forward pass costs 2 FLOPs per matmul weight (a multiply and an add) plus the
attention scores and the weighted sum: 2·2·L·H·d·T for a context of T. Training (forward +
backward) costs 3× that: 6·N_matmul + 12·L·H·d·T.
"""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..nn.mlp import GATED


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied head is counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections and the output
    head (the LM head, or BERT's MLM head). For seq2seq, the encoder and decoder stacks plus the
    decoder's cross-attention (its k/v projections run over source tokens, counted per token)."""
    d, h, hkv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head
    attn = d * (h + 2 * hkv) * hd + h * hd * d
    mlp = (3 if cfg.mlp in GATED else 2) * d * cfg.d_ff
    head = cfg.vocab_size * d
    if cfg.family == "encoder":
        return cfg.n_layers * (attn + mlp) + ((head + d * d) if cfg.mlm_head else 0)
    if cfg.family == "seq2seq":
        n_dec = cfg.n_decoder_layers or cfg.n_layers
        return cfg.n_layers * (attn + mlp) + n_dec * (2 * attn + mlp) + head
    return cfg.n_layers * (attn + mlp) + head


def attention_layers(cfg: ModelConfig) -> int:
    """Layers whose attention scores scale with the context: self-attention everywhere, plus the
    decoder's cross-attention for seq2seq."""
    if cfg.family == "seq2seq":
        return cfg.n_layers + 2 * (cfg.n_decoder_layers or cfg.n_layers)
    return cfg.n_layers


def flops_per_token(cfg: ModelConfig, context: int, training: bool = False) -> float:
    """FLOPs for one token at context length ``context`` (forward, or forward+backward)."""
    fwd = 2 * matmul_parameters(cfg) + 4 * attention_layers(cfg) * cfg.n_heads * cfg.dim_head * context
    return 3 * fwd if training else fwd
