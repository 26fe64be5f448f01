"""A fast path for sampling with a UNet2D on CPU: the function of ``UNet2D.forward``, computed with fewer,
cheaper kernels. ``fast = FastUNet(model)``, then ``fast(sample, timestep, class_labels=None)`` in the
sampling loop; equal to ``model(...)`` to float32 rounding (tests/models/diffusion/test_fast_paths.py).

Where the time goes (benchmarks/bench_diffusion.py --profile, docs/benchmarks.md): convolutions, then the
pixel attention; GroupNorm, SiLU, adds and Python are a few percent. The levers, each on that profile:

1. **channels_last** activations end to end. oneDNN convolves NHWC directly (PyTorch's NCHW path reorders
   every input and output, and at batch 64 runs the 3-channel ``conv_in`` and the 1×1 shortcuts 6–20×
   slower); GroupNorm, SiLU, ``cat``, nearest upsampling keep the format, and the attention's
   (B, H·W, C) token matrix is a free view of an NHWC map.
2. **Prepacked oneDNN convolutions.** Every 3×3/1×1 conv runs ``mkldnn._convolution_pointwise`` on a
   weight reordered once into oneDNN's blocked layout (eager ``conv2d`` reorders it on every call, and
   sends batch-1 maps of ≤ 20,480 values to a slower im2col path): 1.5–2.9× on the 8×8 convs at batch 1.
3. **Fused adds.** conv2 of each resnet adds the shortcut as a oneDNN post-op; the time projections
   W_t·τ of all resnets are one matmul, and when every sample has the same conditioning (one t, equal or
   no labels: the usual sampling loop) W_t·τ is folded into conv1's bias; the attention's output
   projection adds the residual in the same pass over its rows.
4. **In place** SiLU after GroupNorm; no dropout (inference only).
5. **Attention** of heads 8 or 16 wide (diffusers' default is 8) through the native kernel, taken from
   nn/attention's kernel table (:mod:`genmodels.native.attention`: the vector lanes run along the pixels,
   ~5× PyTorch's fused kernel at 16 heads × 256 pixels); other widths, or without the native library,
   :func:`attention_by_sample`.

The packed weights are a snapshot: a call after the parameters changed (an optimizer step, ``copy_``,
``load_state_dict``, ``.to``: version counter or data pointer) repacks them; an edit through ``p.data``
is not seen — build a new FastUNet after one (EMA weights: build it after the update). Without oneDNN,
or off the CPU, or not in float32, the convolutions fall back to ``F.conv2d`` (levers 1, 3, 4 remain).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.attention import KERNELS, kernel_prefers
from ...nn.conv import Downsample2D, ResnetBlock2D, Upsample2D
from ...nn.spatial_attention import SpatialSelfAttention
from .inputs import check_sample, conditioning
from .unet import UNet2D

_CL = torch.channels_last


def onednn_available() -> bool:
    """Whether this PyTorch has the prepacked oneDNN convolution used by lever 2."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class PackedConv:
    """One ``nn.Conv2d`` as oneDNN runs it fastest: ``conv(x, bias=None, add=None)`` = conv(x) + bias + add,
    ``x`` and ``add`` channels_last; the weight reordered once (repacked when the parameter changes)."""

    def __init__(self, conv: nn.Conv2d, onednn: bool):
        self.conv, self.onednn, self.key, self.weight = conv, onednn, None, None
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def _packed(self) -> torch.Tensor:
        w = self.conv.weight
        key = (w.data_ptr(), 0 if w.is_inference() else w._version, w.device, w.dtype)
        if key != self.key:
            pad, stride, dil, groups = self.args
            self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(w.detach().to_mkldnn(), pad, stride, dil, groups)
            self.key = key
        return self.weight

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 add: torch.Tensor | None = None) -> torch.Tensor:
        b = self.conv.bias if bias is None else bias
        pad, stride, dil, groups = self.args
        if not (self.onednn and x.device.type == "cpu" and x.dtype == torch.float32):
            y = F.conv2d(x, self.conv.weight, b, stride, pad, dil, groups)
            return y if add is None else y.add_(add)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x, self._packed(), b, pad, stride, dil, groups,
                                                           "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, self._packed(), b, pad, stride, dil, groups,
                                                              "add", None, None, [], None)


def attention_by_sample(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        work: dict | None = None) -> torch.Tensor:
    """softmax(s·QKᵀ)V one sample at a time, q/k/v (B, heads, T, d) -> (B, T, heads·d).

    With the UNet's narrow heads (d = 8 in diffusers' default) PyTorch's fused CPU kernel runs its
    products in d-wide slices; plain batched products over one sample's heads, the value product taken
    as Vᵀ·Pᵀ (a wide output), are 1.2–1.4× faster, and the scores (heads·T², 4 MB at T = 256) live in
    two buffers reused across samples and calls (``work``), so no page is faulted in per call."""
    b, heads, t, d = q.shape
    work = {} if work is None else work
    key = (heads, t, d, q.dtype, q.device)
    if key not in work:
        work.clear()
        work[key] = (q.new_empty(heads, t, t), q.new_empty(heads, t, t), q.new_empty(heads, d, t))
    s, p, yt = work[key]
    out = q.new_empty(b, t, heads, d)
    for i in range(b):
        torch.bmm(q[i] * scale, k[i].transpose(-1, -2), out=s)  # (heads, T, T)
        torch.ops.aten._softmax.out(s, -1, False, out=p)
        torch.bmm(v[i].transpose(-1, -2), p.transpose(-1, -2), out=yt)  # (heads, d, T) = Vᵀ Pᵀ
        out[i] = yt.permute(2, 0, 1)  # (T, heads, d)
    return out.view(b, t, heads * d)


