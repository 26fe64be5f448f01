"""Components against their Hugging Face counterparts (llm-anchors §5, tests 1–2), float32, 1e-6."""
from __future__ import annotations

import pytest
import torch

from genmodels.nn import (ALiBi, RelativePositionBias, RMSNorm, RotaryEmbedding, alibi_slopes, apply_rotary,
                          build_mask, make_mlp, relative_position_bucket)

from ._hf import MODULE_TOL, llama_config, randomise  # first: skips the module without transformers

from transformers.activations import ACT2FN
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb)
from transformers.models.t5.modeling_t5 import T5LayerNorm

torch.set_num_threads(1)
pytestmark = pytest.mark.parity


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm_vs_llama(eps):
    ours = randomise(RMSNorm(64, eps=eps))
    ref = LlamaRMSNorm(64, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 64, generator=gen(1)) * 0.01  # small: the eps is visible
    torch.testing.assert_close(ours(x), ref(x), **MODULE_TOL)


def test_rmsnorm_vs_t5_layernorm():
    ours = randomise(RMSNorm(64, eps=1e-6))
    ref = T5LayerNorm(64, eps=1e-6)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 64, generator=gen(2))
    torch.testing.assert_close(ours(x), ref(x), **MODULE_TOL)


@pytest.mark.parametrize("offset", [0, 7])
def test_rope_vs_llama_rotary(offset):
    head_dim, t = 16, 20
    cfg = llama_config(hidden_size=64, num_attention_heads=4, head_dim=head_dim)
    hf_rope = LlamaRotaryEmbedding(cfg)
    ours = RotaryEmbedding(head_dim, theta=cfg.rope_parameters["rope_theta"])
    torch.testing.assert_close(ours.inv_freq, hf_rope.inv_freq, atol=0, rtol=0)
    positions = torch.arange(offset, offset + t)[None].repeat(2, 1)
    positions[1] += 3  # a second row at another offset
    q = torch.randn(2, 4, t, head_dim, generator=gen(3))
    k = torch.randn(2, 2, t, head_dim, generator=gen(4))
    cos_hf, sin_hf = hf_rope(q, positions)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    cos, sin = ours(positions)
    torch.testing.assert_close(cos[:, 0], cos_hf, **MODULE_TOL)
    torch.testing.assert_close(sin[:, 0], sin_hf, **MODULE_TOL)
    torch.testing.assert_close(apply_rotary(q, cos, sin), q_hf, **MODULE_TOL)
    torch.testing.assert_close(apply_rotary(k, cos, sin), k_hf, **MODULE_TOL)


@pytest.mark.parametrize("n_heads", [4, 6, 12])
def test_alibi_vs_bloom(n_heads):
    t = 10
    bloom = build_alibi_tensor(torch.ones(1, t, dtype=torch.long), n_heads, torch.float32)  # (H, 1, T): m_h · j
    slopes = bloom[:, 0, 1]  # j = 1
    torch.testing.assert_close(alibi_slopes(n_heads), slopes, **MODULE_TOL)
    ours = ALiBi(n_heads)(torch.arange(t), torch.arange(t))[0]  # (H, Tq, Tk): −m_h · (i − j)
    scores = torch.randn(n_heads, t, t, generator=gen(5))
    causal, _ = build_mask(t, t, window=None, key_padding=torch.ones(1, t))  # explicit causal mask
    ours_p = torch.softmax(scores + ours + causal[0], -1)
    bloom_p = torch.softmax(scores + bloom + causal[0], -1)  # BLOOM's bias differs by a per-row constant
    torch.testing.assert_close(ours_p, bloom_p, **MODULE_TOL)
    # and the bias itself is BLOOM's up to the row constant m_h · i
    i = torch.arange(t)[None, :, None]
    torch.testing.assert_close(ours + slopes[:, None, None] * i, bloom.expand(n_heads, t, t), **MODULE_TOL)


@pytest.mark.parametrize("ours,theirs", [("gelu", "gelu"), ("gelu_tanh", "gelu_new"),
                                         ("gelu_tanh", "gelu_pytorch_tanh"),
                                         ("relu", "relu")])
def test_mlp_activations_vs_hf(ours, theirs):
    mlp = randomise(make_mlp(ours, 64, 128, True))
    x = torch.randn(2, 5, 64, generator=gen(6)) * 3
    want = mlp.fc2(ACT2FN[theirs](mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), want, **MODULE_TOL)


def test_swiglu_vs_llama_mlp():
    cfg = llama_config(hidden_size=64, intermediate_size=176)
    ref = randomise(LlamaMLP(cfg))
    ours = make_mlp("swiglu", 64, 176, False)
    sd = ref.state_dict()
    ours.load_state_dict({"gate_up.weight": torch.cat([sd["gate_proj.weight"], sd["up_proj.weight"]]),
                          "down.weight": sd["down_proj.weight"]})
    x = torch.randn(2, 5, 64, generator=gen(7))
    torch.testing.assert_close(ours(x), ref(x), **MODULE_TOL)



@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_bucket_vs_t5(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-64, 65)[None, :] - torch.zeros(1, 1, dtype=torch.long)
    want = T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    got = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    assert torch.equal(got, want)
    assert len(got.unique()) > num_buckets // 4  # non-trivial range of buckets


@pytest.mark.parametrize("is_decoder,past", [(False, 0), (True, 0), (True, 5)])
def test_relative_position_bias_vs_t5_compute_bias(is_decoder, past):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention
    cfg = T5Config(d_model=64, d_kv=16, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, is_decoder=is_decoder)
    ref = randomise(T5Attention(cfg, has_relative_attention_bias=True))
    ours = RelativePositionBias(4, 8, 20, bidirectional=not is_decoder)
    ours.embedding.weight.data.copy_(ref.relative_attention_bias.weight)
    q_len, k_len = 6, 6 + past
    want = ref.compute_bias(q_len, k_len, past_seen_tokens=past)
    got = ours(torch.arange(past, past + q_len), torch.arange(k_len))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
