"""A tiny random chat model: a tokenizer with ChatML markers, a 2-layer Llama over its vocabulary, and
SmolLM2's chat template (so the chat mechanics run in milliseconds).

Two tokenizers: byte-level BPE (:func:`chat_tokenizer`: what real models use; a random model's reply is
bytes that need not form UTF-8) and one token per printable ASCII character (:func:`char_tokenizer`:
any reply decodes and re-encodes to the same tokens, so cache reuse across turns is exact)."""
from __future__ import annotations

import string
from functools import lru_cache

from genmodels.data.tokenizer import train_bpe_tokenizer

from tests.helpers.tiny import randomise, tiny_config

# SmolLM2-135M-Instruct's template, as its GGUF file stores it (tests/data/test_chat_template.py)
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
          "trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@lru_cache(maxsize=1)
def chat_tokenizer():
    """Byte-level BPE (300 tokens) with <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2."""
    docs = ["What is the capital of France? Paris is the capital of France. " * 4,
            "Hello there, how are you today? I am fine, thank you. " * 4, "Ünïcödé 😀 中文 — ok " * 3]
    return train_bpe_tokenizer(docs, vocab_size=300, special_tokens=SPECIALS, min_frequency=1)


@lru_cache(maxsize=1)
def char_tokenizer():
    """<|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2, <unk> = 3, then one token per printable ASCII
    character (no merges; decoding concatenates)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    specials = [*SPECIALS, "<unk>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], unk_token="<unk>"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.decoder = decoders.Fuse()
    return tok


def tiny_chat_model(template: str | None = CHATML, seed: int = 0, tokenizer: str = "bpe", **kw):
    """A random 2-layer Llama (context ``max_seq_len``, default 256) with :func:`chat_tokenizer` (``"bpe"``)
    or :func:`char_tokenizer` (``"char"``) and ``template`` (None: no template, as our own runs);
    BOS <|im_start|>, EOS <|im_end|>."""
    import genmodels
    tok = chat_tokenizer() if tokenizer == "bpe" else char_tokenizer()
    cfg = tiny_config("llama", **{"vocab_size": tok.get_vocab_size(), "max_seq_len": 256, "bos_token_id": 1,
                                  "eos_token_id": 2, **kw})
    model = randomise(genmodels.build_model(cfg), seed=seed).eval()
    model.tokenizer, model.chat_template = tok, template
    return model
