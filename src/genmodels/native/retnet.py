"""RetNet's recurrent decode step in one native call (``gm_retnet_step`` in csrc/retnet.c).

    ids (B,) ─ embed ─ N × [x += MSR_recurrent(RMSNorm x; S, s);  x += GLU(RMSNorm x)] ─ RMSNorm ─ head ─▶ (B, V)

with, per layer and head h (torchscale 0.3.0's recurrent form, :class:`genmodels.nn.MultiScaleRetention`)::

    s_n = γ_h s_{n−1} + 1
    S_n = S_{n−1} · γ_h √(s_{n−1}/s_n) + k_nᵀ v_n / √s_n        # a rank-1 update of S (d_k, d_v)
    y   = swish(W_G x) ⊙ RMSNorm(q_n S_n)                       # no affine in the head norm

It reads the model's parameters in place and advances the :class:`RetentionCache`'s own state tensors in place,
so a PyTorch prefill followed by native steps (or PyTorch steps between native ones) continue one state. On its
first use of a state (and whenever the PyTorch path has replaced one) it takes a private contiguous copy into
the cache, so tensors a caller kept from before are never written. Each row rotates at its own position
(``cache.row_pos``), so left-padded batches need no special case. Anything else (another dtype or device,
wrapped projections, unknown parts) is reported by :func:`unsupported`, and generation keeps the PyTorch path.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from . import Pinned, library, never_raises, unavailable_reason, unsupported_tensors
from .layout import hooked
from ..nn.linear import is_plain

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_LAYER_FIELDS = ("norm1_w", "q_w", "k_w", "v_w", "g_w", "out_w", "norm2_w", "fc1_w", "gate_w", "fc2_w", "gamma",
                 "state", "scale")
_ACT = {"gelu": 0, "swish": 3}  # ACT_GELU, ACT_SILU of csrc/common.h


class _Layer(ctypes.Structure):  # mirrors gm_retnet_layer
    _fields_ = [(n, _P) for n in _LAYER_FIELDS]


class _Model(ctypes.Structure):  # mirrors gm_retnet
    _fields_ = ([(n, _I) for n in ("n_layers", "batch", "d", "n_heads", "dk", "dv", "d_ff", "vocab", "act",
                                   "n_threads")]
                + [(n, _D) for n in ("norm_eps", "retention_eps", "key_scale", "emb_scale")]
                + [(n, _P) for n in ("embed", "angle", "final_w", "head_w", "head_b")]
                + [("layers", ctypes.POINTER(_Layer)), ("scratch", _P)])


def _linears(block: nn.Module) -> dict[str, nn.Module]:
    r, f = block.retention, block.ffn
    return {"retention.q_proj": r.q_proj, "retention.k_proj": r.k_proj, "retention.v_proj": r.v_proj,
            "retention.g_proj": r.g_proj, "retention.out_proj": r.out_proj, "ffn.fc1": f.fc1, "ffn.gate": f.gate,
            "ffn.fc2": f.fc2}


@never_raises
def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the fused recurrent step (``None``: it can). Never raises."""
    from ..models.retnet.model import GLU, RetNetBlock, RetNetLM
    from ..nn import RMSNorm
    from ..nn.head import LMHead
    from ..nn.retention import MultiScaleRetention
    if not isinstance(model, RetNetLM):
        return f"{type(model).__name__} is not a RetNetLM"
    if library() is None:
        return f"native kernels unavailable ({unavailable_reason()})"
    if (reason := hooked(model)) is not None:
        return reason
    if (reason := unsupported_tensors(list(model.parameters()) + list(model.buffers()))) is not None:
        return reason
    norms = [model.norm]
    for i, blk in enumerate(model.blocks):
        if type(blk) is not RetNetBlock or type(blk.retention) is not MultiScaleRetention or type(blk.ffn) is not GLU:
            return f"block {i} is not RetNetBlock(MultiScaleRetention, GLU)"
        if blk.ffn.activation not in _ACT:
            return f"block {i} FFN activation {blk.ffn.activation!r} not supported ({', '.join(_ACT)})"
        for name, lin in _linears(blk).items():
            if not is_plain(lin) or lin.bias is not None:  # a merged LoRA linear is plain (nn/linear.is_plain)
                return f"block {i} {name} is not a plain bias-free nn.Linear ({type(lin).__name__})"
        norms += [blk.norm1, blk.norm2]
    if any(type(n) is not RMSNorm for n in norms) or len({n.eps for n in norms}) != 1:
        return "norms must all be RMSNorm with one eps"
    if len({b.retention.eps for b in model.blocks}) != 1:
        return "retention (head-norm) eps differs between layers"
    if type(model.head) is not LMHead:
        return f"head {type(model.head).__name__} is not an LMHead"
    return None


