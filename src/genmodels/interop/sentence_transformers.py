"""sentence-transformers folders, both ways: :func:`read_sentence_config` reads the embedding recipe of
one (what :func:`genmodels.load` keeps in ``config.extra["sentence_transformers"]`` and
:func:`genmodels.embed` follows), and the export writes one back.

A model loaded from a sentence-transformers folder keeps its recipe in
``config.extra["sentence_transformers"]`` (pooling, normalize, max_seq_length, do_lower_case). A bare
``BertModel`` export would lose it (sentence-transformers would mean-pool and not normalise), so the
export also writes what ``SentenceTransformer(path)`` reads:

* ``modules.json``: Transformer (the folder itself) → Pooling (``1_Pooling``) → Normalize (``2_Normalize``,
  listed only when the recipe normalises; the module has no files);
* ``1_Pooling/config.json``: one ``pooling_mode_*`` flag set (the layout ``read_sentence_config`` reads);
* ``sentence_bert_config.json``: ``max_seq_length`` (capped at the model's positions, as
  :func:`genmodels.embed` caps it) and ``do_lower_case``;
* ``tokenizer_config.json``: the generic fast tokenizer over ``tokenizer.json`` (so transformers does not
  rebuild a BERT tokenizer from its own defaults) with a padding token for batches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.config import ModelConfig
from .base import ConversionError

POOLING_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "max": "pooling_mode_max_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")  # genmodels.embed's pooling names
RECIPE_KEYS = ("pooling", "normalize", "max_seq_length", "do_lower_case")
KEY = "sentence_transformers"  # where the recipe lives in ModelConfig.extra


def read_sentence_config(path: str | Path) -> dict[str, Any] | None:
    """The embedding recipe of a sentence-transformers folder, or ``None`` if it is not one: its
    pooling (``1_Pooling/config.json``), whether it normalises (a Normalize module in ``modules.json``),
    ``max_seq_length`` and ``do_lower_case`` (``sentence_bert_config.json``). A broken or unsupported
    file is a ValueError naming it."""
    from ..files import read_json
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    out: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_seq_length": None, "do_lower_case": False}
    for m in read_json(modules_file, expect=list):
        kind = (m.get("type") or "").rsplit(".", 1)[-1] if isinstance(m, dict) else None
        if kind == "Pooling":
            pooling_file = path / (m.get("path") or "") / "config.json"
            pc = read_json(pooling_file)
            modes = [mode for mode in POOLING_MODES if pc.get(POOLING_FLAGS[mode])]
            if len(modes) != 1:
                raise ValueError(f"{pooling_file}: pooling modes {modes or 'none'}; exactly one of "
                                 f"{', '.join(POOLING_MODES)} is supported")
            out["pooling"] = modes[0]
        elif kind == "Normalize":
            out["normalize"] = True
        elif kind != "Transformer":
            raise ValueError(f"{modules_file}: sentence-transformers module {m!r} is not supported "
                             "(have Transformer, Pooling, Normalize)")
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        sbc = read_json(sb)
        out["max_seq_length"] = sbc.get("max_seq_length")
        out["do_lower_case"] = bool(sbc.get("do_lower_case", False))
    return out
MODULE = "sentence_transformers.models."


def check_sentence_export(cfg: ModelConfig, recipe: Any, tokenizer) -> None:
    """Refuse, in one line naming the field, a recipe a sentence-transformers folder cannot express."""
    where = "model.config.extra['sentence_transformers']"
    from ..registry import EMBEDS, family_of
    fam = family_of(cfg)
    if fam is None or not fam.can(EMBEDS):
        raise ConversionError(f"cannot export {where} for family={cfg.family!r}: sentence-transformers "
                              "folders are written for encoders only")
    if not isinstance(recipe, dict):
        raise ConversionError(f"{where} must be a dict with keys {', '.join(RECIPE_KEYS)}")
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ConversionError(f"{where} has unknown key(s) {', '.join(unknown)}; sentence-transformers "
                              f"folders express {', '.join(RECIPE_KEYS)}")
    pooling = recipe.get("pooling", "mean")
    if pooling not in POOLING_FLAGS:
        raise ConversionError(f"{where}['pooling']={pooling!r} has no sentence-transformers equivalent; "
                              f"choose one of {', '.join(POOLING_FLAGS)}")
    length = recipe.get("max_seq_length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length <= 0):
        raise ConversionError(f"{where}['max_seq_length']={length!r} must be a positive integer or null")
    if tokenizer is None:
        raise ConversionError("cannot export a sentence-transformers model without its tokenizer: "
                              "SentenceTransformer needs tokenizer.json; pass tokenizer=")


def pad_token(cfg: ModelConfig, tokenizer) -> str:
    """The padding token for batches: the tokenizer's own, else the model's ``pad_token_id``, else
    ``[PAD]``, else token 0 (pooling masks padding, so any token pads correctly)."""
    padding = getattr(tokenizer, "padding", None) or {}
    if padding.get("pad_token"):
        return padding["pad_token"]
    for tok in (tokenizer.id_to_token(cfg.pad_token_id) if cfg.pad_token_id is not None else None,
                "[PAD]" if tokenizer.token_to_id("[PAD]") is not None else None, tokenizer.id_to_token(0)):
        if tok is not None:
            return tok
    raise ConversionError("the tokenizer has no token to pad with (no pad_token_id, no [PAD], no token 0)")


def write_sentence_files(path: Path, cfg: ModelConfig, recipe: dict[str, Any], tokenizer) -> None:
    """Write the sentence-transformers files beside an exported BERT folder (``config.json``,
    ``model.safetensors`` and ``tokenizer.json`` are the exporter's)."""
    path = Path(path)
    pooling = recipe.get("pooling", "mean")
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE + "Pooling"}]
    if recipe.get("normalize"):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": MODULE + "Normalize"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (path / "1_Pooling").mkdir(exist_ok=True)
    flags = {flag: mode == pooling for mode, flag in POOLING_FLAGS.items()}
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": cfg.d_model, **flags}, indent=2) + "\n")
    length = min(recipe.get("max_seq_length") or cfg.max_seq_len, cfg.max_seq_len)
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": length, "do_lower_case": bool(recipe.get("do_lower_case"))}, indent=2) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad_token(cfg, tokenizer),
         "model_max_length": cfg.max_seq_len}, indent=2) + "\n")
