"""Pre-training objectives for encoders and encoder–decoders, as pure functions on token ids.

Masked LM (Devlin et al., 2019, §3.1): choose ``prob`` (15%) of the maskable positions; the model
predicts the original token there. Of the chosen: 80% become ``[MASK]``, 10% a random token, 10%
stay unchanged. Labels are the original ids at chosen positions and −100 (ignored) elsewhere.

Span corruption (Raffel et al., 2020, §3.1.4; the T5 code's ``random_spans_noise_mask``): of a
sequence of n tokens, round(n·density) are noise, grouped into round(noise / mean_span) spans;
noise and kept tokens are each split into that many random non-empty runs and interleaved
(kept first). Every noise span is replaced in the input by one sentinel (the first span by
``sentinel_start``, the next by ``sentinel_start − 1``, …, as T5's ``<extra_id_0>``,
``<extra_id_1>``…); the target lists each sentinel followed by the tokens it hid, then EOS.

These are data transforms; the losses live in :mod:`genmodels.objectives` (``mlm.py``, ``span.py``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE = -100
N_SENTINELS = 100  # T5's <extra_id_0> … <extra_id_99>


# ---- masked LM ------------------------------------------------------------------------------------
def mask_tokens(ids: torch.Tensor, *, mask_token_id: int, vocab_size: int, prob: float = 0.15,
                special_ids: Sequence[int] = (), generator: torch.Generator | None = None,
                mask_frac: float = 0.8, random_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``ids (B, T)`` -> ``(inputs, labels)``; random replacements are drawn from
    ``[0, vocab_size)`` (pass the number of ordinary tokens). ``special_ids`` are never chosen."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"mask prob={prob} must be in (0, 1)")
    ids = ids.long()
    device = ids.device
    maskable = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=torch.long, device=device))
    chosen = (torch.rand(ids.shape, generator=generator, device=device) < prob) & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    u = torch.rand(ids.shape, generator=generator, device=device)
    to_mask = chosen & (u < mask_frac)
    to_random = chosen & (u >= mask_frac) & (u < mask_frac + random_frac)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, device=device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


# ---- span corruption ----------------------------------------------------------------------------
def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """A random split of ``n_items`` into ``n_segments`` non-empty runs (their lengths)."""
    first = np.zeros(n_items, dtype=bool)
    first[1 + rng.permutation(n_items - 1)[: n_segments - 1]] = True  # where runs 2..n start
    segment = np.cumsum(first)
    return np.bincount(segment, minlength=n_segments)


def span_counts(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) for a sequence of ``length`` tokens (T5's rounding)."""
    n_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span_length)), 1)
    return n_noise, n_spans


def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """Boolean ``(length,)``: True on noise tokens; kept and noise runs alternate, kept first."""
    rng = rng or np.random.default_rng()
    n_noise, n_spans = span_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(n_noise, n_spans, rng)
    keep_lengths = _random_segmentation(length - n_noise, n_spans, rng)
    runs = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # keep, noise, keep, noise…
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs)


def span_corrupt(ids: np.ndarray | torch.Tensor, *, sentinel_start: int, eos_id: int | None,
                 noise_density: float = 0.15,
                 mean_span_length: float = 3.0, rng: np.random.Generator | None = None,
                 n_sentinels: int = N_SENTINELS) -> tuple[np.ndarray, np.ndarray]:
    """Span corruption of each row of ``ids (B, L)`` -> ``(inputs (B, L−noise+spans[+1]),
    targets (B, noise+spans[+1]))``; ``+1`` is the EOS appended when ``eos_id`` is given.
    Every row has the same noise and span counts, so the outputs stack. ValueError when the
    rows need more spans than the ``n_sentinels`` sentinel ids (``sentinel_start`` downwards)."""
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    n_spans = span_counts(ids.shape[-1], noise_density, mean_span_length)[1]
    if n_spans > n_sentinels:
        raise ValueError(f"span corruption of length {ids.shape[-1]} (noise density {noise_density}, mean span "
                         f"{mean_span_length}) makes {n_spans} spans but there are only {n_sentinels} sentinel ids")
    rng = rng or np.random.default_rng()
    inputs, targets = [], []
    for row in ids:
        noise = random_spans_noise_mask(len(row), noise_density, mean_span_length, rng)
        starts = noise & ~np.concatenate([[False], noise[:-1]])  # first token of each noise span
        sentinels = sentinel_start - (np.cumsum(starts) - 1)
        inp = np.where(starts, sentinels, row)[~noise | starts]
        tgt = _span_targets(row, noise, starts, sentinel_start)
        if eos_id is not None:
            inp, tgt = np.append(inp, eos_id), np.append(tgt, eos_id)
        inputs.append(inp)
        targets.append(tgt)
    return np.stack(inputs), np.stack(targets)


def _span_targets(row: np.ndarray, noise: np.ndarray, starts: np.ndarray, sentinel_start: int) -> np.ndarray:
    """``[s₀, span₀…, s₁, span₁…, …]``: each sentinel followed by the tokens it replaced."""
    out = np.empty(int(noise.sum() + starts.sum()), dtype=row.dtype)
    span_id = np.cumsum(starts) - 1  # span index of each noise token
    pos = np.cumsum(noise) - 1 + span_id + 1  # each noise token shifts by the sentinels before it (incl. its own)
    out[pos[noise]] = row[noise]
    out[(pos - 1)[starts]] = sentinel_start - span_id[starts]
    return out
