"""A whole decode step of a decoder in one native call (``gm_decoder_step`` in csrc/decoder.c).

    ids (B,) ─ embed (+ position table) ─ N × [x += Attn(Norm x) via the KV cache;
                                               (x += Cross(Norm x, memory));  x += FFN(Norm x)]
             ─ Norm (× output scale) ─ head ─▶ logits (B, V)

(post-norm blocks: x = Norm(x + Attn(x)), and likewise for the other sub-layers)

It reads the model's own parameters and KV cache in place (no copies; the state dict and the
PyTorch forward are untouched) and covers what the decoder-only, T5 and original-Transformer
presets build: pre- and post-norm blocks, LayerNorm / RMSNorm, learned / sinusoidal / RoPE (incl.
partial) / ALiBi / T5 relative positions, multi-, grouped- and multi-query heads, sliding windows,
padding masks, plain and gated MLPs, sparse MoE feed-forwards (dropless top-k routing, in every
layer or mixed with dense ones: csrc/moe.c), tied or separate heads with optional biases, cross-attention
over a cached memory. Anything else (another dtype or device, sharded parameters, unknown
components) is reported by :func:`unsupported` and generation keeps the PyTorch path.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from ..nn import (ALiBi, GatedMLP, LearnedPositionalEmbedding, LMHead, MLP, RelativePositionBias, SelfAttention,
                  SinusoidalPositionalEmbedding, SparseMoE, StackedExperts, TopKRouter)
from ..nn.masks import refusal
from ..nn.quantized import QuantizedLinear
from . import ACTIVATIONS as _ACT
from . import Pinned, library, never_raises, norm_kind, unavailable_reason, unplain_projection, unsupported_tensors
from .layout import hooked

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_LAYER_FIELDS = ("norm1_w", "norm1_b", "qkv_w", "qkv_b", "out_w", "out_b", "norm2_w", "norm2_b", "fc1_w",
                 "fc1_b", "fc2_w", "fc2_b", "k_cache", "v_cache")


_CROSS_FIELDS = ("normx_w", "normx_b", "cross_q_w", "cross_q_b", "cross_out_w", "cross_out_b", "mem_k", "mem_v")


class _Moe(ctypes.Structure):  # gm_moe in csrc/moe.h
    _fields_ = [(n, _P) for n in ("router_w", "gate_up", "down")] + [(n, _I) for n in ("n_experts", "top_k", "d_ff",
                                                                                        "renorm", "act")]


class _Layer(ctypes.Structure):
    _fields_ = ([(n, _P) for n in _LAYER_FIELDS + _CROSS_FIELDS] + [("moe", _Moe)]
                + [(n, _I) for n in ("qkv_t", "out_t", "fc1_t", "fc2_t")])  # weight formats: 0 fp32, else GGML's


class _Model(ctypes.Structure):  # field order mirrors gm_model in csrc/decoder.c
    _fields_ = ([(n, _I) for n in ("n_layers", "batch", "d", "n_heads", "n_kv", "dh", "d_ff", "vocab", "max_len",
                                   "norm", "final_norm", "gated", "act", "pos_kind", "rot_dim", "rope_len", "window",
                                   "mask_stride", "n_threads", "mem_len", "post_norm")]
                + [(n, _D) for n in ("norm_eps", "attn_scale", "emb_scale", "out_scale")]
                + [(n, _P) for n in ("embed", "pos_table", "rope_cos", "rope_sin", "inv_freq", "alibi", "final_w",
                                     "final_b", "head_w", "head_b", "dist_bias", "mem_mask")]
                + [("layers", ctypes.POINTER(_Layer)), ("scratch", _P), ("head_t", _I)])


def _decoder_parts(model: nn.Module):
    """(blocks, final norm, position embedding, rotary, score bias) of the model's decoder, as the
    model names them (``model.decoder_view()``)."""
    return tuple(model.decoder_view())


def _moe_unsupported(moe: SparseMoE, layer: int, d_model: int) -> str | None:
    """Why the C MoE feed-forward (csrc/moe.c) cannot compute this layer's :class:`SparseMoE` as its
    PyTorch forward does in the model's current mode (``None``: it can)."""
    router, experts = moe.router, moe.experts
    if type(router) is not TopKRouter or type(experts) is not StackedExperts:
        return f"block {layer} MoE parts {type(router).__name__}/{type(experts).__name__} not supported"
    if experts.activation not in _ACT:
        return f"block {layer} experts' activation {experts.activation!r} not supported"
    if router.capacity(1) is not None:
        mode = "capacity_factor (training mode)" if router.training else "eval_capacity_factor"
        return (f"block {layer} MoE has an expert capacity ({mode}): its token drops depend on the whole "
                "batch's routing; only dropless routing is covered")
    if router.training and router.jitter > 0:
        return f"block {layer} MoE router jitter is on (training mode)"
    e, f = experts.n_experts, experts.d_ff
    shapes = (tuple(router.weight.shape), tuple(experts.gate_up_proj.shape), tuple(experts.down_proj.shape))
    if shapes != ((e, d_model), (e, 2 * f, d_model), (e, d_model, f)) or not 1 <= router.k <= e:
        return f"block {layer} MoE weight shapes {shapes} (k={router.k}) are inconsistent"
    return None


