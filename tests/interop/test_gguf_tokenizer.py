"""Tokenizers from GGUF metadata against transformers' GGUF tokenizer (``AutoTokenizer.from_pretrained(dir,
gguf_file=…)``) on a text with code, digits, whitespace runs, non-Latin scripts, emoji and chat markers —
byte-level BPE (``gpt2``) and SentencePiece-style (``llama``) — and the two places where we follow
llama.cpp instead (docs/gguf.md)."""
from __future__ import annotations

import pytest
import transformers
from tokenizers import Tokenizer

import genmodels

from tests.helpers.gguf_files import SAMPLE, byte_level_tokenizer, sentencepiece_tokenizer, tiny_llama, write_llama_gguf

TEXTS = [SAMPLE, " leading space", "  two spaces", "trailing   ", "<tool> x <|im_end|>", "\n\n\n", "x", "é€😀",
         "a <tool call> b <toolĠcall>"]


def _write(tmp_path, name, step):
    add, n = step
    cfg, sd = tiny_llama(vocab=n, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / f"{name}.gguf", cfg, sd, tokenizer=add)
    ours = genmodels.load(tmp_path / f"{name}.gguf").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"{name}.gguf")
    return ours, theirs


CASES = {
    "bpe-smollm": lambda: byte_level_tokenizer("smollm"),
    "bpe-gpt2-bos": lambda: byte_level_tokenizer("gpt2", add_bos=True),
    "bpe-llama3": lambda: byte_level_tokenizer("llama-bpe"),
    "spm": lambda: sentencepiece_tokenizer(),
    "spm-no-bos": lambda: sentencepiece_tokenizer(add_bos=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ids_and_text_equal_transformers(case, tmp_path):
    ours, theirs = _write(tmp_path, case, CASES[case]())
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids), text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    saved = Tokenizer.from_str(ours.to_str())  # what genmodels folders keep (tokenizer.json)
    assert saved.encode(SAMPLE).ids == theirs(SAMPLE)["input_ids"]


def test_special_tokens_and_bos_rules(tmp_path):
    spm, _ = _write(tmp_path, "spm", sentencepiece_tokenizer())
    assert spm.encode("hi").ids[0] == 1  # <s>: add_bos_token defaults to true for llama vocabularies
    bpe, _ = _write(tmp_path, "bpe", byte_level_tokenizer("smollm"))
    enc = bpe.encode("<|im_start|>user<tool>")
    assert enc.tokens[0] == "<|im_start|>" and "<tool>" in enc.tokens  # control and user-defined kept whole
    assert bpe.decode(enc.ids) == "user<tool>"  # control tokens are special: skipped; user-defined are not


def test_smollm_digits_split_as_llama_cpp_does(tmp_path):
    """``tokenizer.ggml.pre = smollm``: llama.cpp (and SmolLM2's own tokenizer.json) split every digit off
    before BPE; transformers' GGUF loader does not know this name and keeps GPT-2's split, which lets a
    merge such as "Ġ2" apply. A vocabulary trained without the digit split shows the difference; SmolLM2's
    has no merge across a digit, so both give its ids (tests/parity/transformers/test_gguf_parity.py)."""
    ours, theirs = _write(tmp_path, "mixed", byte_level_tokenizer("smollm", trained_as="gpt2"))
    text = "x = 12 + 2024"
    digits = [t for t in ours.encode(text).tokens if any(c.isdigit() for c in t)]
    assert digits == list("122024")  # one piece per digit, none joined to a space or another digit
    assert ours.encode(text).ids != theirs(text)["input_ids"]
    assert any(len(t) > 1 and any(c.isdigit() for c in t) for t in theirs.tokenize(text))


def test_add_space_prefix_false_is_honoured_as_llama_cpp_does(tmp_path):
    """``tokenizer.ggml.add_space_prefix = false``: llama.cpp adds no ``▁`` before the first word; transformers'
    GGUF loader ignores the key and always adds one. We follow the file (and llama.cpp)."""
    ours, theirs = _write(tmp_path, "nop", sentencepiece_tokenizer(space_prefix=False, add_bos=False))
    assert not ours.encode("the cat").tokens[0].startswith("▁") and theirs.tokenize("the cat")[0] == "▁the"
    assert ours.decode(ours.encode(" the cat").ids) == " the cat"
