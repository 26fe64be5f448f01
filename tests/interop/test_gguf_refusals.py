"""GGUF files genmodels must refuse, each with one line naming the file and the key or tensor at fault
(docs/reliability.md): bad magic, truncation, unknown architecture / tensor type / tokenizer, missing or
mis-shaped tensors, missing metadata, non-finite weights; the CLI prints ``error: …`` and exits 2."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader

import genmodels
from genmodels.cli import main
from genmodels.interop.base import ConversionError

from tests.helpers.gguf_files import byte_level_tokenizer, tiny_llama, write_llama_gguf


def _refused(path, error: type, *words: str) -> str:
    with pytest.raises(error) as e:
        genmodels.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture
def good(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=2)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd)
    return tmp_path / "m.gguf", cfg, sd


def test_bad_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(100))
    _refused(tmp_path / "x.gguf", ValueError, "not a GGUF file", "b'GGML'")


def test_missing_file_is_named(tmp_path):
    _refused(tmp_path / "nope.gguf", FileNotFoundError, "no such file")


def test_a_file_with_the_magic_but_another_name_is_read_as_gguf(good, tmp_path):
    path, _, _ = good
    other = tmp_path / "weights.bin"
    other.write_bytes(path.read_bytes())
    assert genmodels.load(other).config.n_layers == 2


@pytest.mark.parametrize("where", ["data", "header"])
def test_truncated(good, tmp_path, where):
    path, _, _ = good
    raw = path.read_bytes()
    cut = len(raw) - 1000 if where == "data" else 200
    (tmp_path / "cut.gguf").write_bytes(raw[:cut])
    if where == "data":
        _refused(tmp_path / "cut.gguf", ValueError, "truncated", "tensor blk.1.")
    else:
        _refused(tmp_path / "cut.gguf", ValueError, "truncated or corrupt GGUF header")


def test_unknown_architecture(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "q.gguf", cfg, sd, arch="qwen2")
    _refused(tmp_path / "q.gguf", ConversionError, "general.architecture='qwen2'", "have: llama")


def test_undefined_ggml_type_number(good, tmp_path):
    """A tensor whose type field holds a number ggml does not define is named with the number."""
    path, _, _ = good
    t = next(t for t in GGUFReader(path).tensors if t.name == "blk.0.ffn_up.weight")
    name_len, _, n_dims, _, raw_type, _ = t.field.parts
    at = t.field.offset + 8 + len(t.name.encode()) + 4 + 8 * int(n_dims[0])  # the type field
    raw = bytearray(path.read_bytes())
    raw[at:at + 4] = np.uint32(200).tobytes()
    (tmp_path / "u.gguf").write_bytes(bytes(raw))
    _refused(tmp_path / "u.gguf", ValueError, "tensor blk.0.ffn_up.weight", "ggml type 200")


def test_type_gguf_cannot_dequantise(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    w = sd["model.layers.0.mlp.up_proj.weight"].numpy().astype(np.float64)
    write_llama_gguf(tmp_path / "f.gguf", cfg, sd, stored={"blk.0.ffn_up.weight": (w, None)})  # stored as F64
    _refused(tmp_path / "f.gguf", ConversionError, "tensor blk.0.ffn_up.weight", "F64", "have: F32")


def test_missing_tensor(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=2)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd, drop=("blk.1.ffn_up.weight",))
    _refused(tmp_path / "m.gguf", ConversionError, "missing tensors: blk.1.ffn_up.weight")


def test_mis_shaped_tensor(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd, meta={"feed_forward_length": 48})
    _refused(tmp_path / "m.gguf", ConversionError, "tensor blk.0.ffn_gate.weight has shape (64, 64)", "(48, 64)")


def test_missing_metadata_key(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd, meta={"block_count": None})
    _refused(tmp_path / "m.gguf", ConversionError, "metadata llama.block_count is missing")


def test_more_layers_than_the_file_holds(tmp_path):
    """An edited block_count is refused before any per-layer table or model is built."""
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd, meta={"block_count": 10**9})
    _refused(tmp_path / "m.gguf", ConversionError, "llama.block_count=1000000000", "only 12 tensors")


def test_mixture_of_experts_and_rope_scaling_are_named(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "e.gguf", cfg, sd, meta={"expert_count": 8})
    _refused(tmp_path / "e.gguf", ConversionError, "llama.expert_count=8")
    write_llama_gguf(tmp_path / "r.gguf", cfg, sd, meta={"rope.scaling.type": "yarn"})
    _refused(tmp_path / "r.gguf", ConversionError, "llama.rope.scaling.type='yarn'")


def test_non_finite_weights(tmp_path):
    cfg, sd = tiny_llama(vocab=256, d=64, d_ff=64, layers=1)
    sd["model.layers.0.self_attn.v_proj.weight"][3, 5] = float("nan")
    write_llama_gguf(tmp_path / "n.gguf", cfg, sd)
    _refused(tmp_path / "n.gguf", ConversionError, "tensor blk.0.attn_v.weight", "non-finite")


@pytest.mark.parametrize("key, value, words", [
    ("model", "bert", "tokenizer.ggml.model='bert'"),
    ("pre", "qwen2", "tokenizer.ggml.pre='qwen2'"),
])
def test_unknown_tokenizer_kinds(tmp_path, key, value, words):
    add, n = byte_level_tokenizer()

    def tokenizer(w):
        add(w)
        w.add_string(f"tokenizer.ggml.{key}", value)  # replaces what the step wrote
    cfg, sd = tiny_llama(vocab=n, d=64, d_ff=64, layers=1)
    write_llama_gguf(tmp_path / "t.gguf", cfg, sd, tokenizer=tokenizer)
    _refused(tmp_path / "t.gguf", ConversionError, words)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"nope")
    assert main(["info", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a GGUF file" in err and len(err.splitlines()) == 1
