"""Architectures assembled from :mod:`genmodels.nn` by a config, and their registry entries.

The three transformer families share :class:`~genmodels.models.config.ModelConfig`; each entry names
its model class, presets, default objective, exporters (interop model_types), capabilities, the
config fields it reads (any other must keep its default) and its own config rules.
"""
from __future__ import annotations

from torch import nn

from .. import registry
from ..config import ConfigError
from .config import ModelConfig
from ..registry import EMBEDS, GENERATES, SEQ2SEQ, Family
from .decoder import DecoderLM
from .encoder import EncoderModel
from .flops import DecoderCounts, EncoderCounts, Seq2SeqCounts
from .seq2seq import Seq2SeqCache, Seq2SeqLM
from .transformer_presets import PRESETS


def _positions(family: str, allowed: tuple[str, ...], embed_scale: bool = True):
    """A family check: ``model.position`` among ``allowed``; ``model.embed_scale`` only where the
    family's embedding applies it."""
    def check(cfg: ModelConfig) -> None:
        if not embed_scale and cfg.embed_scale != 1.0:
            raise ConfigError(f"model.embed_scale={cfg.embed_scale} is not available for family={family!r}; "
                              "leave it at 1.0")
        if cfg.position not in allowed:
            raise ConfigError(f"model.position={cfg.position!r} is not available for family={family!r}; "
                              f"choose one of {', '.join(allowed)}")
    return check


def _presets(*names: str) -> dict:
    return {n: PRESETS[n] for n in names}


# The ModelConfig fields each family reads (Family.reads); a field no entry lists must keep its default.
TRANSFORMER = ("family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
               "max_seq_len", "position", "rope_theta", "rotary_fraction", "norm", "norm_eps", "norm_bias",
               "norm_placement", "mlp", "mlp_bias", "attn_bias", "attn_out_bias", "attn_scale", "sliding_window",
               "tie_embeddings", "final_norm", "dropout", "pad_token_id", "extra")  # every transformer family
ENCODER_ONLY = ("type_vocab_size", "embedding_norm", "pooler", "mlm_head")  # BERT's parts
SEQ2SEQ_ONLY = ("n_decoder_layers", "rel_buckets", "rel_max_distance", "decoder_start_token_id")
MOE = ("n_experts", "experts_per_token", "expert_d_ff", "router_renormalize", "capacity_factor",
       "eval_capacity_factor", "router_jitter", "moe_every")  # sparse MoE: decoders only (nn/moe.py)

DECODER = registry.register(Family(
    name="decoder", config_class=ModelConfig, model_class=DecoderLM,
    presets=_presets("gpt2", "gpt2-tiny", "llama2-7b", "llama2-13b", "llama2-70b", "llama-tiny", "mistral-7b",
                     "mixtral-8x7b", "mixtral-tiny"),
    objective="causal", converters=("gpt2", "llama", "mistral", "mixtral"), capabilities=frozenset({GENERATES}),
    reads=TRANSFORMER + MOE + ("output_scale", "bos_token_id", "eos_token_id"),
    check=_positions("decoder", ("learned", "sinusoidal", "rope", "alibi", "none"), embed_scale=False),
    counts=DecoderCounts), replace=True)
ENCODER = registry.register(Family(
    name="encoder", config_class=ModelConfig, model_class=EncoderModel,
    presets=_presets("bert-base", "bert-tiny", "minilm-l6"), objective="mlm", converters=("bert",),
    capabilities=frozenset({EMBEDS}), reads=TRANSFORMER + ENCODER_ONLY + ("embed_scale",),
    check=_positions("encoder", ("learned", "sinusoidal", "none")), counts=EncoderCounts), replace=True)
SEQ2SEQ_FAMILY = registry.register(Family(
    name="seq2seq", config_class=ModelConfig, model_class=Seq2SeqLM,
    presets=_presets("t5-small", "t5-v1_1-small", "t5-tiny", "transformer-base", "transformer-tiny"),
    objective="span", converters=("t5",), capabilities=frozenset({GENERATES, SEQ2SEQ}),
    reads=TRANSFORMER + SEQ2SEQ_ONLY + ("output_scale", "embed_scale", "eos_token_id"),
    check=_positions("seq2seq", ("relative", "learned", "sinusoidal")), counts=Seq2SeqCounts), replace=True)

def build_model(config: ModelConfig, **parts) -> nn.Module:
    """Instantiate the model class of ``config``'s family (:func:`genmodels.registry.build_model`;
    ``linear=``: the projection factory, :mod:`genmodels.nn.linear`)."""
    return registry.build_model(config, **parts)


__all__ = ["DecoderLM", "EncoderModel", "Seq2SeqCache", "Seq2SeqLM", "build_model"]
from . import retnet  # noqa: E402,F401  (registers the RetNet family; after the transformers)
from . import diffusion  # noqa: E402,F401  (registers the diffusion family)
from . import gan  # noqa: E402,F401  (registers the GAN family)
from . import spae  # noqa: E402,F401  (registers the SPAE family)
