"""Growing a model's token vocabulary for new special tokens (``model.init_from`` with a tokenizer or an
objective that needs more ids than the source model has: gist tokens, [MASK], sentinels).

The new ids follow the old ones. Each tensor whose first dimension is the vocabulary (the input embedding,
an untied head, a head's bias, BERT's MLM decoder bias) keeps its old rows exactly and gets, as each new row,
the mean of its old rows; a tied head shares the embedding, so it follows. Which tensors those are is read
off the model itself — a copy of its class built with the larger ``vocab_size`` — so a family needs no
entry here; a family without a token vocabulary (images) is refused."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError


def grow_vocab(model: nn.Module, n_new: int) -> nn.Module:
    """A copy of ``model`` with ``n_new`` more token ids (``model`` itself when ``n_new`` is 0): old rows kept,
    each new row the mean of the old rows. The copy is built under a forked RNG (the caller's random stream
    does not move), in ``model``'s mode, dtype and device, with its ``tokenizer`` and ``chat_template``."""
    cfg = model.config
    vocab = getattr(cfg, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ConfigError(f"a {getattr(cfg, 'family', type(model).__name__)} model has no token vocabulary "
                          "(no vocab_size), so it cannot take new token ids")
    if not isinstance(n_new, int) or n_new < 0:
        raise ValueError(f"grow_vocab: n_new={n_new!r} must be an integer >= 0")
    if n_new == 0:
        return model
    with torch.random.fork_rng(devices=[]):
        grown = type(model)(cfg.replace(vocab_size=vocab + n_new))
    old, new = model.state_dict(), grown.state_dict()
    grown.load_state_dict({k: _grown(k, old[k], t.shape, vocab, n_new) for k, t in new.items()})
    ref = next(iter(old.values()), None)
    if ref is not None:
        grown.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    grown.train(model.training)
    for attr in ("tokenizer", "chat_template"):
        if hasattr(model, attr):
            setattr(grown, attr, getattr(model, attr))
    return grown


def _grown(key: str, t: torch.Tensor, shape: torch.Size, vocab: int, n_new: int) -> torch.Tensor:
    """``t`` (a tensor of the old model) for a slot of ``shape`` in the grown one: as is when the shapes agree,
    else ``(vocab, ...)`` → ``(vocab + n_new, ...)`` with the mean row appended ``n_new`` times."""
    if t.shape == shape:
        return t
    if t.dim() == 0 or t.shape[0] != vocab or shape[0] != vocab + n_new or t.shape[1:] != shape[1:]:
        raise ValueError(f"grow_vocab: {key} has shape {tuple(t.shape)} and {tuple(shape)} with {n_new} more ids; "
                         "only a first dimension equal to the vocabulary can grow")
    mean = t.float().mean(0, keepdim=True).to(t.dtype)  # (1, ...)
    return torch.cat([t, mean.expand(n_new, *t.shape[1:])])  # (vocab + n_new, ...)
