"""Whole models against transformers (llm-anchors §5, tests 3, 5, 6): logits at atol 1e-5 / rtol 1e-4,
weights moved the way a user moves them (``save_pretrained`` → ``genmodels.load``)."""
from __future__ import annotations

import pytest
import torch

from ._hf import MODEL_TOL, hf_model, hf_position_ids, left_pad_mask, random_ids, to_ours

torch.set_num_threads(1)
pytestmark = pytest.mark.parity

SEQ = 24

VARIANTS = {  # name: (kind, HF config overrides)
    "gpt2": ("gpt2", {}),
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}),
    "gpt2-eps-relu": ("gpt2", {"layer_norm_epsilon": 1e-6, "activation_function": "relu", "n_inner": 96}),
    "llama-mha": ("llama", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "llama-mqa": ("llama", {"num_key_value_heads": 1}),
    "llama-gqa-tied": ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "llama-mqa-tied": ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "llama-bias-theta": ("llama", {"attention_bias": True, "mlp_bias": True,
                                   "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    "llama-head-dim-32": ("llama", {"num_key_value_heads": 2, "head_dim": 32}),  # H·d ≠ D
    "mistral-window": ("mistral", {"sliding_window": 8}),  # window smaller than the sequence
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    kind, kw = VARIANTS[request.param]
    hf = hf_model(kind, **kw)
    ours = to_ours(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, ours


@torch.no_grad()
def test_config_read_from_hf(pair):
    name, hf, ours = pair
    c, h = ours.config, hf.config
    assert ours.config.tie_embeddings == h.tie_word_embeddings
    assert ours.head.tied == h.tie_word_embeddings
    if name.startswith("gpt2"):
        assert (c.d_model, c.n_layers, c.n_heads, c.norm_eps) == (h.n_embd, h.n_layer, h.n_head, h.layer_norm_epsilon)
    else:
        assert (c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.d_ff, c.norm_eps) == (
            h.hidden_size, h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads, h.intermediate_size,
            h.rms_norm_eps)
        assert c.sliding_window == getattr(h, "sliding_window", None)


@pytest.mark.parametrize("kernel", ["sdpa", "reference"])
@torch.no_grad()
def test_logits_match(pair, kernel):
    _, hf, ours = pair
    ours.set_attention_kernel(kernel)
    ids = random_ids(2, SEQ)
    want = hf(ids).logits
    got = ours(ids)
    ours.set_attention_kernel("sdpa")
    torch.testing.assert_close(got, want, **MODEL_TOL)
    assert want.abs().max() > 0.1  # randomised weights give non-trivial logits


@pytest.mark.parametrize("kernel", ["sdpa", "reference"])
@torch.no_grad()
def test_left_padded_batch_matches(pair, kernel):
    _, hf, ours = pair
    ours.set_attention_kernel(kernel)
    ids = random_ids(3, SEQ, seed=2)
    mask = left_pad_mask([SEQ - 5, SEQ, SEQ - 11], SEQ)
    want = hf(ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
    got = ours(ids, attention_mask=mask)
    ours.set_attention_kernel("sdpa")
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **MODEL_TOL)


@torch.no_grad()
def test_kv_cache_decode_matches_hf_full_forward(pair):
    """Prefill 10, then single tokens, then a chunk of 3, then singles: equal to HF's full forward."""
    _, hf, ours = pair
    ids = random_ids(2, SEQ, seed=3)
    mask = left_pad_mask([SEQ - 4, SEQ], SEQ)
    want = hf(ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
    cache = ours.new_cache(2, SEQ)
    pieces, pos = [], 0
    for n in [10, 1, 1, 3] + [1] * SEQ:
        if pos >= SEQ:
            break
        pieces.append(ours(ids[:, pos:pos + n], attention_mask=mask[:, :pos + n], cache=cache))
        pos += n
    got = torch.cat(pieces, 1)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **MODEL_TOL)
