"""Saving and loading models: the genmodels directory format and auto-detection of HF directories.

A genmodels directory holds ``config.json`` (``{"format": "genmodels", "model": {...}}``),
``model.safetensors`` and, when the model has them, ``tokenizer.json`` and ``chat_template.jinja``.
Weights are never unpickled.
Every error while reading a folder names the file at fault, in one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .data.chat_template import write_chat_template
from .files import read_json, read_safetensors, write_safetensors
from .folders import atomic_dir_write
from .config import ConfigError
from .models.config import ModelConfig
from .interop.base import check_state
from .registry import build_model, config_from_dict, get_family
from .models.flops import parameter_count, weight_bytes
from .nn.lora import refuse_adapters
from .nn.quantized import refuse_quantized

FORMAT = "genmodels"


def is_genmodels_dir(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and read_json(cfg).get("format") == FORMAT


def load_tokenizer(path: str | Path):
    """The ``tokenizers.Tokenizer`` of a model directory (``tokenizer.json``), or ``None``."""
    f = Path(path)
    f = f / "tokenizer.json" if f.is_dir() else f
    if not f.is_file():
        return None
    from .data.tokenizer import read_tokenizer_file
    return read_tokenizer_file(f)


def attach_tokenizer(model: torch.nn.Module, tokenizer) -> torch.nn.Module:
    """Keep a tokenizer beside a model (not a module: it is not part of the state dict)."""
    model.tokenizer = tokenizer
    return model


# ---- resource limits: refuse before allocating ---------------------------------------------------
def machine_memory() -> int | None:
    """This machine's physical memory in bytes, or ``None`` where the OS does not say (tests
    monkeypatch this)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_fits_memory(cfg: ModelConfig, where: str | Path) -> None:
    """Refuse (ConfigError naming ``where``) a config whose fp32 weights alone exceed this machine's
    memory — estimated from the config, before any tensor is built."""
    have = machine_memory()
    need = weight_bytes(cfg)
    if have is not None and need > have:
        raise ConfigError(f"{where}: this model needs ~{_gb(need)} for its weights ({parameter_count(cfg):,} "
                          f"parameters in fp32), more than this machine's {_gb(have)} of memory")


def load(path: str | Path, device: str | torch.device = "cpu", quantized: bool = False) -> torch.nn.Module:
    """Load a model from a genmodels directory or a local Hugging Face directory (auto-detected; diffusers
    UNet2DModel folders and DDPM/DDIM pipeline folders included), or a llama.cpp GGUF file
    (interop/gguf.py: ``*.gguf`` or a file starting with ``GGUF``), or a LoRA adapter folder naming its
    base (``adapter_config.json``'s ``base_model_name_or_path``: the base, then its adapters; docs/lora.md).

    The returned model is in eval mode; its tokenizer (if the directory has ``tokenizer.json``)
    is at ``model.tokenizer``, its chat template (or ``None``) at ``model.chat_template``. A config
    whose weights would not fit in this machine's memory is refused before anything is allocated.
    ``quantized=True`` (GGUF files): Q8_0 / Q4_0 / Q4_1 projections keep their blocks, for inference
    (docs/quantization.md); another model is quantised with ``genmodels.quantize(model, qtype)``.
    """
    path = Path(path)
    from .interop.gguf import is_gguf, load_gguf
    if is_gguf(path):  # llama.cpp's one-file format: weights, tokenizer and chat template (interop/gguf.py)
        return load_gguf(path, build_model, check=lambda cfg: check_fits_memory(cfg, path),
                         quantized=quantized).to(device).eval()
    if quantized:
        raise ValueError(f"{path}: quantized=True keeps a GGUF file's blocks; this is not a GGUF file — "
                         "quantise a loaded model with genmodels.quantize(model, 'q8_0' | 'q4_0' | 'q4_1')")
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such file or folder"
        raise FileNotFoundError(f"{path}: {what} (expected a genmodels or Hugging Face model folder, or a .gguf file)")
    config_file = path / "config.json"
    from .interop.diffusers_unet import is_pipeline_folder, load_pipeline
    from .interop.stored import build_budget, meta_state, restart_budget, safetensors_shapes, stored_tensor_count

    def vet(cfg: Any, where: Path) -> None:  # before any weight is read: memory, then a fresh build budget
        check_fits_memory(cfg, where)
        restart_budget()
    if is_pipeline_folder(path):  # a diffusers pipeline (model_index.json, unet/, scheduler/)
        unet_config = path / "unet" / "config.json"
        with build_budget(stored_tensor_count(path / "unet"), path / "unet"):  # builds bounded by the weights
            model = load_pipeline(path, build_model, check=lambda cfg: vet(cfg, unet_config))
        return model.to(device).eval()
    if not config_file.is_file() and (path / "adapter_config.json").is_file():  # a LoRA adapter folder (docs/lora.md)
        from .data.chat_template import read_chat_template
        from .lora import load_folder
        model = load_folder(path, lambda base: load(base, device))
        tokenizer, template = load_tokenizer(path), read_chat_template(path)  # (a LoRA run's final/ keeps its own)
        if tokenizer is not None:
            attach_tokenizer(model, tokenizer)
        if template is not None:
            model.chat_template = template
        return model
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json — not a genmodels, Hugging Face or diffusers model folder")
    meta = read_json(config_file)  # read once: the format decides the path
    if meta.get("format") == FORMAT:
        section = meta.get("model")
        if not isinstance(section, dict):
            raise ValueError(f"{config_file}: \"model\" must be an object holding the model config")
        cfg = config_from_dict(section)  # the family's config class (genmodels.registry)
        weights = path / "model.safetensors"
        stored = safetensors_shapes(weights) if weights.is_file() else None  # the header: names and shapes
        with build_budget(None if stored is None else len(stored), weights):
            vet(cfg, config_file)
            if stored is None:
                if weights.exists():
                    raise ValueError(f"{weights}: not a file (a genmodels folder keeps its weights in this file)")
                raise FileNotFoundError(f"{weights}: missing")
            check_state(meta_state(cfg, build_model), stored, {}, str(weights))  # before any tensor is read
            model = build_model(cfg)
        model.load_state_dict(read_safetensors(weights))
    else:
        from .interop.hf import load_hf
        with build_budget(stored_tensor_count(path), path):  # builds bounded by the weights' headers
            model = load_hf(path, build_model, check=lambda cfg: vet(cfg, config_file))
    from .interop.sentence_transformers import KEY, read_sentence_config
    recipe = read_sentence_config(path)  # a sentence-transformers folder: pooling, normalisation, length
    if recipe is not None:
        model.config.extra = {**model.config.extra, KEY: recipe}
    attach_tokenizer(model, load_tokenizer(path))
    from .data.chat_template import read_chat_template
    model.chat_template = read_chat_template(path)  # None when the folder has none
    return model.to(device).eval()


