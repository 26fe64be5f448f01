"""An encoder forward in one native call (``gm_encoder_forward`` in csrc/encoder.c), for inference.

    ids ─ embed + token type + position ─ Norm ─ N × Block (post- or pre-norm) ─▶ hidden (B, T, D)

The real tokens of a (padded) batch are packed into rows and each attends to its own sequence's
keys, so padding costs nothing; the matrices are multiplied by a register-blocked GEMM over
weights repacked once into 16-column panels (:func:`packed`), which on small batches — one
sentence is ~20–40 rows — runs well above PyTorch's BLAS here (benchmarks/bench_encoder.py).

The packed copies cost the size of the encoder's linear weights once more; they are rebuilt when a
parameter changes, so training or editing the weights between calls is safe (:meth:`NativeEncoder.stale`:
the version counter, the data pointer and a sample of every packed weight's values (:mod:`.watch` says
what each catches). Norms, biases and embeddings are read in place by the kernels, so their in-place
edits need no repack.

An arbitrary edit of single elements through ``.data`` away from the sample is not seen: call
:func:`forget` after one. For MiniLM-L6 at batch 1 the check adds ~0.4 ms to a call of 3.5–6.5 ms
(2 and 1 threads; mostly the cache misses of one element per row).
"""
from __future__ import annotations

import ctypes
import weakref

import torch
from torch import nn

from ..nn import GatedMLP, LearnedPositionalEmbedding, MLP, SelfAttention
from ..nn.masks import refusal
from . import ACTIVATIONS as _ACT
from . import Pinned, library, never_raises, norm_kind, unavailable_reason, unplain_projection, unsupported_tensors
from .layout import hooked
from . import watch
from .watch import Sample

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_LAYER_FIELDS = ("norm1_w", "norm1_b", "qkv_wp", "qkv_b", "out_wp", "out_b", "norm2_w", "norm2_b", "fc1_wp",
                 "fc1_b", "fc2_wp", "fc2_b")


class _Layer(ctypes.Structure):
    _fields_ = [(n, _P) for n in _LAYER_FIELDS]


class _Encoder(ctypes.Structure):  # field order mirrors gm_encoder in csrc/encoder.c
    _fields_ = ([(n, _I) for n in ("n_layers", "d", "n_heads", "n_kv", "dh", "d_ff", "norm", "gated", "act",
                                   "post_norm", "n_threads")]
                + [(n, _D) for n in ("norm_eps", "attn_scale", "emb_scale")]
                + [(n, _P) for n in ("embed", "type_table", "pos_table", "emb_norm_w", "emb_norm_b", "final_w",
                                     "final_b")]
                + [("layers", ctypes.POINTER(_Layer))])


MASK_RULES = frozenset({"padding"})  # nn/masks.RULES the native encoder implements: key padding only


def unsupported_inputs(**inputs) -> str | None:
    """Why the native encoder cannot take these inputs (``segment_ids=``, ``allowed=``, ``position_ids=``,
    ``inputs_embeds=``; ``None`` = absent): a one-line reason, or ``None``."""
    return refusal("the native encoder", MASK_RULES, **inputs)


