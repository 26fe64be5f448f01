"""Saving and loading models: the genmodels directory format and auto-detection of HF directories.

A genmodels directory holds ``config.json`` (``{"format": "genmodels", "model": {...}}``),
``model.safetensors`` and, when the model has them, ``tokenizer.json`` and ``chat_template.jinja``.
Weights are never unpickled.
Every error while reading a folder names the file at fault, in one line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .data.chat_template import write_chat_template
from .files import fsync_path, naming, write_safetensors
from .config import ConfigError
from .models.config import ModelConfig
from .interop.base import check_state
from .registry import build_model, config_from_dict, get_family
from .models.flops import parameter_count, weight_bytes

FORMAT = "genmodels"


# ---- reading files: every failure names the file ------------------------------------------------
def one_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, shortened: a refusal is one line."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= limit else msg[:limit - 1] + "…"


def read_json(file: Path, expect: type = dict) -> Any:
    """A JSON object (or another ``expect`` type) from ``file``; a broken file is a ValueError naming
    it and what is wrong."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"JSON {expect.__name__}"
        raise ValueError(f"{file}: expected {want}, found {type(data).__name__}")
    return data


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or garbage file is a ValueError naming it."""
    try:
        return load_file(str(file))
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # safetensors' own errors name neither the file nor the remedy
        raise ValueError(f"{file}: not a readable safetensors file ({one_line(e)})") from None


def read_torch_bin(file: Path) -> dict[str, torch.Tensor]:
    """A legacy ``pytorch_model.bin`` through ``torch.load(weights_only=True)`` (never an unrestricted
    unpickle); a corrupt file is a ValueError naming it."""
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, …
        raise ValueError(f"{file}: {_torch_load_failure(e)}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{file}: expected a state dict (names -> tensors), found {type(sd).__name__}")
    return sd


def _torch_load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in our words: torch's own message advises
    ``weights_only=False`` (an unrestricted unpickle), which genmodels never does nor suggests."""
    text = str(e)
    if m := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (f"holds pickled Python objects ({m.group(1)}), not only tensors; genmodels reads weights only "
                "(never an unrestricted unpickle): save the state dict, torch.save(model.state_dict(), FILE)")
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1).strip() if m else one_line(e)
    if "weights_only" in reason or not m and "Weights only load failed" in text:
        reason = type(e).__name__
    elif isinstance(e, EOFError):
        reason = "the file ends early: EOFError"
    elif " " not in reason:  # a bare KeyError argument: say what kind of failure it is
        reason = f"{type(e).__name__}: {reason}"
    return f"not a readable PyTorch checkpoint ({reason})"


