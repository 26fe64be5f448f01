"""Clear errors (issue #8, items 8 and 10): every bad argument of ``generate`` / ``generate_seq2seq`` /
``embed`` is refused before any work, with one ValueError line naming it — the same line on the native
and the PyTorch path; and top-k / top-p agree with transformers' warpers on tied scores."""
from __future__ import annotations

import math

import pytest
import torch

import genmodels
from genmodels.generation.sampling import top_k_filter, top_p_filter
from genmodels.generation.seq2seq import generate_seq2seq
from tests.helpers.native import require_native
from tests.helpers.tiny import VOCAB, random_ids, randomise, tiny_model

IDS = random_ids(2, 5)
ONES = torch.ones(2, 5, dtype=torch.long)

# (case, keyword arguments replacing the defaults, the argument the message must name)
DECODER_CASES = [
    ("nan temperature", dict(temperature=math.nan), "temperature"),
    ("inf temperature", dict(temperature=math.inf), "temperature"),
    ("negative temperature", dict(temperature=-0.5), "temperature"),
    ("nan top_p", dict(temperature=1.0, top_p=math.nan), "top_p"),
    ("zero top_p", dict(temperature=1.0, top_p=0.0), "top_p"),
    ("nan repetition_penalty", dict(repetition_penalty=math.nan), "repetition_penalty"),
    ("inf repetition_penalty", dict(repetition_penalty=math.inf), "repetition_penalty"),
    ("zero repetition_penalty", dict(repetition_penalty=0.0), "repetition_penalty"),
    ("negative repetition_penalty", dict(repetition_penalty=-1.0), "repetition_penalty"),
    ("float max_new_tokens", dict(max_new_tokens=3.5), "max_new_tokens"),
    ("integral float max_new_tokens", dict(max_new_tokens=3.0), "max_new_tokens"),
    ("bool max_new_tokens", dict(max_new_tokens=True), "max_new_tokens"),
    ("negative max_new_tokens", dict(max_new_tokens=-1), "max_new_tokens"),
    ("float top_k", dict(temperature=1.0, top_k=2.0), "top_k"),
    ("negative id", dict(input_ids=IDS.clone().index_fill_(1, torch.tensor([2]), -1)), "input_ids"),
    ("id = vocab_size", dict(input_ids=IDS.clone().index_fill_(1, torch.tensor([2]), VOCAB)), "input_ids"),
    ("float ids", dict(input_ids=IDS.float()), "input_ids"),
    ("bool ids", dict(input_ids=IDS > 5), "input_ids"),
    ("ids not a tensor", dict(input_ids=[[1, 2, 3]]), "input_ids"),
    ("empty batch", dict(input_ids=torch.zeros(0, 5, dtype=torch.long)), "input_ids"),
    ("empty prompt", dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), "input_ids"),
    ("3-d ids", dict(input_ids=IDS[None]), "input_ids"),
    ("mask shape", dict(attention_mask=ONES[:, :4]), "attention_mask"),
    ("float mask", dict(attention_mask=ONES.float()), "attention_mask"),
    ("mask value 2", dict(attention_mask=ONES * 2), "attention_mask"),
    ("right-padded mask", dict(attention_mask=torch.tensor([[1, 1, 1, 1, 0], [1] * 5])), "attention_mask"),
    ("eos out of range", dict(eos_token_id=VOCAB), "eos_token_id"),
    ("negative eos", dict(eos_token_id=[3, -1]), "eos_token_id"),
    ("pad out of range", dict(pad_token_id=VOCAB + 5), "pad_token_id"),
    ("stop token out of range", dict(stop_tokens=[VOCAB]), "stop_tokens"),
    ("huge seed", dict(seed=2 ** 70), "seed"),
    ("seed 2**64", dict(seed=2 ** 64), "seed"),
    ("negative seed", dict(seed=-1), "seed"),
    ("float seed", dict(seed=1.5), "seed"),
]

SEQ2SEQ_CASES = [
    ("float num_beams", dict(num_beams=1.5), "num_beams"),
    ("zero num_beams", dict(num_beams=0), "num_beams"),
    ("nan length_penalty", dict(num_beams=2, length_penalty=math.nan), "length_penalty"),
    ("early_stopping", dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    ("nan temperature", dict(temperature=math.nan), "temperature"),
    ("float max_new_tokens", dict(max_new_tokens=2.5), "max_new_tokens"),
    ("id = vocab_size", dict(input_ids=IDS.clone().index_fill_(1, torch.tensor([0]), VOCAB)), "input_ids"),
    ("float ids", dict(input_ids=IDS.double()), "input_ids"),
    ("empty batch", dict(input_ids=torch.zeros(0, 5, dtype=torch.long)), "input_ids"),
    ("empty source", dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), "input_ids"),
    ("mask shape", dict(attention_mask=ONES[:1]), "attention_mask"),
    ("float mask", dict(attention_mask=ONES.half()), "attention_mask"),
    ("decoder start out of range", dict(decoder_start_token_id=VOCAB), "decoder_start_token_id"),
    ("eos out of range", dict(eos_token_id=[VOCAB]), "eos_token_id"),
    ("pad out of range", dict(pad_token_id=-2), "pad_token_id"),
    ("huge seed", dict(temperature=1.0, seed=2 ** 70), "seed"),
]


