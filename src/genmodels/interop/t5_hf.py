"""Hugging Face ↔ genmodels for T5: T5ForConditionalGeneration (v1.0 and v1.1 layouts).

Layout facts (see shared/reference/llm-anchors.md):
* ``shared`` is the one embedding; ``encoder.embed_tokens``/``decoder.embed_tokens`` are ties of it.
* Encoder block: ``layer.0`` = self-attention (+ its ``layer_norm``), ``layer.1`` = FFN. Decoder
  block: ``layer.0`` self-attention, ``layer.1.EncDecAttention`` cross-attention, ``layer.2`` FFN.
* Only block 0 stores ``relative_attention_bias`` ``[buckets, heads]``; every layer uses it. We
  hold it once per stack (``enc_rel_bias`` / ``dec_rel_bias``).
* q/k/v/o are separate bias-free linears: self-attention q|k|v concatenate into our ``qkv``,
  cross-attention k|v into ``cross.kv``. ``wi_0``/``wi_1`` (gated) concatenate into ``gate_up``.
* Output scaling: v1.0 (tied) multiplies the decoder output by d_model^-1/2 before the head.
  transformers 5 writes this as ``scale_decoder_outputs`` and always ties ``lm_head`` to
  ``shared`` unless the checkpoint holds a different ``lm_head.weight``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..models.config import ModelConfig
from ..nn.mlp import GATED
from .base import ANY, ConversionError, Converter, Rule, rename_layers, require_exportable, special_token_ids, take

T5_ACT = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gated-gelu": "geglu_tanh",
          "gated-gelu_new": "geglu_tanh", "gated-silu": "swiglu"}
T5_ACT_OUT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "geglu_tanh": "gated-gelu",
              "swiglu": "gated-silu"}

ATTN = "{s}.block.{i}.layer.0.SelfAttention.{w}.weight"
CROSS = "decoder.block.{i}.layer.1.EncDecAttention.{w}.weight"


def _ffn_keys(stack: str, layer: int, gated: bool) -> dict[str, Any]:
    ffn = f"{stack}.block.{{i}}.layer.{layer}.DenseReluDense"
    if gated:
        return {"mlp.gate_up.weight": (f"{ffn}.wi_0.weight", f"{ffn}.wi_1.weight"),
                "mlp.down.weight": f"{ffn}.wo.weight"}
    return {"mlp.fc1.weight": f"{ffn}.wi.weight", "mlp.fc2.weight": f"{ffn}.wo.weight"}


class T5Converter(Converter):
    architectures = ("T5ForConditionalGeneration",)
    model_type = "t5"
    ignored = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

    def _layout(self, cfg: ModelConfig) -> dict[str, Any]:
        """ours -> theirs (a str, or a tuple of HF keys whose rows are concatenated)."""
        gated = cfg.mlp in GATED
        m: dict[str, Any] = {}
        for s, ours, ffn_layer in (("encoder", "enc_blocks", 1), ("decoder", "dec_blocks", 2)):
            m[f"{ours}.{{i}}.attn.qkv.weight"] = tuple(ATTN.format(s=s, i="{i}", w=w) for w in "qkv")
            m[f"{ours}.{{i}}.attn.out.weight"] = ATTN.format(s=s, i="{i}", w="o")
            m[f"{ours}.{{i}}.norm1.weight"] = f"{s}.block.{{i}}.layer.0.layer_norm.weight"
            m[f"{ours}.{{i}}.norm2.weight"] = f"{s}.block.{{i}}.layer.{ffn_layer}.layer_norm.weight"
            for k, v in _ffn_keys(s, ffn_layer, gated).items():
                m[f"{ours}.{{i}}.{k}"] = v
        m["dec_blocks.{i}.cross.q.weight"] = CROSS.format(i="{i}", w="q")
        m["dec_blocks.{i}.cross.kv.weight"] = (CROSS.format(i="{i}", w="k"), CROSS.format(i="{i}", w="v"))
        m["dec_blocks.{i}.cross.out.weight"] = CROSS.format(i="{i}", w="o")
        m["dec_blocks.{i}.norm_cross.weight"] = "decoder.block.{i}.layer.1.layer_norm.weight"
        return m

    TOP = {"embed.weight": "shared.weight", "enc_norm.weight": "encoder.final_layer_norm.weight",
           "dec_norm.weight": "decoder.final_layer_norm.weight",
           "enc_rel_bias.embedding.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           "dec_rel_bias.embedding.weight": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}

    # ---- config ---------------------------------------------------------------------------
    def exports(self, cfg: ModelConfig) -> bool:
        return cfg.position == "relative"

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        proj = hf.get("feed_forward_proj", "relu")
        if proj not in T5_ACT:
            raise ConversionError(f"T5 feed_forward_proj={proj!r} is not supported; have {', '.join(T5_ACT)}")
        d = hf.get("d_model", 512)
        tie = hf.get("tie_word_embeddings", True)
        scale = hf.get("scale_decoder_outputs", tie)
        n_layers = hf.get("num_layers", 6)
        ids = special_token_ids(hf, hf.get("vocab_size", 32128), {"pad_token_id": 0, "eos_token_id": 1},
                                fields=("pad_token_id", "eos_token_id", "decoder_start_token_id"))
        pad, start = ids["pad_token_id"], ids["decoder_start_token_id"]
        return ModelConfig(family="seq2seq", vocab_size=hf.get("vocab_size", 32128), d_model=d, n_layers=n_layers,
                           n_decoder_layers=hf.get("num_decoder_layers") or n_layers, n_heads=hf.get("num_heads", 8),
                           head_dim=hf.get("d_kv", 64), d_ff=hf.get("d_ff", 2048),
                           max_seq_len=hf.get("n_positions", 512), position="relative",
                           rel_buckets=hf.get("relative_attention_num_buckets", 32),
                           rel_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
                           norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_placement="pre", mlp=T5_ACT[proj],
                           attn_scale=1.0, tie_embeddings=True, output_scale=d ** -0.5 if scale else None,
                           dropout=0.0, pad_token_id=pad, eos_token_id=ids["eos_token_id"],
                           decoder_start_token_id=pad if start is None else start)

    def refine_config(self, cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> ModelConfig:
        """Tied when the checkpoint has no ``lm_head.weight`` or it equals ``shared.weight``."""
        head, shared = sd.get("lm_head.weight"), sd.get("shared.weight")
        tied = head is None or (shared is not None and head.shape == shared.shape and torch.equal(head, shared))
        return cfg.replace(tie_embeddings=tied)

    @staticmethod
    def export_fields(c: ModelConfig) -> dict[str, Any]:
        """What T5's config expresses of each field (see base.require_exportable): relative buckets,
        pre-RMSNorm, no biases, unscaled multi-head attention, output scaled by d^-1/2 or not."""
        expressed = ("vocab_size", "d_model", "n_layers", "n_decoder_layers", "n_heads", "head_dim", "d_ff",
                     "max_seq_len", "norm_eps", "rel_buckets", "rel_max_distance", "tie_embeddings", "dropout",
                     "pad_token_id", "eos_token_id", "decoder_start_token_id", "extra")
        return {**dict.fromkeys(expressed, ANY), "family": ("seq2seq",), "position": ("relative",),
                "norm": ("rmsnorm",), "norm_placement": ("pre",), "final_norm": (True,), "attn_bias": (False,),
                "attn_out_bias": (None, False), "mlp_bias": (False,), "mlp": tuple(T5_ACT_OUT),
                "attn_scale": (1.0,), "n_kv_heads": (None, c.n_heads), "embed_scale": (1.0,),
                "output_scale": Rule(lambda v: v is None or abs(v - c.d_model ** -0.5) <= 1e-12,
                                     "d_model^-0.5 or None"),
                "norm_bias": ANY,  # RMSNorm has no bias
                "rope_theta": ANY, "rotary_fraction": ANY}  # unused with relative buckets

    def config_to_hf(self, c: ModelConfig) -> dict[str, Any]:
        require_exportable(c, "T5ForConditionalGeneration", self.export_fields(c))
        scaled = c.output_scale is not None
        if scaled and abs(c.output_scale - c.d_model ** -0.5) > 1e-12:
            raise ConversionError(f"T5 output_scale must be d_model^-0.5 or None, got {c.output_scale}")
        if scaled and not c.tie_embeddings:
            raise ConversionError("T5 with output scaling and an untied head has no Hugging Face layout")
        return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": c.vocab_size,
                "d_model": c.d_model, "d_kv": c.dim_head, "d_ff": c.d_ff, "num_layers": c.n_layers,
                "num_decoder_layers": c.n_decoder_layers or c.n_layers, "num_heads": c.n_heads,
                "relative_attention_num_buckets": c.rel_buckets,
                "relative_attention_max_distance": c.rel_max_distance, "dropout_rate": c.dropout,
                "layer_norm_epsilon": c.norm_eps, "feed_forward_proj": T5_ACT_OUT[c.mlp],
                "tie_word_embeddings": scaled, "scale_decoder_outputs": scaled, "n_positions": c.max_seq_len,
                "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
                "decoder_start_token_id": c.decoder_start_token_id, "is_encoder_decoder": True,
                "torch_dtype": "float32"}

    # ---- weights --------------------------------------------------------------------------
    def state_from_hf(self, sd, cfg):
        out: dict[str, torch.Tensor] = {}
        n_dec = cfg.n_decoder_layers or cfg.n_layers
        for ours, theirs in self._layout(cfg).items():
            n = cfg.n_layers if ours.startswith("enc_") else n_dec
            if isinstance(theirs, str):
                rename_layers(n, {ours: theirs}, sd, out)
            else:
                for i in range(n):
                    out[ours.format(i=i)] = torch.cat([take(sd, k.format(i=i)) for k in theirs], dim=0)
        for ours, theirs in self.TOP.items():
            out[ours] = take(sd, theirs)
        for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            t = sd.pop(k, None)
            if t is not None and not torch.equal(t, out["embed.weight"]):
                raise ConversionError(f"{k} differs from shared.weight (untied input embeddings are not supported)")
        head = sd.pop("lm_head.weight", None)
        if not cfg.tie_embeddings:
            if head is None:
                raise ConversionError("missing key in checkpoint: lm_head.weight")
            out["head.weight"] = head
        return out

    def state_to_hf(self, sd, cfg):
        out: dict[str, torch.Tensor] = {}
        n_dec = cfg.n_decoder_layers or cfg.n_layers
        for ours, theirs in self._layout(cfg).items():
            n = cfg.n_layers if ours.startswith("enc_") else n_dec
            for i in range(n):
                t = sd[ours.format(i=i)]
                if isinstance(theirs, str):
                    out[theirs.format(i=i)] = t
                else:
                    for k, part in zip(theirs, t.chunk(len(theirs), dim=0)):
                        out[k.format(i=i)] = part.contiguous()
        out.update({theirs: sd[ours] for ours, theirs in self.TOP.items()})
        # the head: tied and scaled (v1.0) -> HF ties it; otherwise write it out (equal values tie).
        out["lm_head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else sd["head.weight"]
        return out
