"""Masked-LM and span-corruption objectives: statistics and exact reconstruction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import genmodels
from genmodels.data.objectives import IGNORE, mask_tokens, random_spans_noise_mask, span_corrupt, span_counts
from genmodels.objectives import MaskedLM, SpanCorruption

V = 1000  # ordinary tokens; [MASK] = V


def test_mask_tokens_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (64, 512), generator=g)
    ids[:, 0] = 1  # a special token ([CLS]-like): never chosen
    inputs, labels = mask_tokens(ids, mask_token_id=V, vocab_size=V, special_ids=[1], generator=g)
    chosen = labels != IGNORE
    assert not bool(chosen[:, 0].any())
    frac = chosen[:, 1:].float().mean().item()
    assert abs(frac - 0.15) < 0.005
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the originals
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    n = chosen.sum().item()
    masked = (inputs[chosen] == V).float().sum().item() / n
    same = (inputs[chosen] == ids[chosen]).float().sum().item() / n
    other = 1 - masked - same
    assert abs(masked - 0.8) < 0.01 and abs(other - 0.1) < 0.01 and abs(same - 0.1) < 0.01 + 1 / V
    assert int(inputs.max()) <= V


@pytest.mark.parametrize("length,density,mean", [(512, 0.15, 3.0), (100, 0.3, 5.0), (30, 0.15, 3.0)])
def test_noise_mask_counts_and_spans(length, density, mean):
    rng = np.random.default_rng(0)
    n_noise, n_spans = span_counts(length, density, mean)
    for _ in range(50):
        m = random_spans_noise_mask(length, density, mean, rng)
        assert m.shape == (length,) and m.sum() == n_noise and not m[0]  # kept tokens come first
        starts = m & ~np.concatenate([[False], m[:-1]])
        assert starts.sum() == n_spans
    assert abs(n_noise / length - density) <= 0.5 / length + 1e-9
    if length >= 100:
        assert abs(n_noise / n_spans - mean) < mean * 0.25


def test_span_corruption_reconstructs_the_original():
    rng = np.random.default_rng(1)
    ids = rng.integers(2, V, size=(16, 200))
    sentinel = V + 99
    inp, tgt = span_corrupt(ids, sentinel_start=sentinel, eos_id=1, rng=rng)
    n_noise, n_spans = span_counts(200)
    assert inp.shape == (16, 200 - n_noise + n_spans + 1) and tgt.shape == (16, n_noise + n_spans + 1)
    assert (inp[:, -1] == 1).all() and (tgt[:, -1] == 1).all()
    for row, i, t in zip(ids, inp[:, :-1], tgt[:, :-1]):
        # sentinels appear in order <extra_id_0>, <extra_id_1>, … in both
        s_in, s_t = i[i >= V], t[t >= V]
        assert list(s_in) == list(range(sentinel, sentinel - n_spans, -1)) == list(s_t)
        # fill each sentinel of the input with the tokens after it in the target
        spans, cur = {}, None
        for tok in t:
            if tok >= V:
                cur = tok
                spans[cur] = []
            else:
                spans[cur].append(tok)
        rebuilt = [x for tok in i for x in (spans[tok] if tok >= V else [tok])]
        assert rebuilt == list(row)


def test_losses_train_tiny_models():
    torch.manual_seed(0)
    ids = (torch.arange(32)[None] * 3 + torch.arange(8)[:, None] * 7) % 48 + 2  # learnable from context
    for preset, wrap in (("bert-tiny", lambda m: MaskedLM(m, n_tokens=50, prob=0.3)),
                         ("t5-tiny", lambda m: SpanCorruption(m, n_tokens=50, eos_id=1))):
        cfg = genmodels.preset(preset, vocab_size=50 + wrap(None).extra_tokens, d_model=32, n_heads=2, head_dim=16,
                               d_ff=64) if preset == "t5-tiny" else \
            genmodels.preset(preset, vocab_size=51, d_model=32, n_heads=2, d_ff=64)
        loss_mod = wrap(genmodels.build_model(cfg))
        opt = torch.optim.AdamW(loss_mod.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            loss = loss_mod({"input_ids": ids})[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), (preset, losses[:5], losses[-5:])


def test_span_corrupt_refuses_more_spans_than_sentinels():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="128 spans.*100 sentinel"):
        span_corrupt(rng.integers(2, V, size=(2, 256)), sentinel_start=V + 99, eos_id=1, noise_density=0.5,
                     mean_span_length=1.0, rng=rng)
    inp, _ = span_corrupt(rng.integers(2, V, size=(2, 256)), sentinel_start=V + 199, eos_id=1, noise_density=0.5,
                          mean_span_length=1.0, rng=rng, n_sentinels=200)
    assert int(inp[inp >= V].min()) == V + 199 - 127  # 128 sentinels, all above the ordinary ids
