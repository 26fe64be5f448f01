"""The contract every foreign-checkpoint converter follows, and the strict key check.

A converter maps one Hugging Face architecture both ways:
``config_from_hf(dict) -> ModelConfig``, ``config_to_hf(ModelConfig) -> dict``,
``state_from_hf(sd, cfg) -> our state dict``, ``state_to_hf(sd, cfg) -> HF state dict``.
``state_from_hf`` *pops* what it consumes, so anything left is an unexpected key.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..models.config import ModelConfig


class ConversionError(ValueError):
    """A checkpoint does not match the model: the message names the keys or shapes at fault."""


class Converter:
    architectures: tuple[str, ...] = ()  # HF class names, first is the one we export
    model_type: str = ""
    ignored: tuple[str, ...] = ()  # HF key suffixes that carry no weights (buffers)

    def exports(self, cfg: ModelConfig) -> bool:
        """Whether this is the architecture to export ``cfg`` as (its family lists this converter);
        :meth:`config_to_hf` then refuses, naming the field, whatever it cannot express."""
        return False

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


# ---- export guards: every field of the config is handled, unused by the family, or refused ------
ANY = "any value"  # the target format expresses every value of the field


@dataclass(frozen=True)
class Rule:
    """An allowed-values test the target needs, with the words that say what it allows."""
    test: Callable[[Any], bool]
    text: str


# Settings every HF decoder we export shares: pre-norm, 1/sqrt(d) scaling, a final norm, no output
# or embedding scaling; dropout is a training setting (exported as 0), extra holds free-form notes.
COMMON_EXPORT = dict(norm_placement=("pre",), attn_scale=(None,), final_norm=(True,), output_scale=(None,),
                     embed_scale=(1.0,), family=("decoder",), dropout=ANY, extra=ANY)


def _allows(ok: Any, v: Any) -> bool:
    if ok is ANY:
        return True
    if not isinstance(ok, Rule):
        return v in ok
    try:
        return bool(ok.test(v))
    except (TypeError, ValueError):  # a value of the wrong kind is not allowed
        return False


def _needs(ok: Any) -> str:
    return ok.text if isinstance(ok, Rule) else " or ".join(repr(x) for x in ok)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def require_exportable(cfg: ModelConfig, arch: str, handled: dict[str, Any]) -> None:
    """Refuse, naming the field, a config that ``arch`` cannot express (never export a different model).

    Driven by the config's field list: a field in ``handled`` (the exporter's declaration: ANY, a
    tuple of allowed values or a :class:`Rule`) must hold an allowed value; a field the family
    does not read (``Family.unused``) is skipped; any other field — one added later, such as an
    MoE's ``n_experts`` — must keep its default, or the export is refused."""
    from ..registry import family_of
    fam = family_of(cfg)
    unused = set(fam.unused) if fam is not None else set()
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in handled:
            ok = handled[f.name]
            if not _allows(ok, v):
                raise ConversionError(f"cannot export as {arch}: model.{f.name}={v!r} has no equivalent there "
                                      f"(it needs {_needs(ok)})")
        elif f.name not in unused and v != _default(f):
            raise ConversionError(f"cannot export as {arch}: model.{f.name}={v!r} has no equivalent there "
                                  f"(the exporter does not handle it; it needs the default {_default(f)!r})")


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
