"""GGUF out (interop/gguf_write.py, `genmodels convert … --to gguf`): a tiny Llama loaded from a GGUF with a
byte-level tokenizer and a chat template, written in every --outtype, read back through genmodels.load and
the gguf package's own reader; refusals one line, exit 2."""
from __future__ import annotations

import pytest
import torch
from gguf import GGUFReader

import genmodels
from genmodels.cli import main
from genmodels.interop.base import ConversionError
from genmodels.interop.decoder_hf import LlamaConverter
from genmodels.interop.gguf import unpermute_rows
from genmodels.interop.gguf_write import permute_rows, write_gguf
from genmodels.nn.quantized import dequantize_rows, quantize_rows

from tests.helpers.gguf_files import SAMPLE, byte_level_tokenizer, tiny_llama, write_llama_gguf

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A GQA Llama (4 query / 2 key-value heads, untied) read from a GGUF with tokenizer and template."""
    d = tmp_path_factory.mktemp("gguf_src")
    add, n = byte_level_tokenizer(add_bos=True)

    def tokenizer(w):
        add(w)
        w.add_chat_template(TEMPLATE)
    cfg, sd = tiny_llama(vocab=n, d=64, heads=4, kv_heads=2, d_ff=96, layers=2)
    write_llama_gguf(d / "src.gguf", cfg, sd, tokenizer=tokenizer)
    return d / "src.gguf"


def _hf(model) -> dict[str, torch.Tensor]:
    return LlamaConverter().state_to_hf(model.state_dict(), model.config)


def test_permute_is_the_readers_inverse():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(unpermute_rows(permute_rows(w, 4), 4), w)
    assert not torch.equal(permute_rows(w, 4), w)


def test_f32_reads_back_equal_logits_tokenizer_template(source, tmp_path):
    model = genmodels.load(source)
    write_gguf(model, tmp_path / "out.gguf", "f32")
    back = genmodels.load(tmp_path / "out.gguf")
    x = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x) - back(x)).abs().max() <= 1e-6
    for text in (SAMPLE, "<tool> hi <|im_end|> 12345"):
        assert back.tokenizer.encode(text).ids == model.tokenizer.encode(text).ids
    assert back.tokenizer.encode("a").ids[0] == 1  # add_bos kept
    assert back.chat_template == model.chat_template == TEMPLATE
    assert (back.config.bos_token_id, back.config.eos_token_id) == (1, 2)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "f16"])
def test_quantised_reads_back_as_quantise_then_dequantise(source, tmp_path, qtype):
    model = genmodels.load(source)
    write_gguf(model, tmp_path / "q.gguf", qtype)
    got, want = _hf(genmodels.load(tmp_path / "q.gguf")), _hf(model)
    assert set(got) == set(want)
    for k, w in want.items():
        if w.dim() == 1:
            expected = w
        elif qtype == "f16":
            expected = w.half().float()
        else:
            expected = dequantize_rows(quantize_rows(w, qtype), qtype, w.shape[1])
        assert torch.equal(got[k], expected), k


def test_gguf_reader_sees_llama_keys_and_types(source, tmp_path):
    write_gguf(genmodels.load(source), tmp_path / "q.gguf", "q4_1")
    r = GGUFReader(tmp_path / "q.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 3
    assert f["general.quantization_version"] == 2 and f["genmodels.writer"].startswith("genmodels ")
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (2, 64, 96)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.context_length"] == 128 and f["llama.rope.freq_base"] == 10000.0
    assert abs(f["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-12
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.chat_template"] == TEMPLATE
    assert len(f["tokenizer.ggml.tokens"]) == len(f["tokenizer.ggml.token_type"]) == f["llama.vocab_size"]
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == types["output.weight"] == "Q4_1"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"


def test_tied_model_has_no_output_weight(tmp_path):
    cfg, sd = tiny_llama(vocab=64, d=64, d_ff=64, layers=1, tied=True)
    write_llama_gguf(tmp_path / "t.gguf", cfg, sd)
    model = genmodels.load(tmp_path / "t.gguf")
    write_gguf(model, tmp_path / "o.gguf", "f32")
    assert "output.weight" not in {t.name for t in GGUFReader(tmp_path / "o.gguf").tensors}
    back = genmodels.load(tmp_path / "o.gguf")
    x = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_cli_writes_and_replaces_only_its_own_file(source, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["convert", str(source), str(out), "--to", "gguf", "--outtype", "q8_0"]) == 0
    assert main(["convert", str(source), str(out), "--to", "gguf"]) == 0  # ours: replaced
    assert GGUFReader(out).fields["general.file_type"].contents() == 0
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(source.read_bytes())  # a GGUF genmodels did not write
    capsys.readouterr()
    assert main(["convert", str(source), str(foreign), "--to", "gguf", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "genmodels did not write it" in err and "\n" not in err
    assert foreign.read_bytes() == source.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("argv_tail, words", [
    (["--to", "gguf", "--outtype", "q5_0"], "invalid choice"),
    (["--to", "hf", "--outtype", "q8_0"], "--outtype applies to --to gguf only"),
])
def test_cli_flag_refusals(source, tmp_path, capsys, argv_tail, words):
    with pytest.raises(SystemExit) if "invalid" in words else _nothing():
        code = main(["convert", str(source), str(tmp_path / "x"), *argv_tail])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in err and err.startswith(("error: ", "genmodels"))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_unsupported_family_refused_in_one_line(tmp_path, capsys):
    gpt2 = genmodels.build_model(genmodels.preset("gpt2-tiny"))
    with pytest.raises(ConversionError, match="^GGUF export.*position") as e:
        write_gguf(gpt2, tmp_path / "g.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "g.gguf").exists()
    with pytest.raises(ConversionError, match="outtype"):
        write_gguf(gpt2, tmp_path / "g.gguf", "q5_0")


def test_mixture_of_experts_refused(tmp_path):
    moe = genmodels.build_model(genmodels.preset("mixtral-tiny"))
    with pytest.raises(ConversionError, match="^GGUF export.*n_experts"):
        write_gguf(moe, tmp_path / "m.gguf")


def test_sentencepiece_tokenizer_refused(tmp_path):
    from tests.helpers.gguf_files import sentencepiece_tokenizer
    add, n = sentencepiece_tokenizer()
    cfg, sd = tiny_llama(vocab=n, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "sp.gguf", cfg, sd, tokenizer=add)
    with pytest.raises(ConversionError, match="^GGUF export: tokenizer .*have: byte-level BPE"):
        write_gguf(genmodels.load(tmp_path / "sp.gguf"), tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists() and not list(tmp_path.glob(".*.tmp"))


def test_smollm2_written_as_q8_0_keeps_greedy_tokens_and_tokenizer(smollm2, tmp_path):
    """The real model (its file: Q4_1/Q8_0), written back as Q8_0: the same 16 greedy tokens, the same
    tokenizer metadata as the file it came from (~13 s: write + load)."""
    from tests.parity.transformers.make_gguf_reference import smollm2_file
    write_gguf(smollm2, tmp_path / "s.gguf", "q8_0")
    back = genmodels.load(tmp_path / "s.gguf")
    x = torch.tensor([smollm2.tokenizer.encode("The capital of France is").ids])
    with torch.no_grad():
        assert genmodels.generate(back, x, 16).tolist() == genmodels.generate(smollm2, x, 16).tolist()
    src, out = GGUFReader(smollm2_file()).fields, GGUFReader(tmp_path / "s.gguf").fields
    for key in ("model", "pre", "tokens", "merges", "bos_token_id", "eos_token_id", "add_bos_token"):
        k = f"tokenizer.ggml.{key}"
        assert (src[k].contents() if k in src else False) == out[k].contents(), k
    assert out["tokenizer.chat_template"].contents() == src["tokenizer.chat_template"].contents()


def test_our_preset_without_tokenizer_round_trips_and_odd_rows_refused_for_blocks(tmp_path):
    """build_model(preset('llama-tiny')): no tokenizer (written without one), d_ff 688 (rows of 688 cannot be
    cut into 32-value blocks: refused for q4_0, nothing left behind)."""
    model = genmodels.build_model(genmodels.preset("llama-tiny")).eval()
    write_gguf(model, tmp_path / "f.gguf", "f16")
    back = genmodels.load(tmp_path / "f.gguf")
    assert back.tokenizer is None
    got = _hf(back)
    for k, w in _hf(model).items():
        assert torch.equal(got[k], w.half().float() if w.dim() == 2 else w), k
    with pytest.raises(ConversionError, match="^GGUF export: tensor blk.0.ffn_down.weight has rows of 688 values"):
        write_gguf(model, tmp_path / "q.gguf", "q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gguf"]


def test_transformers_gguf_reader_agrees_on_the_written_file(source, tmp_path):
    """A reader that is not ours (transformers' GGUF loader, which follows llama.cpp's conventions: names, the
    q/k permutation, tokenizer.ggml.*) reads the written Q8_0 file to the same logits and token ids."""
    import transformers
    write_gguf(genmodels.load(source), tmp_path / "q.gguf", "q8_0")
    ours = genmodels.load(tmp_path / "q.gguf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="q.gguf")
    assert tok(SAMPLE)["input_ids"] == ours.tokenizer.encode(SAMPLE).ids
