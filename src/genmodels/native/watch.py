"""Whether a packed copy of a weight may be stale: what the native paths that keep one (the encoder's fp32
panels, the bf16 prefill's panels) check before reading it.

A weight changes in three ways, and each is seen:

* an optimizer step, ``copy_`` / in-place ops under ``no_grad``: the tensor's version counter;
* ``p.data = new``, a reload, ``.to()``: its data pointer;
* in-place updates through ``p.data`` (EMA ``p.data.mul_(d).add_(...)``, weight averaging, quantisation,
  ``p.data.copy_``), which bypass the version counter: a sample of the weight compared bit for bit — one
  element of every row, or of every ``rows_every``-th row (so row and head edits are seen too), and the
  :data:`SMALLEST` elements of smallest nonzero magnitude, which magnitude pruning (``p.data[mask] = 0``)
  zeroes first.

An arbitrary edit of single elements through ``.data`` away from the sample is not seen: the owner's
``forget``/``release`` is the way out after one.
"""
from __future__ import annotations

import math

import torch

SMALLEST = 16  # elements of smallest nonzero magnitude watched per weight


def state(w: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """``(data pointer, version, shape)``; inference tensors (made under ``torch.inference_mode``) have no
    version counter and cannot change in place."""
    return w.data_ptr(), 0 if w.is_inference() else w._version, tuple(w.shape)


class Sample:
    """The bits of a few elements of ``w (N, K)`` now: one in each ``rows_every``-th row, in a column that
    differs between weights (``salt``, a prime stride), and the :data:`SMALLEST` smallest nonzero magnitudes.
    :meth:`holds` says whether they are still the same. Cost: every row of SmolLM2-135M's 120 block weights
    ~13 ms a check, every 8th ~0.8 ms (1 thread; gathering a row per element is what costs)."""

    def __init__(self, w: torch.Tensor, salt: int, rows_every: int = 1):
        n, k = w.shape
        self.bits = w.detach().view(torch.int32).view(-1)  # (N·K,) the weight's own storage
        flat = w.detach().flatten()
        smallest = flat.abs().masked_fill(flat == 0, math.inf).topk(min(SMALLEST, flat.numel()), largest=False).indices
        rows = torch.arange(0, n, rows_every, device="cpu")
        self.index = torch.cat([rows * k + (salt * 7919 + 13) % k, smallest])
        self.expected = self.bits[self.index].clone()

    def holds(self) -> bool:
        return torch.equal(self.bits[self.index], self.expected)