# the mask rules and inputs (nn/masks.RULES) the fused step implements: causal, window, key padding,
# positions per row, and a seq2seq memory key mask — not segments, not allowed pairs
MASK_RULES = frozenset({"causal", "window", "padding", "positions", "memory"})


def unsupported_inputs(**inputs) -> str | None:
    """Why the fused step cannot take these forward inputs (``segment_ids=…``, ``allowed=…``; ``None``
    values are absent): a one-line reason naming the input, or ``None``. Callers ask before choosing
    this path — an input it does not implement is refused, never ignored."""
    return refusal("the native decode step", MASK_RULES, **inputs)


@never_raises
def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the fused step (``None``: it can)."""
    from ..models.blocks import PostNormBlock, PostNormCrossBlock, PreNormBlock, PreNormCrossBlock
    from ..registry import GENERATES, SEQ2SEQ, capabilities
    caps = capabilities(model)
    if GENERATES not in caps:
        return "not a model that generates tokens"
    seq2seq = SEQ2SEQ in caps
    if not callable(getattr(type(model), "decoder_view", None)):
        return f"{type(model).__name__} names no decoder parts (decoder_view())"
    if library() is None:
        return f"native kernels unavailable ({unavailable_reason()})"
    if (reason := hooked(model)) is not None:
        return reason
    blocks_q = {id(m.blocks) for m in model.modules() if type(m) is QuantizedLinear}  # read as blocks (quant.c)
    params = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in blocks_q]
    if (reason := unsupported_tensors(params)) is not None:
        return reason
    blocks, final_norm, pos, rotary, score_bias = _decoder_parts(model)
    kind = norm_kind(blocks[0].norm1)
    eps = set()
    allowed = (PreNormCrossBlock, PostNormCrossBlock) if seq2seq else (PreNormBlock, PostNormBlock)
    if len({type(b) for b in blocks}) != 1:
        return "blocks of different kinds"
    for i, blk in enumerate(blocks):
        if type(blk) not in allowed:
            return f"block {type(blk).__name__} not supported"
        if type(blk.attn) is not SelfAttention:
            return f"attention {type(blk.attn).__name__} not supported"
        if type(blk.mlp) is SparseMoE:
            if (reason := _moe_unsupported(blk.mlp, i, model.config.d_model)) is not None:
                return reason
        elif type(blk.mlp) not in (MLP, GatedMLP) or blk.mlp.activation not in _ACT:
            return f"feed-forward {type(blk.mlp).__name__} not supported"
        norms = (blk.norm1, blk.norm2) + ((blk.norm_cross,) if seq2seq else ())
        for n in norms:
            if kind is None or norm_kind(n) != kind:
                return "norms must all be LayerNorm or all RMSNorm"
            eps.add(n.eps)
        if blk.attn.head_dim > 512:
            return "head_dim > 512"
        if seq2seq and blk.cross.scale != blk.attn.scale:
            return "cross-attention scale differs from self-attention's"
    if (reason := unplain_projection(blocks, quantized=True)) is not None:
        return reason
    head = model.output_head()
    if type(head) is not LMHead or head.proj is not None:
        return f"output head {type(getattr(head, 'proj', None) or head).__name__} is not a plain weight"
    if not isinstance(final_norm, nn.Identity):
        if norm_kind(final_norm) != kind:
            return "final norm differs from the block norms"
        eps.add(final_norm.eps)
    if len(eps) > 1:
        return "norm eps differs between layers"
    if pos is not None and type(pos) not in (LearnedPositionalEmbedding, SinusoidalPositionalEmbedding):
        return f"position embedding {type(pos).__name__} not supported"
    if score_bias is not None and type(score_bias) not in (ALiBi, RelativePositionBias):
        return f"score bias {type(score_bias).__name__} not supported"
    if rotary is not None and rotary.rot_dim > 512:
        return "rotary dimension > 512"
    return None


def _weight(linear: nn.Module, ptr: Pinned) -> tuple[int | None, int]:
    """(pointer, format) of a projection's weight: fp32 (0) or a QuantizedLinear's GGUF blocks."""
    if type(linear) is QuantizedLinear:
        return ptr(linear.blocks), linear.ggml_type
    return ptr(linear.weight), 0


def _bind_moe(s: _Moe, moe: SparseMoE, ptr: Pinned) -> None:
    """Point ``s`` at a :class:`SparseMoE`'s stacked weights (read in place) and give its sizes."""
    router, experts = moe.router, moe.experts
    s.router_w, s.gate_up, s.down = ptr(router.weight), ptr(experts.gate_up_proj), ptr(experts.down_proj)
    s.n_experts, s.top_k, s.d_ff = experts.n_experts, router.k, experts.d_ff
    s.renorm, s.act = int(router.renormalize), _ACT[experts.activation]


