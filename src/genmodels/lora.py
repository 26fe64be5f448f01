"""LoRA adapters on any genmodels transformer (``genmodels.lora``); docs/lora.md tells the story.

    model = genmodels.load("SmolLM2-135M")
    genmodels.lora.apply(model, "q,v", r=8, alpha=16)    # base frozen, adapters trainable
    genmodels.lora.apply(model, "all-linear", trainable_tokens=[49152])   # + those embedding rows (PEFT's
                                                          # trainable_token_indices; nn/trainable_tokens.py)
    ... train lora.trainable_parameters(model) ...
    genmodels.lora.save(model, "adapter/")                # PEFT's adapter_config.json + adapter_model.safetensors
    genmodels.lora.load(genmodels.load("SmolLM2-135M"), "adapter/")   # ours or PEFT's
    with genmodels.lora.disabled(model): ...              # the base model, no copy
    genmodels.lora.merge(model); genmodels.lora.unmerge(model)

Two ways in, one adapter (:class:`~genmodels.nn.lora.LoRALinear`): :func:`build` passes the adapter
in through the linear factory when the model is built (``build_model(config, linear=...)``);
:func:`apply` adds it to a model already built or loaded (GGUF, Hugging Face, genmodels folders:
their loaders built the plain model). ``apply`` runs the very wrapper the factory runs
(:func:`~genmodels.nn.lora.adapt`) on each linear ``model.projections()`` names for the targeted
roles — the factory's decision made after the fact, on the linears that exist, keeping their
parameters (no copy, no rebuild); forward code is never patched. The head is never adapted, and a
sparse MoE's stacked experts are not linears: ``all-linear`` passes over them (as PEFT's does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from torch import nn

from .config import ConfigError, StrictConfig

from .interop import peft as _peft
from .models.projections import projections
from .nn.linear import LinearFactory, Slices, plain_linear
from .nn import trainable_tokens as _tokens
from .nn.lora import (ALL_LINEAR, ROLES, LoRALinear, LoRASpec, adapt, adapted, adapter_state_dict, disabled,  # noqa: F401
                      freeze, load_adapter_state_dict, lora_factory, merge, reset, trainable_parameters, unmerge)

__all__ = ["ALL_LINEAR", "ROLES", "LoRAConfig", "LoRALinear", "LoRASpec", "adapted", "adapter_state_dict", "apply", "build",
           "disabled", "factory", "freeze", "add_tokens", "load", "load_adapter_state_dict", "load_folder", "merge", "reset", "save",
           "trainable_parameters", "unload", "unmerge"]


@dataclass
class LoRAConfig(StrictConfig):
    """A recipe's LoRA section (the trainer chooses where it lives, e.g. ``train.lora``): the
    arguments of :func:`apply`, every refusal naming the field by its dotted path."""

    section: ClassVar[str] = "lora"
    targets: str = "q,v"  # "q,v", "all-linear", … (roles: genmodels.nn.lora.ROLES)
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    rslora: bool = False
    init: str = "peft"
    # embedding rows that train too (PEFT's trainable_token_indices): "auto" (the tokens the objective adds, e.g.
    # gist's <GIST>; none for the others), "new" (the ids model.init_from's vocabulary growth added), [ids], or []
    trainable_tokens: Any = "auto"

    def validate(self) -> None:
        try:
            self.spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        t = self.trainable_tokens
        ok = t in ("auto", "new") or (isinstance(t, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                   and i >= 0 for i in t) and len(set(t)) == len(t))
        if not ok:
            raise ConfigError(f"{self.where('trainable_tokens')}={t!r}: have auto, new, or a list of distinct token "
                              "ids (>= 0), e.g. [49152]; [] for none")

    def spec(self) -> LoRASpec:
        return LoRASpec.make(self.targets, self.r, self.alpha, self.dropout, self.rslora, self.init, where=self.where)

    def apply(self, model: nn.Module, trainable_tokens: Sequence[int] = ()) -> nn.Module:
        """:func:`apply` with these settings; ``trainable_tokens``: the ids ``self.trainable_tokens`` resolved to
        (the run decides "auto" and "new": genmodels.training.adapters.token_rows)."""
        return apply(model, self.targets, r=self.r, alpha=self.alpha, dropout=self.dropout, rslora=self.rslora,
                     init=self.init, trainable_tokens=trainable_tokens)


def factory(targets="q,v", *, r: int = 8, alpha: float = 8, dropout: float = 0.0, rslora: bool = False,
            init: str = "peft", base: LinearFactory = plain_linear) -> LinearFactory:
    """The linear factory that adds adapters (for ``build_model(config, linear=...)``; then :func:`reset`)."""
    return lora_factory(LoRASpec.make(targets, r, alpha, dropout, rslora, init), base)


def build(config, targets="q,v", *, r: int = 8, alpha: float = 8, dropout: float = 0.0, rslora: bool = False,
          init: str = "peft") -> nn.Module:
    """``build_model(config, linear=factory(...))``, then PEFT's adapter init and the base frozen."""
    from .registry import build_model
    model = build_model(config, linear=factory(targets, r=r, alpha=alpha, dropout=dropout, rslora=rslora, init=init))
    reset(model)
    freeze(model)
    return model


