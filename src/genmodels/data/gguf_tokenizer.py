"""Tokenizers described by GGUF metadata, built as ``tokenizers.Tokenizer`` (so they save as tokenizer.json).

A GGUF file has no tokenizer.json: it stores the vocabulary (``tokenizer.ggml.tokens``), each token's
kind (``token_type``: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte), BPE merges or
SentencePiece scores, the special ids and the add-BOS/EOS rules, under llama.cpp's key names. Two
kinds are rebuilt here (``tokenizer.ggml.model``):

* ``gpt2`` — byte-level BPE (SmolLM2, Llama 3): the vocabulary is spelled in GPT-2's byte alphabet
  (a token stored in plain text, such as a control token with a space, is respelled); the merges are
  the file's; the pre-tokenizer is chosen by ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`).
* ``llama`` — SentencePiece-style BPE (Llama 2): ``▁`` marks a space (prepended to the first word
  when ``tokenizer.ggml.add_space_prefix``, the default), unknown characters fall back to the
  ``<0xNN>`` byte tokens, and the merges are recovered from the scores (:func:`merges_from_scores`).

Control tokens become special tokens (matched whole, skipped when decoding with
``skip_special_tokens``); user-defined ones are matched whole but not special. BOS is added when
``tokenizer.ggml.add_bos_token`` says so (default: yes for ``llama``, no for ``gpt2``), EOS when
``add_eos_token`` does. The ids equal transformers' GGUF tokenizer (``AutoTokenizer.from_pretrained(
dir, gguf_file=…)``); for ``smollm`` we follow llama.cpp, see docs/gguf.md.
"""
from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..interop.base import ConversionError

CONTROL, USER_DEFINED = 3, 4

# tokenizer.ggml.pre -> the split llama.cpp applies before byte-level BPE (llama-vocab.cpp's regex_exprs)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:  # "\p{N}" first: every digit its own piece
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _llama3_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


PRE_TOKENIZERS = {"default": _gpt2_split, "gpt2": _gpt2_split, "smollm": _digits_then_gpt2,
                  "starcoder": _digits_then_gpt2, "refact": _digits_then_gpt2,
                  "llama3": _llama3_split, "llama-v3": _llama3_split, "llama-bpe": _llama3_split}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes stand for themselves, the
    rest are shifted past 255), as byte-level vocabularies spell their tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _respell(token: str, table: dict[int, str], alphabet: set[str]) -> str:
    """A token in the byte alphabet stays; one stored in plain text is spelled byte by byte."""
    return token if set(token) <= alphabet else "".join(table[b] for b in token.encode("utf-8"))


def merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens of the
    vocabulary, ranked by the token's score (higher first), then by the lengths of the two pieces (longer
    first); ties keep vocabulary order (the pieces' ids). transformers' GGUF loader ranks them so."""
    ranked = []
    for token, index in vocab.items():
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
        splits.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        ranked += [(left, right, scores[index]) for left, right in splits]
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: ties keep their order
    return [(left, right) for left, right, _ in ranked]


def _byte_level(meta, tokens: list[str]) -> tuple[Tokenizer, list[str]]:
    pre = meta.get("tokenizer.ggml.pre", "default", str)
    if pre not in PRE_TOKENIZERS:
        raise ConversionError(f"{meta.path}: tokenizer.ggml.pre={pre!r} is not supported; "
                              f"have: {', '.join(PRE_TOKENIZERS)}")
    table = byte_alphabet()
    alphabet = set(table.values())
    spelled = [_respell(t, table, alphabet) for t in tokens]
    merges = meta.require("tokenizer.ggml.merges", list)
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise ConversionError(f"{meta.path}: tokenizer.ggml.merges holds {m!r}, not two tokens apart by a space")
        pairs.append((left, right))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(spelled)}, merges=pairs, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    return tok, spelled


def _sentencepiece(meta, tokens: list[str]) -> tuple[Tokenizer, list[str]]:
    scores = meta.require("tokenizer.ggml.scores", list)
    if len(scores) != len(tokens):
        raise ConversionError(f"{meta.path}: tokenizer.ggml.scores has {len(scores)} entries for "
                              f"{len(tokens)} tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = meta.get("tokenizer.ggml.merges", None, list)
    pairs = [tuple(m.split(" ", 1)) for m in merges] if merges else merges_from_scores(vocab, scores)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True))
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True, bool)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
    return tok, tokens


BUILDERS = {"gpt2": _byte_level, "llama": _sentencepiece}


def _special_id(meta, key: str, n: int) -> int | None:
    i = meta.get(f"tokenizer.ggml.{key}_token_id", None, int)
    if i is not None and not 0 <= i < n:
        raise ConversionError(f"{meta.path}: tokenizer.ggml.{key}_token_id={i} is outside the vocabulary "
                              f"(0 … {n - 1})")
    return i


def _post_processor(meta, kind: str, spelled: list[str]) -> Any:
    """BOS / EOS around every encoding, as ``add_bos_token`` / ``add_eos_token`` say."""
    ends = []
    for key, default in (("bos", kind == "llama"), ("eos", False)):
        i = _special_id(meta, key, len(spelled))
        if meta.get(f"tokenizer.ggml.add_{key}_token", default, bool) and i is not None:
            ends.append((spelled[i], i))
        else:
            ends.append(None)
    if ends == [None, None]:
        return None
    bos, eos = ends
    single = ([f"{bos[0]}:0"] if bos else []) + ["$A:0"] + ([f"{eos[0]}:0"] if eos else [])
    pair = single + ([f"{bos[0]}:1"] if bos else []) + ["$B:1"] + ([f"{eos[0]}:1"] if eos else [])
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                         special_tokens=[e for e in ends if e])


def tokenizer_from_gguf(meta) -> Tokenizer | None:
    """The tokenizer a GGUF file's metadata describes (``meta``: interop.gguf.Metadata), or ``None``
    when it has none; an unknown kind or a malformed entry is a ConversionError naming the key."""
    kind = meta.get("tokenizer.ggml.model", None, str)
    if kind is None:
        return None
    if kind not in BUILDERS:
        raise ConversionError(f"{meta.path}: tokenizer.ggml.model={kind!r} is not supported; "
                              f"have: {', '.join(BUILDERS)}")
    tokens = meta.require("tokenizer.ggml.tokens", list)
    types = meta.get("tokenizer.ggml.token_type", None, list) or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ConversionError(f"{meta.path}: tokenizer.ggml.token_type has {len(types)} entries for "
                              f"{len(tokens)} tokens")
    tok, spelled = BUILDERS[kind](meta, tokens)
    alphabet = set(byte_alphabet().values()) if kind == "gpt2" else None
    # A control token outside the byte alphabet in a byte-level vocabulary is a mislabel (llama.cpp writes
    # some); transformers leaves those out, so do we.
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types)
               if k == CONTROL and (alphabet is None or set(t) <= alphabet)]
    # user-defined tokens whose spelling the vocabulary keeps (one respelled into the byte alphabet would match
    # its respelling, not the text; transformers leaves those out too)
    user = [AddedToken(t, special=False, normalized=False) for t, s, k in zip(tokens, spelled, types)
            if k == USER_DEFINED and t == s]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)
    post = _post_processor(meta, kind, spelled)
    if post is not None:
        tok.post_processor = post
    return tok