def save(model: torch.nn.Module, path: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Save ``model`` (and its tokenizer) as a genmodels directory, each file atomically (see
    :func:`~genmodels.folders.atomic_dir_write`: files genmodels did not write are never replaced or removed; a folder
    holding a model of another family or architecture is replaced only with ``overwrite=True``)."""
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    get_family(getattr(model.config, "family", None))  # refuse a model that load could not build back
    refuse_adapters(model, "genmodels.save")
    refuse_quantized(model, "genmodels.save")
    return atomic_dir_write(Path(path), lambda d: write_model_files(model, d, tokenizer), model.config, overwrite)


def write_model_files(model: torch.nn.Module, d: Path, tokenizer=None) -> None:
    """The files of a genmodels directory for ``model`` into the (staging) folder ``d`` (:func:`save`; a reward
    model's save adds its score head beside them)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(sd, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({"format": FORMAT, "model": model.config.to_dict()}, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(d / "tokenizer.json"))
    write_chat_template(model, d)


def export_hf(model: torch.nn.Module, path: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Export to a Hugging Face directory (``AutoModelForCausalLM.from_pretrained`` loads it); a folder
    holding a model of another family or architecture is replaced only with ``overwrite=True``.

    A model with a sentence-transformers recipe (``config.extra["sentence_transformers"]``) is
    exported as a sentence-transformers folder, so ``SentenceTransformer(path).encode`` gives what
    :func:`genmodels.embed` gives."""
    from .interop.sentence_transformers import KEY
    from .interop.hf import export_hf as _export
    from .interop.sentence_transformers import check_sentence_export, write_sentence_files
    from .interop.hf_tokenizer import write_tokenizer_config
    from .interop.base import ConversionError
    from .registry import family_of
    refuse_adapters(model, "genmodels.export_hf")
    refuse_quantized(model, "genmodels.export_hf")
    fam = family_of(model.config)
    if fam is not None and not fam.converters:  # RetNet, diffusion: no transformers architecture to become
        raise ConversionError(f"cannot export as Hugging Face transformers: model.family={fam.name!r} has no such "
                              "architecture (save it with genmodels.save, or with its family's own exporter)")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    recipe = model.config.extra.get(KEY)
    if recipe is not None:
        check_sentence_export(model.config, recipe, tokenizer)  # refuse before touching the folder

    def write(d: Path) -> None:
        _export(model, d)
        if tokenizer is not None:
            tokenizer.save(str(d / "tokenizer.json"))
        write_chat_template(model, d)
        if recipe is not None:
            write_sentence_files(d, model.config, recipe, tokenizer)
        else:  # a chat model's tokenizer_config.json (its template, special tokens) as transformers reads it
            write_tokenizer_config(model, tokenizer, d)

    return atomic_dir_write(Path(path), write, model.config, overwrite)


def export_diffusers(model: torch.nn.Module, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` (a UNet2D) as a diffusers folder that ``diffusers.UNet2DModel.from_pretrained(path)``
    loads with equal outputs (and ``DDPMScheduler.from_pretrained(path)`` with its schedule). Files
    appear atomically; a config diffusers cannot express is refused, naming the field, before anything
    is written; a folder holding a model of another family or architecture is replaced only with
    ``overwrite=True`` (:func:`~genmodels.folders.atomic_dir_write`)."""
    from .interop.diffusers_unet import diffusers_writer
    return atomic_dir_write(Path(path), diffusers_writer(model), model.config, overwrite)
