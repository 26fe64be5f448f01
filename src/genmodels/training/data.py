"""Wire the data building blocks for a training run: corpus → tokenizer → cached tokens → windows.

The trained tokenizer is cached too, under ``<cache>/tokenizers/<key>/tokenizer.json`` with the
key = sha256(corpus fingerprint, vocab size, training-text cap, format), so a second run with
the same corpus and vocabulary starts at once; ``tokenizer.json.sha256`` next to it records the
file's digest, checked on every load (a truncated or garbled cached tokenizer is retrained, with a
line saying so). Token streams are cached by :class:`genmodels.data.TokenCache` (keyed by corpus +
tokenizer + split, checksummed the same way).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..config import ConfigError
from ..data import (CorpusSpec, PackedDataset, TokenCache, corpus_fingerprint, default_cache_root, eos_id,
                    load_documents, load_tokenizer, save_tokenizer, train_bpe_tokenizer)
from ..data.corpus import CORPUS_KINDS, TEXT_BLOCK_LINES
from ..data.examples_kind import examples_data_kind
from ..data.pairs_kind import pairs_data_kind
from ..data.tokenizer import source_tokenizer
from ..data.kinds import DataKind, register_data_kind
from ..files import atomic_write_bytes, file_sha256
from ..values import integer, number, reject_unknown, string

_TOKENIZER_CACHE_FORMAT = 2  # 2: a .sha256 sidecar, verified on load


def _section(cls, d: Any, path: str):
    """``cls(**d)`` for a recipe section, unknown keys refused by name."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path} must be a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
    reject_unknown(d, cls, path + ".")
    return cls(**d)


@dataclass
class DataConfig:
    """The ``data:`` section of a token recipe (the ``tokens`` data kind)."""

    corpus: str = "stdlib"  # stdlib | text | folder | jsonl
    path: str | None = None
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".py"])
    text_field: str = "text"
    exclude_tests: bool = True
    val_fraction: float = 0.05
    vocab_size: int = 8192  # BPE vocabulary trained when `tokenizer` is null
    tokenizer: str | None = None  # an existing tokenizer.json (or a folder holding one)
    tokenizer_max_mb: float | None = None  # cap on the text used to train the BPE (None: all)
    seq_len: int = 256

    @classmethod
    def from_dict(cls, d: Any, path: str = "data") -> "DataConfig":
        out = _section(cls, d, path)
        out.validate()
        return out

    def validate(self) -> None:
        """ConfigError naming the data field that is bad."""
        d = self
        for k in ("corpus", "text_field"):
            string(f"data.{k}", getattr(d, k))
        for k in ("path", "tokenizer"):
            if getattr(d, k) is not None:
                string(f"data.{k}", getattr(d, k))
        if not isinstance(d.exclude_tests, bool):
            raise ConfigError(f"data.exclude_tests={d.exclude_tests!r} must be true or false")
        if d.corpus not in CORPUS_KINDS:
            raise ConfigError(f"data.corpus={d.corpus!r} is not allowed; choose one of {', '.join(CORPUS_KINDS)}")
        if d.corpus != "stdlib":
            if not d.path:
                raise ConfigError(f"data.path is required when data.corpus is {d.corpus!r}")
            p = Path(d.path)
            if not p.exists():
                raise ConfigError(f"data.path={d.path!r} does not exist")
            if (d.corpus == "folder") != p.is_dir():
                raise ConfigError(f"data.path={d.path!r} must be a {'folder' if d.corpus == 'folder' else 'file'} "
                                  f"for data.corpus={d.corpus!r}")
        if not isinstance(d.extensions, list) or not all(isinstance(e, str) and e for e in d.extensions):
            raise ConfigError(f"data.extensions={d.extensions!r} must be a list of file endings like ['.txt', '.py']")
        number("data.val_fraction", d.val_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        integer("data.seq_len", d.seq_len, 1)
        integer("data.vocab_size", d.vocab_size, 258)
        if d.tokenizer is not None:
            tp = Path(d.tokenizer)
            if not (tp.is_file() or (tp / "tokenizer.json").is_file()):
                raise ConfigError(f"data.tokenizer={d.tokenizer!r}: no tokenizer.json there "
                                  "(give a tokenizer.json file, a folder holding one, or null to train a BPE)")
        if d.tokenizer_max_mb is not None:
            number("data.tokenizer_max_mb", d.tokenizer_max_mb, lo=0.0, lo_open=True)


@dataclass
class SampleConfig:
    """The ``sample:`` section of a text recipe: the prompts generated from at the end of a run."""

    prompts: list[str] = field(default_factory=lambda: ["def ", "import "])
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None

    def validate(self, model_config=None) -> None:
        s = self
        if not isinstance(s.prompts, list) or not all(isinstance(p, str) for p in s.prompts):
            raise ConfigError(f"sample.prompts={s.prompts!r} must be a list of strings")
        integer("sample.max_new_tokens", s.max_new_tokens, 0)
        number("sample.temperature", s.temperature, lo=0.0)
        if s.top_k is not None:
            integer("sample.top_k", s.top_k, 1)
        if s.top_p is not None:
            number("sample.top_p", s.top_p, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class TrainingData:
    """A token run's data (a :class:`~genmodels.data.kinds.RunData`): tokenizer, train / val windows."""

    tokenizer: Tokenizer
    train: PackedDataset
    val: PackedDataset
    eos_id: int | None
    info: dict

    @property
    def fingerprint(self) -> str:
        return self.info["corpus_fingerprint"]


def corpus_spec(d: DataConfig) -> CorpusSpec:
    """The corpus a token data section reads."""
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


# ---- the tokens data kind -------------------------------------------------------------------------
def _resumed(dc: DataConfig, run_dir: Path) -> DataConfig:
    """A resumed run reads the tokenizer it was trained with (``RUN/tokenizer.json``)."""
    return dataclasses.replace(dc, tokenizer=str(Path(run_dir) / "tokenizer.json"))


def _started(dc: DataConfig, init_from: str | None) -> DataConfig:
    """A run that starts from ``model.init_from`` reads that folder's tokenizer.json, or the GGUF file's tokenizer
    (ConfigError naming the field when there is none); ``dc`` unchanged without init_from."""
    if init_from is None:
        return dc
    tok_file = source_tokenizer(init_from)  # the folder's tokenizer.json, or the GGUF file's own
    if tok_file is None:
        raise ConfigError(f"model.init_from={init_from!r} has no tokenizer.json; the run needs the tokenizer the "
                          "model was trained with (give a folder saved with its tokenizer)")
    return dataclasses.replace(dc, tokenizer=tok_file)


def _fingerprint(dc: DataConfig) -> str:
    return corpus_fingerprint(corpus_spec(dc))


def _describe(dc: DataConfig) -> str:
    return f"corpus (data.corpus={dc.corpus!r}, data.path={dc.path!r}, ...)"


def _older(dc: DataConfig) -> tuple[str, ...]:
    """The fingerprint checkpoints written before content hashing hold (paths, sizes, modification times)."""
    return (corpus_fingerprint(corpus_spec(dc), version=1),)


TOKENS = register_data_kind(DataKind(name="tokens", config_class=DataConfig, sample_class=SampleConfig,
                                     prepare=lambda dc, say: prepare_data(dc, log=say), fingerprint=_fingerprint,
                                     resumed=_resumed, started=_started, describe=_describe, older=_older))
EXAMPLES = register_data_kind(examples_data_kind(SampleConfig))  # JSONL examples; their samples are text too
PAIRS = register_data_kind(pairs_data_kind(SampleConfig))  # preference pairs (DPO, reward models)
