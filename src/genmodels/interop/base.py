"""The contract every foreign-checkpoint converter follows, and the strict key check.

A converter maps one Hugging Face architecture both ways:
``config_from_hf(dict) -> ModelConfig``, ``config_to_hf(ModelConfig) -> dict``,
``state_from_hf(sd, cfg) -> our state dict``, ``state_to_hf(sd, cfg) -> HF state dict``.
``state_from_hf`` *pops* what it consumes, so anything left is an unexpected key.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from ..config import ModelConfig


class ConversionError(ValueError):
    """A checkpoint does not match the model: the message names the keys or shapes at fault."""


class Converter:
    architectures: tuple[str, ...] = ()  # HF class names, first is the one we export
    model_type: str = ""
    ignored: tuple[str, ...] = ()  # HF key suffixes that carry no weights (buffers)

    def normalize_keys(self, sd: dict[str, torch.Tensor]) -> None:
        """Rename, in place, keys of variant checkpoints to the canonical HF names (default: none)."""

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def state_from_hf(self, sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_to_hf(self, sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        raise NotImplementedError


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def special_token_ids(hf: dict[str, Any], vocab_size: int, defaults: dict[str, Any] | None = None,
                      fields: tuple[str, ...] = SPECIAL_IDS) -> dict[str, Any]:
    """The special token ids of a HF config (``defaults`` where absent), as transformers loads them:
    an integer id outside ``[0, vocab_size)`` (GPT2Config's default 50256 with a small vocabulary)
    names no token, so it becomes ``None``, with ONE warning naming every such field. Every
    converter's ``config_from_hf`` takes its ids from here."""
    defaults = defaults or {}
    out = {f: hf.get(f, defaults.get(f)) for f in fields}
    bad = {f: v for f, v in out.items()
           if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < vocab_size}
    if bad:
        warnings.warn("config.json: " + ", ".join(f"{f}={v}" for f, v in bad.items())
                      + f" outside the vocabulary (vocab_size={vocab_size}); loaded as None", stacklevel=3)
        out.update({f: None for f in bad})
    return out


# Settings every HF decoder we export shares: pre-norm, 1/sqrt(d) scaling, a final norm, no dropout.
COMMON_EXPORT = dict(norm_placement=("pre",), attn_scale=(None,), final_norm=(True,), output_scale=(None,),
                     embed_scale=(1.0,), family=("decoder",))


def require_exportable(cfg: ModelConfig, arch: str, **allowed: tuple) -> None:
    """Refuse, naming the field, a config that ``arch`` cannot express (never export a different model)."""
    for name, ok in {**COMMON_EXPORT, **allowed}.items():
        if not hasattr(cfg, name):
            continue
        v = getattr(cfg, name)
        if v not in ok:
            raise ConversionError(f"cannot export as {arch}: model.{name}={v!r} has no equivalent there "
                                  f"(it needs {' or '.join(repr(x) for x in ok)})")


def take(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Pop ``key`` from a foreign state dict, or fail naming it."""
    if key not in sd:
        raise ConversionError(f"missing key in checkpoint: {key}")
    return sd.pop(key)


def take_top_and_head(sd: dict[str, torch.Tensor], top: dict[str, str], tied: bool,
                      out: dict[str, torch.Tensor]) -> None:
    """Move the non-layer tensors (``top``: ours → theirs) and, when untied, ``lm_head.weight``."""
    for ours, theirs in top.items():
        out[ours] = take(sd, theirs)
    head = sd.pop("lm_head.weight", None)
    if not tied:
        if head is None:
            raise ConversionError("missing key in checkpoint: lm_head.weight (tie_word_embeddings is false)")
        out["head.weight"] = head


def rename_layers(n: int, mapping: dict[str, str], src: dict[str, torch.Tensor], out: dict[str, torch.Tensor],
                  transform: Callable[[str, torch.Tensor], torch.Tensor] = lambda k, t: t, optional=()) -> None:
    """For each layer i, move ``src[theirs.format(i)]`` to ``out[ours.format(i)]`` (``mapping`` is
    ours → theirs); keys in ``optional`` (ours) may be absent (e.g. biases)."""
    for i in range(n):
        for ours, theirs in mapping.items():
            k = theirs.format(i=i)
            if ours in optional and k not in src:
                continue
            out[ours.format(i=i)] = transform(ours, take(src, k))


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], leftovers: dict[str, Any],
                where: str) -> None:
    """Fail with one message listing missing/unexpected keys and wrong shapes; never load partially."""
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected)) + sorted(leftovers)
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:12])}{' …' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:12])}{' …' if len(unexpected) > 12 else ''}")
    for k in sorted(set(expected) & set(got)):
        if tuple(expected[k].shape) != tuple(got[k].shape):
            problems.append(f"wrong shape for {k}: checkpoint {tuple(got[k].shape)}, model {tuple(expected[k].shape)}")
    if problems:
        raise ConversionError(f"{where} does not match the model: " + "; ".join(problems))
