"""Bad inputs get clear errors; side effects of the API stay where they belong."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels.models.flops import flops_per_token, matmul_parameters

from tests.helpers.tiny import random_ids, tiny_model


def test_a_model_still_trains_after_generate():
    m = tiny_model("llama").train()
    genmodels.generate(m, random_ids(1, 5), max_new_tokens=20)  # long enough to switch the weight layout
    assert m.training and all(p.is_contiguous() and not p.is_inference() for p in m.parameters())
    m(random_ids(2, 8)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_right_padding_is_refused():
    m = tiny_model("llama")
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, -2:] = 0
    with pytest.raises(ValueError, match="left-padded"):
        genmodels.generate(m, random_ids(2, 6), max_new_tokens=4, attention_mask=mask)


def test_seq2seq_stop_tokens_keep_the_configured_eos():
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=64, d_model=32, n_heads=2, head_dim=16,
                                                d_ff=64)).eval()
    src = torch.randint(2, 64, (1, 7))
    free = genmodels.generate(t5, src, max_new_tokens=8, eos_token_id=[])
    first = int(free[0, 1])  # force EOS = the first generated token: it must still stop there
    t5.config.eos_token_id = first
    out = genmodels.generate(t5, src, max_new_tokens=8, stop_tokens=[63 if first != 63 else 62])
    assert out.shape[1] == 2


@pytest.mark.parametrize("preset,kw", [("bert-tiny", {}), ("transformer-tiny", {})])
def test_too_long_inputs_name_max_seq_len(preset, kw):
    m = genmodels.build_model(genmodels.preset(preset, vocab_size=64, d_model=32, n_heads=2, d_ff=64,
                                               max_seq_len=8, **kw)).eval()
    ids = torch.randint(0, 64, (1, 12))
    with pytest.raises(ValueError, match="max_seq_len"):
        m.encode(ids)


def test_save_refuses_a_folder_with_other_files_and_overwrites_a_model_folder(tmp_path):
    m = tiny_model("llama")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        genmodels.save(m, tmp_path / "work")
    assert (tmp_path / "work" / "notes.txt").read_text() == "keep me"
    genmodels.save(m, tmp_path / "model")
    m2 = tiny_model("llama", seed=3)
    genmodels.save(m2, tmp_path / "model")  # a model folder is replaced atomically
    ids = random_ids(1, 6)
    torch.testing.assert_close(genmodels.load(tmp_path / "model")(ids), m2(ids))


def test_a_stray_consolidated_safetensors_is_ignored(tmp_path):
    m = tiny_model("llama")
    genmodels.export_hf(m, tmp_path / "hf")
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    save_file({"tok_embeddings.weight": sd["model.embed_tokens.weight"]},
              str(tmp_path / "hf" / "consolidated.safetensors"))
    ids = random_ids(1, 6)
    torch.testing.assert_close(genmodels.load(tmp_path / "hf")(ids), m(ids), atol=1e-5, rtol=1e-4)


def test_flops_count_every_stack_of_a_seq2seq_model():
    c = genmodels.preset("t5-tiny")
    enc_only = c.replace(family="encoder", position="learned", mlm_head=False, output_scale=None,
                         n_decoder_layers=None, rel_buckets=32, rel_max_distance=128)
    assert matmul_parameters(c) > 2 * matmul_parameters(enc_only)  # decoder with cross-attention + head
    assert flops_per_token(c, 64, training=True) == 3 * flops_per_token(c, 64)
