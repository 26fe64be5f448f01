"""Wire the data building blocks for a training run: corpus → tokenizer → cached tokens → windows.

The trained tokenizer is cached too, under ``<cache>/tokenizers/<key>/tokenizer.json`` with the
key = sha256(corpus fingerprint, vocab size, training-text cap, format), so a second run with
the same corpus and vocabulary starts at once. Token streams are cached by
:class:`genmodels.data.TokenCache` (keyed by corpus + tokenizer + split).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from ..data import (CorpusSpec, PackedDataset, TokenCache, corpus_fingerprint, default_cache_root, eos_id,
                    load_documents, load_tokenizer, save_tokenizer, train_bpe_tokenizer)
from .config import DataConfig

_TOKENIZER_CACHE_FORMAT = 1


@dataclass
class TrainingData:
    tokenizer: Tokenizer
    train: PackedDataset
    val: PackedDataset
    eos_id: int | None
    info: dict


def corpus_spec(d: DataConfig) -> CorpusSpec:
    return CorpusSpec(kind=d.corpus, path=d.path, extensions=list(d.extensions), text_field=d.text_field,
                      exclude_tests=d.exclude_tests, val_fraction=d.val_fraction)


def _capped(docs: list[str], max_mb: float | None) -> list[str]:
    if max_mb is None:
        return docs
    cap, n, out = int(max_mb * 1e6), 0, []
    for doc in docs:
        if n >= cap:
            break
        out.append(doc)
        n += len(doc)
    return out


def tokenizer_cache_path(fingerprint: str, d: DataConfig, root: Path | None = None) -> Path:
    key = json.dumps({"format": _TOKENIZER_CACHE_FORMAT, "corpus": fingerprint, "vocab_size": d.vocab_size,
                      "max_mb": d.tokenizer_max_mb}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return (root or default_cache_root()) / "tokenizers" / digest / "tokenizer.json"


def prepare_data(d: DataConfig, log=print, cache_root: Path | None = None) -> TrainingData:
    """Tokenizer (given, cached, or trained now) and the packed train/val windows (cached tokens)."""
    spec = corpus_spec(d)
    t0 = time.time()
    fp = corpus_fingerprint(spec)
    docs: tuple[list[str], list[str]] | None = None

    def documents() -> tuple[list[str], list[str]]:
        nonlocal docs
        if docs is None:
            docs = load_documents(spec)
        return docs

    info: dict = {"corpus_fingerprint": fp}
    if d.tokenizer is not None:
        tok = load_tokenizer(d.tokenizer)
        info["tokenizer"] = f"loaded from {d.tokenizer}"
    else:
        path = tokenizer_cache_path(fp, d, cache_root)
        if path.is_file():
            tok = load_tokenizer(path)
            info["tokenizer"] = f"cached ({path})"
        else:
            train_docs = _capped(documents()[0], d.tokenizer_max_mb)
            t1 = time.time()
            tok = train_bpe_tokenizer(train_docs, d.vocab_size)
            save_tokenizer(tok, path)
            info["tokenizer"] = (f"trained BPE vocab {tok.get_vocab_size()} on {sum(map(len, train_docs)) / 1e6:.1f} "
                                 f"MB in {time.time() - t1:.1f}s (cached at {path})")
    eos = eos_id(tok)
    cache = TokenCache(fp, root=cache_root)
    train_tokens = cache.get_or_build(lambda: documents()[0], tok, "train", eos)
    val_tokens = cache.get_or_build(lambda: documents()[1], tok, "val", eos)
    try:
        train = PackedDataset(train_tokens, d.seq_len)
    except ValueError as e:
        raise ValueError(f"training split too small for data.seq_len={d.seq_len}: {e}") from None
    try:
        val = PackedDataset(val_tokens, d.seq_len)
    except ValueError as e:
        raise ValueError(f"validation split too small for data.seq_len={d.seq_len} "
                         f"(raise data.val_fraction or lower data.seq_len): {e}") from None
    info.update(train_tokens=int(len(train_tokens)), val_tokens=int(len(val_tokens)), train_windows=len(train),
                val_windows=len(val), prepare_s=round(time.time() - t0, 2))
    log(f"data: {info['tokenizer']}; train {len(train_tokens):,} tokens ({len(train):,} windows of {d.seq_len}), "
        f"val {len(val_tokens):,} tokens ({time.time() - t0:.1f}s)")
    return TrainingData(tok, train, val, eos, info)