class FusedDecodeStep:
    """``step(ids (B,), positions (B,), key_mask (B, S) | None) -> logits (B, V)``, advancing ``cache``.

    ``cache``: the model's :class:`KVCache` (decoder-only) or :class:`Seq2SeqCache` (encoder–decoder,
    whose memory k/v and the source mask ``memory_mask (B, S)`` are read once here).
    ``positions``: each row's position id (left padding shifts them); ``key_mask``: 1 for real tokens
    over the cache's slots (the row stride may exceed the filled length). The returned logits
    tensor is reused by the next call. Between calls the cache may grow (new buffers: the struct is
    re-pointed) or compact in place (slots keep position order, so windows and distances hold).
    """

    def __init__(self, model: nn.Module, cache, batch: int, memory_mask: torch.Tensor | None = None):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"fused decode step unavailable: {reason}")
        from ..registry import SEQ2SEQ, capabilities
        seq2seq = SEQ2SEQ in capabilities(model)
        self.lib, c = library(), model.config
        self.cache = cache.self_kv if seq2seq else cache
        blocks, final_norm, pos_embed, rotary, score_bias = _decoder_parts(model)
        blocks = list(blocks)
        a0 = blocks[0].attn
        ptr = Pinned()

        layers = (_Layer * len(blocks))()
        for i, (blk, lc) in enumerate(zip(blocks, self.cache.layers)):
            fc = (None,) * 4  # a sparse MoE layer: its parts go to layers[i].moe
            if type(blk.mlp) is SparseMoE:
                _bind_moe(layers[i].moe, blk.mlp, ptr)
            else:
                fc1, fc2 = (blk.mlp.gate_up, blk.mlp.down) if type(blk.mlp) is GatedMLP else (blk.mlp.fc1, blk.mlp.fc2)
                fc = (fc1, fc1.bias, fc2, fc2.bias)
            vals = (blk.norm1.weight, getattr(blk.norm1, "bias", None), blk.attn.qkv, blk.attn.qkv.bias,
                    blk.attn.out, blk.attn.out.bias, blk.norm2.weight, getattr(blk.norm2, "bias", None),
                    *fc, None, None)  # k/v cache: _bind_cache; linears: _weight
            if seq2seq:
                mem_k, mem_v = cache.memory_kv[i]
                vals += (blk.norm_cross.weight, getattr(blk.norm_cross, "bias", None), blk.cross.q.weight,
                         blk.cross.q.bias, blk.cross.out.weight, blk.cross.out.bias, mem_k.contiguous(),
                         mem_v.contiguous())
            for name, t in zip(_LAYER_FIELDS + _CROSS_FIELDS, vals):
                if isinstance(t, nn.Module):  # a projection: fp32 weight or quantised blocks
                    t, fmt = _weight(t, ptr)
                    setattr(layers[i], name[:-2] + "_t", fmt)
                    setattr(layers[i], name, t)
                else:
                    setattr(layers[i], name, ptr(t))
        m = _Model()
        m.n_layers, m.batch, m.d, m.n_heads, m.n_kv, m.dh = (len(blocks), batch, c.d_model, a0.n_heads, a0.n_kv_heads,
                                                              a0.head_dim)
        dense = next((b.mlp for b in blocks if type(b.mlp) is not SparseMoE), None)  # None: every layer is MoE
        m.d_ff = 0 if dense is None else dense.d_ff if type(dense) is GatedMLP else dense.fc1.out_features
        m.vocab = model.output_head().get_weight().shape[0]
        m.norm = norm_kind(blocks[0].norm1)
        m.post_norm = int(type(blocks[0]).__name__.startswith("PostNorm"))
        m.final_norm = int(not isinstance(final_norm, nn.Identity))
        m.gated = int(type(dense) is GatedMLP)
        m.act = _ACT[dense.activation] if dense is not None else 0
        m.window = 0 if seq2seq else c.sliding_window or 0  # the PyTorch seq2seq decoder has no window
        m.n_threads = torch.get_num_threads()
        m.norm_eps = blocks[0].norm1.eps
        m.attn_scale = a0.scale if a0.scale is not None else a0.head_dim ** -0.5
        m.emb_scale = getattr(model.embedding(), "scale", 1.0)
        m.out_scale = (c.output_scale if seq2seq else None) or 1.0
        m.embed = ptr(model.embedding().weight)
        m.pos_kind, self.pos_len = 0, 1 << 62
        if pos_embed is not None:
            table = pos_embed.weight if isinstance(pos_embed, nn.Embedding) else pos_embed.table
            m.pos_kind, m.pos_table, self.pos_len = 1, ptr(table), table.shape[0]
        elif rotary is not None:
            m.pos_kind, m.rot_dim, m.rope_len = 2, rotary.rot_dim, rotary.cos_table.shape[0]
            m.rope_cos, m.rope_sin, m.inv_freq = ptr(rotary.cos_table), ptr(rotary.sin_table), ptr(rotary.inv_freq)
        elif type(score_bias) is ALiBi:
            m.pos_kind, m.alibi = 3, ptr(score_bias.slopes)
        # T5 relative bias (the last case of the chain above): a table by distance, sized in _bind_cache
        relative = pos_embed is None and rotary is None and score_bias is not None and type(score_bias) is not ALiBi
        self.bias_cache = cache if relative else None  # the Seq2SeqCache keeps the (H, L) table by distance
        if seq2seq:
            m.mem_len = cache.memory_kv[0][0].shape[2]
            if memory_mask is not None and not bool(memory_mask.ne(0).all()):
                try:  # 1 = real token, as PyTorch's key_padding.bool(); broadcast like the PyTorch path
                    mm = memory_mask.ne(0).expand(batch, m.mem_len)
                except RuntimeError as e:
                    raise ValueError(f"memory_mask {tuple(memory_mask.shape)} does not fit the batch "
                                     f"({batch}, {m.mem_len})") from e
                m.mem_mask = ptr(mm.to("cpu", torch.long).contiguous())
        if m.final_norm:
            m.final_w, m.final_b = ptr(final_norm.weight), ptr(getattr(final_norm, "bias", None))
        m.head_w, m.head_b = ptr(model.output_head().get_weight()), ptr(model.output_head().bias)
        head_blocks = getattr(model, "quantized_head", None)  # (blocks, GGML type): the same weight's GGUF blocks
        if head_blocks is not None:  # (interop/gguf_quant.py: a tied head read from the file's blocks)
            m.head_w, m.head_t = ptr(head_blocks[0]), head_blocks[1]
        m.layers = layers
        self.logits = torch.empty(batch, m.vocab, dtype=torch.float32, device="cpu")
        self.n_embed = model.embedding().weight.shape[0]
        self.model_struct, self.layers, self.keep = m, layers, ptr
        self._check = lambda: self._check_cache(model, blocks, batch, seq2seq, cache)
        self._bind_cache()

    def _bind_cache(self) -> None:
        """Point the struct at the cache's current k/v buffers (again after the cache grew) and size
        what depends on its capacity: the scratch, the T5 distance bias."""
        self._check()
        m, keep = self.model_struct, Pinned()
        for layer, lc in zip(self.layers, self.cache.layers):
            layer.k_cache, layer.v_cache = keep(lc.k), keep(lc.v)
        m.max_len = self.cache.max_len
        if self.bias_cache is not None:  # T5 relative bias: a function of the distance q − k ≥ 0 only
            bias = self.bias_cache.dist_bias[:, :m.max_len]  # (H, L), sized with the cache (Seq2SeqCache)
            m.dist_bias = keep(bias.to(torch.float32).contiguous())
        self.scratch = torch.empty(self.lib.gm_scratch_floats(ctypes.byref(m)), dtype=torch.float32, device="cpu")
        m.scratch = self.scratch.data_ptr()
        self.keep_cache = keep
        self.k_ptr, self.bound_len = self.cache.layers[0].k.data_ptr(), m.max_len

    @staticmethod
    def _check_cache(model, blocks, batch: int, seq2seq: bool, cache) -> None:
        """The C code trusts these shapes: check them here (a mismatch would read out of bounds)."""
        kv = cache.self_kv if seq2seq else cache
        a = blocks[0].attn
        if batch < 1 or len(kv.layers) != len(blocks):
            raise ValueError(f"cache has {len(kv.layers)} layers for a {len(blocks)}-layer decoder, batch {batch}")
        want = (batch, a.n_kv_heads, kv.max_len, a.head_dim)
        for lc in kv.layers:
            for t in (lc.k, lc.v):
                if (tuple(t.shape) != want or t.dtype != torch.float32 or t.device.type != "cpu"
                        or not t.is_contiguous()):
                    raise ValueError(f"KV cache tensors must be contiguous fp32 CPU {want}, got {tuple(t.shape)}")
        if seq2seq:
            mem = cache.memory_kv
            s = mem[0][0].shape[2]
            for k, v in mem:
                for t in (k, v):
                    if (t.shape[0], t.shape[1], t.shape[3]) != (batch, a.n_kv_heads, a.head_dim) or t.shape[2] != s \
                            or t.dtype != torch.float32 or t.device.type != "cpu":
                        raise ValueError(f"memory keys/values must be fp32 CPU ({batch}, {a.n_kv_heads}, S, "
                                         f"{a.head_dim}), got {tuple(t.shape)}")
            if len(mem) != len(blocks):
                raise ValueError(f"cache holds memory k/v for {len(mem)} layers, the decoder has {len(blocks)}")

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor,
                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache.layers[0].k.data_ptr() != self.k_ptr or self.cache.max_len != self.bound_len:
            self._bind_cache()  # the cache grew (KVCache.reserve): new buffers
        m, start = self.model_struct, self.cache.pos
        if start >= m.max_len:
            raise ValueError(f"KV cache overflow: {start + 1} positions > capacity {m.max_len}")
        ids = ids.contiguous().long()
        positions = positions.contiguous().long()
        if ids.shape != (m.batch,) or positions.shape != (m.batch,):
            raise ValueError(f"ids and positions must be ({m.batch},), got {tuple(ids.shape)}, "
                             f"{tuple(positions.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.n_embed:
            raise ValueError(f"token ids must be in [0, {self.n_embed})")
        if int(positions.min()) < 0 or (m.pos_kind == 1 and int(positions.max()) >= self.pos_len):
            raise ValueError(f"position ids must be in [0, {self.pos_len})")
        if key_mask is not None:
            key_mask = key_mask.ne(0).long().contiguous()
            if key_mask.shape[0] != m.batch or key_mask.shape[1] <= start:
                raise ValueError(f"key_mask must be ({m.batch}, >{start}), got {tuple(key_mask.shape)}")
            m.mask_stride = key_mask.shape[1]
        self.lib.gm_decoder_step(ctypes.byref(m), ids.data_ptr(), positions.data_ptr(),
                                 key_mask.data_ptr() if key_mask is not None else None, start,
                                 self.logits.data_ptr())
        self.cache.pos = start + 1
        self.cache.row_pos = positions + 1  # cache protocol v2: each row's next position
        return self.logits
