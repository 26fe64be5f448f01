"""PEFT's LoRA adapter folder ↔ our adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The only place that knows PEFT's names. PEFT wraps the transformers model (``base_model.model.``)
and saves, per adapted module, ``<prefix><module>.lora_A.weight`` (r, in) and ``.lora_B.weight``
(out, r), the adapter name dropped:

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   ↔  blocks.0.attn.qkv.lora_A.q

Trainable token rows (PEFT's ``trainable_token_indices``, :mod:`genmodels.nn.trainable_tokens`) are the
config's ``trainable_token_indices: [ids]`` and one tensor (the rows' values, PEFT's name says delta):

    base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta (n, D)  ↔  embed.trainable_tokens.weight

(PEFT, on a model with tied embeddings, ties the lm_head to the same rows, as our tied head reads them.)

The transformers module of each of our slices comes from the model's Hugging Face converter
(interop/decoder_hf.py's ``FUSED`` and ``LAYER`` tables: slice j of a fused ``qkv`` is the j-th of
q_proj, k_proj, v_proj), so one table says where each weight lives. A layout whose transformers
module holds several of our slices in one adapter (GPT-2's ``c_attn``: one A for q|k|v) has no
per-slice file and is refused, as are models with no converter.

Our files add, in the safetensors metadata, ``genmodels.base_fingerprint``: a SHA-256 of the base
model's tensors that adapters never change (every parameter and buffer but the adapted linears'
weights, by name, shape and float32 value). Loading refuses an adapter whose fingerprint is not the
model's (one line); a file without one (PEFT's own) is checked by names and shapes only.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write_bytes, read_json
from ..models.projections import projections
from ..nn.linear import Slices
from ..nn import trainable_tokens as _tokens
from ..nn.lora import ALL_LINEAR, LoRASpec, adapted, is_adapter_param
from .base import ConversionError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
FINGERPRINT = "genmodels.base_fingerprint"
# Config keys whose non-empty value changes what the adapter computes: refused when set.
UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
               "target_parameters", "layer_replication", "use_qalora",
               "alora_invocation_tokens", "arrow_config", "kasa_config", "monteclora_config", "velora_config",
               "use_bdlora")


def _hf_module(conv: Any, path: str, index: int, n: int) -> str | None:
    """The transformers module of slice ``index`` (of ``n``) of our linear at ``path``, or None."""
    layer = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    if layer is None:
        return None
    tmpl = path[:layer.start(1)] + "{i}" + path[layer.end(1):]
    fused = getattr(conv, "FUSED", {}).get(tmpl + ".{p}")
    if fused is not None and len(fused) == n:
        return fused[index].format(i=layer.group(1), p="weight").removesuffix(".weight")
    single = getattr(conv, "LAYER", {}).get(tmpl + ".weight")
    if single is not None and n == 1:
        return single.format(i=layer.group(1)).removesuffix(".weight")
    return None


def hf_names(model: nn.Module) -> dict[tuple[str, str], str | None]:
    """``(path, slice) -> transformers module`` (None: no per-slice module) for every projection an
    adapter may target (stacked experts excluded)."""
    from .hf import converter_for_config
    try:
        conv = converter_for_config(model.config)
    except (ConversionError, AttributeError) as e:
        raise ValueError(f"PEFT adapter files: {type(model).__name__} has no Hugging Face layout ({e})") from None
    by_path: dict[str, list[str]] = {}
    for p in projections(model):
        if not p.stacked and p.kind != "head":
            by_path.setdefault(p.path, []).append(p.role)
    return {(path, role): _hf_module(conv, path, j, len(roles))
            for path, roles in by_path.items() for j, role in enumerate(roles)}


TOKEN_ROWS = "token_adapter.trainable_tokens_delta"  # PEFT's key of the rows, after the embedding's module name


def _embedding_hf(model: nn.Module) -> str:
    """The transformers module of the input embedding (Llama: ``model.embed_tokens``)."""
    from .hf import converter_for_config
    name = getattr(converter_for_config(model.config), "TOP", {}).get("embed.weight")
    if name is None:
        raise ValueError(f"PEFT adapter files: {type(model).__name__} names no Hugging Face input embedding")
    return name.removesuffix(".weight")


def base_fingerprint(model: nn.Module, adapted_paths: set[str]) -> str:
    """SHA-256 over the base tensors no adapter changes (all but ``<path>.weight`` of the adapted
    linears, and the adapters; an embedding with trainable rows as its frozen table, merged or not),
    by name, shape and float32 value."""
    skip = {f"{p}.weight" for p in adapted_paths}
    tables = {f"{p}.weight": e.trainable_tokens.base_table(e.weight) for p, e in _tokens.token_tables(model)}
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = tables.get(name, t)
        if name in skip or is_adapter_param(name):
            continue
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _spec_of(model: nn.Module) -> LoRASpec:
    specs = {m.spec for _, m in adapted(model)}
    if len(specs) != 1:
        raise ValueError(f"lora.save: the adapters differ in r/alpha/dropout/rsLoRA ({len(specs)} settings); "
                         "a PEFT adapter file holds one")
    return specs.pop()


def base_of(folder: str | Path) -> Path:
    """The base model an adapter folder names (``base_model_name_or_path``: absolute, or relative to
    the folder), for loading the folder as a model. One-line refusals naming the field."""
    folder = Path(folder)
    base = read_json(folder / CONFIG).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{folder / CONFIG}: base_model_name_or_path={base!r} names no base model; load the base "
                         f"with genmodels.load and add the adapter with genmodels.lora.load(model, {str(folder)!r})")
    path = folder / base  # an absolute base stays itself
    if not path.exists():
        raise FileNotFoundError(f"{folder / CONFIG}: base_model_name_or_path={base!r}: no such file or folder "
                                "(a local genmodels / Hugging Face folder or GGUF file; hub ids are not fetched)")
    if (path / CONFIG).is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{folder / CONFIG}: base_model_name_or_path={base!r} is itself an adapter folder; name its base")
    return path


def _peft_config(spec: LoRASpec, targets: list[str], causal: bool) -> dict[str, Any]:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM" if causal else None, "r": spec.r,
            "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.rslora,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "init_lora_weights": True if spec.init == "peft" else spec.init, "inference_mode": True,
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
            "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False,
            "base_model_name_or_path": None, "revision": None}


def _check_replaceable(folder: Path) -> None:
    """Adapter files already in ``folder`` must be adapter files (never replace a user's file)."""
    cfg, weights = folder / CONFIG, folder / WEIGHTS
    if cfg.exists():
        try:
            ok = "peft_type" in read_json(cfg)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise FileExistsError(f"{cfg} is not a PEFT adapter config (no peft_type); not replacing it")
    if weights.exists():
        from safetensors import safe_open
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception:
            raise FileExistsError(f"{weights} is not a safetensors file; not replacing it") from None


def save(model: nn.Module, path: str | Path, base: str | Path | None = None) -> Path:
    """Write ``model``'s adapters as a PEFT adapter folder (PEFT's ``PeftModel.from_pretrained`` on
    the transformers model loads it); other files in ``path`` are left alone. Each file is written
    whole (weights first, the config last). ``base``: the base model's path, recorded (absolute) as
    ``base_model_name_or_path`` so ``genmodels.load(path)`` can load base and adapter."""
    from safetensors.torch import save as to_bytes
    mods = adapted(model)
    if not mods:
        raise ValueError(f"lora.save: {type(model).__name__} has no LoRA adapters")
    spec, names = _spec_of(model), hf_names(model)
    tensors: dict[str, torch.Tensor] = {}
    for path_, m in mods:
        for s in m.rows:
            hf = names.get((path_, s))
            if hf is None:
                raise ValueError(f"lora.save: no PEFT module for {path_}[{s}] ({model.config.extra.get('hf_architecture') or type(model).__name__} "
                                 "holds it in a module fused with others); PEFT files are written for Llama-layout models")
            for ab, t in (("lora_A", m.lora_A[s]), ("lora_B", m.lora_B[s])):
                tensors[f"{PREFIX}{hf}.{ab}.weight"] = t.detach().to("cpu").contiguous()
    targets = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    ids = _tokens.token_ids(model)
    if ids:
        emb = _tokens.token_tables(model)[0][1]
        tensors[f"{PREFIX}{_embedding_hf(model)}.{TOKEN_ROWS}"] = emb.trainable_tokens.weight.detach().to("cpu").contiguous()
    meta = {"format": "pt", FINGERPRINT: base_fingerprint(model, {p for p, _ in mods})}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    _check_replaceable(folder)
    atomic_write_bytes(folder / WEIGHTS, to_bytes(tensors, metadata=meta))
    causal = callable(getattr(model, "new_cache", None))
    config = {**_peft_config(spec, targets, causal), "base_model_name_or_path": str(Path(base).resolve()) if base else None,
              "trainable_token_indices": ids or None}
    atomic_write_bytes(folder / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def read_spec(cfg: dict[str, Any], where: Path) -> LoRASpec:
    """The :class:`LoRASpec` of a PEFT ``adapter_config.json`` (targets filled in by the weights)."""
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type={cfg.get('peft_type')!r}; genmodels reads LORA adapters")
    for key in UNSUPPORTED:
        if cfg.get(key):
            raise ValueError(f"{where}: {key}={cfg[key]!r} is not supported (genmodels reads plain LoRA adapters)")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias={cfg['bias']!r} is not supported; have none")
    init = cfg.get("init_lora_weights", True)
    try:
        return LoRASpec.make(ALL_LINEAR, r=cfg.get("r", 8), alpha=cfg.get("lora_alpha", 8),
                             dropout=cfg.get("lora_dropout", 0.0), rslora=bool(cfg.get("use_rslora", False)),
                             init="gaussian" if init == "gaussian" else "peft")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def read_token_ids(cfg: dict[str, Any], where: Path, model: nn.Module) -> list[int]:
    """``trainable_token_indices`` of a PEFT config: a list (the input embedding's rows), or a mapping naming
    the input embedding alone (``{"embed_tokens": [...]}``); [] when absent."""
    ids = cfg.get("trainable_token_indices")
    if not ids:
        return []
    if isinstance(ids, dict):
        emb = _embedding_hf(model)
        other = [k for k in ids if not (emb == k or emb.endswith("." + k))]
        if other or len(ids) != 1:
            raise ValueError(f"{where}: trainable_token_indices names {other[0] if other else list(ids)!r}; genmodels "
                             f"trains rows of the input embedding ({emb}) only (a tied head follows it)")
        ids = next(iter(ids.values()))
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{where}: trainable_token_indices={ids!r} must be a list of token ids")
    return ids


def _token_rows(model: nn.Module, ids: list[int], theirs: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """The trainable rows' tensor by our key (``embed.trainable_tokens.weight``), checked against ``ids``."""
    key = f"{PREFIX}{_embedding_hf(model)}.{TOKEN_ROWS}"
    t = theirs.pop(key, None)
    if not ids:
        if t is not None:
            raise ValueError(f"{file}: holds {key} but {CONFIG} has no trainable_token_indices")
        return {}
    emb = model.embedding()
    if t is None or tuple(t.shape) != (len(ids), emb.weight.shape[1]):
        got = "missing" if t is None else f"shape {tuple(t.shape)}"
        raise ValueError(f"{file}: {key} is {got}; trainable_token_indices {ids} want ({len(ids)}, {emb.weight.shape[1]})")
    path = next(n for n, m in model.named_modules() if m is emb)
    return {f"{path}.trainable_tokens.weight": t}


def read(model: nn.Module, path: str | Path) -> tuple[LoRASpec, dict[str, Slices], dict[str, torch.Tensor], list[int]]:
    """A PEFT adapter folder for ``model``: its spec, the plan ``{our path: {slice: rows}}`` it adapts,
    the tensors by our keys (``blocks.0.attn.qkv.lora_A.q``, ``embed.trainable_tokens.weight``) and the
    trainable token ids. Names, shapes and the base fingerprint are checked; nothing is changed."""
    from safetensors import safe_open
    folder = Path(path)
    cfg = read_json(folder / CONFIG)
    spec = read_spec(cfg, folder / CONFIG)
    ids = read_token_ids(cfg, folder / CONFIG, model)
    file = folder / WEIGHTS
    try:
        with safe_open(str(file), "pt") as f:
            meta, theirs = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such file (a PEFT adapter folder holds {CONFIG} and {WEIGHTS})") from None
    except Exception as e:
        raise ValueError(f"{file}: not a safetensors file ({type(e).__name__})") from None
    tensors = _token_rows(model, ids, theirs, file)
    ours = {hf: key for key, hf in hf_names(model).items() if hf is not None}
    rows = {(p.path, p.role): p.rows for p in projections(model) if not p.stacked}
    plan: dict[str, Slices] = {}
    for key, t in theirs.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
        if m is None or m.group(1) not in ours:
            raise ValueError(f"{file}: {key} names no projection of this {type(model).__name__} (PEFT LoRA keys "
                             f"look like {PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight)")
        path_, s = ours[m.group(1)]
        plan.setdefault(path_, {})[s] = rows[(path_, s)]
        tensors[f"{path_}.{m.group(2)}.{s}"] = t
    for path_, slices in plan.items():
        for s, (a, b) in slices.items():
            for ab, shape in (("lora_A", (spec.r, None)), ("lora_B", (b - a, spec.r))):
                t = tensors.get(f"{path_}.{ab}.{s}")
                if t is None or t.dim() != 2 or any(w is not None and w != n for w, n in zip(shape, t.shape)):
                    got = "missing" if t is None else f"shape {tuple(t.shape)}"
                    raise ValueError(f"{file}: the {ab} of {path_}[{s}] is {got}; r={spec.r} wants {shape}")
    held = meta.get(FINGERPRINT)
    if held is not None and held != (mine := base_fingerprint(model, set(plan))):
        raise ValueError(f"{file} was saved for another base model (fingerprint {held[:12]}…, this model's "
                         f"{mine[:12]}…); load it on the model it was trained on")
    return spec, plan, tensors, ids