@never_raises
def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the native encoder (``None``: it can)."""
    from ..models.blocks import PostNormBlock, PreNormBlock
    from ..registry import EMBEDS, capabilities
    if EMBEDS not in capabilities(model):
        return "not an encoder model"
    if library() is None:
        return f"native kernels unavailable ({unavailable_reason()})"
    if (reason := hooked(model)) is not None:
        return reason
    if (reason := unsupported_tensors(model.parameters())) is not None:
        return reason
    if not callable(getattr(type(model), "transformer_blocks", None)):
        return f"{type(model).__name__} names no blocks (transformer_blocks())"
    blocks = model.transformer_blocks()
    kinds = {type(b) for b in blocks}
    if len(kinds) != 1 or kinds.pop() not in (PostNormBlock, PreNormBlock):
        return "blocks must be all post-norm or all pre-norm self-attention blocks"
    norms = [n for b in blocks for n in (b.norm1, b.norm2)]
    norms += [n for n in (model.embed_norm, model.norm) if not isinstance(n, nn.Identity)]
    if len({norm_kind(n) for n in norms}) != 1 or norm_kind(norms[0]) is None or len({n.eps for n in norms}) != 1:
        return "norms must be all LayerNorm or all RMSNorm with one eps"
    for b in blocks:
        if type(b.attn) is not SelfAttention or type(b.mlp) not in (MLP, GatedMLP) or b.mlp.activation not in _ACT:
            return "attention or feed-forward layout not supported"
    if (reason := unplain_projection(blocks)) is not None:
        return reason
    if model.pos_embed is not None and type(model.pos_embed) is not LearnedPositionalEmbedding:
        return f"position embedding {type(model.pos_embed).__name__} not supported"
    return None


def packed(weight: torch.Tensor) -> torch.Tensor:
    """``W (N, K)`` -> panels ``(⌈N/16⌉, K, 16)``: output columns 16p…16p+15 contiguous per k (zero-padded)."""
    n, k = weight.shape
    w = torch.zeros((n + 15) // 16 * 16, k, dtype=torch.float32, device="cpu")
    w[:n] = weight
    return w.view(-1, 16, k).transpose(1, 2).contiguous()


class NativeEncoder:
    """``encoder(input_ids (B, T), attention_mask (B, T) | None, token_type_ids | None) -> (B, T, D)``,
    equal to ``model.encode(..., skip_padding=True)`` (zeros at padded positions)."""

    def __init__(self, model: nn.Module):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"native encoder unavailable: {reason}")
        self.model_ref, self.lib = weakref.ref(model), library()
        self._build()

    @property
    def model(self) -> nn.Module:
        return self.model_ref()

    def _versions(self) -> list[tuple]:
        return [watch.state(p) for p in self.model.parameters()]  # (pointer, version, shape) each

    def stale(self) -> bool:
        """Whether the packed weights may differ from the model's (see the module docstring)."""
        if self._versions() != self.versions:
            return True
        return not all(sample.holds() for sample in self.watched)

    def _build(self) -> None:
        model, c = self.model, self.model.config
        blocks = list(model.transformer_blocks())
        a0 = blocks[0].attn
        ptr = Pinned()

        watched = []
        with torch.no_grad():
            layers = (_Layer * len(blocks))()
            for i, b in enumerate(blocks):
                fc1, fc2 = (b.mlp.gate_up, b.mlp.down) if type(b.mlp) is GatedMLP else (b.mlp.fc1, b.mlp.fc2)
                vals = (b.norm1.weight, getattr(b.norm1, "bias", None), packed(b.attn.qkv.weight), b.attn.qkv.bias,
                        packed(b.attn.out.weight), b.attn.out.bias, b.norm2.weight, getattr(b.norm2, "bias", None),
                        packed(fc1.weight), fc1.bias, packed(fc2.weight), fc2.bias)
                for name, t in zip(_LAYER_FIELDS, vals):
                    setattr(layers[i], name, ptr(t))
                for j, w in enumerate((b.attn.qkv.weight, b.attn.out.weight, fc1.weight, fc2.weight)):
                    watched.append(Sample(w, 4 * i + j))
        from ..models.blocks import PostNormBlock
        m = _Encoder()
        m.n_layers, m.d, m.n_heads, m.n_kv, m.dh = len(blocks), c.d_model, a0.n_heads, a0.n_kv_heads, a0.head_dim
        m.d_ff = blocks[0].mlp.d_ff if type(blocks[0].mlp) is GatedMLP else blocks[0].mlp.fc1.out_features
        m.norm, m.gated = norm_kind(blocks[0].norm1), int(type(blocks[0].mlp) is GatedMLP)
        m.act, m.post_norm = _ACT[blocks[0].mlp.activation], int(type(blocks[0]) is PostNormBlock)
        m.norm_eps = blocks[0].norm1.eps
        m.attn_scale = a0.scale if a0.scale is not None else a0.head_dim ** -0.5
        m.emb_scale = model.embedding().scale
        m.embed = ptr(model.embedding().weight)
        if model.type_embed is not None:
            m.type_table = ptr(model.type_embed.weight)
        if model.pos_embed is not None:
            m.pos_table = ptr(model.pos_embed.weight)
        if not isinstance(model.embed_norm, nn.Identity):
            m.emb_norm_w, m.emb_norm_b = ptr(model.embed_norm.weight), ptr(getattr(model.embed_norm, "bias", None))
        if not isinstance(model.norm, nn.Identity):
            m.final_w, m.final_b = ptr(model.norm.weight), ptr(getattr(model.norm, "bias", None))
        m.layers = layers
        self.struct, self.layers, self.keep, self.versions = m, layers, ptr, self._versions()
        self.watched = watched

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        if (reason := unsupported_inputs(**inputs)) is not None:  # segment_ids=, allowed=, …: refused
            raise ValueError(reason)
        if self.stale():  # trained, edited or reloaded since packing
            self._build()
        c = self.model.config
        # this call's own copy of the struct (threads may share this encoder), and references that keep
        # what it points to alive until the call returns, even if another thread rebuilds meanwhile
        m, alive = _Encoder.from_buffer_copy(self.struct), (self.keep, self.layers)
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise ValueError(f"input_ids must be (batch, length) with at least one token, got {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        pos_rows = self.model.pos_embed.num_embeddings if self.model.pos_embed is not None else None
        if pos_rows is not None and t > pos_rows:
            raise ValueError(f"sequence of {t} positions exceeds the model's {pos_rows} learned positions "
                             "(max_seq_len)")
        if attention_mask is not None and tuple(attention_mask.shape) != (b, t):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {(b, t)}")
        ids = input_ids.reshape(-1).long()
        if int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size})")
        m.n_threads = torch.get_num_threads()
        cols = torch.arange(t, device="cpu").expand(b, t).reshape(-1)
        rows = torch.arange(b, device="cpu").repeat_interleave(t)
        real = attention_mask.ne(0) if attention_mask is not None else None  # any nonzero = token, as PyTorch
        if real is not None and not bool(real.all()):
            index = real.reshape(-1).nonzero().squeeze(1)  # real tokens, row-major
            lengths = real.long().sum(1)
        else:
            index, lengths = None, torch.full((b,), t, dtype=torch.long, device="cpu")
        starts = lengths.cumsum(0) - lengths  # each row's first packed token
        sel = (lambda v: v[index]) if index is not None else (lambda v: v)
        tok_ids, pos, row = sel(ids).contiguous(), sel(cols).contiguous(), sel(rows)
        key_lo = starts[row].contiguous()
        key_hi = (key_lo + lengths[row]).contiguous()
        types = None
        if token_type_ids is not None and self.model.type_embed is not None:
            try:  # PyTorch broadcasts the type ids against the tokens: do the same
                token_type_ids = token_type_ids.expand(b, t)
            except RuntimeError as e:
                raise ValueError(f"token_type_ids {tuple(token_type_ids.shape)} do not fit input_ids {(b, t)}") from e
            types = sel(token_type_ids.reshape(-1).long()).contiguous()
            if int(types.min()) < 0 or int(types.max()) >= self.model.type_embed.num_embeddings:
                raise ValueError(f"token_type_ids must be in [0, {self.model.type_embed.num_embeddings})")
        nonempty = lengths > 0
        seq_lo, seq_len = starts[nonempty].contiguous(), lengths[nonempty].contiguous()
        n = tok_ids.shape[0]
        hidden = torch.empty(n, c.d_model, dtype=torch.float32, device="cpu")
        longest = int(seq_len.max())  # the attention scratch is n_threads × longest² floats
        scratch = torch.empty(self.lib.gm_encoder_scratch_floats(ctypes.byref(m), n, longest), dtype=torch.float32,
                              device="cpu")
        self.lib.gm_encoder_forward(ctypes.byref(m), tok_ids.data_ptr(), types.data_ptr() if types is not None
                                    else None, pos.data_ptr(), key_lo.data_ptr(), key_hi.data_ptr(),
                                    seq_lo.data_ptr(), seq_len.data_ptr(), seq_len.shape[0], n, longest,
                                    scratch.data_ptr(), hidden.data_ptr())
        del alive  # (held until the call returned)
        if index is None:
            return hidden.view(b, t, -1)
        out = hidden.new_zeros(b * t, c.d_model)
        return out.index_copy_(0, index, hidden).view(b, t, -1)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> NativeEncoder (not on the model:
# it holds ctypes pointers, which would break copy.deepcopy(model))


def forget(model: nn.Module) -> None:
    """Drop ``model``'s packed weights (the next call repacks): after editing single weight elements
    through ``.data``, which :meth:`NativeEncoder.stale` may not see."""
    _CACHE.pop(model, None)


def native_encoder(model: nn.Module) -> NativeEncoder | None:
    """The model's :class:`NativeEncoder` (built once per model and kept while the model lives), or
    ``None`` when the model or this machine cannot run it."""
    if unsupported(model) is not None:  # checked each time: the model may have moved or changed dtype
        return None
    enc = _CACHE.get(model)
    if enc is None:
        enc = _CACHE[model] = NativeEncoder(model)
    return enc