def plan(model: nn.Module, spec: LoRASpec) -> dict[str, Slices]:
    """``{module path: {slice: rows}}`` of ``model``'s linears ``spec`` targets, in module order."""
    out: dict[str, Slices] = {}
    for p in projections(model):
        if p.role in spec.targets and not p.stacked:  # "head" is no target role: never adapted
            out.setdefault(p.path, {})[p.role] = p.rows
    if not out:
        have = sorted({p.role for p in projections(model) if not p.stacked and p.role != "head"})
        raise ValueError(f"lora targets {','.join(spec.targets)}: no such projection in {type(model).__name__} "
                         f"(it has {', '.join(have) or 'none'})")
    return out


def _attach(model: nn.Module, where: dict[str, Slices], spec: LoRASpec) -> list[LoRALinear]:
    """Replace each linear at ``where``'s paths by its adapted self (same parameters); the base frozen."""
    if adapted(model):
        raise ValueError(f"lora: {type(model).__name__} already has LoRA adapters "
                         f"({adapted(model)[0][0]} …); one adapter set per model")
    mods = dict(model.named_modules())
    for path in where:
        if type(mods[path]) is not nn.Linear:
            raise ValueError(f"lora: {path} is a {type(mods[path]).__name__}, not a plain nn.Linear")
    new = []
    for path, rows in where.items():
        parent, _, name = path.rpartition(".")
        new.append(adapt(mods[path], rows, spec))
        setattr(mods[parent] if parent else model, name, new[-1])
    freeze(model)
    return new


def apply(model: nn.Module, targets="q,v", *, r: int = 8, alpha: float = 8, dropout: float = 0.0,
          rslora: bool = False, init: str = "peft", trainable_tokens: Sequence[int] = ()) -> nn.Module:
    """Adapt ``model`` in place: LoRA on the ``targets`` roles ("q,v", ["q", "v"], "all-linear"),
    PEFT's init (the same draws PEFT makes, module by module), the base frozen. ``trainable_tokens``: ids
    whose embedding rows train too (PEFT's ``trainable_token_indices``; :func:`add_tokens`). Returns ``model``."""
    spec = LoRASpec.make(targets, r, alpha, dropout, rslora, init)
    for m in _attach(model, plan(model, spec), spec):
        m.reset_adapters()
    if trainable_tokens:
        add_tokens(model, trainable_tokens)
    return model


def add_tokens(model: nn.Module, ids: Sequence[int]) -> nn.Module:
    """Rows ``ids`` of the input embedding train with the adapters (PEFT's ``trainable_token_indices``: only those
    rows, starting as the table's own, with an optimizer state of their own size; a tied head reads them too).
    Saved with the adapters; merged, unmerged and disabled with them. Returns ``model``."""
    _adapted_or_refuse_tokens(model)
    _tokens.add(model, ids)
    return model


def _adapted_or_refuse_tokens(model: nn.Module) -> None:
    if not adapted(model):
        raise ValueError(f"lora.add_tokens: {type(model).__name__} has no LoRA adapters (genmodels.lora.apply adds them "
                         "first; trainable token rows travel with an adapter)")


def unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and put plain ``nn.Linear`` layers back (the same parameters; PEFT's
    ``merge_and_unload``): a model ``genmodels.save`` / ``export_hf`` write as the base family."""
    merge(model)
    _tokens.remove(model)  # the trained rows stay in the table
    mods = dict(model.named_modules())
    for path, m in adapted(model):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight, lin.bias = m.weight, m.bias
        parent, _, name = path.rpartition(".")
        setattr(mods[parent] if parent else model, name, lin)
    return model


def save(model: nn.Module, path: str | Path, base: str | Path | None = None) -> Path:
    """The adapters as a PEFT adapter folder (:mod:`genmodels.interop.peft`), with the base's
    fingerprint; ``base`` (the base model's path) makes the folder loadable by ``genmodels.load``."""
    return _peft.save(model, path, base)


def load_folder(path: str | Path, load_model) -> nn.Module:
    """An adapter folder as a model: ``load_model`` (``genmodels.load``) of the base it names, then
    :func:`load` of the adapters (unmerged: :func:`merge` for the native decode step)."""
    return load(load_model(_peft.base_of(path)), path)


def load(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a PEFT adapter folder (ours or PEFT's) into ``model``: adapters are added where the file
    has them (or the model's own, which must be the same set) and filled. A file saved for another
    base is refused. Returns ``model``."""
    spec, where, tensors, ids = _peft.read(model, path)
    have = {p: dict(m.rows) for p, m in adapted(model)}
    if not have:
        _attach(model, where, spec)
        if ids:
            _tokens.add(model, ids)
    elif (have != where or _tokens.token_ids(model) != ids
          or any((m.spec.r, m.spec.alpha, m.spec.rslora) != (spec.r, spec.alpha, spec.rslora) for _, m in adapted(model))):
        raise ValueError(f"lora.load: {path} adapts other projections, r/alpha or trainable tokens than the model's "
                         "adapters; load it on the plain model")
    load_adapter_state_dict(model, tensors)
    return model
