"""Transformer blocks: a residual wrapping of attention and feed-forward, with the norm placed
before (pre-norm: GPT-2, Llama, T5) or after (post-norm: the original Transformer, BERT).

Pre-norm:   x ← x + Attn(N₁(x));   x ← x + FFN(N₂(x))
Post-norm:  x ← N₁(x + Attn(x));   x ← N₂(x + FFN(x))

Decoder blocks of an encoder–decoder add cross-attention over the encoder's output m between the
two (T5: pre-norm; the original Transformer: post-norm):

Pre-norm:   x ← x + Attn(N₁(x));   x ← x + Cross(Nₓ(x), m);   x ← x + FFN(N₂(x))
Post-norm:  x ← N₁(x + Attn(x));   x ← Nₓ(x + Cross(x, m));   x ← N₂(x + FFN(x))

Seams: a block receives its token mixer (``attn``: self-attention today, retention next; called as
``mixer(x, ctx, cache)``) and its feed-forward (``mlp``: dense, or a sparse MoE in the layers
``ModelConfig.is_moe_layer`` names; ``ffn(x)``) as parts. :func:`build_block` picks them per layer
through factories ``(config, layer_index) -> module`` (:data:`MIXERS`, :data:`FFNS`), so a variant
is a part passed in, never an ``if`` in a forward. The attribute names ``attn`` / ``mlp`` are the
state-dict keys and stay as they are. Our factories also take the model's ``linear`` factory
(:mod:`genmodels.nn.linear`) and build every projection through it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from ..nn import (MLP, AttentionInputs, CrossAttention, GatedMLP, LayerKVCache, LearnedPositionalEmbedding,
                  SelfAttention, SinusoidalPositionalEmbedding, SparseMoE, make_mlp, make_norm)
from ..nn.linear import LinearFactory, plain_linear
from ..nn.mlp import GATED
from .projections import Projection, projections


class PreNormBlock(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionInputs, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))  # (B, T, D)
        return x + self.feed_forward(x)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward branch, what the block adds to the residual stream ``x`` after attention (pre-norm:
        its norm and MLP): one unit that activation checkpointing's ``ffn`` mode recomputes."""
        return self.drop(self.mlp(self.norm2(x)))

    @property
    def mixer(self) -> nn.Module:
        """The token mixer (self-attention today), stored as ``attn``."""
        return self.attn

    @property
    def ffn(self) -> nn.Module:
        """The feed-forward (dense MLP today), stored as ``mlp``."""
        return self.mlp

    def residual_projections(self) -> list[nn.Module | nn.Parameter]:
        """The projections through which the block writes into the residual stream (GPT-2's init
        scales them by 1/√(2L)): modules, or stacked weights (an MoE's down projections)."""
        return [p for p in map(output_projection, (self.attn, self.mlp)) if p is not None]


