"""Hugging Face ↔ genmodels for sparse mixtures of experts: MixtralForCausalLM (Jiang et al., 2024).

Mixtral is Mistral's decoder (RoPE, RMSNorm, GQA, optional sliding window) whose feed-forward is a
sparse MoE in every layer: a bias-free router ``Linear(D, E)``, softmax in fp32, top-k, the k picked
probabilities renormalised to sum 1, and E SwiGLU experts ``y = W2_e(silu(W1_e x) ⊙ W3_e x)``.

Layouts (shared/reference/retnet-moe-gist.md §2, checked against transformers 5.24):

ours (nn/moe.py, per block)   transformers 5.x (``model.layers.{i}.``)      transformers 4.x (import only)
mlp.router.weight (E, D)      mlp.gate.weight                               block_sparse_moe.gate.weight
mlp.experts.gate_up_proj      mlp.experts.gate_up_proj (E, 2F, D):          block_sparse_moe.experts.{e}.w1 (gate)
  (E, 2F, D)                    rows [0:F] gate (silu'd), [F:2F] up           and .w3 (up), each (F, D)
mlp.experts.down_proj         mlp.experts.down_proj (E, D, F)               block_sparse_moe.experts.{e}.w2 (D, F)
  (E, D, F)

transformers 5.24's ``MixtralExperts`` splits ``gate_up_proj`` with ``chunk(2)`` and applies the
activation to the first half, as ours does, so the stacked tensors copy unchanged; a 4.x checkpoint's
per-expert matrices are stacked on import (``cat(w1, w3)`` per expert), as transformers'
``conversion_mapping`` does on its own load.

What HF cannot express is refused on export, naming the field: MixtralConfig 5.24 has no
``norm_topk_prob`` (it always renormalises: ``router_renormalize`` must be true), no capacity (it is
dropless: ``capacity_factor`` / ``eval_capacity_factor`` must be null), every layer is sparse
(``moe_every`` 1) and the experts are SwiGLU. ``router_jitter`` is a training setting, exported as
``router_jitter_noise`` 0 and not read on import (as dropout is): HF's jitter also scales the
experts' input, ours only the router's, so carrying the value over would change what it means.
A config's ``d_ff`` is written as ``intermediate_size`` only through the expert width (every layer
is sparse), so a model loaded back has ``d_ff`` = that width and ``expert_d_ff`` unset.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ..models.config import ModelConfig
from .base import ANY, ConversionError, Rule
from .decoder_hf import LlamaConverter

PREFIX = "model.layers.{i}."
MOE = {  # ours -> theirs (transformers 5.x)
    "blocks.{i}.mlp.router.weight": PREFIX + "mlp.gate.weight",
    "blocks.{i}.mlp.experts.gate_up_proj": PREFIX + "mlp.experts.gate_up_proj",
    "blocks.{i}.mlp.experts.down_proj": PREFIX + "mlp.experts.down_proj",
}
# transformers 4.x: model.layers.{i}.block_sparse_moe.experts.{e}.w{1,2,3}.weight
V4_EXPERT = re.compile(r"^(model\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
V4_GATE = re.compile(r"^(model\.layers\.\d+\.)block_sparse_moe\.gate\.weight$")


class MixtralConverter(LlamaConverter):
    architectures = ("MixtralForCausalLM",)
    model_type = "mixtral"
    windowed = True
    # MixtralConfig 5.24 defaults, for config.json files that leave a key out.
    defaults = {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096 * 32,
                "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
                "bos_token_id": 1, "eos_token_id": 2, "sliding_window": None}

    LAYER = {**{k: v for k, v in LlamaConverter.LAYER.items() if ".mlp." not in k and ".bias" not in k}, **MOE}
    FUSED = {k: v for k, v in LlamaConverter.FUSED.items() if ".qkv." in k}  # q|k|v only: the experts are stacked

    def exports(self, cfg: ModelConfig) -> bool:
        return cfg.position == "rope" and cfg.n_experts > 0

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        hf = {**self.defaults, **hf}
        for flag in ("attention_bias", "mlp_bias"):  # not MixtralConfig fields: refuse rather than ignore
            if hf.get(flag):
                raise ConversionError(f"Mixtral {flag}={hf[flag]!r} is not supported "
                                      "(MixtralForCausalLM has no biases)")
        dense = super().config_from_hf(hf)
        return dense.replace(n_experts=hf["num_local_experts"], experts_per_token=hf["num_experts_per_tok"])

    def config_to_hf(self, c: ModelConfig) -> dict[str, Any]:
        d = super().config_to_hf(c)  # refuses what the fields below do not allow
        for flag in ("attention_bias", "mlp_bias"):
            d.pop(flag)
        d.update(intermediate_size=c.expert_width, num_local_experts=c.n_experts,
                 num_experts_per_tok=c.experts_per_token, router_jitter_noise=0.0, output_router_logits=False)
        return d

    def export_fields(self, c: ModelConfig) -> dict[str, Any]:
        """What MixtralConfig expresses of each field (see base.require_exportable)."""
        return {**super().export_fields(c), "attn_bias": (False,), "attn_out_bias": (None, False),
                "mlp_bias": (False,), "n_experts": Rule(lambda v: v > 0, "at least one expert"),
                "experts_per_token": ANY, "expert_d_ff": ANY, "router_renormalize": (True,),
                "capacity_factor": (None,), "eval_capacity_factor": (None,), "moe_every": (1,),
                "router_jitter": ANY}  # a training setting (see the module docstring)

    def normalize_keys(self, sd: dict[str, torch.Tensor]) -> None:
        """transformers 4.x keys -> 5.x: the router renamed, each layer's per-expert ``w1/w3`` stacked
        into ``gate_up_proj`` (E, 2F, D) and ``w2`` into ``down_proj`` (E, D, F)."""
        experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        for k in list(sd):
            if m := V4_GATE.match(k):
                sd[m.group(1) + "mlp.gate.weight"] = sd.pop(k)
            elif m := V4_EXPERT.match(k):
                experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = sd.pop(k)
        for layer, per_expert in experts.items():
            n = max(per_expert) + 1
            for e in range(n):
                for w in ("w1", "w2", "w3"):
                    if w not in per_expert.get(e, {}):
                        raise ConversionError(f"missing key in checkpoint: {layer}block_sparse_moe.experts.{e}.{w}"
                                              f".weight (the layer has experts up to {n - 1})")
            _check_expert_shapes(layer, per_expert)  # before cat/stack, which would fail without the key
            sd[layer + "mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([per_expert[e]["w1"], per_expert[e]["w3"]], dim=0) for e in range(n)])  # (E, 2F, D)
            sd[layer + "mlp.experts.down_proj"] = torch.stack([per_expert[e]["w2"] for e in range(n)])  # (E, D, F)


def _check_expert_shapes(layer: str, per_expert: dict[int, dict[str, torch.Tensor]]) -> None:
    """Every expert of a 4.x layer holds ``w1``, ``w3`` of shape (F, D) and ``w2`` of (D, F), with the same
    F and D as the layer's other experts (the most common shape); the first that does not is named."""
    def as_fd(w: str, t: torch.Tensor) -> tuple[int, ...]:  # w2 is (D, F): read transposed
        return tuple(t.shape)[::-1] if w == "w2" else tuple(t.shape)
    shapes = [as_fd(w, t) for ws in per_expert.values() for w, t in ws.items()]
    want = max(set(shapes), key=shapes.count)  # (F, D)
    if len(want) != 2:
        raise ConversionError(f"{layer}block_sparse_moe.experts.*.w1.weight must be matrices (F, D); "
                              f"found shape {want}")
    for e in sorted(per_expert):
        for w in ("w1", "w2", "w3"):
            t = per_expert[e][w]
            if as_fd(w, t) != want:
                need = want[::-1] if w == "w2" else want
                raise ConversionError(f"wrong shape for {layer}block_sparse_moe.experts.{e}.{w}.weight: checkpoint "
                                      f"{tuple(t.shape)}, the layer's other experts {need} (w1, w3: (F, D); "
                                      "w2: (D, F))")
