"""Beam search over a RetNet against an exhaustive search of its continuations (tiny vocabulary).

RetNet has no reference beam search, and tests/generation/test_beam.py holds its beams equal to the same
``beam_search`` over a cache-free forward: that checks the recurrent state under reordering, not the search (a
length penalty counted over the prompt too passed that whole file; test-audit-2026-12-07, M12). Here, with
K ≥ Vⁿ⁻¹ beams and ``early_stopping="never"`` no prefix is ever dropped, so ``generate`` must return the exact
maximiser of Σ log p / (generated length)^length_penalty over all Vⁿ continuations (each cut at its first end
token), scored by the model's parallel forward in float64, for every row of a left-padded batch, on the native
and the PyTorch recurrent paths, on 1 and 2 threads.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import genmodels
from tests.helpers.native import require_native, threads  # noqa: F401  (fixture: 1 and 2 threads)
from tests.helpers.tiny import left_pad_mask, randomise

V, N = 4, 3  # vocabulary, new tokens: 64 continuations per row, 16 beams
PROMPTS = [[3, 1, 2, 1, 2, 0], [2, 3], [1, 3, 3]]  # unequal lengths: a left-padded batch


def _model() -> torch.nn.Module:
    cfg = genmodels.preset("retnet-tiny", vocab_size=V, d_model=32, n_layers=2, n_heads=2, value_dim=48, d_ff=64,
                           max_seq_len=64, eos_token_id=None)
    return randomise(genmodels.build_model(cfg), std=0.4, seed=3).eval()


def _exhaustive(m, prompt: list[int], ends: tuple[int, ...], lp: float) -> tuple[list[int], float]:
    """(best continuation, its margin over the best different one) among every continuation of N tokens, cut
    after its first end token, scored Σ log p / length^lp with float64 log-probabilities of the full forward."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=N)))  # (Vᴺ, N)
    p = len(prompt)
    with torch.no_grad():
        logits = m(torch.cat([torch.tensor(prompt).expand(len(seqs), p), seqs], 1))  # (Vᴺ, P + N, V)
    logp = logits[:, p - 1:p - 1 + N].double().log_softmax(-1).gather(-1, seqs[..., None])[..., 0]  # (Vᴺ, N)
    ended = torch.isin(seqs, torch.tensor(ends, dtype=torch.long)) if ends else torch.zeros_like(seqs, dtype=bool)
    cut = torch.where(ended.any(1), ended.int().argmax(1) + 1, torch.full((len(seqs),), N))  # (Vᴺ,)
    kept = torch.arange(N) < cut[:, None]
    scores = (logp * kept).sum(1) / cut.double() ** lp
    best = int(scores.argmax())
    want = seqs[best, :int(cut[best])].tolist()
    other = [float(s) for s, q, c in zip(scores, seqs, cut) if q[:int(c)].tolist() != want]
    return want, float(scores[best]) - max(other)


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("ends,lp", [((), 1.0), ((0,), 1.5), ((3,), 1.5), ((2, 0), 0.0)],
                         ids=["no-end", "end0-lp1.5", "end3-lp1.5", "ends-lp0"])  # rows end after 1, 2 or 3
def test_retnet_beams_find_the_exhaustive_best(path, ends, lp, monkeypatch):
    if path == "native":
        require_native()
    else:
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
    m, width = _model(), max(map(len, PROMPTS))
    mask = left_pad_mask([len(q) for q in PROMPTS], width)  # (B, P)
    ids = torch.tensor([[0] * (width - len(q)) + q for q in PROMPTS])  # (B, P)
    got = genmodels.generate(m, ids, N, attention_mask=mask, num_beams=V ** (N - 1), length_penalty=lp,
                             early_stopping="never", eos_token_id=list(ends), pad_token_id=0)
    for row, prompt in enumerate(PROMPTS):
        want, margin = _exhaustive(m, prompt, ends, lp)
        assert margin > 1e-4, f"row {row}: near-tie {margin:.2e} (pick another seed)"
        new = got[row, width:].tolist()
        assert new[:len(want)] == want, (row, new, want)
        assert set(new[len(want):]) <= {0, *ends[:1]}  # after the end: the fill (pad, or eos[0] as transformers)
