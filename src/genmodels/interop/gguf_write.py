"""genmodels -> GGUF: a llama-architecture file llama.cpp loads and :func:`interop.gguf.load_gguf` reads back equal.

The inverse of interop/gguf.py, through the same tables: our state dict goes to HF Llama's keys
(``LlamaConverter.state_to_hf``: the fused q|k|v and gate|up split), then to llama.cpp's names (the
reader's ``TOP`` / ``LAYER`` inverted); ``attn_q`` / ``attn_k`` rows are permuted per head into the
interleaved RoPE layout (:func:`permute_rows`, the inverse of ``unpermute_rows``); a tied model has no
``output.weight``. Types follow ``--outtype`` as llama.cpp's converter does: 1-D tensors (norms,
biases) always F32, every 2-D weight (``token_embd`` included) in the outtype; Q8_0 / Q4_0 / Q4_1
blocks come from ``nn.quantized.quantize_rows`` (byte for byte gguf-py's).

The tokenizer (a byte-level BPE ``tokenizers.Tokenizer``, as GGUF / HF folders give) is written as
``tokenizer.ggml.*`` (model ``gpt2``, tokens in the byte alphabet, merges, token types, BOS / EOS /
pad ids, add-BOS) with the pre-tokenizer's name (``tokenizer.ggml.pre``: the entry of
``data.gguf_tokenizer.PRE_TOKENIZERS`` the tokenizer's split equals), and ``tokenizer.chat_template``.

The file carries ``genmodels.writer``; an existing file without it (a file genmodels did not write) is
never replaced. The file is written beside its destination and renamed into place (docs/reliability.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..models.config import ModelConfig
from .base import ConversionError
from .gguf import LAYER, TOP

OUTTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
WRITER_KEY = "genmodels.writer"  # marks a file genmodels wrote (and may replace)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}  # llama.cpp's LlamaFileType
HF_TO_GGUF = {**{v: k for k, v in TOP.items()}}
HF_LAYER_TO_GGUF = {v: k for k, v in LAYER.items()}


def gguf_name(hf: str) -> str:
    """llama.cpp's name for an HF Llama key (the reader's ``hf_name`` inverted)."""
    base, _, suffix = hf.rpartition(".")
    if base in HF_TO_GGUF:
        return f"{HF_TO_GGUF[base]}.{suffix}"
    _, _, i, part = base.split(".", 3)  # model.layers.{i}.{part}
    return f"blk.{i}.{HF_LAYER_TO_GGUF[part]}.{suffix}"


def permute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-split RoPE rows -> llama.cpp's interleaved pairs, per head: ``(heads, 2, d/2, …)`` with
    the middle axes swapped (llama.cpp's ``permute``; ``gguf.unpermute_rows`` undoes it)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def check_writable(model: torch.nn.Module) -> ModelConfig:
    """The model's config when a llama GGUF expresses it; else one line naming what is not supported."""
    from ..nn.quantized import quantized_modules
    from .decoder_hf import LlamaConverter
    cfg = getattr(model, "config", None)
    family = getattr(cfg, "family", None)
    if family != "decoder":
        raise ConversionError(f"GGUF export supports the llama architecture (family decoder); this model is "
                              f"family={family!r}")
    try:
        LlamaConverter().config_to_hf(cfg)  # refuses, naming the field, what a Llama config cannot express
    except ConversionError as e:
        raise ConversionError(f"GGUF export (llama architecture): {e}") from None
    if cfg.n_experts:
        raise ConversionError(f"GGUF export: n_experts={cfg.n_experts} (a mixture of experts) is not supported; "
                              "have: dense llama")
    if cfg.sliding_window:
        raise ConversionError(f"GGUF export: sliding_window={cfg.sliding_window} is not supported; have: None "
                              "(llama.cpp's llama architecture has no sliding window)")
    if cfg.mlp_bias:
        raise ConversionError("GGUF export: mlp_bias=True is not supported; have: False (llama has no MLP biases)")
    if cfg.attn_out_bias and not cfg.attn_bias:
        raise ConversionError("GGUF export: attn_out_bias without attn_bias is not supported")
    if quantized_modules(model):
        raise ConversionError("GGUF export of a quantised model is not supported; load it without quantized=True "
                              "and pass --outtype")
    return cfg


