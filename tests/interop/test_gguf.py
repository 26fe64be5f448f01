"""GGUF in: tiny random Llamas written with gguf.GGUFWriter, every tensor type, loaded by genmodels.load and
compared with what gguf dequantises, with transformers' own GGUF loader, and through convert / info."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

import genmodels
from genmodels.cli import main
from genmodels.interop.decoder_hf import LlamaConverter
from genmodels.interop.gguf import READABLE, unpermute_rows

from tests.helpers.gguf_files import byte_level_tokenizer, permute_rows, tiny_llama, write_llama_gguf

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _hf_state(model) -> dict[str, torch.Tensor]:
    return LlamaConverter().state_to_hf(model.state_dict(), model.config)


def test_every_readable_type_loads_exactly_what_gguf_dequantises(tmp_path):
    """One file whose 2-D weights take every readable type in turn (quantised by gguf where it can, else
    random raw blocks): each comes back as gguf.quants.dequantize gives it, q/k rows in HF's order."""
    types = [Q[t] for t in READABLE]
    cfg, sd = tiny_llama(vocab=256, d=256, d_ff=256, layers=4)  # 30 weight matrices for 26 types
    expected = write_llama_gguf(tmp_path / "m.gguf", cfg, sd, types)
    got = _hf_state(genmodels.load(tmp_path / "m.gguf"))
    assert set(got) == set(expected)
    matrices = [k for k, v in sd.items() if v.dim() == 2]
    stored_as = {k: types[i % len(types)].name for i, k in enumerate(matrices)}
    assert set(stored_as.values()) == set(READABLE)
    for k, v in expected.items():
        assert torch.equal(got[k], torch.from_numpy(np.array(v, dtype=np.float32))), (k, stored_as.get(k, "F32"))
    lossless = [k for k in matrices if stored_as[k] == "F32"]
    assert lossless and all(torch.equal(got[k], sd[k]) for k in lossless)  # F32: the very weights written


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.arange(6 * 8 * 3, dtype=torch.float32).reshape(48, 3)
    for heads in (1, 2, 3):
        assert torch.equal(unpermute_rows(torch.from_numpy(permute_rows(w.numpy(), heads)), heads), w)
    # one head of 4 rows: llama.cpp interleaves HF's [r0 r1 | r2 r3] pairs (r0, r2), (r1, r3)
    assert permute_rows(np.arange(4.0)[:, None], 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A GQA Llama (4 query / 2 key-value heads) with a byte-level tokenizer and a chat template, F32."""
    d = tmp_path_factory.mktemp("gguf")
    add, n = byte_level_tokenizer()

    def tokenizer(w):
        add(w)
        w.add_chat_template(TEMPLATE)
    cfg, sd = tiny_llama(vocab=n, d=64, heads=4, kv_heads=2, d_ff=96, layers=2)
    write_llama_gguf(d / "tiny.gguf", cfg, sd, tokenizer=tokenizer)
    return d / "tiny.gguf", cfg, sd


def test_logits_equal_transformers_reading_the_same_file(tiny_file):
    """transformers' own GGUF reader is the reference for the names and the permutation (and the HF
    model holding the weights written, for the writer)."""
    path, cfg, sd = tiny_file
    ours = genmodels.load(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32, attn_implementation="eager").eval()
    written = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="eager")).eval()
    written.load_state_dict(sd)
    ids = torch.randint(0, cfg["vocab_size"], (2, 19))
    with torch.no_grad():
        logits = ours(ids)
        torch.testing.assert_close(logits, theirs(ids).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, written(ids).logits, atol=1e-5, rtol=1e-4)
    assert ours.config.n_kv_heads == 2 and not ours.config.tie_embeddings
    assert (ours.config.bos_token_id, ours.config.eos_token_id, ours.config.pad_token_id) == (1, 2, 0)


def test_tied_file_without_output_weight(tmp_path):
    """No ``output.weight``: the head is the embedding (llama.cpp's rule), here a Q8_0 embedding."""
    cfg, sd = tiny_llama(vocab=256, layers=1, tied=True)
    expected = write_llama_gguf(tmp_path / "t.gguf", cfg, sd, Q.Q8_0)
    model = genmodels.load(tmp_path / "t.gguf")
    assert model.config.tie_embeddings
    assert model.head.tied and model.head.get_weight() is model.embed.weight
    assert torch.equal(model.embed.weight, torch.from_numpy(expected["model.embed_tokens.weight"]))


def test_convert_to_genmodels_and_hf_keeps_weights_tokenizer_and_template(tiny_file, tmp_path, capsys):
    path, cfg, _ = tiny_file
    ours = genmodels.load(path)
    ids = torch.randint(0, cfg["vocab_size"], (1, 11))
    assert main(["convert", str(path), str(tmp_path / "g"), "--to", "genmodels"]) == 0
    assert main(["convert", str(path), str(tmp_path / "h"), "--to", "hf"]) == 0
    again = genmodels.load(tmp_path / "g")
    assert (tmp_path / "g" / "chat_template.jinja").read_text() == TEMPLATE == again.chat_template
    assert again.tokenizer.to_str() == ours.tokenizer.to_str()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "h", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "h").chat_template == TEMPLATE
    assert genmodels.load(tmp_path / "h").chat_template == TEMPLATE
    # a re-save over the folder replaces our template file in place
    genmodels.save(again, tmp_path / "g")
    assert (tmp_path / "g" / "chat_template.jinja").read_text() == TEMPLATE


def test_info_on_a_gguf_file(tiny_file, capsys):
    path, cfg, _ = tiny_file
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokenizer"] is True and info["config"]["n_layers"] == cfg["num_hidden_layers"]
    assert info["config"]["extra"]["hf_architecture"] == "LlamaForCausalLM"
