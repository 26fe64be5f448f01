"""Training precision: which dtype autocast computes in (``train.precision``), and whether this CPU has
bf16 matrix hardware.

======  =====================================================  ==============================================
value   on CUDA                                                on CPU
======  =====================================================  ==============================================
fp32    fp32                                                   fp32
auto    bf16 autocast (fp16 where the GPU lacks bf16)          fp32 (a line at run start says when this CPU has
                                                               bf16 hardware and ``bf16`` would be faster)
bf16    bf16 autocast                                          bf16 autocast where the CPU has AVX512-BF16 or AMX
                                                               (refused elsewhere, one line naming the reason)
fp16    fp16 autocast + GradScaler                             refused (CPUs have no fp16 matrix hardware here)
======  =====================================================  ==============================================

Autocast (``torch.autocast(device, dtype)``) runs the matrix products (linear, matmul, attention) in the
lower precision and leaves the rest in fp32: the weights, their gradients and the optimizer state stay
fp32 (mixed precision, Micikevicius et al., 2018), and the residual stream, norms and loss in fp32
(fp32 + bf16 promotes to fp32). bf16 keeps fp32's exponent range, so no loss scaling is needed.

The CPU's bf16 hardware: ``avx512_bf16`` (``VDPBF16PS``: AMD Zen 4, Intel Cooper Lake / Sapphire Rapids)
or ``amx_bf16`` (Intel Sapphire Rapids and later: tile matrix products) in ``/proc/cpuinfo``'s flags.
Without either, oneDNN emulates bf16 products by converting to fp32 — slower than fp32 itself, so the
choice is refused rather than silently slow.
"""
from __future__ import annotations

import torch

from ..config import ConfigError

BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flag -> the name we print


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags (empty where the file is absent or unreadable: not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware(flags: set[str] | None = None) -> str | None:
    """``"AMX"`` or ``"AVX512-BF16"``: this CPU's bf16 matrix hardware (AMX first), else ``None``."""
    flags = cpu_flags() if flags is None else flags
    return next((name for flag, name in BF16_FLAGS.items() if flag in flags), None)


def autocast_dtype(cfg_precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in for ``train.precision`` on ``device`` (``None``: fp32,
    autocast off). Refusals are one :class:`ConfigError` line naming ``train.precision``."""
    if device.type != "cuda":
        if cfg_precision == "fp16":
            raise ConfigError("train.precision=fp16 needs a GPU; on CPU use fp32, auto or bf16 (on a CPU with "
                              "AVX512-BF16 or AMX)")
        if cfg_precision != "bf16":
            return None
        if bf16_hardware() is None:
            raise ConfigError("train.precision=bf16 needs a CPU with AVX512-BF16 or AMX (its /proc/cpuinfo flags "
                              "have neither avx512_bf16 nor amx_bf16: bf16 products would be emulated, slower than "
                              "fp32); use precision: fp32 or auto")
        return torch.bfloat16
    if cfg_precision == "fp32":
        return None
    if cfg_precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg_precision == "bf16" else torch.float16


def precision_note(cfg_precision: str, device: torch.device) -> str | None:
    """The run-start line for ``train.precision: auto`` on a CPU with bf16 hardware (auto stays fp32
    there: bf16 changes the numbers, so it is asked for by name), else ``None``."""
    hw = bf16_hardware() if device.type == "cpu" and cfg_precision == "auto" else None
    if hw is None:
        return None
    return (f"note: train.precision=auto computes in fp32 on CPU; this CPU has {hw}: train.precision: bf16 would "
            "run the matrix products at about twice the fp32 rate (autocast; weights and optimizer state stay fp32)")
