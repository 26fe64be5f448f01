"""``model.init_from: PATH`` beyond "the same model": a recipe whose ``model:`` section holds only
``init_from`` takes the source's config, and a run that needs more token ids than the source has (a tokenizer
or an objective with new special tokens: gist tokens, [MASK], sentinels) grows the source's vocabulary, each
new row the mean of its rows (models/vocab.py), said once. training/config.py and training/setup.py call
these at the points where a recipe's model section is read, its vocabulary sized, and the source loaded.

The source is a genmodels or Hugging Face model folder, or a GGUF file (llama.cpp's one file: weights,
tokenizer and chat template; its config is read from the metadata alone). :func:`check_source` vets the
path, :func:`open_source` is the one reader of it (the model, or only its config); the data kinds take the
tokenizer from it (data/tokenizer.source_tokenizer: the folder's tokenizer.json or the GGUF file)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError
from ..files import one_line
from ..models.vocab import grow_vocab


def _gguf_file(p: Path) -> bool:
    from ..interop.gguf import is_gguf
    return p.is_file() and is_gguf(p)


def check_source(path: Any) -> None:
    """ConfigError naming ``model.init_from`` unless ``path`` is null, an existing folder, or a GGUF file whose
    metadata and tensor table read (memory-mapped; a fault in a folder or a tensor is named when
    :func:`open_source` reads it)."""
    if path is None:
        return
    if not isinstance(path, str) or not path:
        raise ConfigError(f"model.init_from={path!r} must be a path to a model folder or a GGUF file, or null")
    p = Path(path).expanduser()
    if p.is_dir():
        return
    if not p.is_file():
        raise ConfigError(f"model.init_from={path!r} is not an existing folder or file; give a genmodels or "
                          "Hugging Face model folder, or a .gguf file (or null for fresh weights)")
    from ..interop.gguf import open_gguf
    try:
        open_gguf(p)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a config error naming the field
        raise ConfigError(f"model.init_from={path!r} is not a readable GGUF file ({one_line(e).removeprefix(f'{p}: ')}"
                          "); give a genmodels or Hugging Face model folder, or a .gguf file") from None


def open_source(path: str, weights: bool = True) -> Any:
    """What ``model.init_from=path`` holds: the model (``genmodels.load``: a genmodels or Hugging Face folder, or a
    GGUF file; with its tokenizer and chat template) or, ``weights=False``, only its config (a GGUF file's from
    its metadata: no tensor is read). The caller's RNG does not move; a source that cannot be read is a
    ConfigError naming the field."""
    p = Path(path).expanduser()
    from ..io import load
    try:
        if not weights and _gguf_file(p):
            from ..interop.gguf import read_config
            return read_config(p)
        with torch.random.fork_rng(devices=[]):  # loading builds the model: the caller's RNG does not move
            model = load(p)
    except Exception as e:  # noqa: BLE001 - any unreadable source is a config error naming the field
        raise ConfigError(f"model.init_from={path!r}: cannot be loaded ({one_line(e)}); give a genmodels or "
                          "Hugging Face model folder or a .gguf file, or a model: section with a preset") from None
    return model if weights else model.config


def source_model_section(m: dict[str, Any]) -> dict[str, Any]:
    """The recipe's model section ``m``; when it names only ``init_from`` (an existing folder or GGUF file), the
    source's config with it (so the family, the objective and config.yaml follow the source). A source that
    cannot be read is a ConfigError naming the field; a missing path is left to the recipe's check."""
    path = m.get("init_from")
    if set(m) != {"init_from"} or not isinstance(path, str) or not path or not Path(path).expanduser().exists():
        return m
    check_source(path)
    config = open_source(path, weights=False)
    return {**json.loads(json.dumps(config.to_dict())), "init_from": path}  # as stored: tuples become lists


def vocab_for_source(cfg: Any, mcfg: Any, tokenizer_vocab: int) -> Any:
    """``mcfg`` with ``model.init_from``: a ``vocab_size`` (the recipe's or the source's) short of the ids the
    tokenizer and the objective need grows to them; the source's rows are grown to match in :func:`grown_source`."""
    if cfg.init_from is None:
        return mcfg
    _, need = cfg.min_model_vocab(tokenizer_vocab)
    return mcfg.replace(vocab_size=need) if mcfg.vocab_size < need else mcfg


def grown_source(src: torch.nn.Module, mcfg: Any, path: str, say: Callable[[str], None]) -> torch.nn.Module:
    """``src`` with the token ids the run's config ``mcfg`` has beyond its own (new rows: the mean of its rows),
    said once; ``src`` itself when there are none (a smaller run vocabulary is left to the config comparison)."""
    old, new = getattr(src.config, "vocab_size", None), getattr(mcfg, "vocab_size", None)
    if not isinstance(old, int) or not isinstance(new, int) or new <= old:
        return src
    grown = grow_vocab(src, new - old)
    tied = getattr(src.config, "tie_embeddings", False)
    say(f"model: model.init_from={path!r} has {old} token ids, this run needs {new}: the {new - old} new "
        f"embedding rows are the mean of its {old} rows ("
        + ("the tied head follows)" if tied else "the head's new rows are the mean of its rows too)"))
    return grown
