"""The native quantised matrix products (csrc/quant.c) for tests and benchmarks: ``qlinear`` and
``dequantize`` over a :class:`~genmodels.nn.quantized.QuantizedLinear`'s blocks. The decode step
calls the same C code on the blocks in place (native/decoder.py passes a pointer and the GGML type).

Batch-1 products (one input row) of Q8_0 / Q4_0 / Q4_1 take int8 activations by default (csrc/qdot8.c:
x quantised to blocks of 32 with a scale each, integer block dots): ``qdot_mode`` / ``qdot_forced`` /
``GENMODELS_NATIVE_QDOT`` choose that or the fp32-activation reference (csrc/qgemv.c); docs/native.md."""
from __future__ import annotations

import contextlib
import ctypes

import torch

from ..nn.quantized import GGML_TYPES, check_qtype, row_bytes
from . import library, switch, unavailable_reason


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


QDOT_MODES = {"fp32": 0, "avx2": 1, "vnni": 2}  # csrc/qdot8.c: the batch-1 products' activations and dot


def _bind_qdot(lib):
    if not getattr(lib, "_qdot_bound", False):
        lib.gm_qdot_mode.argtypes = [ctypes.c_int]
        lib.gm_qdot_mode.restype = ctypes.c_int
        lib.gm_qdot_quantise.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        lib.gm_qdot_quantise.restype = ctypes.c_int
        lib._qdot_bound = True
    return lib


def qdot_mode(mode: str | None = None, lib=None) -> str:
    """The batch-1 quantised products' path: ``"vnni"`` (int8 activations, VPDPBUSD), ``"avx2"`` (int8
    activations, VPMADDUBSW), ``"fp32"`` (fp32 activations, csrc/qgemv.c). ``mode`` sets it (capped at what
    the build has: the mode in force is returned); None only reads it (first read: GENMODELS_NATIVE_QDOT);
    ``"env"`` takes GENMODELS_NATIVE_QDOT again. A mistyped value is refused (:func:`.switches.switch`, which
    every :func:`.library` call runs), so the C side's parse (the same: case and spaces ignored) never meets one."""
    lib = _bind_qdot(_lib(lib))
    switch("GENMODELS_NATIVE_QDOT")  # refused if mistyped (also when ``lib`` is passed: library() not called)
    if mode is not None and mode not in QDOT_MODES and mode != "env":
        raise ValueError(f"qdot mode must be one of {', '.join(QDOT_MODES)}, got {mode!r}")
    got = lib.gm_qdot_mode(-1 if mode is None else -2 if mode == "env" else QDOT_MODES[mode])
    return {v: k for k, v in QDOT_MODES.items()}[got]


@contextlib.contextmanager
def qdot_forced(mode: str, lib=None):
    """``qdot_mode(mode)`` inside the block (yields the mode in force), the previous mode restored after."""
    before = qdot_mode(lib=lib)
    try:
        yield qdot_mode(mode, lib=lib)
    finally:
        qdot_mode(before, lib=lib)


def quantize_activations(x: torch.Tensor, lib=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (K,) fp32 as the int8 products quantise it: (q (K,) int8, d (K / 32,) fp32), x̂ = d · q per block."""
    lib = _bind_qdot(_lib(lib))
    x = x.contiguous()
    if x.dtype != torch.float32 or x.dim() != 1 or x.shape[0] % 32:
        raise ValueError("quantize_activations takes fp32 (K,) with K a multiple of 32")
    q, d = torch.empty(x.shape[0], dtype=torch.int8), torch.empty(x.shape[0] // 32)
    if lib.gm_qdot_quantise(x.data_ptr(), x.shape[0], q.data_ptr(), d.data_ptr()) != 0:
        raise ValueError("this build has no int8 dot (no AVX2)")
    return q, d
