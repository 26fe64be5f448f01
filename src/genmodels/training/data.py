"""Wire the data building blocks for a training run: corpus → tokenizer → cached tokens → windows.

The trained tokenizer is cached too, under ``<cache>/tokenizers/<key>/tokenizer.json`` with the
key = sha256(corpus fingerprint, vocab size, training-text cap, format), so a second run with
the same corpus and vocabulary starts at once; ``tokenizer.json.sha256`` next to it records the
file's digest, checked on every load (a truncated or garbled cached tokenizer is retrained, with a
line saying so). Token streams are cached by :class:`genmodels.data.TokenCache` (keyed by corpus +
tokenizer + split, checksummed the same way).
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
from ..data.corpus import TEXT_BLOCK_LINES
from ..files import atomic_write_bytes, file_sha256
from .config import DataConfig

_TOKENIZER_CACHE_FORMAT = 2  # 2: a .sha256 sidecar, verified on load


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


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_digest(path: Path) -> None:
    """Record ``path``'s SHA-256 in its sidecar (temp name, fsync, rename)."""
    atomic_write_bytes(_digest_file(path), (file_sha256(path) + "\n").encode("ascii"))


def cached_tokenizer(path: Path) -> tuple[Tokenizer | None, str | None]:
    """``(tokenizer, None)`` from a sound tokenizer cache, else ``(None, why)`` (``"missing"``:
    never written or interrupted before its checksum)."""
    if not (path.is_file() and _digest_file(path).is_file()):
        return None, "missing"
    try:
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != _digest_file(path).read_text(encoding="ascii").strip():
            return None, f"{path} does not match the SHA-256 in {_digest_file(path).name} (corrupted)"
        return Tokenizer.from_str(blob.decode("utf-8")), None
    except Exception as e:  # OSError, UnicodeDecodeError; tokenizers raises plain Exception
        return None, f"{path} cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def _corpus_name(d: DataConfig) -> str:
    return "the stdlib corpus" if d.corpus == "stdlib" else f"data.path {d.path!r} (data.corpus={d.corpus!r})"


def _too_small(d: DataConfig, docs: tuple[list[str], list[str]]) -> str | None:
    """Why ``docs`` cannot make both splits (one line), or None."""
    train, val = ([x for x in part if x] for part in docs)
    if train and val:
        return None
    n = len(train) + len(val)
    if d.corpus == "text":
        lines = sum(x.count("\n") + (not x.endswith("\n")) for x in train + val)
        has, needs = (f"its {lines} line(s) make {n} block(s) of up to {TEXT_BLOCK_LINES} lines",
                      f"at least 2 blocks (more than {TEXT_BLOCK_LINES} lines)")
    elif d.corpus == "folder":
        has, needs = f"{n} non-empty file(s) match data.extensions {list(d.extensions)}", "at least 2 files"
    else:
        has, needs = f"it has {n} non-empty document(s)", "at least 2"
    return (f"{_corpus_name(d)} is too small to split into train and validation (data.val_fraction="
            f"{d.val_fraction}): {has}; it needs {needs}, each split with at least data.seq_len+1 = "
            f"{d.seq_len + 1} tokens")


def _windows(d: DataConfig, tokens, split: str) -> PackedDataset:
    if len(tokens) >= d.seq_len + 1:
        return PackedDataset(tokens, d.seq_len)
    fix = "raise data.val_fraction or lower data.seq_len" if split == "validation" else "lower data.seq_len"
    raise ValueError(f"{_corpus_name(d)} is too small: its {split} split has {len(tokens)} tokens, fewer than one "
                     f"window of data.seq_len+1 = {d.seq_len + 1} (data.val_fraction={d.val_fraction}); use more "
                     f"text or {fix}")


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
            if (why := _too_small(d, docs)) is not None:
                raise ValueError(why)
        return docs

    info: dict = {"corpus_fingerprint": fp}
    if d.tokenizer is not None:
        tok = load_tokenizer(d.tokenizer)
        info["tokenizer"] = f"loaded from {d.tokenizer}"
    else:
        path = tokenizer_cache_path(fp, d, cache_root)
        tok, why = cached_tokenizer(path)
        if tok is not None:
            info["tokenizer"] = f"cached ({path})"
        else:
            if why != "missing":
                log(f"tokenizer cache: {why}; retraining it")
            train_docs = _capped(documents()[0], d.tokenizer_max_mb)
            t1 = time.time()
            tok = train_bpe_tokenizer(train_docs, d.vocab_size)
            save_tokenizer(tok, path)
            _write_digest(path)
            info["tokenizer"] = (f"trained BPE vocab {tok.get_vocab_size()} on {sum(map(len, train_docs)) / 1e6:.1f} "
                                 f"MB in {time.time() - t1:.1f}s (cached at {path})")
    eos = eos_id(tok)
    cache = TokenCache(fp, root=cache_root)
    train_tokens = cache.get_or_build(lambda: documents()[0], tok, "train", eos, say=log)
    val_tokens = cache.get_or_build(lambda: documents()[1], tok, "val", eos, say=log)
    train, val = _windows(d, train_tokens, "training"), _windows(d, val_tokens, "validation")
    info.update(train_tokens=int(len(train_tokens)), val_tokens=int(len(val_tokens)), train_windows=len(train),
                val_windows=len(val), prepare_s=round(time.time() - t0, 2))
    log(f"data: {info['tokenizer']}; train {len(train_tokens):,} tokens ({len(train):,} windows of {d.seq_len}), "
        f"val {len(val_tokens):,} tokens ({time.time() - t0:.1f}s)")
    return TrainingData(tok, train, val, eos, info)
