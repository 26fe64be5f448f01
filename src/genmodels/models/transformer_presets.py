"""The transformer families' presets (decoder, encoder, seq2seq: one :class:`~genmodels.models.config.ModelConfig`),
each with its source; :mod:`genmodels.models` registers them. Other families keep theirs in
``models/<family>/presets.py``."""
from __future__ import annotations

from typing import Any

from .config import ModelConfig


def gpt2(**kw: Any) -> ModelConfig:
    """GPT-2: learned positions, pre-LayerNorm (eps 1e-5), tanh-GELU MLP, biases, tied head."""
    base = dict(family="decoder", vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                max_seq_len=1024, position="learned", norm="layernorm", norm_eps=1e-5, mlp="gelu_tanh",
                mlp_bias=True, attn_bias=True, tie_embeddings=True, bos_token_id=50256, eos_token_id=50256)
    return ModelConfig.from_dict({**base, **kw})


def llama2(**kw: Any) -> ModelConfig:
    """Llama 2 7B (Touvron et al., 2023; meta-llama/Llama-2-7b-hf config.json): RoPE (half-split, theta
    1e4), RMSNorm (eps 1e-5), SwiGLU, no biases, GQA, untied."""
    base = dict(family="decoder", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                d_ff=11008, max_seq_len=4096, position="rope", rope_theta=10000.0, norm="rmsnorm",
                norm_eps=1e-5, mlp="swiglu", tie_embeddings=False, bos_token_id=1, eos_token_id=2)
    return ModelConfig.from_dict({**base, **kw})


def mistral(**kw: Any) -> ModelConfig:
    """Mistral 7B: Llama with GQA (8 KV heads), theta 1e4 and a 4096-token sliding window."""
    base = llama2().to_dict()
    base.update(n_kv_heads=8, d_ff=14336, max_seq_len=32768, sliding_window=4096)
    return ModelConfig.from_dict({**base, **kw})


def mixtral(**kw: Any) -> ModelConfig:
    """Mixtral 8x7B (Jiang et al., 2024, "Mixtral of Experts", Table 1; transformers' MixtralConfig
    defaults): Mistral 7B's attention (32 heads, 8 KV heads of 128) with no sliding window, RoPE theta
    1e6, a 32768-token context, and in every layer 8 SwiGLU experts of width 14336 of which the router
    picks 2 (renormalised): 46.7B parameters, 12.9B active per token."""
    base = mistral().to_dict()
    base.update(max_seq_len=32768, rope_theta=1e6, sliding_window=None, n_experts=8, experts_per_token=2)
    return ModelConfig.from_dict({**base, **kw})


def bert(**kw: Any) -> ModelConfig:
    """BERT-base (Devlin et al., 2019): learned positions + token types, embedding LayerNorm, post-LN
    blocks (eps 1e-12), exact GELU, biases everywhere, masked-LM head tied to the word embedding."""
    base = dict(family="encoder", vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                max_seq_len=512, position="learned", norm="layernorm", norm_eps=1e-12, norm_placement="post",
                mlp="gelu", mlp_bias=True, attn_bias=True, tie_embeddings=True, type_vocab_size=2,
                embedding_norm=True, final_norm=False, pooler=False, mlm_head=True, pad_token_id=0)
    return ModelConfig.from_dict({**base, **kw})


def minilm_l6(**kw: Any) -> ModelConfig:
    """all-MiniLM-L6-v2 layout: BERT with hidden 384, 6 layers, 12 heads, FFN 1536; BertModel heads
    (pooler, no MLM head) — sentence embeddings come from mean pooling (see genmodels.embed)."""
    return bert(**{**dict(d_model=384, n_layers=6, n_heads=12, d_ff=1536, pooler=True, mlm_head=False), **kw})