def is_genmodels_dir(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and read_json(cfg).get("format") == FORMAT


def load_tokenizer(path: str | Path):
    """The ``tokenizers.Tokenizer`` of a model directory (``tokenizer.json``), or ``None``."""
    f = Path(path)
    f = f / "tokenizer.json" if f.is_dir() else f
    if not f.is_file():
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        raise ValueError(f"{f}: not a readable tokenizer file ({one_line(e)})") from None


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


def load(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model from a genmodels directory or a local Hugging Face directory (auto-detected; diffusers
    UNet2DModel folders and DDPM/DDIM pipeline folders included), or a llama.cpp GGUF file
    (interop/gguf.py: ``*.gguf`` or a file starting with ``GGUF``).

    The returned model is in eval mode; its tokenizer (if the directory has ``tokenizer.json``)
    is at ``model.tokenizer``, its chat template (or ``None``) at ``model.chat_template``. A config
    whose weights would not fit in this machine's memory is refused before anything is allocated.
    """
    path = Path(path)
    from .interop.gguf import is_gguf, load_gguf
    if is_gguf(path):  # llama.cpp's one-file format: weights, tokenizer and chat template (interop/gguf.py)
        return load_gguf(path, build_model, check=lambda cfg: check_fits_memory(cfg, path)).to(device).eval()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected a genmodels or Hugging Face model folder, "
                                "or a .gguf file)")
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


# ---- writing folders: fill in place, never destroy what genmodels did not write -------------------
# Every path (relative to the model folder) that a genmodels writer produces. A re-save recognises
# a previous genmodels / HF-export set by these exact names AND by their content: a file with one of
# these names is ours only when it holds a model file of that format (genmodels/ownership.py: a user's
# own config.json is not a model config). (A manifest was the other choice; it would be one more file
# to lose, go stale, or be missing from folders written before it existed.) Nothing else is ever
# replaced or removed: a folder holding any other file is refused, and a folder holding a model of
# another kind is replaced only with overwrite=True (--overwrite).
WRITTEN_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                           # sentence-transformers export (interop/sentence_transformers.py)
                           "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                           "tokenizer_config.json",
                           # diffusers export (interop/diffusers_unet.py)
                           "diffusion_pytorch_model.safetensors", "scheduler_config.json"})
WRITTEN_DIRS = frozenset(str(Path(f).parent) for f in WRITTEN_FILES if "/" in f)
# The staging folder a write uses inside the target; one left by a killed write is genmodels' own.
PARTIAL = ".genmodels-partial-"


def fsync_files(folder: Path) -> None:
    """Flush every file directly in ``folder`` to disk."""
    for f in folder.iterdir():
        if f.is_file():
            fsync_path(f)


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


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the regular files (and links) under ``folder``, as ``a/b`` strings."""
    return sorted(str(p.relative_to(folder)).replace(os.sep, "/")
                  for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _previous_model_files(path: Path, kind: str | None = None,
                          overwrite: bool = False) -> tuple[set[str], list[Path]]:
    """What a write into ``path`` may replace: (genmodels model files present, leftover staging
    folders). Refuses a non-folder; a folder holding anything genmodels does not write, or a file
    with one of our names that is not the model file it should be (genmodels.ownership); and, unless
    ``overwrite``, a folder holding a model of another kind than ``kind`` (the one being written)."""
    if not path.exists():
        if path.is_symlink():
            raise FileExistsError(f"{path} is a broken symbolic link; point it at a folder or remove it")
        return set(), []
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    from .ownership import not_ours_reason
    ours: set[str] = set()
    partial: list[Path] = []
    others: list[str] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith(PARTIAL) and p.is_dir() and not p.is_symlink():
            partial.append(p)
        elif p.name in WRITTEN_DIRS and p.is_dir() and not p.is_symlink():
            inside = [f"{p.name}/{q.name}" for q in sorted(p.iterdir())]
            bad = [f for f in inside if f not in WRITTEN_FILES or (path / f).is_dir()]
            others += bad
            ours |= set(inside) - set(bad)
        elif p.name in WRITTEN_FILES and not p.is_dir():
            ours.add(p.name)
        else:
            others.append(p.name + ("/" if p.is_dir() else ""))
    for name in sorted(ours):  # our names, but are they our files?
        why = not_ours_reason(path, name)
        if why is not None:
            others.append(f"{name} [{why}]")
    if others:
        raise FileExistsError(f"{path} already holds other files ({', '.join(others[:5])}"
                              f"{', …' if len(others) > 5 else ''}); save the model into a new or empty folder")
    if kind is not None and not overwrite:
        from .ownership import check_same_kind
        check_same_kind(path, ours, bool(partial), kind)
    return ours, partial


def _new_file_mode(folder: Path) -> int:
    """The mode a new file gets here (0o666 & ~umask), read from a probe file: the umask cannot be
    read without setting it, which would race with other threads."""
    probe = folder / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666))
    try:
        return os.stat(probe).st_mode & 0o777
    finally:
        probe.unlink()


def _publish_order(names: list[str]) -> list[str]:
    """Weights first, ``config.json`` last: a reader that sees the new config sees the new weights."""
    return sorted(names, key=lambda n: (0 if n.endswith(".safetensors") else 2 if n == "config.json" else 1, n))


def _atomic_dir_write(path: Path, write, config=None, overwrite: bool = False) -> Path:
    """Fill ``path`` with the files ``write(folder)`` produces, each appearing whole.

    ``path`` may be new, an empty folder, a previous genmodels / HF-export folder, a mount point or
    a symbolic link to a folder: it is always filled in place (never renamed or replaced), so the
    folder itself, its mode, owner and link stay. ``write`` writes into a staging folder inside
    ``path``; each file is fsynced, then moved to its name with ``os.replace`` (weights before
    ``config.json``), so a reader never sees half a file. Files of a previous save that this write
    does not produce are removed — only names in ``WRITTEN_FILES`` whose content is ours
    (genmodels.ownership). When ``config`` (the model's) is given, a folder holding a model of another
    kind is refused unless ``overwrite``. A new folder's mode follows the umask. On failure nothing
    already in ``path`` is touched, and an OSError names the file being written (a full disk)."""
    path = Path(path)
    from .ownership import config_kind
    kind = config_kind(config) if config is not None else None
    previous, partial = _previous_model_files(path, kind, overwrite)
    created = not path.exists()
    if created:
        path.mkdir(parents=True)  # 0o777 & ~umask, as any folder the user makes
    stage = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=path))
    try:
        write(stage)
        written = _files_under(stage)
        stray = [n for n in written if n not in WRITTEN_FILES]
        if stray:  # a writer outside the list would leave files a re-save then refuses
            raise RuntimeError(f"genmodels wrote unexpected files {', '.join(stray)}; add them to io.WRITTEN_FILES")
        mode = _new_file_mode(stage)
        for name in written:
            os.chmod(stage / name, mode)  # some writers (safetensors) create 0600 files
            fsync_path(stage / name)
        order = _publish_order(written)
        for name in order[:-1] if order[-1] == "config.json" else order:
            (path / name).parent.mkdir(exist_ok=True)
            os.replace(stage / name, path / name)
        for name in sorted(previous - set(written)):  # a stale file of the previous save
            (path / name).unlink()
        for d in WRITTEN_DIRS:
            if (path / d).is_dir() and not any((path / d).iterdir()):
                (path / d).rmdir()
        if "config.json" in written:
            os.replace(stage / "config.json", path / "config.json")
        for d in {str(Path(n).parent) for n in written} - {"."}:
            fsync_dir(path / d)
        fsync_dir(path)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(path.iterdir()):
            path.rmdir()
        if isinstance(e, OSError):
            raise as_published(e, stage, path) from None
        raise
    shutil.rmtree(stage, ignore_errors=True)
    for p in partial:  # staging folders of an earlier, killed write
        shutil.rmtree(p, ignore_errors=True)
    if created:
        fsync_dir(path.parent)
    return path


def as_published(e: OSError, stage: Path, path: Path) -> OSError:
    """An OSError of a folder write naming the file as published (``path/name``), not its staging
    copy, nor nothing (a full disk during ``write()`` names no file: then ``path``)."""
    name = str(e.filename) if e.filename is not None else ""
    if name.startswith(str(stage) + os.sep):
        return OSError(e.errno, e.strerror, str(path / os.path.relpath(name, stage)))
    return naming(e, path)


def save(model: torch.nn.Module, path: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Save ``model`` (and its tokenizer) as a genmodels directory, each file atomically (see
    :func:`_atomic_dir_write`: files genmodels did not write are never replaced or removed; a folder
    holding a model of another family or architecture is replaced only with ``overwrite=True``)."""
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    get_family(getattr(model.config, "family", None))  # refuse a model that load could not build back

    def write(d: Path) -> None:
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_safetensors(sd, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"format": FORMAT, "model": model.config.to_dict()}, indent=2))
        if tokenizer is not None:
            tokenizer.save(str(d / "tokenizer.json"))
        write_chat_template(model, d)

    return _atomic_dir_write(Path(path), write, model.config, overwrite)


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

    return _atomic_dir_write(Path(path), write, model.config, overwrite)
