"""torchscale 0.3.0's ``RetNetDecoder`` (Sun et al., 2023; microsoft/torchscale) -> our :class:`RetNetLM`.

    model = genmodels.from_torchscale(decoder)      # a live RetNetDecoder; its ``.args`` carry the config
    genmodels.save(model, "runs/retnet-from-torchscale")

What maps (every tensor is copied, nothing is re-initialised)::

    torchscale RetNetDecoder                        RetNetLM
    embed_tokens.weight            (V, D)           embed.weight          (untied: × embed_scale when not 1)
    layers.i.retention_layer_norm.weight (D,)       blocks.i.norm1.weight
    layers.i.retention.{q,k,v,g,out}_proj.weight    blocks.i.retention.{q,k,v,g,out}_proj.weight
    layers.i.final_layer_norm.weight     (D,)       blocks.i.norm2.weight
    layers.i.ffn.{fc1,gate,fc2}.weight              blocks.i.ffn.{fc1,gate,fc2}.weight
    layer_norm.weight              (D,)             norm.weight
    output_projection.weight       (V, D)           head.weight (tied when torchscale shares it)
    retnet_rel_pos.{decay,angle}   buffers          recomputed; checked equal, else refused

Config: ``decoder_embed_dim``→d_model, ``decoder_value_embed_dim``→value_dim, ``decoder_retention_heads``→
n_heads, ``decoder_ffn_embed_dim``→d_ff, ``decoder_layers``→n_layers, ``activation_fn``→activation,
``layernorm_eps``→norm_eps and retention_eps, ``recurrent_chunk_size``→chunk_size, ``max_target_positions``
→max_seq_len. torchscale runs its parallel form at every length unless ``chunkwise_recurrent``; ours switches
to the chunkwise form beyond ``chunk_size`` — the two differ only by the head-norm ε (they are equal at ε = 0).

torchscale's embedding scale (√d unless ``no_scale_embedding``) is folded into our table when the head
has its own weight; a tied head reads the unscaled table (torchscale shares ``embed_tokens.weight``
itself), so there the table stays as it is and the scale becomes ``model.embed_scale``.

Refused, naming the ``args`` field: what our RetNet does not compute (post-norm / DeepNorm, multiway,
MoE layers, an embedding LayerNorm, no output layer). Dropout,
activation dropout and drop-path only act in training; our model has none, so a decoder trained with them
converts to the same eval-mode function and a warning names the fields.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..models.retnet import RetNetConfig, RetNetLM
from ..nn.retention import retention_angles, retention_decay
from .base import ConversionError

_TRAINING_ONLY = ("dropout", "activation_dropout", "drop_path_rate")


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _refuse_what_we_do_not_compute(args: Any, decoder: nn.Module) -> None:
    checks = [
        ("deepnorm", bool(_arg(args, "deepnorm", False)), "DeepNorm (post-norm with scaled residuals)"),
        ("decoder_normalize_before", not _arg(args, "decoder_normalize_before", True), "post-norm layers"),
        ("multiway", bool(_arg(args, "multiway", False)), "multiway (per-modality) projections"),
        ("moe_freq", bool(_arg(args, "moe_freq", 0)), "mixture-of-experts layers"),
        ("layernorm_embedding", getattr(decoder, "layernorm_embedding", None) is not None,
         "a norm on the embeddings"),
        ("no_output_layer", getattr(decoder, "output_projection", None) is None, "a decoder without an output layer"),
    ]
    for field, bad, what in checks:
        if bad:
            raise ConversionError(f"torchscale args.{field}={_arg(args, field)!r}: RetNetLM has no {what}; "
                                  "only pre-norm RetNet decoders (torchscale's defaults) convert")
    if getattr(decoder, "embed_tokens", None) is None:
        raise ConversionError("torchscale decoder.embed_tokens is None: pass the decoder built with its embedding")


def config_from_torchscale(decoder: nn.Module, **overrides: Any) -> RetNetConfig:
    """Our :class:`RetNetConfig` for a torchscale ``RetNetDecoder`` (``overrides``: e.g. token ids)."""
    args = getattr(decoder, "args", None)
    if args is None:
        raise ConversionError(f"from_torchscale: expected a torchscale RetNetDecoder (with .args), "
                              f"got {type(decoder).__name__}")
    _refuse_what_we_do_not_compute(args, decoder)
    if args.activation_fn not in ("gelu", "swish"):
        raise ConversionError(f"torchscale args.activation_fn={args.activation_fn!r}: RetNetLM's FFN takes "
                              "gelu or swish")
    vocab, d = decoder.embed_tokens.weight.shape
    if d != args.decoder_embed_dim:
        raise ConversionError(f"torchscale embed_tokens.weight is {tuple(decoder.embed_tokens.weight.shape)}, "
                              f"but args.decoder_embed_dim={args.decoder_embed_dim}")
    tied = decoder.output_projection.weight is decoder.embed_tokens.weight
    used = [f for f in _TRAINING_ONLY if _arg(args, f, 0.0)]
    if used:
        warnings.warn("from_torchscale: " + ", ".join(f"args.{f}={_arg(args, f)}" for f in used)
                      + " act only in training; RetNetLM has no dropout, so the converted model equals the "
                      "decoder in eval mode", stacklevel=3)
    fields = dict(vocab_size=vocab, d_model=d, n_layers=args.decoder_layers, n_heads=args.decoder_retention_heads,
                  value_dim=args.decoder_value_embed_dim, d_ff=args.decoder_ffn_embed_dim,
                  max_seq_len=args.max_target_positions, norm_eps=args.layernorm_eps,
                  retention_eps=args.layernorm_eps, chunk_size=args.recurrent_chunk_size,
                  activation=args.activation_fn, tie_embeddings=tied,
                  embed_scale=float(decoder.embed_scale) if tied else 1.0)  # untied: folded into the table
    return RetNetConfig(**{**fields, **overrides})


def _check_buffers(decoder: nn.Module, cfg: RetNetConfig) -> None:
    """The decay and angle buffers equal torchscale 0.3.0's definition, compared at the buffer's own
    precision (a fp16 / bf16 decoder holds them rounded: ours is rounded the same way, then compared
    within one unit in the last place of that type)."""
    def equal(buf: torch.Tensor, ours: torch.Tensor, dtype: torch.dtype) -> bool:  # at dtype's precision
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
        return buf.shape == ours.shape and torch.allclose(buf.float(), ours.to(dtype).float(),
                                                          rtol=max(1e-6, 2 * eps), atol=1e-7)
    rel = decoder.retnet_rel_pos
    want = {"decay": retention_decay(cfg.n_heads), "angle": retention_angles(cfg.d_model // cfg.n_heads)}
    for name, ours in want.items():
        buf = getattr(rel, name).detach().cpu()
        if equal(buf, ours, buf.dtype):
            continue
        rounded = [str(t).removeprefix("torch.") for t in (torch.float16, torch.bfloat16) if equal(buf, ours, t)]
        hint = (f" (it equals the definition rounded to {rounded[0]}: a decoder cast to {rounded[0]} and back? convert "
                f"the {rounded[0]} decoder itself)" if rounded else "")
        raise ConversionError(f"torchscale retnet_rel_pos.{name} differs from torchscale 0.3.0's definition "
                              f"(which RetNetLM recomputes); a modified decoder does not convert{hint}")


def state_from_torchscale(decoder: nn.Module, cfg: RetNetConfig) -> dict[str, torch.Tensor]:
    """Our state dict from the decoder's modules (fairscale wrappers included: read by attribute)."""
    scale = 1.0 if cfg.tie_embeddings else float(decoder.embed_scale)  # tied: the scale stays cfg.embed_scale
    sd = {"embed.weight": decoder.embed_tokens.weight.detach() * scale,  # embed_scale·E[ids] = (embed_scale·E)[ids]
          "norm.weight": decoder.layer_norm.weight.detach()}
    if not cfg.tie_embeddings:
        sd["head.weight"] = decoder.output_projection.weight.detach()
    if len(decoder.layers) != cfg.n_layers:
        raise ConversionError(f"torchscale decoder has {len(decoder.layers)} layers, args.decoder_layers="
                              f"{cfg.n_layers}")
    for i, layer in enumerate(decoder.layers):
        ours, ret = f"blocks.{i}.", layer.retention
        sd[ours + "norm1.weight"] = layer.retention_layer_norm.weight.detach()
        sd[ours + "norm2.weight"] = layer.final_layer_norm.weight.detach()
        for p in ("q", "k", "v", "g", "out"):
            sd[f"{ours}retention.{p}_proj.weight"] = getattr(ret, f"{p}_proj").weight.detach()
        for p in ("fc1", "gate", "fc2"):
            sd[f"{ours}ffn.{p}.weight"] = getattr(layer.ffn, p).weight.detach()
    return sd


def from_torchscale(decoder: nn.Module, **overrides: Any) -> RetNetLM:
    """A :class:`RetNetLM` computing what the torchscale 0.3.0 ``RetNetDecoder`` computes (in eval mode).

    ``overrides`` set RetNetConfig fields torchscale does not carry (``bos_token_id``, ``eos_token_id``,
    ``pad_token_id``) or change ones that do not touch the weights (``chunk_size``, ``max_seq_len``).
    The model comes back in eval mode, in float32 on the CPU, with copies of the weights."""
    cfg = config_from_torchscale(decoder, **overrides)
    _check_buffers(decoder, cfg)
    model = RetNetLM(cfg)
    sd = {k: v.to("cpu", torch.float32).clone() for k, v in state_from_torchscale(decoder, cfg).items()}
    want = model.state_dict()
    for name, t in sd.items():
        if t.shape != want[name].shape:
            raise ConversionError(f"from_torchscale: {name} has shape {tuple(t.shape)}, expected "
                                  f"{tuple(want[name].shape)} from the decoder's args")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise ConversionError(f"from_torchscale: keys missing {missing}, unexpected {unexpected}")
    return model.eval()


__all__ = ["config_from_torchscale", "from_torchscale", "state_from_torchscale"]
