"""Two numbers the suite never pinned (issue #8, item 10).

(i) RMSNorm's branch for non-fp32 inputs (nn/norm.py): normalise in fp32, cast to the input dtype,
    *then* scale — Hugging Face's order. In bf16 and fp16 it must equal transformers' LlamaRMSNorm bit
    for bit, and a computation written out here in float64 wherever rounding is unambiguous.
(ii) The FLOP count behind MFU (models/flops.py, training/metrics.flops_per_token), against hand
    counts from the papers: per token, a forward pass costs 2 FLOPs per matmul weight N (PaLM
    appendix B; Kaplan et al. 2020, table 1) plus 2·2·d_attn·T per attention layer for the scores
    QKᵀ and the weighted sum over a context of T (d_attn = query heads × head dim); training is 3×
    forward: 6N + 12·L·H·Q·T. Embedding lookups, learned position tables, norms, biases and the
    pooler are not matmuls per token; a tied head is one matmul, counted once.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import genmodels
from genmodels.models.flops import flops_per_token
from genmodels.nn.norm import RMSNorm
from genmodels.training import metrics

DTYPES = [torch.bfloat16, torch.float16]


# ---- (i) RMSNorm in bf16 / fp16 --------------------------------------------------------------------
def norms(dtype: torch.dtype, dim: int = 96, eps: float = 1e-5, seed: int = 0):
    """Ours and transformers' RMSNorm holding the same random weight (in ``dtype``), and an input."""
    g = torch.Generator().manual_seed(seed)
    weight = (1 + 0.5 * torch.randn(dim, generator=g)).to(dtype)
    x = (3 * torch.randn(4, 7, dim, generator=g)).to(dtype)
    ours, hf = RMSNorm(dim, eps), LlamaRMSNorm(dim, eps)
    with torch.no_grad():
        ours.weight.data = weight.clone()
        hf.weight.data = weight.clone()
    return ours, hf, x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rmsnorm_in_half_precision_equals_transformers_bit_for_bit(dtype):
    ours, hf, x = norms(dtype)
    with torch.no_grad():
        y, ref = ours(x), hf(x)
    assert y.dtype == ref.dtype == dtype
    assert torch.equal(y, ref), f"{(y != ref).sum()} of {y.numel()} elements differ"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rmsnorm_in_half_precision_matches_a_hand_computation(dtype):
    """y = w · cast(x / √(mean(x²) + ε)): normalised in float64 here, cast, then one rounded product
    in ``dtype``. The module normalises in fp32 (within 1e-6 of float64), so elements whose float64
    value lies within 1e-6 of a rounding boundary of ``dtype`` may round either way: they are set
    aside (a few per thousand); every other element must be equal exactly."""
    ours, _, x = norms(dtype)
    eps, w = ours.eps, ours.weight.detach()
    x64 = x.double()
    h64 = x64 / torch.sqrt((x64 * x64).sum(-1, keepdim=True) / x.shape[-1] + eps)
    unambiguous = (h64 * (1 - 1e-6)).to(dtype) == (h64 * (1 + 1e-6)).to(dtype)
    expected = w * h64.to(dtype)  # cast first, then scale: one rounding of the product in dtype
    with torch.no_grad():
        y = ours(x)
    assert unambiguous.float().mean() > 0.99
    assert torch.equal(y[unambiguous], expected[unambiguous])
    scaled_first = (w.double() * h64).to(dtype)  # the other order (litgpt) differs: the test can tell
    assert not torch.equal(scaled_first[unambiguous], expected[unambiguous])


# ---- (ii) FLOPs per token ----------------------------------------------------------------------------
def hand_count(d: int, layers: int, heads: int, kv_heads: int, head_dim: int, d_ff: int, vocab: int, *,
               gated: bool = False, mlm_dense: bool = False, decoder_layers: int = 0, context: int) -> int:
    """Forward FLOPs per token, written out matmul by matmul (weights are d_in × d_out)."""
    q = d * heads * head_dim
    k = v = d * kv_heads * head_dim
    o = heads * head_dim * d
    attention = q + k + v + o
    mlp = 3 * d * d_ff if gated else 2 * d * d_ff  # gate, up, down | fc1, fc2
    head = vocab * d  # the output projection onto the vocabulary, tied or not: one matmul
    head += d * d if mlm_dense else 0  # BERT's MLM transform (dense d→d) before the decoder
    n = layers * (attention + mlp)  # encoder or decoder-only stack
    n += decoder_layers * (attention + attention + mlp)  # seq2seq decoder: self, cross, MLP
    n += head
    scored = layers + 2 * decoder_layers  # layers whose scores span the context (cross-attention too)
    return 2 * n + scored * (2 * heads * head_dim * context + 2 * heads * head_dim * context)  # QKᵀ + A·V


CASES = {
    # Llama: GQA (2 of 4 heads for k/v), SwiGLU (gate|up|down), untied head
    "llama-tiny": (genmodels.preset("llama-tiny"),
                   dict(d=256, layers=4, heads=4, kv_heads=2, head_dim=64, d_ff=688, vocab=8192, gated=True)),
    # GPT-2: tied head counted once; the learned position table (512 × 256) is a lookup, not a matmul
    "gpt2-tiny": (genmodels.preset("gpt2-tiny"),
                  dict(d=256, layers=4, heads=4, kv_heads=4, head_dim=64, d_ff=1024, vocab=8192)),
    # BERT with its MLM head (dense + decoder onto the vocabulary); the pooler is per sequence, not per token
    "bert-tiny-mlm": (genmodels.preset("bert-tiny", pooler=True),
                      dict(d=128, layers=2, heads=2, kv_heads=2, head_dim=64, d_ff=512, vocab=8192, mlm_dense=True)),
    # T5: cross-attention in every decoder layer; attention width 4 × 16 ≠ d_model; 2 encoder, 3 decoder layers
    "t5-tiny": (genmodels.preset("t5-tiny", head_dim=16, n_decoder_layers=3),
                dict(d=128, layers=2, heads=4, kv_heads=4, head_dim=16, d_ff=512, vocab=8192, decoder_layers=3)),
}
# The same counts as plain numbers (context 1 and 512, forward), so a change in the hand formula
# above cannot silently move the pin with the code.
PINNED = {"llama-tiny": (9_998_336, 12_091_392), "gpt2-tiny": (10_489_856, 12_582_912),
          "bert-tiny-mlm": (2_917_376, 3_440_640), "t5-tiny": (3_934_208, 4_980_736)}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("context", [1, 512])
def test_forward_flops_per_token_match_the_hand_count(name, context):
    cfg, dims = CASES[name]
    expected = hand_count(**dims, context=context)
    assert expected == PINNED[name][context != 1]
    assert flops_per_token(cfg, context) == expected


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("context", [1, 512])
def test_training_flops_per_token_are_three_forward_passes(name, context):
    """6N + 12·L·H·Q·T (PaLM), through the function the trainer's MFU uses."""
    cfg, dims = CASES[name]
    expected = 3 * hand_count(**dims, context=context)
    assert flops_per_token(cfg, context, training=True) == expected
    assert metrics.flops_per_token(SimpleNamespace(config=cfg), context) == expected
