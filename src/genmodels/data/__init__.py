"""Data pipeline for causal-LM pre-training.

Corpora (:mod:`.corpus`) and their fingerprint (:mod:`.fingerprint`), byte-level BPE tokenizers
(:mod:`.tokenizer`), token caches (:mod:`.token_cache`), packing and batch sampling (:mod:`.packing`).
"""

from .corpus import (
    CORPUS_KINDS,
    CorpusSpec,
    folder_documents,
    folder_files,
    jsonl_documents,
    load_documents,
    split_train_val,
    stdlib_files,
    stdlib_root,
    text_file_documents,
)
from .fingerprint import corpus_fingerprint
from .packing import BatchSampler, PackedDataset
from .token_cache import (
    TokenCache,
    check_token_file,
    default_cache_root,
    load_token_file,
    token_dtype,
    tokenize_to_cache,
)
from .tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    TOKENIZER_FILENAME,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

__all__ = [
    "CORPUS_KINDS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TOKENIZER_FILENAME",
    "BatchSampler",
    "CorpusSpec",
    "PackedDataset",
    "TokenCache",
    "check_token_file",
    "corpus_fingerprint",
    "default_cache_root",
    "eos_id",
    "folder_documents",
    "folder_files",
    "jsonl_documents",
    "load_documents",
    "load_token_file",
    "load_tokenizer",
    "save_tokenizer",
    "split_train_val",
    "stdlib_files",
    "stdlib_root",
    "text_file_documents",
    "token_dtype",
    "tokenize_to_cache",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]
