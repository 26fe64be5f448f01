"""The native quantised matrix products (csrc/quant.c) for tests and benchmarks: ``qlinear`` and
``dequantize`` over a :class:`~genmodels.nn.quantized.QuantizedLinear`'s blocks. The decode step
calls the same C code on the blocks in place (native/decoder.py passes a pointer and the GGML type)."""
from __future__ import annotations

import torch

from ..nn.quantized import GGML_TYPES, check_qtype, row_bytes
from . import library, unavailable_reason


def _lib(lib=None):
    lib = lib or library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {unavailable_reason()}")
    return lib


def _check_blocks(blocks: torch.Tensor, qtype: str, in_features: int) -> int:
    qtype = check_qtype(qtype)
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != row_bytes(in_features, qtype) \
            or not blocks.is_contiguous() or blocks.device.type != "cpu":
        raise ValueError(f"blocks must be contiguous uint8 CPU (N, {row_bytes(in_features, qtype)}) for "
                         f"{in_features} {qtype} features, got {blocks.dtype} {tuple(blocks.shape)}")
    return GGML_TYPES[qtype]


def qlinear(x: torch.Tensor, blocks: torch.Tensor, qtype: str, bias: torch.Tensor | None = None,
            threads: int | None = None, lib=None) -> torch.Tensor:
    """``x (M, K) · dequantize(blocks)ᵀ + bias`` -> (M, N) fp32, the blocks read in place."""
    lib = _lib(lib)
    if x.dtype != torch.float32 or x.dim() != 2 or x.device.type != "cpu":
        raise ValueError("qlinear takes fp32 CPU x (M, K)")
    k, n = x.shape[1], blocks.shape[0]
    code = _check_blocks(blocks, qtype, k)
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype != torch.float32):
        raise ValueError(f"bias must be fp32 ({n},)")
    x = x.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y = x.new_empty(x.shape[0], n)
    rc = lib.gm_qlinear(x.data_ptr(), x.shape[0], k, blocks.data_ptr(), code, bias.data_ptr() if bias is not None
                        else None, y.data_ptr(), n, threads or torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"gm_qlinear refused {qtype} with K={k}")
    return y


def dequantize(blocks: torch.Tensor, qtype: str, in_features: int, lib=None) -> torch.Tensor:
    """The C dequantisation of (N, row bytes) blocks -> (N, in_features) fp32."""
    lib = _lib(lib)
    code = _check_blocks(blocks, qtype, in_features)
    out = torch.empty(blocks.shape[0], in_features, dtype=torch.float32)
    if lib.gm_dequantize(blocks.data_ptr(), code, blocks.shape[0], in_features, out.data_ptr()) != 0:
        raise ValueError(f"gm_dequantize refused {qtype}")
    return out
