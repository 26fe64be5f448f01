"""The linear factory: how every projection of a transformer is built.

    linear(in_features, out_features, bias, *, role, layer, slices) -> module mapping (…, in) -> (…, out)

Attention, the MLPs and the heads never call ``nn.Linear`` themselves: they call the factory the
model was built with (:func:`plain_linear` by default, which *is* ``nn.Linear``), so an adapter
(LoRA) or a quantised linear is passed in at build time, never patched in afterwards:

    model = genmodels.build_model(config, linear=my_factory)

``role`` names what the projection computes, in Hugging Face's words where one exists:

=========  ===========================================================================
qkv        self-attention's fused q|k|v (``slices``: ``{"q": (0, H·d), "k": …, "v": …}``)
q, kv      cross-attention's query and fused k|v (``slices``: ``{"k": …, "v": …}``)
o          attention output (self and cross)
gate_up    a gated MLP's fused gate|up (``slices``: ``{"gate": (0, F), "up": (F, 2F)}``)
up, down   a plain MLP's first and second layer; ``down`` also a gated MLP's output
head       an untied LM head (``bias`` as configured); tied heads read the embedding, no factory
pooler     BERT's pooler dense; ``mlm_dense``: the MLM head's transform
=========  ===========================================================================

``layer``: the block index within its stack (``None`` for heads); ``slices``: for a fused
projection, the output-row range ``[start, stop)`` of each HF projection it holds, so a factory can
put one adapter per slice (LoRA on q and v only: PEFT's ``target_modules=["q_proj", "v_proj"]``).
Sparse-MoE experts are stacked weights, not linears: the factory does not reach them
(:func:`genmodels.models.projections.projections` marks them ``stacked``).

The factory is called in the order the modules are built, exactly where ``nn.Linear`` was called
before, so the default consumes the random generator as it always did (same init, same losses).
The model's ``init_weights`` then draws every matrix it holds — an adapter's too — so an adapter
sets its own init afterwards (LoRA: B = 0), or loads it. An untied head built by a factory draws its
first weights from what the factory builds (``plain_linear`` keeps the head's own init).
"""
from __future__ import annotations

from typing import Protocol

from torch import nn

Slices = dict[str, tuple[int, int]]  # HF projection name -> output rows [start, stop) of a fused weight


class LinearFactory(Protocol):
    def __call__(self, in_features: int, out_features: int, bias: bool = True, *, role: str = "",
                 layer: int | None = None, slices: Slices | None = None) -> nn.Module: ...


def plain_linear(in_features: int, out_features: int, bias: bool = True, *, role: str = "",
                 layer: int | None = None, slices: Slices | None = None) -> nn.Linear:
    """The default factory: a plain ``nn.Linear`` (``role``, ``layer`` and ``slices`` unused)."""
    return nn.Linear(in_features, out_features, bias=bias)


def is_plain(module: nn.Module | None) -> bool:
    """True for exactly an ``nn.Linear`` (not a subclass: an adapter or quantised linear computes
    something its ``weight`` alone does not, so kernels that read weights must refuse it), or a module
    that says its output is exactly ``F.linear(x, weight, bias)`` right now (``reads_as_linear``: a
    LoRA linear once merged, :mod:`genmodels.nn.lora`)."""
    return type(module) is nn.Linear or getattr(module, "reads_as_linear", False) is True


def contiguous_slices(**widths: int) -> Slices:
    """Row ranges of parts stacked in order: ``contiguous_slices(q=8, k=4)`` -> ``{"q": (0, 8), "k": (8, 12)}``."""
    out, start = {}, 0
    for name, n in widths.items():
        out[name] = (start, start + n)
        start += n
    return out
