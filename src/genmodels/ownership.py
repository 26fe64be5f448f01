"""Which files in a model folder a write may replace — decided by what a file holds, not its name.

A model write (``genmodels.save``, ``export_hf``, ``export_diffusers``, and so ``genmodels convert``)
fills a folder in place (``folders.atomic_dir_write``). A file there with a name genmodels writes
(``folders.WRITTEN_FILES``) is ours to replace only when its content says it is a model file of a format
we write; a user's own ``config.json`` (``{"api_key": …}``) is not, and is never replaced or removed:

=============================  ==============================================================
file                           ours when it is
=============================  ==============================================================
``config.json``                a JSON object naming a model: ``"format": "genmodels"`` (ours),
                               ``_class_name`` (diffusers), ``architectures`` or ``model_type``
                               (transformers)
``*.safetensors``              a safetensors file (its header parses)
``tokenizer.json``             a file the ``tokenizers`` library reads
``chat_template.jinja``        UTF-8 Jinja text that parses (a chat template, data/chat_template.py)
``scheduler_config.json``      a JSON object with a ``_class_name`` (a diffusers scheduler)
``modules.json``               sentence-transformers' list of modules (each with ``type`` and ``path``)
``1_Pooling/config.json``      a JSON object with ``word_embedding_dimension`` (sentence-transformers)
``sentence_bert_config.json``  a JSON object with ``max_seq_length`` (sentence-transformers)
``tokenizer_config.json``      a JSON object with ``tokenizer_class`` or ``model_max_length``
=============================  ==============================================================

A folder whose files are all ours holds a model; :func:`folder_kind` says which (its family and
architecture, read from its ``config.json``), and a write of another kind replaces it only when the
caller says ``overwrite=True`` (``--overwrite``). Re-saving the same kind, or converting a folder in
place to another format of the same model (diffusers UNet2DModel -> genmodels diffusion UNet), needs no
flag. ``overwrite`` never extends to files that are not ours: those are refused whatever the flag.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

__all__ = ["check_same_kind", "config_kind", "folder_kind", "not_ours_reason"]


def _json(file: Path) -> Any:
    """The JSON value of ``file``, or ``None`` when it is not JSON text."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _object_with(*keys: str) -> Callable[[Path], bool]:
    """A test: ``file`` is a JSON object holding at least one of ``keys``."""
    def test(file: Path) -> bool:
        d = _json(file)
        return isinstance(d, dict) and any(k in d for k in keys)
    return test


def _model_config(file: Path) -> bool:
    d = _json(file)
    return isinstance(d, dict) and (d.get("format") == "genmodels" or any(
        k in d for k in ("_class_name", "architectures", "model_type")))


def _safetensors(file: Path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(file), framework="pt"):
            return True
    except Exception:  # SafetensorError, OSError: not a safetensors file
        return False


def _tokenizer(file: Path) -> bool:
    from tokenizers import Tokenizer
    try:
        Tokenizer.from_file(str(file))
        return True
    except Exception:  # tokenizers raises a bare Exception
        return False


def _modules(file: Path) -> bool:
    d = _json(file)
    return isinstance(d, list) and bool(d) and all(isinstance(m, dict) and "type" in m and "path" in m for m in d)


# name -> (test, what a file of that name must be: the refusal's words)
_MODEL_CONFIG_WORDS = ("a model config: it names no \"format\": \"genmodels\", \"_class_name\", \"architectures\" "
                   "or \"model_type\"")
_TESTS: dict[str, tuple[Callable[[Path], bool], str]] = {
    "config.json": (_model_config, _MODEL_CONFIG_WORDS),
    "tokenizer.json": (_tokenizer, "a tokenizers file"),
    "scheduler_config.json": (_object_with("_class_name"),
                              "a diffusers scheduler config: it names no \"_class_name\""),
    "modules.json": (_modules, "a sentence-transformers module list (of objects with \"type\" and \"path\")"),
    "1_Pooling/config.json": (_object_with("word_embedding_dimension"),
                              "a sentence-transformers pooling config: no \"word_embedding_dimension\""),
    "sentence_bert_config.json": (_object_with("max_seq_length"),
                                  "a sentence-transformers config: no \"max_seq_length\""),
    "tokenizer_config.json": (_object_with("tokenizer_class", "model_max_length"), "a tokenizer config"),
    "chat_template.jinja": (lambda f: _chat_template(f), "a chat template (Jinja text that parses)"),
}


