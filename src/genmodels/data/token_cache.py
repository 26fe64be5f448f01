"""On-disk token caches: a corpus split tokenised once into one flat token file, verified on load.

Pipeline: documents -> :func:`tokenize_to_cache` (one flat on-disk token stream, documents separated
by EOS; a JSON sidecar records dtype, length, vocabulary and the file's SHA-256) ->
:class:`TokenCache` (keyed by corpus + tokenizer + split; a damaged entry is rebuilt) -> the packing
and sampling of :mod:`genmodels.data.packing`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..files import atomic_write, atomic_write_bytes, file_sha256
from .tokenizer import eos_id as tokenizer_eos_id
from .tokenizer import tokenizer_fingerprint

__all__ = [
    "TokenCache",
    "check_token_file",
    "default_cache_root",
    "load_token_file",
    "token_dtype",
    "tokenize_to_cache",
]

_CACHE_FORMAT = 2  # 2: the sidecar records the file's SHA-256, verified on load
_ENCODE_BATCH_DOCS = 256

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# Flat token files
# --------------------------------------------------------------------------- #
def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding ids ``0 .. vocab_size - 1``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _sidecar(cache_path: Path) -> Path:
    """Path of the JSON metadata file next to a token file."""
    return cache_path.with_name(cache_path.name + ".json")


def tokenize_to_cache(
    docs: Iterable[str],
    tokenizer: Tokenizer,
    cache_path: Path | str,
    eos_id: int | None,
    batch_docs: int = _ENCODE_BATCH_DOCS,
    extra_meta: dict[str, Any] | None = None,
) -> np.memmap:
    """Tokenise ``docs`` into one flat token file and return it memory-mapped.

    Each non-empty document is encoded (``encode_batch`` in batches of
    ``batch_docs`` documents, which runs in parallel) and followed by
    ``eos_id`` unless it is ``None``.  Tokens are stored as ``uint16`` (or
    ``uint32`` for vocabularies above 65536) in ``cache_path``; a sidecar
    ``<cache_path>.json`` records dtype, length and vocab size.  Both files
    are written to temporary names and renamed into place, the sidecar last,
    so a reader never sees a partial cache.

    Raises ``ValueError`` if the documents produce no tokens.
    """
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    sep = [] if eos_id is None else [int(eos_id)]
    length = 0
    num_docs = 0

    digest = hashlib.sha256()

    def write(fh: Any) -> None:
        nonlocal length, num_docs
        batch: list[str] = []

        def flush() -> None:
            nonlocal length, num_docs
            encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
            count = sum(len(e.ids) for e in encodings) + len(sep) * len(encodings)
            ids = chain.from_iterable(chain(e.ids, sep) for e in encodings)
            chunk = np.fromiter(ids, dtype=dtype, count=count)
            digest.update(chunk)
            chunk.tofile(fh)
            length += count
            num_docs += len(batch)
            batch.clear()

        for doc in docs:
            if doc:
                batch.append(doc)
                if len(batch) >= batch_docs:
                    flush()
        if batch:
            flush()

    atomic_write(cache_path, write)
    if length == 0:
        cache_path.unlink(missing_ok=True)
        raise ValueError(f"no tokens to write to {cache_path}: all documents are empty")
    meta = {
        "format": _CACHE_FORMAT,
        "dtype": dtype.name,
        "length": length,
        "vocab_size": vocab_size,
        "num_docs": num_docs,
        "eos_id": eos_id,
        "sha256": digest.hexdigest(),
        **(extra_meta or {}),
    }
    blob = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    atomic_write_bytes(_sidecar(cache_path), blob)
    return np.memmap(cache_path, dtype=dtype, mode="r", shape=(length,))


def check_token_file(
    cache_path: Path | str, vocab_size: int | None = None
) -> tuple[np.memmap | None, str | None]:
    """``(tokens, None)`` for a sound token file, else ``(None, why)``.

    ``why`` is ``"missing"`` when there is no complete cache (no file or no
    sidecar: never written, or a write was interrupted), otherwise it says
    what is wrong: an unreadable or old-format sidecar, a size that does not
    match it, bytes whose SHA-256 differs from the recorded one, or ids at or
    above the vocabulary (``vocab_size`` if given, else the recorded one).
    Verifying the stdlib corpus' train split (~20 MB) costs ~10 ms for the
    hash and ~5 ms for the id range.
    """
    cache_path = Path(cache_path)
    sidecar = _sidecar(cache_path)
    if not (cache_path.is_file() and sidecar.is_file()):
        return None, "missing"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        length = int(meta["length"])
        recorded_vocab = int(meta["vocab_size"])
        sha = meta["sha256"]
        if meta.get("format") != _CACHE_FORMAT or length <= 0:
            return None, f"{sidecar} has format {meta.get('format')!r}, expected {_CACHE_FORMAT}"
        size = cache_path.stat().st_size
        if size != length * dtype.itemsize:
            return None, f"{cache_path} has {size} bytes, its sidecar says {length * dtype.itemsize}"
        if file_sha256(cache_path) != sha:
            return None, f"{cache_path} does not match the SHA-256 in its sidecar (corrupted)"
        tokens = np.memmap(cache_path, dtype=dtype, mode="r", shape=(length,))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{sidecar} is unreadable ({e})"
    limit = min(recorded_vocab, vocab_size) if vocab_size is not None else recorded_vocab
    top = int(tokens.max())
    if top >= limit:
        return None, f"{cache_path} holds token id {top}, outside the vocabulary of {limit}"
    return tokens, None


def load_token_file(cache_path: Path | str) -> np.memmap | None:
    """Memory-map a token file written by :func:`tokenize_to_cache`.

    Returns ``None`` when the file or its sidecar is missing, unreadable or
    inconsistent (wrong size, wrong SHA-256, ids outside the vocabulary),
    i.e. when the cache must be (re)built; :func:`check_token_file` says why.
    """
    return check_token_file(cache_path)[0]


# --------------------------------------------------------------------------- #
# Cache keyed by corpus + tokenizer + split
# --------------------------------------------------------------------------- #
def default_cache_root() -> Path:
    """``$GENMODELS_CACHE`` if set, else ``~/.cache/genmodels`` (read at call time)."""
    env = os.environ.get("GENMODELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genmodels"


class TokenCache:
    """On-disk cache of tokenised corpus splits.

    An entry is identified by (corpus fingerprint, tokenizer fingerprint,
    split name, EOS id) and lives in ``<root>/tokens/<key>/tokens.bin`` (plus
    ``tokens.bin.json``).  A hit is memory-mapped at once; a miss calls the
    document factory, tokenises and stores the result.
    """

    def __init__(self, corpus_fingerprint: str, root: Path | str | None = None) -> None:
        self.corpus_fingerprint = corpus_fingerprint
        self.root = Path(root) if root is not None else default_cache_root()

    def key(self, tokenizer: Tokenizer, split: str, eos_id: int | None = None) -> str:
        """Hex cache key for ``split`` tokenised with ``tokenizer``."""
        payload = {
            "format": _CACHE_FORMAT,
            "corpus": self.corpus_fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "split": split,
            "eos_id": eos_id,
        }
        blob = json.dumps(payload, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:32]

    def path(self, tokenizer: Tokenizer, split: str, eos_id: int | None = None) -> Path:
        """Token file path for an entry (it may not exist yet)."""
        return self.root / "tokens" / self.key(tokenizer, split, eos_id) / "tokens.bin"

    def get(
        self, tokenizer: Tokenizer, split: str, eos_id: int | None = None
    ) -> np.memmap | None:
        """The cached tokens, or ``None`` on a miss."""
        return load_token_file(self.path(tokenizer, split, eos_id))

    def get_or_build(
        self,
        docs_fn: Callable[[], Iterable[str]],
        tokenizer: Tokenizer,
        split: str,
        eos_id: int | None = None,
        say: Callable[[str], Any] | None = None,
    ) -> np.memmap:
        """Return cached tokens for ``split``, building them on a miss.

        ``docs_fn`` is called only on a miss.  ``eos_id`` defaults to the
        tokenizer's ``<|endoftext|>`` id.  A cached entry that fails
        :func:`check_token_file` is rebuilt, with one line to ``say``
        (default: a logging warning) naming the file and the fault.
        """
        if eos_id is None:
            eos_id = tokenizer_eos_id(tokenizer)
        path = self.path(tokenizer, split, eos_id)
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        cached, why = check_token_file(path, vocab)
        if cached is not None:
            return cached
        if why != "missing":
            (say or log.warning)(f"token cache: {why}; rebuilding it")
        meta = {
            "corpus_fingerprint": self.corpus_fingerprint,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "split": split,
        }
        return tokenize_to_cache(docs_fn(), tokenizer, path, eos_id, extra_meta=meta)
