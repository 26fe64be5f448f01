"""Hugging Face ↔ genmodels for decoder-only models: GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM.

Layout facts (see shared/reference/llm-anchors.md):
* GPT-2 stores its projections as ``Conv1D`` ``[in, out]`` — transposed relative to ``nn.Linear``;
  ``c_attn`` is q|k|v fused, as our ``qkv``. ``gelu_new`` is tanh-GELU. Head tied to ``wte``.
* Llama/Mistral keep q/k/v and gate/up separate: we concatenate rows on load and split on export.
  HF's RoPE is half-split, as ours, so no q/k permutation is needed.
* A sparse-MoE config (``n_experts > 0``) is Mixtral's (mixtral_hf.py): these exporters do not
  claim it, and refuse it by name (``model.n_experts``) if asked to write one.
"""
from __future__ import annotations

from typing import Any

import torch

from ..models.config import ModelConfig
from .base import (ANY, COMMON_EXPORT, ConversionError, Converter, rename_layers, require_exportable,
                   special_token_ids, take, take_top_and_head)

IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # a decoder-only model has no decoder_start
GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
# Written to every decoder's config.json as is.
EXPRESSED = dict.fromkeys(("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "norm_eps",
                           "tie_embeddings", *IDS), ANY)


class GPT2Converter(Converter):
    architectures = ("GPT2LMHeadModel", "GPT2Model")
    model_type = "gpt2"
    ignored = (".attn.bias", ".attn.masked_bias")

    LAYER = {  # ours -> theirs
        "blocks.{i}.norm1.weight": "transformer.h.{i}.ln_1.weight",
        "blocks.{i}.norm1.bias": "transformer.h.{i}.ln_1.bias",
        "blocks.{i}.attn.qkv.weight": "transformer.h.{i}.attn.c_attn.weight",
        "blocks.{i}.attn.qkv.bias": "transformer.h.{i}.attn.c_attn.bias",
        "blocks.{i}.attn.out.weight": "transformer.h.{i}.attn.c_proj.weight",
        "blocks.{i}.attn.out.bias": "transformer.h.{i}.attn.c_proj.bias",
        "blocks.{i}.norm2.weight": "transformer.h.{i}.ln_2.weight",
        "blocks.{i}.norm2.bias": "transformer.h.{i}.ln_2.bias",
        "blocks.{i}.mlp.fc1.weight": "transformer.h.{i}.mlp.c_fc.weight",
        "blocks.{i}.mlp.fc1.bias": "transformer.h.{i}.mlp.c_fc.bias",
        "blocks.{i}.mlp.fc2.weight": "transformer.h.{i}.mlp.c_proj.weight",
        "blocks.{i}.mlp.fc2.bias": "transformer.h.{i}.mlp.c_proj.bias",
    }
    TOP = {"embed.weight": "transformer.wte.weight", "pos_embed.weight": "transformer.wpe.weight",
           "norm.weight": "transformer.ln_f.weight", "norm.bias": "transformer.ln_f.bias"}

    def exports(self, cfg: ModelConfig) -> bool:
        return cfg.position == "learned"

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        act = hf.get("activation_function", "gelu_new")
        if act not in GPT2_ACT:
            raise ConversionError(f"GPT-2 activation_function={act!r} is not supported; have {', '.join(GPT2_ACT)}")
        for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                         ("scale_attn_weights", True)):
            if hf.get(flag, ok) != ok:
                raise ConversionError(f"GPT-2 {flag}={hf[flag]} is not supported")
        d = hf.get("n_embd", 768)
        return ModelConfig(family="decoder", vocab_size=hf.get("vocab_size", 50257), d_model=d,
                           n_layers=hf.get("n_layer", 12), n_heads=hf.get("n_head", 12),
                           d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
                           position="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                           mlp=GPT2_ACT[act], mlp_bias=True, attn_bias=True,
                           tie_embeddings=hf.get("tie_word_embeddings", True),
                           **special_token_ids(hf, hf.get("vocab_size", 50257), fields=IDS))

    def config_to_hf(self, c: ModelConfig) -> dict[str, Any]:
        inv = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
        require_exportable(c, "GPT2LMHeadModel", self.export_fields(c))
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.d_ff,
                "n_positions": c.max_seq_len, "layer_norm_epsilon": c.norm_eps, "activation_function": inv[c.mlp],
                "tie_word_embeddings": c.tie_embeddings, "bos_token_id": c.bos_token_id,
                "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32"}

    @staticmethod
    def export_fields(c: ModelConfig) -> dict[str, Any]:
        """What GPT2LMHeadModel expresses of each config field (see base.require_exportable)."""
        return {**COMMON_EXPORT, **EXPRESSED, "position": ("learned",), "norm": ("layernorm",),
                "mlp": ("gelu_tanh", "gelu", "relu"), "n_kv_heads": (None, c.n_heads),
                "head_dim": (None, c.d_model // c.n_heads) if c.d_model % c.n_heads == 0 else (None,),
                "sliding_window": (None,), "attn_bias": (True,), "attn_out_bias": (None, True),
                "mlp_bias": (True,), "norm_bias": (True,),
                "rope_theta": ANY, "rotary_fraction": ANY}  # unused with learned positions

    @staticmethod
    def _t(ours: str, t: torch.Tensor) -> torch.Tensor:  # Conv1D [in, out] <-> Linear [out, in]
        return t.t().contiguous() if ours.endswith("weight") and t.dim() == 2 else t

    def normalize_keys(self, sd):
        for k in list(sd):  # bare GPT2Model checkpoints have no "transformer." prefix
            if not k.startswith(("transformer.", "lm_head.")):
                sd["transformer." + k] = sd.pop(k)

    def state_from_hf(self, sd, cfg):
        out: dict[str, torch.Tensor] = {}
        rename_layers(cfg.n_layers, self.LAYER, sd, out, self._t)
        take_top_and_head(sd, self.TOP, cfg.tie_embeddings, out)
        return out

    def state_to_hf(self, sd, cfg):
        out = {theirs.format(i=i): self._t(ours, sd[ours.format(i=i)])
               for i in range(cfg.n_layers) for ours, theirs in self.LAYER.items()}
        out.update({theirs: sd[ours] for ours, theirs in self.TOP.items()})
        out["lm_head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else sd["head.weight"]
        return out


class LlamaConverter(Converter):
    architectures = ("LlamaForCausalLM",)
    model_type = "llama"
    ignored = (".rotary_emb.inv_freq",)

    LAYER = {
        "blocks.{i}.norm1.weight": "model.layers.{i}.input_layernorm.weight",
        "blocks.{i}.attn.out.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "blocks.{i}.attn.out.bias": "model.layers.{i}.self_attn.o_proj.bias",
        "blocks.{i}.norm2.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "blocks.{i}.mlp.down.weight": "model.layers.{i}.mlp.down_proj.weight",
        "blocks.{i}.mlp.down.bias": "model.layers.{i}.mlp.down_proj.bias",
    }
    FUSED = {  # ours -> the HF keys whose rows it concatenates
        "blocks.{i}.attn.qkv.{p}": ("model.layers.{i}.self_attn.q_proj.{p}", "model.layers.{i}.self_attn.k_proj.{p}",
                                    "model.layers.{i}.self_attn.v_proj.{p}"),
        "blocks.{i}.mlp.gate_up.{p}": ("model.layers.{i}.mlp.gate_proj.{p}", "model.layers.{i}.mlp.up_proj.{p}"),
    }
    TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    windowed = False  # whether the architecture reads config.json's sliding_window
    defaults: dict[str, Any] = {}  # config.json values HF assumes when a key is absent (beyond the ones below)

    def exports(self, cfg: ModelConfig) -> bool:  # Mistral is Llama with a sliding window; MoE is Mixtral's
        return cfg.position == "rope" and cfg.n_experts == 0 and bool(cfg.sliding_window) == self.windowed

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        hf = {**self.defaults, **hf}
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConversionError(f"rope_type={rope_type!r} (RoPE scaling) is not supported yet; have: default")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConversionError(f"hidden_act={hf['hidden_act']!r} is not supported for {self.model_type}; have silu")
        n_heads = hf["num_attention_heads"]
        return ModelConfig(family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                           n_layers=hf["num_hidden_layers"], n_heads=n_heads,
                           n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim"),
                           d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                           position="rope", rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                           norm="rmsnorm",  # HF's Llama/Mistral RoPE ignores partial_rotary_factor
                           norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", mlp_bias=hf.get("mlp_bias", False),
                           attn_bias=hf.get("attention_bias", False), attn_out_bias=hf.get("attention_bias", False),
                           tie_embeddings=hf.get("tie_word_embeddings", False),
                           sliding_window=hf.get("sliding_window") if self.windowed else None,
                           **special_token_ids(hf, hf["vocab_size"], fields=IDS))

    def config_to_hf(self, c: ModelConfig) -> dict[str, Any]:
        require_exportable(c, self.architectures[0], self.export_fields(c))
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
        d = {"architectures": [self.architectures[0]], "model_type": self.model_type, "vocab_size": c.vocab_size,
             "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
             "num_key_value_heads": c.kv_heads, "head_dim": c.dim_head, "intermediate_size": c.d_ff,
             "max_position_embeddings": c.max_seq_len, "rope_parameters": rope, "rms_norm_eps": c.norm_eps,
             "hidden_act": "silu", "attention_bias": c.attn_bias, "mlp_bias": c.mlp_bias,
             "tie_word_embeddings": c.tie_embeddings, "bos_token_id": c.bos_token_id,
             "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id, "torch_dtype": "float32"}
        if self.windowed:
            d["sliding_window"] = c.sliding_window
        return d

    def export_fields(self, c: ModelConfig) -> dict[str, Any]:
        """What Llama/Mistral's config expresses of each field (see base.require_exportable)."""
        return {**COMMON_EXPORT, **EXPRESSED, "position": ("rope",), "norm": ("rmsnorm",), "mlp": ("swiglu",),
                "rotary_fraction": (1.0,), "attn_out_bias": (None, c.attn_bias),
                "sliding_window": ANY if self.windowed else (None,),
                "n_kv_heads": ANY, "head_dim": ANY, "rope_theta": ANY, "attn_bias": ANY, "mlp_bias": ANY,
                "norm_bias": ANY}  # RMSNorm has no bias

    def state_from_hf(self, sd, cfg):
        out: dict[str, torch.Tensor] = {}
        rename_layers(cfg.n_layers, self.LAYER, sd, out,
                      optional=("blocks.{i}.attn.out.bias", "blocks.{i}.mlp.down.bias"))
        for i in range(cfg.n_layers):
            for ours, parts in self.FUSED.items():
                for p in ("weight", "bias"):
                    keys = [k.format(i=i, p=p) for k in parts]
                    if p == "bias" and not all(k in sd for k in keys):
                        continue
                    out[ours.format(i=i, p=p)] = torch.cat([take(sd, k) for k in keys], dim=0)
        take_top_and_head(sd, self.TOP, cfg.tie_embeddings, out)
        return out

    def state_to_hf(self, sd, cfg):
        out = {}
        for i in range(cfg.n_layers):
            for ours, theirs in self.LAYER.items():
                if ours.format(i=i) in sd:
                    out[theirs.format(i=i)] = sd[ours.format(i=i)]
            for ours, parts in self.FUSED.items():
                for p in ("weight", "bias"):
                    key = ours.format(i=i, p=p)
                    if key not in sd:
                        continue
                    if "qkv" in ours:
                        d = cfg.dim_head
                        sizes = [cfg.n_heads * d, cfg.kv_heads * d, cfg.kv_heads * d]
                    else:
                        sizes = [cfg.d_ff, cfg.d_ff]
                    for k, t in zip(parts, sd[key].split(sizes, dim=0)):
                        out[k.format(i=i, p=p)] = t.contiguous()
        out.update({theirs: sd[ours] for ours, theirs in self.TOP.items()})
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["head.weight"]
        return out


class MistralConverter(LlamaConverter):
    architectures = ("MistralForCausalLM",)
    model_type = "mistral"
    windowed = True
