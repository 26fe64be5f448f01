"""``genmodels.quantize(model, "q8_0" | "q4_0" | "q4_1")``: a copy of ``model`` whose attention and MLP
projections hold GGUF blocks (:class:`~genmodels.nn.quantized.QuantizedLinear`), for inference.

Quantised: every self-/cross-attention and (gated) MLP linear whose input width is a multiple of 32
(the block size), rounded as llama.cpp's reference quantiser rounds (byte for byte gguf-py's
``quantize``). Kept in fp32: embeddings, norms, biases, the LM head, MoE experts (stacked weights) and
a linear whose input width is not a multiple of 32. The original model is not changed. The native
decode step reads the blocks in place (csrc/quant.c); elsewhere the PyTorch forward dequantises.
"""
from __future__ import annotations

import copy

from torch import nn

from .nn.linear import is_plain
from .nn.quantized import QK, QuantizedLinear, check_qtype, quantized_modules

KINDS = ("self", "cross", "mlp")  # projections (models/projections.py) that are quantised


def quantize(model: nn.Module, qtype: str) -> nn.Module:
    """A quantised copy of ``model`` in eval mode (see the module docstring); ``qtype`` one of
    q8_0, q4_0, q4_1 (else a one-line ValueError naming them)."""
    qtype = check_qtype(qtype)
    if not callable(getattr(model, "projections", None)):
        raise ValueError(f"{type(model).__name__} lists no projections (model.projections()); "
                         "genmodels.quantize takes genmodels' transformer models")
    held = quantized_modules(model)
    if held:
        raise ValueError(f"genmodels.quantize: {held[0][0]} already holds {held[0][1].qtype} blocks; quantise the fp32 "
                         "model (genmodels.load without quantized=True), not a quantised one")
    paths = {p.path for p in model.projections() if p.kind in KINDS and not p.stacked and is_plain(p.module)
             and p.module.in_features % QK == 0}
    out = copy.deepcopy(model)
    for path in sorted(paths):
        parent_path, _, name = path.rpartition(".")
        parent = out.get_submodule(parent_path) if parent_path else out
        setattr(parent, name, QuantizedLinear.from_linear(getattr(parent, name), qtype))
    return out.eval()