def tensors(model: torch.nn.Module, cfg: ModelConfig, outtype: str) -> list[tuple[str, Any, Any]]:
    """``(llama.cpp name, array, ggml type)`` for every tensor, in llama.cpp's order of names."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    from ..nn.quantized import QK, quantize_rows
    from .decoder_hf import LlamaConverter
    sd = LlamaConverter().state_to_hf({k: v.detach().cpu().float() for k, v in model.state_dict().items()}, cfg)
    # a tied model has no lm_head.weight here (state_to_hf): the file then has no output.weight
    heads = {"attn_q": cfg.n_heads, "attn_k": cfg.kv_heads}
    out = []
    for hf, w in sd.items():
        name = gguf_name(hf)
        part = name.split(".")[-2]
        if part in heads:
            w = permute_rows(w, heads[part])  # rows are quantised independently: permute first
        if w.dim() == 1 or outtype == "f32":
            out.append((name, w.contiguous().numpy().astype(np.float32), Q.F32))
        elif outtype == "f16":
            out.append((name, w.contiguous().numpy().astype(np.float16), Q.F16))
        else:
            if w.shape[1] % QK:
                raise ConversionError(f"GGUF export: tensor {name} has rows of {w.shape[1]} values, not a multiple "
                                      f"of {QK} that --outtype {outtype} needs; use f16 or f32")
            out.append((name, quantize_rows(w, outtype).numpy(), Q[outtype.upper()]))
    return out


def _pre_tokenizer_name(tok) -> str:
    from ..data.gguf_tokenizer import PRE_TOKENIZERS
    have = json.loads(tok.to_str()).get("pre_tokenizer")
    from tokenizers import Tokenizer, models
    for name, make in PRE_TOKENIZERS.items():
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = make()
        if json.loads(probe.to_str()).get("pre_tokenizer") == have:
            return name
    raise ConversionError(f"GGUF export: the tokenizer's pre-tokenizer is not one GGUF names; have: "
                          f"{', '.join(PRE_TOKENIZERS)}")


def tokenizer_fields(tok, cfg: ModelConfig) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` values of a byte-level BPE tokenizer (``gguf_tokenizer._byte_level``'s inverse)."""
    from ..data.gguf_tokenizer import CONTROL, USER_DEFINED
    data = json.loads(tok.to_str())
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ConversionError(f"GGUF export: tokenizer model={model.get('type')!r} decoder={decoder.get('type')!r} "
                              "is not supported; have: byte-level BPE (model BPE, decoder ByteLevel)")
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ConversionError("GGUF export: the tokenizer's ids are not contiguous from 0")
    added = {a["content"]: a for a in data.get("added_tokens", [])}
    types = [(CONTROL if added[t]["special"] else USER_DEFINED) if t in added else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    with_special = tok.encode("a", add_special_tokens=True).ids
    plain = tok.encode("a", add_special_tokens=False).ids
    fields = {"model": "gpt2", "pre": _pre_tokenizer_name(tok), "tokens": tokens, "token_type": types,
              "merges": merges, "add_bos_token": len(with_special) > len(plain) and with_special[0] != plain[0]}
    if len(with_special) > len(plain) and with_special[-1] != plain[-1]:
        fields["add_eos_token"] = True
    for key, value in (("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id), ("padding", cfg.pad_token_id)):
        if value is not None:
            fields[f"{key}_token_id"] = int(value)
    return fields


def _add_metadata(w, model: torch.nn.Module, cfg: ModelConfig, outtype: str) -> None:
    from .. import __version__
    p = "llama."
    w.add_string("general.name", str(cfg.extra.get("name", "genmodels")))
    w.add_uint32("general.file_type", FILE_TYPES[outtype])
    if outtype not in ("f32", "f16"):
        import gguf
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)  # as llama.cpp's converter writes for block types
    w.add_string(WRITER_KEY, f"genmodels {__version__}")
    for key, value in (("context_length", cfg.max_seq_len), ("embedding_length", cfg.d_model),
                       ("block_count", cfg.n_layers), ("feed_forward_length", cfg.d_ff),
                       ("attention.head_count", cfg.n_heads), ("attention.head_count_kv", cfg.kv_heads),
                       ("attention.key_length", cfg.dim_head), ("attention.value_length", cfg.dim_head),
                       ("rope.dimension_count", cfg.dim_head), ("vocab_size", cfg.vocab_size)):
        w.add_uint32(p + key, int(value))
    w.add_float32(p + "rope.freq_base", float(cfg.rope_theta))
    w.add_float32(p + "attention.layer_norm_rms_epsilon", float(cfg.norm_eps))
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        for key, value in tokenizer_fields(tok, cfg).items():
            adder = {bool: w.add_bool, str: w.add_string, int: w.add_uint32}.get(type(value))
            if adder is None:  # lists: tokens, token types, merges
                w.add_array(f"tokenizer.ggml.{key}", value)
            else:
                adder(f"tokenizer.ggml.{key}", value)
    template = getattr(model, "chat_template", None)
    if template:
        w.add_chat_template(template)


def check_destination(path: Path) -> None:
    """An existing ``path`` is replaced only when genmodels wrote it (it holds ``genmodels.writer``)."""
    if path.is_dir():
        raise ConversionError(f"{path} is a folder; GGUF export writes one file")
    if not path.exists():
        return
    from .gguf import open_gguf
    try:
        ours = WRITER_KEY in open_gguf(path).fields
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ConversionError(f"{path} exists and genmodels did not write it; not replacing it (choose another "
                              "path or remove it yourself)")


def write_gguf(model: torch.nn.Module, path: str | Path, outtype: str = "f32", overwrite: bool = False) -> Path:
    """Write ``model`` (a llama-architecture decoder) as a GGUF file of ``outtype`` (:data:`OUTTYPES`)
    with its tokenizer and chat template. ``overwrite`` is accepted for the convert command's sake: a
    file genmodels wrote is replaced either way, any other file never."""
    import gguf

    from ..files import _create_beside, check_parents, fsync_dir, write_target
    del overwrite
    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r} is not supported; have: {', '.join(OUTTYPES)}")
    path = Path(path)
    cfg = check_writable(model)
    check_destination(path)
    target = write_target(path)
    check_parents(target, str(path))
    target.parent.mkdir(parents=True, exist_ok=True)  # missing folders are created, as for a folder export
    fd, tmp = _create_beside(target)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _add_metadata(w, model, cfg, outtype)
        for name, data, kind in tensors(model, cfg, outtype):
            w.add_tensor(name, data, raw_dtype=None if kind.name in ("F32", "F16") else kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path
