"""``genmodels.load(path.gguf, quantized=True)``: keep a GGUF file's Q8_0 / Q4_0 / Q4_1 (and, for input widths
that are multiples of 256, Q6_K / Q4_K) blocks as they lie
in the file (:class:`~genmodels.nn.quantized.QuantizedLinear`), re-laid once for our modules:

* our fused ``attn.qkv`` = the rows of ``attn_q | attn_k | attn_v`` (block rows concatenate: each
  output row is its own run of blocks), ``mlp.gate_up`` = ``ffn_gate | ffn_up``;
* llama.cpp's q/k row permutation undone on whole rows of blocks (interop/gguf.unpermute_rows, passed in).

A fused projection whose parts are stored in different types, or in a type other than these (e.g. F16,
Q5_K), or a K format on an input width not a multiple of 256, stays fp32 (dequantised as before); so does
the embedding. A tied head whose ``token_embd`` is one of these types is also kept as
``model.quantized_head = (blocks, GGML type)``:
the native decode step reads the head from these blocks (the same values as the fp32 embedding, a
quarter or less of the bytes per token); the PyTorch path keeps reading the embedding.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.quantized import BLOCK_VALUES, GGML_TYPES, QuantizedLinear, dequantize_rows

KEPT = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q6_K": "q6_k", "Q4_K": "q4_k"}  # ggml name -> our qtype
# our module (in a block) -> the llama.cpp tensors whose rows it stacks, in order
FUSED = {"attn.qkv": ("attn_q", "attn_k", "attn_v"), "attn.out": ("attn_output",),
         "mlp.gate_up": ("ffn_gate", "ffn_up"), "mlp.down": ("ffn_down",)}


def _rows(tensor, heads: int | None, unpermute=None) -> torch.Tensor:
    """A quantised tensor's bytes (rows, row bytes) in HF's row order (a copy: the file stays mapped read-only)."""
    import numpy as np
    raw = torch.from_numpy(np.array(tensor.data, dtype=np.uint8, copy=True))
    return unpermute(raw, heads) if heads is not None else raw


def keep_blocks(model: nn.Module, tensors: list, cfg, unpermute) -> list[str]:
    """Replace ``model``'s attention and MLP projections by the file's blocks where every part is of one
    type of ``KEPT`` (a K format only on widths that are multiples of 256); returns the module paths kept
    quantised. ``unpermute``: interop/gguf's ``unpermute_rows`` (passed in: gguf.py imports this module)."""
    by_name = {t.name: t for t in tensors}
    kept = []
    for i, block in enumerate(model.decoder_view().blocks):
        for path, parts in FUSED.items():
            ts = [by_name[f"blk.{i}.{p}.weight"] for p in parts]
            kinds = {t.tensor_type.name for t in ts}
            if len(kinds) != 1 or (kind := kinds.pop()) not in KEPT:
                continue
            owner_path, _, name = path.rpartition(".")
            owner = block.get_submodule(owner_path)
            old = getattr(owner, name)
            if old.in_features % BLOCK_VALUES[KEPT[kind]]:  # a K format on a width it cannot tile: fp32
                continue
            heads = {"attn_q": cfg.n_heads, "attn_k": cfg.kv_heads}
            blocks = torch.cat([_rows(t, heads.get(p), unpermute) for t, p in zip(ts, parts)]).contiguous()
            q = QuantizedLinear(old.in_features, old.out_features, bias=old.bias is not None, qtype=KEPT[kind],
                                blocks=blocks)
            if old.bias is not None:
                q.bias.data.copy_(old.bias.detach())
            setattr(owner, name, q)
            kept.append(f"blocks.{i}.{path}")
    embed = by_name["token_embd.weight"]
    if cfg.tie_embeddings and embed.tensor_type.name in KEPT \
            and cfg.d_model % BLOCK_VALUES[KEPT[embed.tensor_type.name]] == 0:  # the head reads the embedding's blocks
        blocks = _rows(embed, None)
        if not torch.equal(dequantize_rows(blocks, KEPT[embed.tensor_type.name], cfg.d_model),
                           model.output_head().get_weight()):
            raise AssertionError("token_embd blocks do not dequantise to the embedding")  # a bug of ours
        model.quantized_head = (blocks, GGML_TYPES[KEPT[embed.tensor_type.name]])  # a plain attribute
        kept.append("head")
    return kept
