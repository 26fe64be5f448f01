"""Saving and loading models: the genmodels directory format and auto-detection of HF directories.

A genmodels directory holds ``config.json`` (``{"format": "genmodels", "model": {...}}``),
``model.safetensors`` and, when the model has one, ``tokenizer.json``. Weights are never unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .interop.base import check_state
from .models import build_model

FORMAT = "genmodels"


def is_genmodels_dir(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT


def load_tokenizer(path: str | Path):
    """The ``tokenizers.Tokenizer`` of a model directory (``tokenizer.json``), or ``None``."""
    f = Path(path)
    f = f / "tokenizer.json" if f.is_dir() else f
    if not f.is_file():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(f))


def attach_tokenizer(model: torch.nn.Module, tokenizer) -> torch.nn.Module:
    """Keep a tokenizer beside a model (not a module: it is not part of the state dict)."""
    model.__dict__["tokenizer"] = tokenizer
    return model


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model from a genmodels directory or a local Hugging Face directory (auto-detected).

    The returned model is in eval mode; its tokenizer (if the directory has ``tokenizer.json``)
    is at ``model.tokenizer``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected a genmodels or Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json — not a genmodels or Hugging Face model folder")
    if is_genmodels_dir(path):
        cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text())["model"])
        model = build_model(cfg)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing")
        sd = load_file(str(weights))
        expected = model.state_dict()
        check_state(expected, sd, {}, str(weights))
        model.load_state_dict(sd)
    else:
        from .interop.hf import load_hf
        model = load_hf(path, build_model)
    from .embed import KEY, read_sentence_config
    recipe = read_sentence_config(path)  # a sentence-transformers folder: pooling, normalisation, length
    if recipe is not None:
        model.config.extra = {**model.config.extra, KEY: recipe}
    attach_tokenizer(model, load_tokenizer(path))
    return model.to(device).eval()


MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
               "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"}


def fsync_files(folder: Path) -> None:
    """Flush every file directly in ``folder`` to disk."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_dir_write(path: Path, write) -> Path:
    """Write into a temp folder beside ``path``, then rename: a reader never sees half a model.

    An existing ``path`` is replaced only when it holds nothing but model files (a model folder
    being overwritten); a folder with anything else in it is refused, never emptied."""
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        others = sorted(p.name for p in path.iterdir()
                        if p.name not in MODEL_FILES and not p.name.startswith("model-"))
        if others:
            raise FileExistsError(f"{path} already holds other files ({', '.join(others[:5])}); "
                                  "save the model into a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        fsync_files(tmp)  # contents on disk before the rename makes them visible
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save(model: torch.nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Save ``model`` (and its tokenizer) as a genmodels directory, atomically."""
    tokenizer = tokenizer or model.__dict__.get("tokenizer")

    def write(d: Path) -> None:
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"format": FORMAT, "model": model.config.to_dict()}, indent=2))
        if tokenizer is not None:
            tokenizer.save(str(d / "tokenizer.json"))

    return _atomic_dir_write(Path(path), write)


def export_hf(model: torch.nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Export to a Hugging Face directory (``AutoModelForCausalLM.from_pretrained`` loads it)."""
    from .interop.hf import export_hf as _export
    tokenizer = tokenizer or model.__dict__.get("tokenizer")

    def write(d: Path) -> None:
        _export(model, d)
        if tokenizer is not None:
            tokenizer.save(str(d / "tokenizer.json"))

    return _atomic_dir_write(Path(path), write)
