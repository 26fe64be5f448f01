"""Beam search allocates by the tokens produced, not by ``max_new_tokens`` (issue 19, B-4): on a sliding-window
model (which ``generate`` does not cap at the context) a limit of 10^7 with an early stop creates no tensor
larger than a few thousand elements; growing the buffers changes no result."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import genmodels
from genmodels.generation import beam

LIMIT = 10 ** 5  # elements: the old (B, K, P + 10^7) buffers hold 4·10^7


class LargestTensor(TorchDispatchMode):
    """Fails the first op whose output has more than ``LIMIT`` elements (the allocation is then already made,
    so a regression costs one such tensor, not the whole search)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > LIMIT:
                raise AssertionError(f"{func} made a tensor of {tuple(t.shape)}")
        return out


def _windowed(window: int | None = 4):
    torch.manual_seed(0)
    cfg = genmodels.preset("mixtral-tiny", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                           d_ff=32, expert_d_ff=16, n_experts=4, max_seq_len=64, sliding_window=window)
    return genmodels.build_model(cfg).eval()


def test_beam_search_with_a_huge_limit_allocates_by_the_tokens_produced(monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", "0")  # every step's tensors pass through the dispatch mode
    model, prompt = _windowed(), torch.tensor([[5, 6, 7, 8]])
    with LargestTensor():
        out = genmodels.generate(model, prompt, 10 ** 7, temperature=0, num_beams=4,
                                 stop_tokens=list(range(1, 64)), early_stopping=True)
    assert out.shape[0] == 1 and 4 < out.shape[1] < 4 + beam.CHUNK


@pytest.mark.parametrize("window", [None, 4])
def test_growing_the_buffers_changes_no_result(monkeypatch, window):
    monkeypatch.setenv("GENMODELS_NATIVE", "0")  # the search is under test, not the kernels (no build needed)
    model, prompt = _windowed(window), torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    kw = dict(temperature=0, num_beams=3, repetition_penalty=1.3, stop_tokens=[3], length_penalty=0.5)
    whole = genmodels.generate(model, prompt, 40, **kw)  # 40 < CHUNK: never grown
    monkeypatch.setattr(beam, "CHUNK", 1)  # grown at every power of two
    grown = genmodels.generate(model, prompt, 40, **kw)
    assert torch.equal(whole, grown)
