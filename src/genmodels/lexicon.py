"""SPAE's lexicon: the subset T of a frozen LM's tokens that forms the lexical codebook, with their embedding rows.

    select_words(tokens, rule, min_chars, size, include)   which token ids are entries (and their words)
    build_lexicon(config)                                  the LM's table read (interop/lm_vocab.py), T kept
    lexicon_for(config)                                    the same, cached on disk by LM file and selection

``lower_words`` keeps word-start tokens made of lower-case letters a-z only, at least ``min_chars`` long: in a
byte-level BPE vocabulary (SmolLM2) the tokens spelled ``Ġword`` (a leading space: the LM writes them as whole
words), in a WordPiece one (MiniLM) the tokens without ``##``. The first ``size`` of them by token id (BPE ids
rise as merges get rarer: frequent words first), with the ``include`` words always kept (a word that is no
single token of the LM is refused, naming it). A saved lexicon is ``lexicon.safetensors`` (vectors (K, d_lm),
lm_ids (K,)) + ``lexicon.json`` (words, source): what the SPAE model keeps of it (its buffers and word list).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError

WORD = re.compile(r"[a-z]+")
MARKERS = ("Ġ", "▁")  # byte-level BPE's and SentencePiece's word-start marks


@dataclass
class Lexicon:
    words: list[str]  # entry k's word
    vectors: torch.Tensor  # (K, d_lm) the LM's input embeddings of those tokens
    lm_ids: torch.Tensor  # (K,) int64 the tokens' ids in the LM
    source: str  # where they came from (the LM file, and the selection)

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.vectors.contiguous(), "lm_ids": self.lm_ids.contiguous()},
                  str(folder / "lexicon.safetensors"))
        (folder / "lexicon.json").write_text(json.dumps({"words": self.words, "source": self.source}))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "Lexicon":
        from safetensors.torch import load_file
        t = load_file(str(folder / "lexicon.safetensors"))
        meta = json.loads((folder / "lexicon.json").read_text())
        return cls(meta["words"], t["vectors"], t["lm_ids"], meta["source"])


def select_words(tokens: list[str], rule: str, min_chars: int, size: int,
                 include: list[str] = ()) -> tuple[list[int], list[str]]:
    """``(token ids, words)`` of the entries ``rule`` keeps from ``tokens`` (strings by id), in id order: the
    ``include`` words first wherever they rank, then the first others up to ``size`` in all."""
    if rule != "lower_words":
        raise ConfigError(f"model.lexicon_rule={rule!r} is not allowed; choose one of lower_words")
    marked = any(t[:1] in MARKERS for t in tokens[:5000])
    found: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if marked:
            if t[:1] not in MARKERS:
                continue
            t = t[1:]
        if len(t) >= min_chars and WORD.fullmatch(t) and t not in found:
            found[t] = i
    missing = [w for w in include if w not in found]
    if missing:
        raise ConfigError(f"model.include: {', '.join(missing[:5])} is not a whole-word token of the LM "
                          f"under lexicon_rule={rule}, min_chars={min_chars}; drop it or change the rule")
    chosen = list(dict.fromkeys(include))
    for w in found:
        if len(chosen) >= size:
            break
        if w not in chosen:
            chosen.append(w)
    if len(chosen) < size:
        raise ConfigError(f"model.codebook_size={size}: the LM has only {len(chosen)} tokens under "
                          f"lexicon_rule={rule}, min_chars={min_chars}")
    return [found[w] for w in chosen], chosen


def build_lexicon(config) -> Lexicon:
    """The lexicon an SPAEConfig describes, read from its LM (interop/lm_vocab.token_table)."""
    from .interop.lm_vocab import resolve, token_table
    tokens, table = token_table(config.lexicon)
    if table.shape[1] != config.lm_dim:
        raise ConfigError(f"model.lm_dim={config.lm_dim} differs from the width of {config.lexicon}'s embeddings "
                          f"({table.shape[1]}); set model.lm_dim={table.shape[1]}")
    ids, words = select_words(tokens, config.lexicon_rule, config.min_chars, config.codebook_size, config.include)
    lm_ids = torch.tensor(ids, dtype=torch.int64)
    source = f"{resolve(config.lexicon).name}: {config.lexicon_rule}, min_chars {config.min_chars}, first " \
             f"{config.codebook_size}"
    return Lexicon(words, table[lm_ids].clone(), lm_ids, source)


def _key(config) -> str:
    from .interop.lm_vocab import resolve
    path = resolve(config.lexicon).resolve()
    stat = path.stat()
    what = [str(path), stat.st_size, stat.st_mtime_ns, config.lexicon_rule, config.min_chars, config.codebook_size,
            list(config.include), config.lm_dim]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def lexicon_for(config, cache_root: Path | None = None) -> Lexicon:
    """:func:`build_lexicon`, cached under ``<cache>/spae/lexicon-<key>/`` (key: the LM file's path, size and
    mtime, and the selection), so a run reads the LM once."""
    from .metrics.classifier import default_cache_root
    folder = Path(cache_root or default_cache_root()) / "spae" / f"lexicon-{_key(config)}"
    if (folder / "lexicon.json").is_file() and (folder / "lexicon.safetensors").is_file():
        return Lexicon.load(folder)
    lex = build_lexicon(config)
    tmp = folder.with_name(folder.name + f".tmp{id(lex)}")
    lex.save(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return Lexicon.load(folder) if folder.is_dir() else lex
