"""LoRA adapters in a training run: ``train.lora`` (docs/training.md "LoRA runs").

    model:  {preset: …, init_from: BASE}       # the frozen base (required)
    train:  {lora: {targets: "q,v", r: 8, alpha: 16, dropout: 0.0, rslora: false}, …}

Why ``train.lora`` and not an objective option: which parameters train is the run's business (the
optimizer, the checkpoints, ``final/``), not the loss's, so any token objective (causal, sft, and the
preference objectives to come, whose reference is ``lora.disabled(model)``) trains adapters the same way.

What a LoRA run does differently, all of it here:

* the base comes from ``model.init_from`` on a fresh start *and* on ``--resume`` (it is not in the
  checkpoints); the adapters are added after it (:func:`genmodels.lora.apply`: PEFT's init, the base frozen),
  before any wrapper; the optimizer sees only the adapters (it takes the parameters that require grad);
* run checkpoints hold the adapters, their optimizer state, the RNG and the counters — not the base
  (:func:`frozen_keys` are left out); the base's fingerprint is kept in ``state.json``, and a resume on
  a base whose tensors changed is refused in one line;
* ``train.lora.trainable_tokens`` (PEFT's ``trainable_token_indices``): embedding rows that train with the adapters
  (:mod:`genmodels.nn.trainable_tokens`) — "auto" (default): the tokens the objective adds (gist: ``<GIST>``, whose
  row would otherwise stay the vocabulary mean it was grown as; none for the other objectives), "new": the ids
  ``model.init_from``'s vocabulary growth added, or a list. Resolved once the objective has read the data
  (:func:`attach_tokens`); kept in ``state.json`` (a resume with other rows is refused) and in ``final/``'s files;
* ``final/`` is the adapter in PEFT's files (``adapter_config.json`` + ``adapter_model.safetensors``,
  the base fingerprint in its metadata, ``base_model_name_or_path`` = the base folder) plus the run's
  ``tokenizer.json`` (and ``chat_template.jinja``): ``genmodels.load(final)`` loads the base it names and
  adds the adapter; ``genmodels.lora.load(genmodels.load(BASE), final)`` does the same in two steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..files import atomic_write_bytes
from ..interop.peft import CONFIG, WEIGHTS, base_fingerprint, hf_names
from ..lora import LoRAConfig, add_tokens, adapted, save as save_adapters
from ..nn.lora import is_adapter_param
from .rundir import RunDirError

FINAL_FILES = frozenset({CONFIG, WEIGHTS, "tokenizer.json", "chat_template.jinja"})


def lora_section(value: Any) -> LoRAConfig | None:
    """``train.lora`` as a :class:`~genmodels.lora.LoRAConfig` (null: no adapters); ConfigError naming the field."""
    if value is None or isinstance(value, LoRAConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"train.lora={value!r} must be a mapping {{targets: \"q,v\", r: 8, alpha: 16, dropout: 0.0, "
                          "rslora: false}} or null")
    return LoRAConfig.from_dict(value, "train.lora")


def check_recipe(lora: LoRAConfig | None, init_from: str | None) -> None:
    """A LoRA run trains adapters on a base that ``model.init_from`` gives (ConfigError otherwise)."""
    if lora is not None and init_from is None:
        raise ConfigError("train.lora needs model.init_from: the adapters train on a frozen base, whose weights come "
                          "from that folder (on --resume too); give the base model folder, or remove train.lora")


def attach(lora: LoRAConfig, model: nn.Module, say) -> str:
    """Add ``lora``'s adapters to ``model`` (in place; the base frozen), checked to have PEFT's per-projection
    files; returns the base's fingerprint. Said in one line."""
    try:
        lora.apply(model)
        names = hf_names(model)
    except ValueError as e:
        raise ConfigError(f"train.lora: {e}") from None
    mods = adapted(model)
    lost = [f"{p}[{s}]" for p, m in mods for s in m.rows if names.get((p, s)) is None]
    if lost:
        raise ConfigError(f"train.lora.targets={lora.targets!r}: {lost[0]} has no PEFT module of its own "
                          f"({type(model).__name__} fuses it with others), so its adapter could not be written in "
                          "PEFT's files; LoRA runs train Llama-layout models (llama, mistral, mixtral attention)")
    n = sum(p.numel() for _, p in model.named_parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say(f"lora: {n:,} trainable parameters ({100 * n / total:.2f}%) in {len(mods)} adapted linears "
        f"(targets {lora.targets}, r={lora.r}, alpha={lora.alpha}{', rsLoRA' if lora.rslora else ''}); base frozen")
    return base_fingerprint(model, {p for p, _ in mods})


def token_rows(lora: LoRAConfig, objective, init_from: str | None, vocab_size: int) -> list[int]:
    """The ids ``train.lora.trainable_tokens`` means for this run (module docstring)."""
    t = lora.trainable_tokens
    if t == "auto":
        return list(objective.trainable_tokens())
    if t == "new":
        from .init_from import open_source
        old = open_source(init_from, weights=False).vocab_size if init_from else vocab_size
        return list(range(old, vocab_size))
    bad = [i for i in t if i >= vocab_size]
    if bad:
        raise ConfigError(f"train.lora.trainable_tokens: id {bad[0]} is not below the model's vocab_size {vocab_size}")
    return list(t)


def attach_tokens(lora: LoRAConfig, model: nn.Module, objective, init_from: str | None, saved: dict | None,
                  say) -> list[int]:
    """Make the run's trainable token rows (:func:`token_rows`) train with the adapters, after the objective read the
    data; ``saved``: the resumed checkpoint's state (its rows must be these). Returns the ids (said in one line)."""
    ids = token_rows(lora, objective, init_from, model.embedding().weight.shape[0])
    held = None if saved is None else saved.get("lora_tokens", [])
    if held is not None and list(held) != ids:
        raise RunDirError(f"--resume: the checkpoint trained token rows {list(held)}, train.lora.trainable_tokens="
                          f"{lora.trainable_tokens!r} gives {ids} now; set train.lora.trainable_tokens: {list(held)} "
                          "to resume it, or start a new run_dir")
    if ids:
        add_tokens(model, ids)
        say(f"lora: embedding rows {ids} train too ({len(ids) * model.embedding().weight.shape[1]:,} parameters; "
            f"train.lora.trainable_tokens={lora.trainable_tokens!r})")
    return ids


def frozen_keys(model: nn.Module) -> frozenset[str]:
    """The state-dict keys a run's checkpoints leave out: every tensor of an adapted model but its adapters
    (they come back from ``model.init_from``); none for a model without adapters."""
    if not adapted(model):
        return frozenset()
    return frozenset(k for k in model.state_dict() if not is_adapter_param(k))


def checkpoint_shapes(lora: LoRAConfig | None, shapes: dict[str, tuple[int, ...]] | None, mcfg):
    """The tensors (key → shape) a checkpoint must hold: the model's ``shapes``, or, for a LoRA run, its adapters'
    (built on the meta device)."""
    if lora is None or shapes is None:
        return shapes
    from ..models import build_model
    with torch.device("meta"):
        model = lora.apply(build_model(mcfg))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if is_adapter_param(k)}