class PostNormBlock(PreNormBlock):
    def forward(self, x: torch.Tensor, ctx: AttentionInputs, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, ctx, cache)))
        return self.norm2(x + self.feed_forward(x))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward branch (post-norm: the MLP alone; the norm follows the residual add)."""
        return self.drop(self.mlp(x))


class PreNormCrossBlock(nn.Module):
    """Self-attention, cross-attention over ``memory_kv`` (keys/values of the encoder output), FFN."""

    def __init__(self, attn: nn.Module, cross: nn.Module, mlp: nn.Module, norm1: nn.Module, norm_cross: nn.Module,
                 norm2: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn, self.norm_cross, self.cross, self.norm2, self.mlp = (norm1, attn, norm_cross, cross,
                                                                                    norm2, mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionInputs, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))  # (B, T, D)
        x = x + self.drop(self.cross(self.norm_cross(x), memory_kv, memory_mask))
        return x + self.feed_forward(x)

    mixer, ffn, feed_forward = PreNormBlock.mixer, PreNormBlock.ffn, PreNormBlock.feed_forward

    def residual_projections(self) -> list[nn.Module]:
        return [p for p in map(output_projection, (self.attn, self.cross, self.mlp)) if p is not None]


class PostNormCrossBlock(PreNormCrossBlock):
    def forward(self, x: torch.Tensor, ctx: AttentionInputs, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, ctx, cache)))
        x = self.norm_cross(x + self.drop(self.cross(x, memory_kv, memory_mask)))
        return self.norm2(x + self.feed_forward(x))

    feed_forward = PostNormBlock.feed_forward


def output_projection(part: nn.Module) -> nn.Module | nn.Parameter | None:
    """The last projection of a token mixer or feed-forward (what it adds to the residual stream):
    attention's ``out``, an MLP's ``fc2`` / ``down``, or what a new part names by its own
    ``output_projection()`` (a module, or a stacked weight such as an MoE's ``down_proj``); ``None``
    when it names none."""
    if isinstance(part, (SelfAttention, CrossAttention)):
        return part.out
    if isinstance(part, GatedMLP):
        return part.down
    if isinstance(part, MLP):
        return part.fc2
    own = getattr(type(part), "output_projection", None)
    return part.output_projection() if callable(own) else None


def position_embedding_of(c: ModelConfig) -> nn.Module | None:
    """The input-side position embedding a config names (learned / sinusoidal), else ``None``
    (RoPE, ALiBi and T5 buckets act inside attention instead)."""
    if c.position == "learned":
        return LearnedPositionalEmbedding(c.max_seq_len, c.d_model)
    if c.position == "sinusoidal":
        return SinusoidalPositionalEmbedding(c.max_seq_len, c.d_model)
    return None


def check_length(c: ModelConfig, n: int) -> None:
    """Absolute-position tables hold ``max_seq_len`` rows: name the limit instead of an IndexError."""
    if n > c.max_seq_len and c.position in ("learned", "sinusoidal"):
        raise ValueError(f"sequence of {n} positions exceeds the model's {c.max_seq_len} {c.position} "
                         "positions (max_seq_len)")


def norm_of(c: ModelConfig) -> nn.Module:
    return make_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)


# (config, layer_index) -> a part of that layer; ours also take ``linear=`` (the projection factory)
Factory = Callable[..., nn.Module]


def self_attention_of(c: ModelConfig, layer_index: int = 0, *, linear: LinearFactory = plain_linear) -> SelfAttention:
    """The self-attention token mixer (fused qkv; projections from ``linear``)."""
    return SelfAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, bias=c.attn_bias,
                         out_bias=c.out_bias, scale=c.attn_scale, linear=linear, layer=layer_index)


def dense_ffn_of(c: ModelConfig, layer_index: int = 0, *, linear: LinearFactory = plain_linear) -> nn.Module:
    """The dense feed-forward (MLP or gated MLP) the config names."""
    return make_mlp(c.mlp, c.d_model, c.d_ff, c.mlp_bias, linear=linear, layer=layer_index)


def cross_attention_of(c: ModelConfig, layer_index: int = 0, *,
                       linear: LinearFactory = plain_linear) -> CrossAttention:
    return CrossAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, bias=c.attn_bias, out_bias=c.out_bias,
                          scale=c.attn_scale, linear=linear, layer=layer_index)


MIXERS: dict[str, Factory] = {"attention": self_attention_of}  # retention joins here
def moe_ffn_of(c: ModelConfig, layer_index: int = 0, *, linear: LinearFactory = plain_linear) -> SparseMoE:
    """The sparse MoE feed-forward: ``n_experts`` gated experts (the config's gated ``mlp`` kind)
    of width ``expert_d_ff``, top-``experts_per_token`` routing, capacity and jitter from the config.
    Its experts are stacked weights, not linears: ``linear`` does not reach them (``projections()``
    names them ``stacked``)."""
    return SparseMoE(c.d_model, c.expert_width, c.n_experts, c.experts_per_token, activation=GATED[c.mlp],
                     renormalize=c.router_renormalize, jitter=c.router_jitter, capacity_factor=c.capacity_factor,
                     eval_capacity_factor=c.eval_capacity_factor)


FFNS: dict[str, Factory] = {"dense": dense_ffn_of, "moe": moe_ffn_of}


def mixer_for(c: ModelConfig, layer_index: int) -> Factory:
    """The token-mixer factory of layer ``layer_index``: attention in every layer of today's configs
    (a config that names a mixer per layer picks from :data:`MIXERS` here)."""
    return MIXERS["attention"]


def ffn_for(c: ModelConfig, layer_index: int) -> Factory:
    """The feed-forward factory of layer ``layer_index``: sparse MoE where the config's ``n_experts``
    and ``moe_every`` say so (:meth:`ModelConfig.is_moe_layer`), dense elsewhere."""
    return FFNS["moe" if c.is_moe_layer(layer_index) else "dense"]


def _part(part: Factory | nn.Module | None, default: Factory, c: ModelConfig, layer_index: int,
          linear: LinearFactory | None) -> nn.Module:
    """A module passed in as it is, a factory called for this layer, or the config's choice. Our
    factories get the ``linear`` factory (plain by default); one passed in gets it only when given."""
    if isinstance(part, nn.Module):
        return part
    if part is None:
        return default(c, layer_index, linear=linear or plain_linear)
    return part(c, layer_index) if linear is None else part(c, layer_index, linear=linear)


def build_block(c: ModelConfig, layer_index: int = 0, *, mixer: Factory | nn.Module | None = None,
                ffn: Factory | nn.Module | None = None, linear: LinearFactory | None = None) -> nn.Module:
    """Layer ``layer_index`` of a self-attention stack: norm placement from the config, the token
    mixer and feed-forward passed in (a module or a factory) or chosen per layer from the config;
    their projections built by ``linear`` (default ``nn.Linear``)."""
    cls = PreNormBlock if c.norm_placement == "pre" else PostNormBlock
    return cls(_part(mixer, mixer_for(c, layer_index), c, layer_index, linear),
               _part(ffn, ffn_for(c, layer_index), c, layer_index, linear), norm_of(c), norm_of(c), c.dropout)


def build_cross_block(c: ModelConfig, layer_index: int = 0, *, mixer: Factory | nn.Module | None = None,
                      cross: Factory | nn.Module | None = None, ffn: Factory | nn.Module | None = None,
                      linear: LinearFactory | None = None) -> nn.Module:
    """Decoder layer ``layer_index`` of an encoder–decoder: self-attention (the token mixer),
    cross-attention, feed-forward — each passed in or chosen per layer from the config."""
    cls = PreNormCrossBlock if c.norm_placement == "pre" else PostNormCrossBlock
    cross = _part(cross, cross_attention_of, c, layer_index, linear)  # built first, as before (same RNG draws)
    return cls(_part(mixer, mixer_for(c, layer_index), c, layer_index, linear), cross,
               _part(ffn, ffn_for(c, layer_index), c, layer_index, linear), norm_of(c), norm_of(c), norm_of(c),
               c.dropout)


def block_of(c: ModelConfig) -> nn.Module:
    """One self-attention block as the config describes it (layer 0's parts; see :func:`build_block`)."""
    return build_block(c, 0)


def cross_block_of(c: ModelConfig) -> nn.Module:
    """One decoder block of an encoder–decoder (layer 0's parts; see :func:`build_cross_block`)."""
    return build_cross_block(c, 0)


class DecoderView(NamedTuple):
    """The parts of a model's (self-attention) decoder that a native decode step reads."""

    blocks: nn.ModuleList
    final_norm: nn.Module
    pos_embed: nn.Module | None
    rotary: nn.Module | None
    score_bias: nn.Module | None


class ModelParts:
    """What other modules ask a model for, by name instead of guessing its attributes: its blocks
    (activation checkpointing, FSDP wrapping), its embedding and output head, and its tokenizer.

    ``tokenizer``: the model's tokenizer (set by :func:`genmodels.load` and training), ``None`` by
    default; a plain attribute — not a module, not in the state dict — that survives ``deepcopy``.
    """

    tokenizer = None

    def transformer_blocks(self) -> list[nn.Module]:
        """Every block, in forward order (encoder before decoder)."""
        raise NotImplementedError

    def blocks_for_checkpointing(self) -> list[nn.Module]:
        """The units that activation checkpointing recomputes and FSDP shards: one per block."""
        return self.transformer_blocks()

    def residual_output_weights(self) -> list[nn.Parameter]:
        """The matrices of every block's residual projections (scaled at initialisation)."""
        return [p for b in self.transformer_blocks() for proj in b.residual_projections()
                for p in ([proj] if isinstance(proj, nn.Parameter) else proj.parameters()) if p.dim() >= 2]

    def embedding(self) -> nn.Module:
        """The token embedding (shared by encoder, decoder and a tied head)."""
        return self.embed

    def output_head(self) -> nn.Module | None:
        """The module that maps final hidden states to logits (``None``: the model has none)."""
        return self.head

    def projections(self) -> list[Projection]:
        """Every linear by its HF role (q, k, v, o, gate, up, down, head, …), fused q|k|v and gate|up
        as row slices of their module: :func:`genmodels.models.projections.projections`."""
        return projections(self)