class FastUNet:
    """``fast(sample (B, C, H, W), timestep, class_labels=None)`` -> (B, C_out, H, W), equal to
    ``model(sample, timestep, class_labels)`` of an eval-mode :class:`UNet2D`, under ``torch.inference_mode``."""

    def __init__(self, model: UNet2D, onednn: bool | None = None):
        if not isinstance(model, UNet2D):
            raise TypeError(f"FastUNet takes a UNet2D, got {type(model).__name__}")
        self.model = model
        self.onednn = onednn_available() if onednn is None else onednn
        self.convs = {m: PackedConv(m, self.onednn) for m in model.modules() if isinstance(m, nn.Conv2d)}
        self.resnets = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
        self.offsets, total = {}, 0  # each resnet's slice of the concatenated time projections
        for m in self.resnets:
            self.offsets[m] = (total, total + m.time_proj.out_features)
            total = self.offsets[m][1]
        self.time = (None, None)  # this forward's time projections (B, ΣC) and whether they fold into a bias
        self.time_key, self.time_wb = None, None
        self.work: dict = {}  # attention score buffers

    def _time_projections(self, tau: torch.Tensor) -> torch.Tensor:
        """W_t·τ + b_t of every resnet in one matmul: (B, T) -> (B, ΣC); the stacked (W, b) is a snapshot
        like the packed convolutions."""
        params = [p for m in self.resnets for p in (m.time_proj.weight, m.time_proj.bias)]
        key = [(p.data_ptr(), 0 if p.is_inference() else p._version, p.device, p.dtype) for p in params]
        if key != self.time_key:
            self.time_wb = (torch.cat(params[0::2]).detach(), torch.cat(params[1::2]).detach())  # (ΣC, T), (ΣC,)
            self.time_key = key
        return F.linear(tau, *self.time_wb)

    def __call__(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if model.training:
            raise ValueError("FastUNet is for inference: call model.eval() first (dropout is not applied)")
        check_sample(sample, model.config, 2 ** (len(model.config.block_out_channels) - 1))
        with torch.inference_mode():
            emb = conditioning(model.time_embed, model.class_embed, sample, timestep, class_labels)  # (B, D)
            tau = F.silu(emb)
            tp = self._time_projections(tau)  # (B, ΣC)
            same = tp.shape[0] == 1 or bool((tp == tp[:1]).all())  # one conditioning for the whole batch
            self.time = (tp[0] if same else tp, same)
            try:
                out = model.run(sample.contiguous(memory_format=_CL), tau, self)
            finally:
                self.time = (None, None)
            return out.contiguous()  # (B, C_out, H, W), NCHW as the module returns it

    # ---- the ops of UNet2D.run ----------------------------------------------------------------
    def resnet(self, m: ResnetBlock2D, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """y = S(x) + conv2(SiLU(GN₂(conv1(SiLU(GN₁(x))) + W_t·τ)))  (nn/conv.py)."""
        tp, same = self.time
        lo, hi = self.offsets[m]
        h = self.norm_silu(m.norm1, x)
        if same:  # W_t·τ is one vector: conv1's bias
            h = self.convs[m.conv1](h, bias=m.conv1.bias + tp[lo:hi])
        else:
            h = self.convs[m.conv1](h).add_(tp[:, lo:hi, None, None])
        h = self.norm_silu(m.norm2, h)
        s = x if isinstance(m.shortcut, nn.Identity) else self.convs[m.shortcut](x)
        return self.convs[m.conv2](h, add=s.contiguous(memory_format=_CL))

    def layer(self, m: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(m, nn.Identity):
            return h
        if isinstance(m, SpatialSelfAttention):
            return self.attention(m, h)
        if isinstance(m, Downsample2D):
            return self.convs[m.conv](h if m.pad is None else F.pad(h, m.pad))
        if isinstance(m, Upsample2D):
            return self.convs[m.conv](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.convs[m](h)

    @staticmethod
    def norm_silu(m: nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
        return F.silu(F.group_norm(h, m.num_groups, m.weight, m.bias, m.eps), inplace=True)

    def attention(self, m: SpatialSelfAttention, x: torch.Tensor) -> torch.Tensor:
        """x + Attention(GN(x)) over the H·W pixels (nn/spatial_attention.py); x channels_last."""
        b, c, hh, ww = x.shape
        a = m.attn
        heads, d = a.n_heads, a.head_dim
        rows = x.permute(0, 2, 3, 1).reshape(b * hh * ww, c)  # (B·HW, C): a view of NHWC
        tokens = F.group_norm(x, m.norm.num_groups, m.norm.weight, m.norm.bias, m.norm.eps)
        qkv = F.linear(tokens.permute(0, 2, 3, 1).reshape(b, hh * ww, c), a.qkv.weight, a.qkv.bias)  # (B, HW, 3C)
        q, k, v = qkv.view(b, hh * ww, 3 * heads, d).transpose(1, 2).split(heads, dim=1)  # (B, heads, HW, d)
        scale = d ** -0.5 if a.scale is None else a.scale
        if kernel_prefers(a.kernel, q, k, v):  # native: heads of 8 or 16, AVX2 or wider
            y = KERNELS[a.kernel](q, k, v, None, scale).transpose(1, 2)  # (B, HW, heads, d): a view of its output
        else:
            y = attention_by_sample(q, k, v, scale, self.work)  # (B, HW, heads·d)
        y = y.reshape(b * hh * ww, heads * d)
        out = torch.addmm(rows, y, a.out.weight.t())  # residual + y·W_outᵀ in one GEMM
        if a.out.bias is not None:
            out.add_(a.out.bias)
        return out.view(b, hh, ww, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
