"""A word-level tokenizer over a fixed word list (SPAE's codebook words): word k <-> id k, split on whitespace,
one more id (``<unk>``, = len(words)) for a word not in the list. Saved as an ordinary ``tokenizer.json``
(Hugging Face tokenizers' WordLevel model), so a model folder keeps its words beside its weights."""
from __future__ import annotations

UNK = "<unk>"


def word_tokenizer(words: list[str]):
    """A ``tokenizers.Tokenizer`` mapping ``words[k]`` to id k (and anything else to ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    if len(set(words)) != len(words) or UNK in words:
        raise ValueError(f"word list must hold distinct words and no {UNK}")
    vocab = {w: i for i, w in enumerate(words)}
    vocab[UNK] = len(words)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def words_of(tokenizer) -> list[str]:
    """The word list of a :func:`word_tokenizer` (by id, ``<unk>`` left out)."""
    vocab = tokenizer.get_vocab()
    out = [""] * len(vocab)
    for w, i in vocab.items():
        out[i] = w
    return [w for w in out if w != UNK]