def check_base(saved: dict, fingerprint: str | None, ckpt: Path, init_from: str | None) -> None:
    """RunDirError when the checkpoint's adapters were trained on another base than ``model.init_from`` holds now."""
    held = saved.get("lora_base")
    if held is not None and fingerprint is not None and held != fingerprint:
        raise RunDirError(f"--resume: model.init_from={init_from!r} is not the base {ckpt} trained its adapters on "
                          f"(base fingerprint {held[:12]}… there, {fingerprint[:12]}… now); resume with that base, "
                          "or start a new run_dir")


def write_final(model: nn.Module, final: Path, base: str, tokenizer, chat_template: str | None) -> Path:
    """``final/`` of a LoRA run (module docstring). A file there that genmodels did not write is never replaced:
    RunDirError naming it (the run's work is in its last checkpoint)."""
    if final.is_dir():
        others = sorted(p.name for p in final.iterdir() if p.name not in FINAL_FILES)
        if others:
            raise RunDirError(f"{final} holds files genmodels did not write ({', '.join(others)}); they are kept and "
                              "the final adapter was not written: move them out, then --resume writes it")
    save_adapters(model, final, base=base)
    if tokenizer is not None:
        atomic_write_bytes(final / "tokenizer.json", tokenizer.to_str().encode())
    if chat_template:
        atomic_write_bytes(final / "chat_template.jinja", chat_template.encode())
    return final
