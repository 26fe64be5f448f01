"""Byte-level BPE tokenizers built with the HuggingFace ``tokenizers`` library.

Byte-level BPE can encode any string (every byte is in the base alphabet), and
since no normaliser is used and no prefix space is added, decoding an encoding
gives back the original text exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..files import atomic_write_bytes, one_line

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TOKENIZER_FILENAME",
    "eos_id",
    "load_tokenizer",
    "save_tokenizer",
    "source_tokenizer",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
"""Document separator; id 0 in tokenizers trained here."""
PAD_TOKEN = "<|pad|>"
TOKENIZER_FILENAME = "tokenizer.json"


def train_bpe_tokenizer(
    docs: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (EOS_TOKEN, PAD_TOKEN),
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``docs``.

    Special tokens take the first ids in the given order (so ``<|endoftext|>``
    is id 0 by default), followed by the 256 byte symbols, then the merges.
    The result is deterministic for the same input.

    Args:
        docs: training texts.
        vocab_size: target vocabulary size, including special tokens and the
            256-symbol byte alphabet (training may stop earlier when no pair
            reaches ``min_frequency``).
        special_tokens: tokens never split by the model.
        min_frequency: minimum count for a pair to be merged.
    """
    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
    if vocab_size < base:
        raise ValueError(
            f"vocab_size must be at least {base} (256 byte symbols + "
            f"{len(special_tokens)} special tokens); got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def _tokenizer_file(path: Path | str) -> Path:
    """Resolve a tokenizer path: a JSON file or a directory holding one."""
    p = Path(path)
    return p / TOKENIZER_FILENAME if p.is_dir() else p


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json`` file, a directory holding one, or a GGUF file (the tokenizer
    its metadata describes, as ``genmodels.load`` attaches it; it saves as an equal tokenizer.json)."""
    file = _tokenizer_file(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path}: expected a {TOKENIZER_FILENAME} file, "
            f"a directory containing one, or a GGUF file"
        )
    from ..interop.gguf import is_gguf, read_tokenizer
    if is_gguf(file):
        tok = read_tokenizer(file)[0]
        if tok is None:
            raise ValueError(f"{file}: holds no tokenizer (no tokenizer.ggml.tokens in its metadata)")
        return tok
    return read_tokenizer_file(file)


def read_tokenizer_file(file: Path | str) -> Tokenizer:
    """The ``tokenizers`` tokenizer of a ``tokenizer.json`` file; one the library cannot read (a text file, a
    truncated one) is a ValueError naming it (the library's own error names no file)."""
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception with serde's message
        raise ValueError(f"{file}: not a readable tokenizer file ({one_line(e)})") from None


def source_tokenizer(source: Path | str) -> str | None:
    """Where a model (``model.init_from``) keeps the tokenizer it was trained with, as a path
    :func:`load_tokenizer` reads: a folder's ``tokenizer.json``, or a GGUF file itself (its metadata);
    None when it keeps none. The data kinds' fresh start from ``model.init_from`` reads it."""
    p = Path(source).expanduser()
    from ..interop.gguf import is_gguf
    if p.is_file() and is_gguf(p):
        return str(p)
    file = p / TOKENIZER_FILENAME
    return str(file) if file.is_file() else None


def save_tokenizer(tok: Tokenizer, path: Path | str) -> Path:
    """Save ``tok`` atomically (temp name, fsync, rename) and return the written file.

    ``path`` ending in ``.json`` is the file itself; anything else is taken as
    a directory (created if needed) that receives ``tokenizer.json``.
    """
    p = Path(path)
    file = p if p.suffix == ".json" and not p.is_dir() else p / TOKENIZER_FILENAME
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(file, tok.to_str(pretty=True).encode("utf-8"))
    return file


def eos_id(tok: Tokenizer) -> int | None:
    """Id of ``<|endoftext|>`` in ``tok``, or ``None`` if it has none."""
    return tok.token_to_id(EOS_TOKEN)


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """SHA-256 hex digest of the tokenizer's canonical JSON serialisation."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
