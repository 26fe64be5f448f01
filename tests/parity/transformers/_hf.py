"""Shared helpers for the Hugging Face parity tests: tiny configs, randomisation, the load path.

Conventions (shared/DESIGN.md, reference/llm-anchors.md §5): every parameter ~ N(0, 0.2), eager
attention, eval mode, float32; weights reach genmodels through ``save_pretrained`` + ``genmodels.load``.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import genmodels  # noqa: E402
from tests.helpers.tiny import left_pad_mask, random_ids, randomise  # noqa: E402, F401  (shared helpers)

from tests.helpers.tiny import VOCAB  # noqa: E402
MODULE_TOL = dict(atol=1e-6, rtol=1e-5)
MODEL_TOL = dict(atol=1e-5, rtol=1e-4)





def gpt2_config(**kw):
    base = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=VOCAB, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.GPT2Config(**{**base, **kw})


def llama_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=176, num_hidden_layers=2, rms_norm_eps=1e-5, max_position_embeddings=128,
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaConfig(**{**base, **kw})


def mistral_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=176, num_hidden_layers=2, rms_norm_eps=1e-5, max_position_embeddings=128,
                sliding_window=8, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                pad_token_id=None)
    return transformers.MistralConfig(**{**base, **kw})


def mixtral_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=2,
                rms_norm_eps=1e-5, max_position_embeddings=128, sliding_window=None, tie_word_embeddings=False,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.MixtralConfig(**{**base, **kw})


CONFIGS = {"gpt2": gpt2_config, "llama": llama_config, "mistral": mistral_config, "mixtral": mixtral_config}


def hf_model(kind: str, seed: int = 0, **kw):
    """A randomised, eval-mode, float32, eager-attention ``*ForCausalLM`` of the named kind."""
    cfg = CONFIGS[kind](**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32)
    assert model.config._attn_implementation == "eager"
    return randomise(model, seed=seed).eval()


def to_ours(hf, path):
    """The user path: ``save_pretrained`` then ``genmodels.load``."""
    hf.save_pretrained(path)
    return genmodels.load(path)


def hf_from_dir(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                             dtype=torch.float32).eval()




def hf_position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)