def t5(**kw: Any) -> ModelConfig:
    """T5 v1.0 small (Raffel et al., 2020): relative position buckets, unscaled attention, no biases,
    RMS norm (eps 1e-6) pre-norm, ReLU FFN, tied embedding with the decoder output scaled by d^-1/2."""
    base = dict(family="seq2seq", vocab_size=32128, d_model=512, n_layers=6, n_heads=8, head_dim=64, d_ff=2048,
                max_seq_len=512, position="relative", rel_buckets=32, rel_max_distance=128, norm="rmsnorm",
                norm_eps=1e-6, mlp="relu", attn_scale=1.0, tie_embeddings=True, output_scale=512 ** -0.5,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    base.update(kw)
    if "output_scale" not in kw:  # v1.0 scales only a tied head, by the actual width
        base["output_scale"] = base["d_model"] ** -0.5 if base["tie_embeddings"] else None
    return ModelConfig.from_dict(base)


def t5_v1_1(**kw: Any) -> ModelConfig:
    """T5 v1.1: gated-GELU (tanh) FFN, untied output head, no output scaling."""
    return t5(**{**dict(mlp="geglu_tanh", d_ff=1024, tie_embeddings=False, output_scale=None), **kw})


def transformer(**kw: Any) -> ModelConfig:
    """The original Transformer (Vaswani et al., 2017, base): sinusoidal positions, embeddings
    scaled by sqrt(d), post-LayerNorm, 1/sqrt(d) attention with biases, ReLU FFN, shared embeddings."""
    base = dict(family="seq2seq", vocab_size=37000, d_model=512, n_layers=6, n_heads=8, d_ff=2048,
                max_seq_len=1024, position="sinusoidal", norm="layernorm", norm_eps=1e-5, norm_placement="post",
                mlp="relu", mlp_bias=True, attn_bias=True, tie_embeddings=True, final_norm=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    base.update(kw)
    base.setdefault("embed_scale", base["d_model"] ** 0.5)
    return ModelConfig.from_dict(base)


# The transformer presets; each family's registry entry (genmodels.models) names its own.
PRESETS = {
    "gpt2": gpt2,
    "gpt2-tiny": lambda **kw: gpt2(**{**dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                                             max_seq_len=512, bos_token_id=0, eos_token_id=0), **kw}),
    "llama2-7b": llama2,
    # Llama 2 13B and 70B (Touvron et al., 2023, Table 1; meta-llama/Llama-2-{13b,70b}-hf config.json):
    # 70B uses grouped-query attention with 8 KV heads and an FFN of 28672.
    "llama2-13b": lambda **kw: llama2(**{**dict(d_model=5120, n_layers=40, n_heads=40, n_kv_heads=40,
                                                d_ff=13824), **kw}),
    "llama2-70b": lambda **kw: llama2(**{**dict(d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                                                d_ff=28672), **kw}),
    "llama-tiny": lambda **kw: llama2(**{**dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4,
                                                n_kv_heads=2, d_ff=688, max_seq_len=512, bos_token_id=0,
                                                eos_token_id=0), **kw}),
    "mistral-7b": mistral,
    "mixtral-8x7b": mixtral,
    # llama-tiny with 8 experts in every layer, top-2, each half llama-tiny's width: the ACTIVE
    # feed-forward per token (2 x 344) equals llama-tiny's 688, so the two compare at equal compute.
    "mixtral-tiny": lambda **kw: PRESETS["llama-tiny"](**{**dict(n_experts=8, experts_per_token=2,
                                                                 expert_d_ff=344), **kw}),
    "bert-base": bert,
    "bert-tiny": lambda **kw: bert(**{**dict(vocab_size=8192, d_model=128, n_layers=2, n_heads=2, d_ff=512,
                                             max_seq_len=512), **kw}),
    "minilm-l6": minilm_l6,
    "t5-small": t5,
    "t5-v1_1-small": t5_v1_1,
    "t5-tiny": lambda **kw: t5(**{**dict(vocab_size=8192, d_model=128, n_layers=2, n_heads=4, head_dim=32,
                                         d_ff=512), **kw}),
    "transformer-base": transformer,
    "transformer-tiny": lambda **kw: transformer(**{**dict(vocab_size=8192, d_model=128, n_layers=2, n_heads=4,
                                                           d_ff=512, max_seq_len=512), **kw}),
}