def _decoder():
    return tiny_model("llama")


def _t5():
    cfg = genmodels.preset("t5-tiny", vocab_size=VOCAB, d_model=64, n_heads=4, head_dim=16, d_ff=128)
    return randomise(genmodels.build_model(cfg)).eval()


def _message(monkeypatch, path: str, call) -> str:
    """The refusal on one path: a ValueError whose message is one line."""
    if path == "torch":
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
    else:
        require_native()
    with pytest.raises(ValueError) as err:
        call()
    monkeypatch.delenv("GENMODELS_NATIVE", raising=False)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _both_paths(monkeypatch, call) -> str:
    messages = {_message(monkeypatch, path, call) for path in ("native", "torch")}
    assert len(messages) == 1, messages  # the same line on both paths
    return messages.pop()


@pytest.mark.parametrize("case,kw,name", DECODER_CASES, ids=[c[0] for c in DECODER_CASES])
def test_generate_refuses_bad_arguments_naming_them(case, kw, name, monkeypatch):
    model = _decoder()
    args = dict(input_ids=IDS, max_new_tokens=4)
    args.update(kw)
    msg = _both_paths(monkeypatch, lambda: genmodels.generate(model, **args))
    assert name in msg


@pytest.mark.parametrize("case,kw,name", SEQ2SEQ_CASES, ids=[c[0] for c in SEQ2SEQ_CASES])
def test_generate_seq2seq_refuses_bad_arguments_naming_them(case, kw, name, monkeypatch):
    model = _t5()
    args = dict(input_ids=IDS, max_new_tokens=4)
    args.update(kw)
    msg = _both_paths(monkeypatch, lambda: generate_seq2seq(model, **args))
    assert name in msg


def test_generate_on_a_seq2seq_model_checks_stop_tokens(monkeypatch):
    model = _t5()
    msg = _both_paths(monkeypatch, lambda: genmodels.generate(model, IDS, 4, stop_tokens=[VOCAB]))
    assert "stop_tokens" in msg


def test_largest_seed_and_integer_like_counts_are_accepted():
    model = _decoder()
    out = genmodels.generate(model, IDS.int(), torch.tensor(3).item(), temperature=1.0, top_k=5,
                             seed=2 ** 64 - 1, eos_token_id=[])
    assert out.shape == (2, 8) and out.dtype == torch.long


# ---- embed ------------------------------------------------------------------------------------------
EMBED_CASES = [
    ("no texts", dict(texts=[]), "texts"),
    ("a non-string text", dict(texts=["a", 3]), "texts[1]"),
    ("bytes", dict(texts=b"abc"), "texts"),
    ("zero batch_size", dict(batch_size=0), "batch_size"),
    ("float batch_size", dict(batch_size=2.0), "batch_size"),
    ("zero max_length", dict(max_length=0), "max_length"),
    ("unknown pooling", dict(pooling="median"), "pooling"),
]


@pytest.mark.parametrize("case,kw,name", EMBED_CASES, ids=[c[0] for c in EMBED_CASES])
def test_embed_refuses_bad_arguments_naming_them(case, kw, name, monkeypatch):
    cfg = genmodels.preset("bert-tiny", vocab_size=VOCAB, max_seq_len=32)
    model = genmodels.build_model(cfg).eval()
    args = dict(texts=["a text"], tokenizer=object())  # refused before the tokenizer is touched
    args.update(kw)
    texts = args.pop("texts")
    msg = _both_paths(monkeypatch, lambda: genmodels.embed(model, texts, **args))
    assert name in msg


# ---- top-k / top-p on ties, against transformers --------------------------------------------------
def _tied_scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.randint(-3, 4, (32,), generator=g).float(),  # integers: many exact ties
        torch.full((32,), 2.0),  # all equal
        torch.tensor([1.0, 1.0, 1.0, 0.0] * 8),  # a tied top, a tied rest
        torch.tensor([5.0, 5.0] + [-math.inf] * 30),  # two tied tokens, the rest removed already
        torch.tensor([0.0] * 16 + [-math.inf] * 16),
        torch.randint(0, 2, (32,), generator=g).float() * 3.0,
        torch.tensor([4.0] + [1.0] * 31),
        torch.randn(32, generator=g).round(decimals=1),
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0 - 1e-7])
def test_top_p_on_tied_scores_equals_transformers(p):
    tf = pytest.importorskip("transformers.generation.logits_process")
    scores = _tied_scores()
    want = tf.TopPLogitsWarper(top_p=p)(None, scores.clone())
    assert torch.equal(top_p_filter(scores.clone(), p), want)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 16, 31, 32, 40])
def test_top_k_on_tied_scores_equals_transformers(k):
    tf = pytest.importorskip("transformers.generation.logits_process")
    scores = _tied_scores()
    want = tf.TopKLogitsWarper(top_k=k)(None, scores.clone())
    assert torch.equal(top_k_filter(scores.clone(), k), want)
