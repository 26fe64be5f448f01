"""Weight memory layout for memory-bound inference on CPU.

A batch-1 decode step is a chain of matrix–vector products whose weights no longer fit in cache,
so its speed is the speed at which the GEMV streams weights from DRAM. For ``y = x Wᵀ`` with ``W``
stored row-major ``(out, in)`` (PyTorch's ``nn.Linear``), MKL's transposed GEMV reads ~10 GB/s on
this class of machine; with ``W`` stored column-major — the same ``(out, in)`` tensor, strides
``(1, out)``, so ``Wᵀ`` is contiguous — the kernel reads ~22 GB/s (benchmarks/bench_generate.py).

:func:`decode_layout` switches every matrix of the model's linear layers (and a tied head's
embedding) to column-major for the duration of a ``with`` block and back afterwards. Values,
shapes, parameter objects and the state dict are unchanged; only the summation order inside each
dot product may differ (≤ 1 ulp-scale).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .head import LMHead


def _linear_weights(model: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        w = m.get_weight() if isinstance(m, LMHead) else getattr(m, "weight", None)  # tied: the embedding's
        if isinstance(m, (nn.Linear, LMHead)):
            if isinstance(w, nn.Parameter) and w.dim() == 2 and w.device.type == "cpu":
                seen[id(w)] = w
    return list(seen.values())


@contextlib.contextmanager
def decode_layout(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Column-major linear weights inside the block (CPU only); the original layout after."""
    params = _linear_weights(model) if enabled else []
    swapped = []
    try:
        # Outside inference mode even when called from it: the new storage must stay trainable.
        with torch.inference_mode(False), torch.no_grad():
            for p in params:
                if p.is_contiguous():
                    p.data = p.data.t().contiguous().t()  # same values, (out, in) with strides (1, out)
                    swapped.append(p)
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for p in swapped:
                p.data = p.data.contiguous()
