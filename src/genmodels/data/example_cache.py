"""Tokenised examples cached on disk, keyed by content, and the packed train/validation rows built on them.

An entry is keyed by the SHA-256 of the JSONL file's bytes, the tokenizer's fingerprint, the chat
template's source and the EOS id (so an edit to any of them tokenises again), and lives in
``<cache root>/examples/<key>/examples.npz`` with ``examples.npz.json`` (format and the npz file's
SHA-256, checked on every load: a damaged entry is rebuilt, with one line saying so). Packing is not
cached: it is cheap, and it depends on ``seq_len``.

The split is the corpus' (:mod:`.corpus`): a record goes to validation by a hash of its index, with
both splits non-empty from two records on.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes, file_sha256
from .chat_template import PLAIN_TEMPLATE
from .corpus import _split_by_keys
from .example_pack import PackedExamples, packing_note
from .examples import ExampleError, TokenizedExamples, read_records, tokenize_examples
from .token_cache import default_cache_root
from .tokenizer import tokenizer_fingerprint

__all__ = ["ExampleSplits", "cached_examples", "examples_cache_path", "examples_fingerprint", "prepare_examples"]

_FORMAT = 1
_ARRAYS = ("tokens", "loss", "offsets", "lines")
log = logging.getLogger(__name__)


def examples_fingerprint(path: str | Path) -> str:
    """Digest of an examples file's bytes (what a resumed run checks it trains on)."""
    blob = json.dumps({"format": _FORMAT, "kind": "examples", "sha256": file_sha256(path)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def examples_cache_path(path: str | Path, tokenizer, template: str | None, eos_id: int | None,
                        root: Path | None = None) -> Path:
    """Where the tokenised examples of ``path`` live (keyed as the module says)."""
    key = json.dumps({"format": _FORMAT, "file": file_sha256(path), "tokenizer": tokenizer_fingerprint(tokenizer),
                      "template": template or PLAIN_TEMPLATE, "eos_id": eos_id}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return (root or default_cache_root()) / "examples" / digest / "examples.npz"


def _load(file: Path) -> tuple[TokenizedExamples | None, str]:
    """``(examples, "")`` from a sound entry, else ``(None, why)`` (``"missing"``: never finished)."""
    sidecar = file.with_name(file.name + ".json")
    if not (file.is_file() and sidecar.is_file()):
        return None, "missing"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT or meta.get("sha256") != file_sha256(file):
            return None, f"{file} does not match the SHA-256 in its sidecar (corrupted)"
        with np.load(file) as z:
            return TokenizedExamples(*(z[name] for name in _ARRAYS)), ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{file} is unreadable ({e})"


def cached_examples(path: str | Path, tokenizer, eos_id: int | None, template: str | None = None,
                    variables: dict[str, Any] | None = None, root: Path | None = None,
                    say: Callable[[str], Any] | None = None) -> TokenizedExamples:
    """The tokenised examples of ``path`` (:func:`~genmodels.data.examples.tokenize_examples`), from the cache
    or built now and stored (npz first, its checksummed sidecar last)."""
    file = examples_cache_path(path, tokenizer, template, eos_id, root)
    data, why = _load(file)
    if data is not None:
        return data
    if why != "missing":
        (say or log.warning)(f"examples cache: {why}; rebuilding it")
    data = tokenize_examples(read_records(path), tokenizer, eos_id, template, variables)
    buf = io.BytesIO()
    np.savez(buf, **{name: getattr(data, name) for name in _ARRAYS})
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(file, buf.getvalue())
    meta = {"format": _FORMAT, "sha256": file_sha256(file), "source": str(path), "examples": len(data)}
    atomic_write_bytes(file.with_name(file.name + ".json"), json.dumps(meta, indent=2).encode())
    return data


@dataclass
class ExampleSplits:
    train: PackedExamples
    val: PackedExamples
    info: dict


def prepare_examples(path: str | Path, tokenizer, seq_len: int, val_fraction: float, eos_id: int | None,
                     template: str | None = None, root: Path | None = None,
                     say: Callable[[str], Any] = print) -> ExampleSplits:
    """Train and validation rows of the examples in ``path``: tokenised (cached), split, packed; one line
    for the examples cut or dropped to fit ``seq_len``. Padding uses ``eos_id`` (0 without one)."""
    variables = {"eos_token": tokenizer.id_to_token(eos_id)} if eos_id is not None else {}
    data = cached_examples(path, tokenizer, eos_id, template, variables, root, say)
    if len(data) < 2:
        raise ExampleError(f"{path}: {len(data)} example; a run needs at least 2 (train and validation)")
    train_idx, val_idx = _split_by_keys(list(range(len(data))), [f"examples:{i}" for i in range(len(data))],
                                        val_fraction)
    pad = eos_id if eos_id is not None else 0
    splits = {}
    for name, idx in (("train", train_idx), ("validation", val_idx)):
        try:
            splits[name] = PackedExamples(data, idx, seq_len, pad)
        except ValueError as e:
            raise ExampleError(f"{path}: {name} split: {e}") from None
    train, val = splits["train"], splits["validation"]
    if (note := packing_note(splits, seq_len)) is not None:
        say(note)
    info = {"examples": len(data), "train_examples": len(train.examples), "val_examples": len(val.examples),
            "train_rows": len(train), "val_rows": len(val), "train_tokens": train.num_tokens(),
            "val_tokens": val.num_tokens()}
    return ExampleSplits(train, val, info)
