"""Sentence embeddings from an encoder (Reimers & Gurevych, 2019, Sentence-BERT).

    e = pool(Encoder(tokens)),   pool ∈ {mean over real tokens, [CLS], max, mean·√n},
    e ← e / ‖e‖₂ when the model normalises (all-MiniLM-L6-v2 does).

A sentence-transformers folder says how (``modules.json``: Transformer → Pooling → Normalize;
``1_Pooling/config.json``: the pooling mode; ``sentence_bert_config.json``: ``max_seq_length`` and
``do_lower_case``). :func:`genmodels.interop.sentence_transformers.read_sentence_config` turns that
into a small dict which :func:`genmodels.load` keeps in ``model.config.extra["sentence_transformers"]`` (so a genmodels
save keeps it too). Texts are sorted by length and batched, as sentence-transformers does; every text
gets the same vector whether it is embedded alone or in a padded batch. Inside a batch, every
token-wise layer runs on the real tokens only (``EncoderModel.encode(skip_padding=True)``), so
padding costs only attention work.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .native.encoder import native_encoder
from .registry import EMBEDS, require

from .interop.sentence_transformers import KEY, POOLING_MODES


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool hidden states ``(B, T, D)`` over real tokens (``mask (B, T)``, 1 = token) -> ``(B, D)``."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    total = (hidden * m).sum(dim=1)
    n = m.sum(dim=1).clamp(min=1e-9)
    if mode == "mean":
        return total / n
    if mode == "mean_sqrt_len":
        return total / n.sqrt()
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of at most ``batch_size``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def embed(model: torch.nn.Module, texts: str | Sequence[str], *, tokenizer=None, batch_size: int = 64,
          max_length: int | None = None, pooling: str | None = None, normalize: bool | None = None) -> torch.Tensor:
    """Sentence embeddings ``(N, D)`` (float32, on the model's device) of ``texts``.

    Defaults come from the model's sentence-transformers recipe (``model.config.extra``), else mean
    pooling without normalisation, as sentence-transformers does. ``max_length`` caps the tokens
    per text (default: the recipe's ``max_seq_length``, else the model's positions).
    """
    texts = _check_embed_args(texts, batch_size, max_length, pooling)
    require(model, EMBEDS, "genmodels.embed")  # the model's kind first: a tokenizer cannot fix it
    if not hasattr(model, "encode"):
        raise ValueError(f"embed needs an encoder model (family 'encoder'), got {type(model).__name__}")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("embed needs a tokenizer: load the model from a folder with tokenizer.json "
                         "or pass tokenizer=")
    recipe = model.config.extra.get(KEY) or {}
    pooling = pooling or recipe.get("pooling", "mean")
    normalize = recipe.get("normalize", False) if normalize is None else normalize
    limit = min(max_length or recipe.get("max_seq_length") or model.config.max_seq_len, model.config.max_seq_len)
    texts = [t.strip() for t in texts]
    if recipe.get("do_lower_case"):
        texts = [t.lower() for t in texts]
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    if (tokenizer.truncation or {}).get("max_length") != limit:
        tokenizer.enable_truncation(limit)
    encodings = tokenizer.encode_batch(texts) if len(texts) > 1 else [tokenizer.encode(texts[0])]
    empty = [i for i, e in enumerate(encodings) if not e.ids]
    if empty:
        more = f" ({len(empty)} such texts)" if len(empty) > 1 else ""
        raise ValueError(f"texts[{empty[0]}] ({texts[empty[0]]!r}) encodes to no tokens with this tokenizer; "
                         f"give each text at least one token{more}")
    was_training = model.training
    model.eval()  # as sentence-transformers' encode: no dropout
    try:
        return _embed_batches(model, encodings, batch_size, pooling, normalize)
    finally:
        model.train(was_training)


def _check_embed_args(texts, batch_size, max_length, pooling) -> list[str]:
    """One-line refusals naming the argument (before any tokenising); returns the texts as a list."""
    from .generation.checks import check_count
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise ValueError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if len(texts) == 0:
        raise ValueError("texts is empty: pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is a {type(t).__name__}, not a string")
    check_count("batch_size", batch_size, 1)
    if max_length is not None:
        check_count("max_length", max_length, 1)
    if pooling is not None and pooling not in POOLING_MODES:
        raise ValueError(f"pooling={pooling!r} is unknown; choose one of {', '.join(POOLING_MODES)}")
    return texts


def _embed_batches(model, encodings, batch_size: int, pooling: str, normalize: bool) -> torch.Tensor:
    device = next(model.parameters()).device
    fast = native_encoder(model) if device.type == "cpu" else None  # one native call per batch, else PyTorch
    out = torch.empty(len(encodings), model.config.d_model)
    for idx in _batches([len(e.ids) for e in encodings], batch_size):
        width = len(encodings[idx[0]].ids)
        if len(idx) == 1:  # one text: no padding, no mask
            ids = torch.tensor([encodings[idx[0]].ids], device=device)
            mask = torch.ones_like(ids)
            hidden = fast(ids) if fast is not None else model.encode(ids)
        else:
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = torch.tensor(encodings[i].ids)
                mask[row, :n] = 1
            ids, mask = ids.to(device), mask.to(device)
            hidden = fast(ids, mask) if fast is not None else model.encode(ids, mask, skip_padding=True)
        vec = pool(hidden.float(), mask, pooling)
        if normalize:
            vec = F.normalize(vec, p=2, dim=1)
        out[idx] = vec.cpu()
    return out.to(device)
