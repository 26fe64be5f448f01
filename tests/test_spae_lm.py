"""SPAE with a frozen LM (genmodels/spae_icl.py, genmodels/neurons.py), on a tiny random Llama whose vocabulary is
the stand-in LM's (tests/fixtures/spae/tiny-lm): constrained in-context generation and the neuron probe."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

import genmodels
from genmodels.neurons import probe, promoted_words, selectivity, write_report
from genmodels.semantics import DIGIT_WORDS
from genmodels.spae_icl import _pick_examples, allowed_tokens, in_context_accuracy
from tests.models.spae.test_spae import TINY_LM, tiny_model


class AlwaysRight:
    """A stand-in classifier: (features, logits) as metrics/classifier.ImageClassifier.embed gives."""

    def __init__(self, answer):
        self.answer = answer

    def embed(self, images):
        return None, torch.nn.functional.one_hot(self.answer, 10).float()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=48, d_model=32, n_layers=2, n_heads=2,
                                                   n_kv_heads=1, d_ff=64, max_seq_len=512)).eval()
    model.tokenizer = Tokenizer.from_file(str(TINY_LM / "tokenizer.json"))
    return model


def test_examples_are_distinct_classes_and_hold_the_queried_one():
    labels = torch.arange(100) % 10
    g = torch.Generator().manual_seed(0)
    for shots in (1, 2, 5):
        for c in range(10):
            picks = _pick_examples(labels, c, shots, 10, g)
            classes = [int(labels[i]) for i in picks]
            assert len(picks) == shots and c in classes and len(set(classes)) == shots
    assert _pick_examples(labels, 3, 0, 10, g) == []


def test_in_context_generation_writes_only_codebook_words(lm):
    spae = tiny_model()
    images, labels = torch.rand(30, 1, 8, 8) * 2 - 1, torch.arange(30) % 10
    clf = AlwaysRight(torch.arange(10))  # (10 queries: classes 0 … 9 in turn)
    r = in_context_accuracy(lm, spae, images, labels, clf, list(DIGIT_WORDS), shots=2, queries_per_class=1)
    vocab = set(spae.tokenizer.get_vocab()) - {"<unk>"}
    assert r.queries == 10 and r.images.shape == (10, 1, 8, 8) and r.accuracy == 1.0
    assert all(len(w) == 21 and set(w) <= vocab for w in r.words)
    mask = allowed_tokens(spae, 48)
    assert int(mask.sum()) == 20 and bool(mask[spae.codebook.lm_ids].all())


def test_selectivity_finds_the_neuron_that_fires_for_one_class():
    labels = torch.arange(200) % 10
    acts = torch.randn(200, 5) * 0.1
    acts[labels == 3, 2] += 2.0
    s, klass = selectivity(acts, labels, 10)
    assert int(s.argmax()) == 2 and int(klass[2]) == 3 and float(s[2]) > 3 * float(s[[0, 1, 3, 4]].max())


def test_promoted_words_are_the_logit_lens_of_the_output_weights(lm):
    down = next(p for p in lm.projections() if p.role == "down" and p.layer == 1).module
    logits = lm.output_head().weight @ (down.weight[:, 5] * lm.norm.weight)  # (llama-tiny: an untied head)
    want = [lm.tokenizer.decode([t]) for t in logits.topk(4).indices.tolist()]
    assert promoted_words(lm, 1, 5, 4) == want


def test_probe_ranks_neurons_and_writes_a_table_and_a_grid(lm, tmp_path):
    spae = tiny_model()
    images, labels = torch.rand(40, 1, 8, 8) * 2 - 1, torch.arange(40) % 10
    found, share = probe(lm, spae, images, labels, list(DIGIT_WORDS), top=5, words=6, per_neuron=3)
    assert len(found) == 5 and share["neurons"] == 2 * 64 and share["images"] == 40
    assert [x.selectivity for x in found] == sorted((x.selectivity for x in found), reverse=True)
    tsv, png = write_report(found, images, list(DIGIT_WORDS), tmp_path / "out")
    assert len(tsv.read_text().splitlines()) == 6 and png.is_file()
    write_report(found, images, list(DIGIT_WORDS), tmp_path / "out")  # its own files: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "neurons.tsv").write_text("my notes\n")
    with pytest.raises(FileExistsError, match="genmodels did not write it"):
        write_report(found, images, list(DIGIT_WORDS), tmp_path / "mine")
    assert (tmp_path / "mine" / "neurons.tsv").read_text() == "my notes\n"
