"""Parameter and FLOP counts (Kaplan et al., 2020; PaLM appendix B; nanoGPT's MFU estimate).

Per token, a forward pass costs 2 FLOPs per matmul weight (a multiply and an add) plus the
attention scores and the weighted sum: 2·2·L·H·d·T for a context of T. Training (forward +
backward) costs 3× that: 6·N_matmul + 12·L·H·d·T.
"""
from __future__ import annotations

from torch import nn

from .config import ModelConfig
from ..nn.mlp import GATED


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied head is counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _counts(cfg: ModelConfig):
    """The counter of ``cfg``'s family (its registry entry's ``counts``)."""
    from ..registry import get_family
    counts = get_family(cfg.family).counts
    if counts is None:
        raise ValueError(f"model.family={cfg.family!r} declares no parameter/FLOP counts")
    return counts


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections and the output
    head (the LM head, or BERT's MLM head). For seq2seq, the encoder and decoder stacks plus the
    decoder's cross-attention (its k/v projections run over source tokens, counted per token)."""
    return _counts(cfg).matmul_parameters(cfg)


def attention_layers(cfg: ModelConfig) -> int:
    """Layers whose attention scores scale with the context: self-attention everywhere, plus the
    decoder's cross-attention for seq2seq."""
    return _counts(cfg).attention_layers(cfg)


def _ffn_active(cfg: ModelConfig, layer_index: int) -> int:
    """Matmul weights of layer ``layer_index``'s feed-forward that one token passes through: the
    dense MLP, or an MoE's router (D·E) and its k ACTIVE experts (k·3·D·F) — the sparse layer's
    point is that this, not its parameter count, sets the compute (MFU counts these)."""
    if not cfg.is_moe_layer(layer_index):
        return _attn_mlp(cfg)[1]
    return cfg.d_model * cfg.n_experts + cfg.experts_per_token * 3 * cfg.d_model * cfg.expert_width


def flops_per_token(cfg: ModelConfig, context: int, training: bool = False) -> float:
    """FLOPs for one token at context length ``context`` (forward, or forward+backward)."""
    fwd = 2 * matmul_parameters(cfg) + 4 * attention_layers(cfg) * cfg.n_heads * cfg.dim_head * context
    return 3 * fwd if training else fwd


def _attn_mlp(cfg: ModelConfig) -> tuple[int, int, int]:
    """Matmul weights of one self-attention, one MLP and the vocabulary head."""
    d, h, hkv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head
    attn = d * (h + 2 * hkv) * hd + h * hd * d
    mlp = (3 if cfg.mlp in GATED else 2) * d * cfg.d_ff
    return attn, mlp, cfg.vocab_size * d


# ---- parameters from a config alone (no tensor is built) ---------------------------------------
# Each helper mirrors the module that models/blocks.py builds for the config; tests check
# parameter_count(cfg) == count_parameters(build_model(cfg)) for every family, tied and untied.
def _norm(cfg: ModelConfig) -> int:
    """LayerNorm: scale (+ bias); RMSNorm: scale."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def _linear(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def _self_attention(cfg: ModelConfig) -> int:
    """Fused q|k|v and the output projection."""
    d, width, kv = cfg.d_model, cfg.n_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head
    return _linear(d, width + 2 * kv, cfg.attn_bias) + _linear(width, d, cfg.out_bias)


def _cross_attention(cfg: ModelConfig) -> int:
    """q over the decoder, fused k|v over the memory, the output projection."""
    d, width, kv = cfg.d_model, cfg.n_heads * cfg.dim_head, cfg.kv_heads * cfg.dim_head
    return _linear(d, width, cfg.attn_bias) + _linear(d, 2 * kv, cfg.attn_bias) + _linear(width, d, cfg.out_bias)


def _mlp(cfg: ModelConfig) -> int:
    """Fused gate|up + down (gated), or fc1 + fc2."""
    up = 2 * cfg.d_ff if cfg.mlp in GATED else cfg.d_ff
    return _linear(cfg.d_model, up, cfg.mlp_bias) + _linear(cfg.d_ff, cfg.d_model, cfg.mlp_bias)


def parameter_count(cfg: ModelConfig) -> int:
    """The number of distinct parameters ``build_model(cfg)`` would hold (``count_parameters`` of
    the built model), computed from the config alone: plain integer arithmetic, so a config too
    large for this machine can be refused before anything is allocated."""
    return _counts(cfg).parameter_count(cfg)


def _embedding(cfg: ModelConfig) -> int:
    """Token embedding (+ learned positions)."""
    return cfg.vocab_size * cfg.d_model + (cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0)


def _ffn(cfg: ModelConfig, layer_index: int) -> int:
    """Layer ``layer_index``'s feed-forward: the dense MLP, or an MoE's router (E, D) and its E
    stacked experts (E, 2F, D) + (E, D, F)."""
    if not cfg.is_moe_layer(layer_index):
        return _mlp(cfg)
    return cfg.n_experts * cfg.d_model * (1 + 3 * cfg.expert_width)


def _block(cfg: ModelConfig, layer_index: int = 0) -> int:
    return _self_attention(cfg) + _ffn(cfg, layer_index) + 2 * _norm(cfg)


def layer_parameter_count(cfg: ModelConfig, layer_index: int) -> int:
    """Parameters of transformer block ``layer_index`` (attention, feed-forward or MoE, its norms)."""
    return _block(cfg, layer_index)


def _head(cfg: ModelConfig) -> int:
    return 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model


class DecoderCounts:
    """DecoderLM: blocks, final norm, LM head."""

    @staticmethod
    def matmul_parameters(cfg: ModelConfig) -> int:
        attn, _, head = _attn_mlp(cfg)
        return cfg.n_layers * attn + sum(_ffn_active(cfg, i) for i in range(cfg.n_layers)) + head

    @staticmethod
    def attention_layers(cfg: ModelConfig) -> int:
        return cfg.n_layers

    @staticmethod
    def parameter_count(cfg: ModelConfig) -> int:
        return (_embedding(cfg) + sum(_block(cfg, i) for i in range(cfg.n_layers))
                + (_norm(cfg) if cfg.final_norm else 0) + _head(cfg))


class EncoderCounts(DecoderCounts):
    """EncoderModel: token types, embedding norm, blocks, pooler, MLM head."""

    @staticmethod
    def matmul_parameters(cfg: ModelConfig) -> int:
        attn, mlp, head = _attn_mlp(cfg)
        return cfg.n_layers * (attn + mlp) + ((head + cfg.d_model ** 2) if cfg.mlm_head else 0)

    @staticmethod
    def parameter_count(cfg: ModelConfig) -> int:
        d, v = cfg.d_model, cfg.vocab_size
        n = _embedding(cfg) + cfg.type_vocab_size * d + (_norm(cfg) if cfg.embedding_norm else 0)
        n += cfg.n_layers * _block(cfg) + (_norm(cfg) if cfg.final_norm else 0)
        n += _linear(d, d, True) if cfg.pooler else 0
        n += (_linear(d, d, True) + _norm(cfg) + v + _head(cfg)) if cfg.mlm_head else 0  # dense, norm, bias, matrix
        return n


class Seq2SeqCounts:
    """Seq2SeqLM: encoder blocks, decoder blocks with cross-attention, relative buckets, head."""

    @staticmethod
    def matmul_parameters(cfg: ModelConfig) -> int:
        attn, mlp, head = _attn_mlp(cfg)
        n_dec = cfg.n_decoder_layers or cfg.n_layers
        return cfg.n_layers * (attn + mlp) + n_dec * (2 * attn + mlp) + head

    @staticmethod
    def attention_layers(cfg: ModelConfig) -> int:
        return cfg.n_layers + 2 * (cfg.n_decoder_layers or cfg.n_layers)

    @staticmethod
    def parameter_count(cfg: ModelConfig) -> int:
        n_dec = cfg.n_decoder_layers or cfg.n_layers
        cross_block = _block(cfg) + _cross_attention(cfg) + _norm(cfg)
        n = _embedding(cfg) + (2 * cfg.rel_buckets * cfg.n_heads if cfg.position == "relative" else 0)
        n += cfg.n_layers * _block(cfg) + n_dec * cross_block + (2 * _norm(cfg) if cfg.final_norm else 0)
        return n + _head(cfg)


def active_parameter_count(cfg: ModelConfig) -> int:
    """Parameters one token passes through: :func:`parameter_count` less, in each sparse MoE layer,
    the E − k experts it is not routed to (Mixtral 8x7B: 46.7B parameters, 12.9B active)."""
    idle = (cfg.n_experts - cfg.experts_per_token) * 3 * cfg.d_model * cfg.expert_width
    return parameter_count(cfg) - sum(idle for i in range(cfg.n_layers) if cfg.is_moe_layer(i))


def weight_bytes(cfg: ModelConfig, bytes_per_parameter: int = 4) -> int:
    """Bytes the weights of ``cfg`` take (fp32 by default)."""
    return parameter_count(cfg) * bytes_per_parameter