class FusedRetNetStep:
    """``step(ids (B,), positions (B,) | None = None, key_mask = None) -> logits (B, V)``, advancing ``cache``.

    ``cache``: the model's :class:`RetentionCache` for ``batch`` rows; rows rotate at ``cache.row_pos`` (their
    own count of consumed tokens), which ``positions``, when given, must equal (the decode loop's bookkeeping).
    ``key_mask`` is accepted for the decode loop's signature and unused: pads never enter a recurrent state.
    The returned logits tensor is reused by the next call.
    """

    def __init__(self, model: nn.Module, cache, batch: int):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"fused RetNet step unavailable: {reason}")
        if len(cache.states) != len(model.blocks) or tuple(cache.row_pos.shape) != (batch,):
            raise ValueError(f"cache holds {len(cache.states)} layers and {tuple(cache.row_pos.shape)} rows for a "
                             f"{len(model.blocks)}-layer RetNet at batch {batch}")
        self.lib, self.cache, c = library(), cache, model.config
        r0 = model.blocks[0].retention
        self.state_shapes = ((batch, r0.n_heads, r0.key_dim, r0.head_dim), (batch, r0.n_heads))
        ptr = Pinned()
        layers = (_Layer * len(model.blocks))()
        for layer, blk in zip(layers, model.blocks):
            r, f = blk.retention, blk.ffn
            gamma = r.decay.exp()  # (H,) γ_h, as the PyTorch recurrent form computes it
            vals = (blk.norm1.weight, r.q_proj.weight, r.k_proj.weight, r.v_proj.weight, r.g_proj.weight,
                    r.out_proj.weight, blk.norm2.weight, f.fc1.weight, f.gate.weight, f.fc2.weight, gamma)
            for name, t in zip(_LAYER_FIELDS, vals):
                setattr(layer, name, ptr(t))
        m = _Model()
        m.n_layers, m.batch, m.d, m.n_heads, m.dk, m.dv = (len(model.blocks), batch, c.d_model, r0.n_heads,
                                                           r0.key_dim, r0.head_dim)
        m.d_ff, m.vocab = model.blocks[0].ffn.fc1.out_features, model.head.get_weight().shape[0]
        m.act, m.n_threads = _ACT[model.blocks[0].ffn.activation], torch.get_num_threads()
        m.norm_eps, m.retention_eps, m.key_scale = model.norm.eps, r0.eps, r0.scaling
        m.emb_scale = getattr(model.embed, "scale", 1.0)
        m.embed, m.angle, m.final_w = ptr(model.embed.weight), ptr(r0.angle), ptr(model.norm.weight)
        m.head_w, m.head_b = ptr(model.head.get_weight()), ptr(model.head.bias)
        m.layers = layers
        self.scratch = torch.empty(self.lib.gm_retnet_scratch_floats(ctypes.byref(m)), dtype=torch.float32)
        m.scratch = self.scratch.data_ptr()
        self.logits = torch.empty(batch, m.vocab, dtype=torch.float32)
        self.n_embed = model.embed.weight.shape[0]
        self.model_struct, self.layers, self.keep = m, layers, ptr
        self.bound: list = [object()] * len(layers)  # the cache's state tuples the struct points at

    def _bind_states(self) -> None:
        """Point the struct at the cache's states: an empty layer (None) gets a zero state (s = 0: the first step
        then gives S = kᵀv, s = 1); a state the PyTorch path produced is replaced by a private contiguous copy."""
        for i, (layer, st) in enumerate(zip(self.layers, self.cache.states)):
            if st is self.bound[i]:
                continue
            if st is None:
                st = tuple(torch.zeros(shape, dtype=torch.float32) for shape in self.state_shapes)
            else:
                for t, shape, name in zip(st, self.state_shapes, ("S", "s")):
                    if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device.type != "cpu":
                        raise ValueError(f"RetentionCache layer {i} state {name} must be fp32 CPU {shape}, got "
                                         f"{tuple(t.shape)} {t.dtype} on {t.device}")
                st = tuple(t.detach().clone(memory_format=torch.contiguous_format) for t in st)
            self.cache.states[i] = self.bound[i] = st
            layer.state, layer.scale = st[0].data_ptr(), st[1].data_ptr()

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
        m, cache = self.model_struct, self.cache
        if ids.shape != (m.batch,):
            raise ValueError(f"ids must be ({m.batch},), got {tuple(ids.shape)}")
        ids = ids.to("cpu", torch.long).contiguous()
        values = ids.tolist()  # a few ints at decode batch sizes: cheaper than two reductions
        if min(values) < 0 or max(values) >= self.n_embed:
            raise ValueError(f"token ids must be in [0, {self.n_embed})")
        row_pos = cache.row_pos
        if row_pos.dtype != torch.long or row_pos.device.type != "cpu" or not row_pos.is_contiguous():
            cache.row_pos = row_pos = row_pos.to("cpu", torch.long).contiguous()
        if positions is not None and positions.reshape(-1).tolist() != row_pos.tolist():
            raise ValueError(f"positions {positions.tolist()} differ from the rows' recurrent positions "
                             f"{row_pos.tolist()} (cache.row_pos)")
        self._bind_states()
        self.lib.gm_retnet_step(ctypes.byref(m), ids.data_ptr(), row_pos.data_ptr(), self.logits.data_ptr())
        row_pos += 1
        cache.pos += 1
        return self.logits
