"""Training memory: selective activation checkpointing, and the CPU allocator.

Selective activation checkpointing (``train.activation_checkpointing: selective``) keeps, for
each transformer block, only the outputs of its matrix products and of attention (the expensive
ops); the element-wise ops between them — norms, rotary embedding, SiLU, the gate product,
residual adds — are recomputed in the backward pass from those saved outputs. That drops about
half of the activation memory for a few per cent more time (element-wise ops are cheap next to
the matmuls). ``ffn`` recomputes each block's feed-forward branch alone (``block.feed_forward``: in a
pre-norm block its norm and MLP) from the branch's input, which the residual add keeps anyway: a gated
MLP's ``gate_up`` output (2·d_ff floats per token, the largest tensor a block keeps) and the norm's input
go, for one more ``gate_up`` product and norm in the backward (attention keeps what it keeps). ``full``
recomputes each whole block (least memory, ~⅓ more compute); ``none`` keeps everything. Recomputation
repeats the same ops on the same inputs, so results are bit-identical to ``none``.

Saved floats per token and layer of a SmolLM2-135M LoRA step (q,v adapters; d = 576, d_ff = 1536):
``none`` 6,336 (gate_up 3,072; rotated q|k 768, v 192, attention output 576; two norm inputs 1,152; the
adapters' input 576); ``ffn`` 3,264; ``full`` 576 (the block input).

The block's ``forward`` is replaced on the instance, so module names, state-dict keys and FSDP2
hooks are unchanged.
"""
from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CHECKPOINTING = ("none", "selective", "ffn", "full")  # train.activation_checkpointing
MODES = CHECKPOINTING

_aten = torch.ops.aten
_SAVE = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def _context():
    return create_selective_checkpoint_contexts(_policy)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The units a model names for activation checkpointing and FSDP sharding
    (``model.blocks_for_checkpointing()``: one per transformer block).

    A model that names none is refused in one line instead of being trained without checkpointing."""
    named = getattr(type(model), "blocks_for_checkpointing", None)
    if named is None:
        raise ValueError(f"{type(model).__name__} does not name its blocks (blocks_for_checkpointing()); "
                         "activation checkpointing and FSDP need it")
    return list(model.blocks_for_checkpointing())


def apply_activation_checkpointing(blocks, mode: str) -> None:
    """Checkpoint each module in ``blocks`` (e.g. ``transformer_blocks(model)``) per ``mode``: its ``forward``
    (``selective``, ``full``) or its feed-forward branch ``feed_forward`` (``ffn``; a block without one is
    refused in one line naming ``train.activation_checkpointing``)."""
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return
    blocks = list(blocks)
    part = "feed_forward" if mode == "ffn" else "forward"
    for block in blocks:
        if not callable(getattr(block, part, None)):
            raise ValueError(f"train.activation_checkpointing=ffn: a {type(block).__name__} block has no feed-forward "
                             "branch (feed_forward()) to recompute; use selective or full")
    for block in blocks:
        if mode == "ffn":
            _keep_saved_directly(_ffn_output_projection(block))
        _checkpoint_method(block, part, {"context_fn": _context} if mode == "selective" else {})


def _ffn_output_projection(block: nn.Module) -> nn.Module | None:
    """The module through which the block's feed-forward writes its output (a gated MLP's ``down``)."""
    from ..models.blocks import output_projection
    ffn = getattr(block, "ffn", None)
    proj = output_projection(ffn) if isinstance(ffn, nn.Module) else None
    return proj if isinstance(proj, nn.Module) else None


def _keep_saved_directly(module: nn.Module | None) -> None:
    """What ``module`` saves for its backward is kept as is, not through an enclosing checkpoint.

    Non-reentrant checkpointing recomputes the forward until the last tensor it saved is back (early stop);
    the output projection saves its weight (a frozen one too: for the input's gradient), so without this
    the ``ffn`` recomputation runs the ``down`` product as well — for nothing (its saved tensors are its
    weight and, when trained, its input). With it the recomputation ends at the gated product's ``gate_up``."""
    if module is None:
        return
    inner = module.forward

    def call(*args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(_same, _same):
            return inner(*args, **kwargs)

    module.forward = functools.wraps(inner)(call)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _checkpoint_method(module: nn.Module, name: str, kw: dict) -> None:
    """Replace ``module.<name>`` on the instance by the same call under ``checkpoint`` while autograd records."""
    inner = getattr(module, name)

    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kw, **kwargs)

    setattr(module, name, functools.wraps(inner)(call))


def keep_freed_memory() -> bool:
    """glibc only: keep freed memory in the process instead of returning it to the OS.

    The steady-state training step then reuses the same pages every step instead of faulting
    fresh ones in (on this VM a page fault costs ~1 ms per MB touched, i.e. hundreds of ms per
    step once tensors of a few tens of MB are ``mmap``-ed and ``munmap``-ed each step). The
    high-water mark is unchanged; RSS simply stays at it. Returns whether it was applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 << 20) == 1  # tensors < 64 MiB come from the heap
        ok &= libc.mallopt(m_trim_threshold, 1 << 30) == 1  # and the heap is not trimmed
        return bool(ok)
    except (OSError, AttributeError):
        return False