def _chat_template(file: Path) -> bool:
    from .data.chat_template import ChatTemplateError, compile_template
    try:
        compile_template(file.read_text(encoding="utf-8"))
        return True
    except (OSError, UnicodeDecodeError, ChatTemplateError):
        return False


def not_ours_reason(folder: Path, name: str) -> str | None:
    """``None`` when ``folder/name`` (a name genmodels writes) holds a model file of a format we write
    (module table); else what it would have to be, for the refusal."""
    file = Path(folder) / name
    if name.endswith(".safetensors"):
        return None if _safetensors(file) else "not a safetensors file"
    test, what = _TESTS[name]
    return None if test(file) else f"not {what}"


def _architecture(cfg: Any) -> str | None:
    """The architecture within a family: the transformers class it exports as, or its backbone."""
    if getattr(cfg, "backbone", None):
        return str(cfg.backbone)
    from .interop.base import ConversionError
    from .interop.hf import converter_for_config
    try:
        return converter_for_config(cfg).architectures[0]
    except (ConversionError, AttributeError):
        return None


def config_kind(cfg: Any) -> str:
    """What model a config describes, as a refusal names it: ``decoder MixtralForCausalLM``,
    ``diffusion unet``, ``gan``."""
    arch = _architecture(cfg)
    return f"{cfg.family} {arch}" if arch else str(cfg.family)


def folder_kind(config: dict[str, Any]) -> str:
    """The kind (:func:`config_kind`) of the model a folder's ``config.json`` (already known to be a
    model config) describes, in any format we read; a config we cannot read is named by what it says
    (``WhisperForConditionalGeneration``), which matches no model we write."""
    from .interop.diffusers_unet import DiffusersUNetConverter, is_diffusers_config
    from .interop.hf import converter_for_hf
    from .registry import config_from_dict
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-vocabulary special ids and the like: not this question
            if config.get("format") == "genmodels":
                return config_kind(config_from_dict(config.get("model")))
            if is_diffusers_config(config):
                return config_kind(DiffusersUNetConverter().config_from_hf(config))
            cfg = converter_for_hf(config).config_from_hf(config)
            archs = config.get("architectures")
            if isinstance(archs, list) and archs and isinstance(archs[0], str):
                cfg.extra = {**cfg.extra, "hf_architecture": archs[0]}  # as load_hf records it
            return config_kind(cfg)
    except (ValueError, TypeError, KeyError, AttributeError):  # a config we cannot read: no model we write
        model = config.get("model")
        said = (config.get("_class_name") or config.get("architectures") or config.get("model_type")
                or (model.get("family") if isinstance(model, dict) else None))
        return f"model we cannot read ({said})" if said else "model we cannot read"


def check_same_kind(path: Path, ours: set[str], interrupted: bool, kind: str) -> None:
    """Refuse to replace a model of another kind than ``kind`` (family and architecture,
    genmodels.ownership.folder_kind) without overwrite=True. Model files without a config.json are
    another model too, unless a staging folder says they are our own interrupted write."""
    again = "pass --overwrite (overwrite=True) to replace it, or write into another folder"
    if "config.json" in ours:
        from .files import read_json
        held = folder_kind(read_json(path / "config.json"))
        if held != kind:
            raise FileExistsError(f"{path} holds another model ({held}, per its config.json); writing a {kind} "
                                  f"model there would replace it: {again}")
    elif ours and not interrupted:
        raise FileExistsError(f"{path} holds model files ({', '.join(sorted(ours)[:3])}) without a config.json "
                              f"saying which model; writing a {kind} model there would replace them: {again}")
