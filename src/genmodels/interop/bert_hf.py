"""Hugging Face ↔ genmodels for BERT encoders: BertModel, BertForMaskedLM (and their sentence-
transformers folders, e.g. all-MiniLM-L6-v2).

Layout facts (see shared/reference/llm-anchors.md):
* q/k/v are separate ``attention.self.{query,key,value}``: concatenated rows into our ``qkv``.
* Post-LN: ``attention.output.LayerNorm`` is our ``norm1``, ``output.LayerNorm`` our ``norm2``.
* BertModel checkpoints have bare keys (``embeddings.…``); BertForMaskedLM prefixes ``bert.`` and
  adds ``cls.predictions.{transform.dense, transform.LayerNorm, bias}`` with the decoder tied to
  the word embedding. Which heads a checkpoint has (pooler, MLM) is read from its keys.
* NSP weights (``cls.seq_relationship``, BertForPreTraining) and the ``position_ids`` buffer carry
  nothing we model and are skipped, as transformers' BertForMaskedLM skips them.
"""
from __future__ import annotations

from typing import Any

import torch

from ..models.config import ModelConfig
from .base import ANY, ConversionError, Converter, Rule, rename_layers, require_exportable, special_token_ids, take

BERT_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
BERT_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


class BertConverter(Converter):
    architectures = ("BertForMaskedLM", "BertModel")
    model_type = "bert"
    ignored = ("position_ids", "cls.seq_relationship.weight", "cls.seq_relationship.bias")
    optional = ("cls.predictions.decoder.bias",)  # a copy of cls.predictions.bias that checkpoints may omit

    LAYER = {  # ours -> theirs (without the "bert." prefix)
        "blocks.{i}.attn.out.weight": "encoder.layer.{i}.attention.output.dense.weight",
        "blocks.{i}.attn.out.bias": "encoder.layer.{i}.attention.output.dense.bias",
        "blocks.{i}.norm1.weight": "encoder.layer.{i}.attention.output.LayerNorm.weight",
        "blocks.{i}.norm1.bias": "encoder.layer.{i}.attention.output.LayerNorm.bias",
        "blocks.{i}.mlp.fc1.weight": "encoder.layer.{i}.intermediate.dense.weight",
        "blocks.{i}.mlp.fc1.bias": "encoder.layer.{i}.intermediate.dense.bias",
        "blocks.{i}.mlp.fc2.weight": "encoder.layer.{i}.output.dense.weight",
        "blocks.{i}.mlp.fc2.bias": "encoder.layer.{i}.output.dense.bias",
        "blocks.{i}.norm2.weight": "encoder.layer.{i}.output.LayerNorm.weight",
        "blocks.{i}.norm2.bias": "encoder.layer.{i}.output.LayerNorm.bias",
    }
    QKV = ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layer.{i}.attention.self.key.{p}",
           "encoder.layer.{i}.attention.self.value.{p}")
    EMBED = {"embed.weight": "embeddings.word_embeddings.weight",
             "pos_embed.weight": "embeddings.position_embeddings.weight",
             "type_embed.weight": "embeddings.token_type_embeddings.weight",
             "embed_norm.weight": "embeddings.LayerNorm.weight", "embed_norm.bias": "embeddings.LayerNorm.bias"}
    POOLER = {"pooler.dense.weight": "pooler.dense.weight", "pooler.dense.bias": "pooler.dense.bias"}
    MLM = {"mlm.dense.weight": "cls.predictions.transform.dense.weight",
           "mlm.dense.bias": "cls.predictions.transform.dense.bias",
           "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
           "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
           "mlm.head.bias": "cls.predictions.bias"}

    # ---- config ---------------------------------------------------------------------------
    def exports(self, cfg: ModelConfig) -> bool:
        return cfg.position == "learned"

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        act = hf.get("hidden_act", "gelu")
        if act not in BERT_ACT:
            raise ConversionError(f"BERT hidden_act={act!r} is not supported; have {', '.join(BERT_ACT)}")
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ConversionError(f"BERT position_embedding_type={pet!r} is not supported; have: absolute")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ConversionError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
        archs = hf.get("architectures") or ["BertModel"]
        mlm = any(a != "BertModel" for a in archs)
        return ModelConfig(family="encoder", vocab_size=hf.get("vocab_size", 30522), d_model=hf.get("hidden_size", 768),
                           n_layers=hf.get("num_hidden_layers", 12), n_heads=hf.get("num_attention_heads", 12),
                           d_ff=hf.get("intermediate_size", 3072), max_seq_len=hf.get("max_position_embeddings", 512),
                           position="learned", norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12),
                           norm_placement="post", mlp=BERT_ACT[act], mlp_bias=True, attn_bias=True,
                           tie_embeddings=hf.get("tie_word_embeddings", True),
                           type_vocab_size=hf.get("type_vocab_size", 2), embedding_norm=True, final_norm=False,
                           pooler=not mlm, mlm_head=mlm,
                           **special_token_ids(hf, hf.get("vocab_size", 30522), {"pad_token_id": 0},
                                               fields=("pad_token_id",)))

    def refine_config(self, cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> ModelConfig:
        """Which heads the checkpoint actually holds (a BertModel may lack its pooler; a
        pre-training checkpoint has both)."""
        keys = {k.removeprefix("bert.") for k in sd}
        mlm = "cls.predictions.bias" in keys
        tied = True
        if mlm and "cls.predictions.decoder.weight" in keys:
            w = sd.get("cls.predictions.decoder.weight")
            e = sd.get("bert.embeddings.word_embeddings.weight", sd.get("embeddings.word_embeddings.weight"))
            tied = e is None or (w.shape == e.shape and torch.equal(w, e))
        return cfg.replace(pooler="pooler.dense.weight" in keys, mlm_head=mlm,
                           tie_embeddings=tied if mlm else cfg.tie_embeddings)

    @staticmethod
    def export_fields(c: ModelConfig) -> dict[str, Any]:
        """What BERT's config expresses of each field (see base.require_exportable): learned positions
        and token types, post-LayerNorm with biases, GELU/ReLU MLP, multi-head, head_dim·heads = d_model."""
        expressed = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "norm_eps",
                     "tie_embeddings", "pooler", "mlm_head", "dropout", "pad_token_id", "extra")
        return {**dict.fromkeys(expressed, ANY), "family": ("encoder",), "position": ("learned",),
                "norm": ("layernorm",), "norm_bias": (True,), "norm_placement": ("post",),
                "embedding_norm": (True,), "final_norm": (False,), "attn_bias": (True,),
                "attn_out_bias": (None, True), "mlp": tuple(BERT_ACT_OUT), "mlp_bias": (True,),
                "n_kv_heads": (None, c.n_heads),
                "head_dim": (None, c.d_model // c.n_heads) if c.d_model % c.n_heads == 0 else (None,),
                "type_vocab_size": Rule(lambda v: v > 0, "at least 1 token type"), "embed_scale": (1.0,),
                "attn_scale": (None,), "sliding_window": (None,),
                "rope_theta": ANY, "rotary_fraction": ANY}  # unused with learned positions

    def config_to_hf(self, c: ModelConfig) -> dict[str, Any]:
        inv = BERT_ACT_OUT
        arch = "BertForMaskedLM" if c.mlm_head else "BertModel"
        require_exportable(c, arch, self.export_fields(c))
        return {"architectures": [arch], "model_type": "bert", "vocab_size": c.vocab_size, "hidden_size": c.d_model,
                "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "intermediate_size": c.d_ff,
                "hidden_act": inv[c.mlp], "max_position_embeddings": c.max_seq_len,
                "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.norm_eps,
                "position_embedding_type": "absolute", "hidden_dropout_prob": c.dropout,
                "attention_probs_dropout_prob": c.dropout, "pad_token_id": c.pad_token_id,
                "tie_word_embeddings": c.tie_embeddings, "torch_dtype": "float32"}

    # ---- weights --------------------------------------------------------------------------
    def state_from_hf(self, sd, cfg):
        for k in list(sd):  # BertForMaskedLM nests the encoder under "bert."
            if k.startswith("bert."):
                sd[k.removeprefix("bert.")] = sd.pop(k)
        out: dict[str, torch.Tensor] = {}
        rename_layers(cfg.n_layers, self.LAYER, sd, out)
        for i in range(cfg.n_layers):
            for p in ("weight", "bias"):
                out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([take(sd, k.format(i=i, p=p)) for k in self.QKV], dim=0)
        for ours, theirs in self.EMBED.items():
            out[ours] = take(sd, theirs)
        if cfg.pooler:
            for ours, theirs in self.POOLER.items():
                out[ours] = take(sd, theirs)
        if cfg.mlm_head:
            for ours, theirs in self.MLM.items():
                out[ours] = take(sd, theirs)
            dec = sd.pop("cls.predictions.decoder.weight", None)
            dec_bias = sd.pop("cls.predictions.decoder.bias", None)
            if dec_bias is not None and not torch.equal(dec_bias, out["mlm.head.bias"]):
                raise ConversionError("cls.predictions.decoder.bias differs from cls.predictions.bias")
            if not cfg.tie_embeddings:
                if dec is None:
                    raise ConversionError("missing key in checkpoint: cls.predictions.decoder.weight "
                                          "(tie_word_embeddings is false)")
                out["mlm.head.weight"] = dec
        return out

    def state_to_hf(self, sd, cfg):
        prefix = "bert." if cfg.mlm_head else ""
        out: dict[str, torch.Tensor] = {}
        d = cfg.d_model
        for i in range(cfg.n_layers):
            for ours, theirs in self.LAYER.items():
                out[prefix + theirs.format(i=i)] = sd[ours.format(i=i)]
            for p in ("weight", "bias"):
                for k, t in zip(self.QKV, sd[f"blocks.{i}.attn.qkv.{p}"].split(d, dim=0)):
                    out[prefix + k.format(i=i, p=p)] = t.contiguous()
        out.update({prefix + theirs: sd[ours] for ours, theirs in self.EMBED.items()})
        if cfg.pooler:
            out.update({prefix + theirs: sd[ours] for ours, theirs in self.POOLER.items()})
        if cfg.mlm_head:
            out.update({theirs: sd[ours] for ours, theirs in self.MLM.items()})
            if not cfg.tie_embeddings:  # untied, transformers ties neither: the bias is written twice
                out["cls.predictions.decoder.weight"] = sd["mlm.head.weight"]
                out["cls.predictions.decoder.bias"] = sd["mlm.head.bias"].clone()
        return out
