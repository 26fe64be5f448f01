"""GGUF (llama.cpp's one-file format) -> genmodels: the metadata, the tensors, the tokenizer, the template.

A GGUF file holds key/value metadata (``general.architecture``, ``llama.block_count``, the tokenizer's
vocabulary, ``tokenizer.chat_template``) and named tensors, each stored in a ggml type (F32, F16,
BF16, or a block quantisation such as Q4_1 or Q6_K). The ``gguf`` package (pinned, 0.19.0) reads the
file (``gguf.GGUFReader``) and dequantises every block type it knows (``gguf.quants.dequantize``);
the mapping below is ours:

* **Config** — the ``llama.*`` keys become a Llama ``config.json`` dict, which the HF Llama converter
  turns into our ModelConfig (one mapping for HF folders and GGUF files); ``output.weight`` absent
  means tied embeddings, as in llama.cpp.
* **Tensors** — ``blk.{i}.attn_q`` … ``token_embd`` are renamed to HF's Llama keys (table
  ``LAYER``), dequantised to fp32, and built through ``hf.build_from_hf_state``.
* **The q/k row permutation** — llama.cpp's converter (``convert_hf_to_gguf.py``, ``permute``)
  reorders the rows of ``attn_q`` / ``attn_k`` within each head from HF's half-split RoPE layout
  (rows ``0 … d/2-1`` pair with ``d/2 … d-1``) to the interleaved one (row ``2j`` pairs with
  ``2j+1``): it reshapes ``(heads, 2, d/2, in)``, swaps axes 1 and 2. :func:`unpermute_rows` undoes it
  (``(heads, d/2, 2, in)``, swap back), with the key/value head count for ``attn_k``.

Every refusal is one line naming the file and the key or tensor at fault (docs/gguf.md).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.config import ModelConfig
from .base import ConversionError

MAGIC = b"GGUF"
ARCHITECTURES = ("llama",)  # general.architecture values we build (Llama 2, SmolLM2, Mistral-style files)
# ggml types the gguf package dequantises (gguf.quants); others (Q8_1, Q8_K, integer and F64 tensors) are refused
READABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
            "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
            "MXFP4", "NVFP4")

# llama.cpp's tensor names -> HF Llama's (a layer's parts; .weight and .bias alike)
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is to be read as a GGUF file: named ``*.gguf`` (and not a folder; a missing one
    is then named as missing), or a file starting with GGUF's magic."""
    p = Path(path)
    if p.suffix.lower() == ".gguf" and not p.is_dir():
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


def open_gguf(path: str | Path):
    """A ``gguf.GGUFReader`` over ``path``; a file that is not GGUF, is truncated or names a tensor
    type ggml does not define is a one-line ValueError naming the file (and the tensor)."""
    import gguf
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (starts with {head!r}, a GGUF file starts with {MAGIC!r})")

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _READERS:
        while len(_READERS) >= 2:  # the last two files: a run's init_from reads one file's metadata several times
            _READERS.pop(next(iter(_READERS)))
        _READERS[key] = _reader(path, gguf, np)
    return _READERS[key]


_READERS: dict[tuple[str, int, int], Any] = {}  # (resolved path, size, mtime) -> the reader of that file


def _reader(path: Path, gguf, np):
    """A new ``gguf.GGUFReader`` over ``path`` (already known to start with the magic)."""
    class Reader(gguf.GGUFReader):
        def _get(self, *args, **kwargs):
            # Slices of a plain array view of the memory map: slicing np.memmap itself costs ~5 µs a slice
            # (its __array_finalize__), and the metadata and dequantisation take ~10^6 slices.
            if type(self.data) is not np.ndarray:
                self.data = self.data.view(np.ndarray)
            return super()._get(*args, **kwargs)

        def _build_tensors(self, start_offs: int, fields: list) -> None:  # name the tensor at fault first
            check_tensor_infos(path, self.data.size, start_offs, fields)
            super()._build_tensors(start_offs, fields)

    try:
        return Reader(path)
    except ValueError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable GGUF file ({_one_line(e)})") from None
    except (IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:  # the header ends early
        raise ValueError(f"{path}: truncated or corrupt GGUF header ({type(e).__name__}: {_one_line(e)})") from None


def check_tensor_infos(path: Path, file_size: int, data_start: int, fields: list) -> None:
    """Before any tensor is mapped: each tensor's ggml type is one ggml defines, and its data lies
    inside the file (a truncated download is named by its first missing tensor)."""
    from gguf import GGMLQuantizationType, GGML_QUANT_SIZES
    known = {t.value: t for t in GGMLQuantizationType}
    for field in fields:
        _, name, _, dims, raw_type, offset = field.parts
        name = bytes(name).decode("utf-8", "replace")
        qtype = known.get(int(raw_type[0]))
        if qtype is None:
            raise ValueError(f"{path}: tensor {name} has ggml type {int(raw_type[0])}, which ggml does not define; "
                             f"genmodels reads {', '.join(READABLE)}")
        block, size = GGML_QUANT_SIZES[qtype]
        n = 1
        for d in dims.tolist():
            n *= int(d)
        end = data_start + int(offset[0]) + n * size // block
        if end > file_size:
            raise ValueError(f"{path}: truncated — tensor {name} ends at byte {end:,}, the file has {file_size:,}")


def _one_line(e: BaseException) -> str:
    from ..files import one_line
    return one_line(e)


class Metadata:
    """The key/value metadata of a GGUF file, read by key; a missing or mistyped key is named."""

    def __init__(self, reader, path: Path):
        self.reader, self.path = reader, path

    def __contains__(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = None, kind: type | tuple[type, ...] | None = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if kind is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise ConversionError(f"{self.path}: metadata {key}={_short(value)} must be {want}")
        return value

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self:
            raise ConversionError(f"{self.path}: metadata {key} is missing (genmodels needs it to build the model)")
        return self.get(key, kind=kind)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def hf_llama_config(meta: Metadata, tensor_names: set[str]) -> dict[str, Any]:
    """The Llama ``config.json`` this file's ``llama.*`` metadata describes (llama.cpp's key names;
    the defaults are llama.cpp's where a key may be absent)."""
    arch = meta.require("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{meta.path}: general.architecture={arch!r} is not supported; "
                              f"have: {', '.join(ARCHITECTURES)}")
    p = arch + "."
    if meta.get(p + "expert_count", 0, int):
        raise ConversionError(f"{meta.path}: {p}expert_count={meta.get(p + 'expert_count')} (a mixture of experts) "
                              "is not supported for GGUF files yet; have: dense llama")
    scaling = meta.get(p + "rope.scaling.type", "none", str)
    if scaling != "none":
        raise ConversionError(f"{meta.path}: {p}rope.scaling.type={scaling!r} (RoPE scaling) is not supported yet; "
                              "have: none")
    layers = meta.require(p + "block_count", int)
    if layers > len(tensor_names):  # before any per-layer table is built: a layer holds nine tensors
        raise ConversionError(f"{meta.path}: {p}block_count={layers}, but the file holds only {len(tensor_names)} "
                              "tensors (a layer has nine)")
    d = meta.require(p + "embedding_length", int)
    n_heads = meta.require(p + "attention.head_count", int)
    head_dim = meta.get(p + "attention.key_length", d // max(n_heads, 1), int)
    rotary = meta.get(p + "rope.dimension_count", head_dim, int)
    if rotary != head_dim:
        raise ConversionError(f"{meta.path}: {p}rope.dimension_count={rotary} (partial rotary) is not supported; "
                              f"have: the head size {head_dim}")
    tokens = meta.reader.fields.get("tokenizer.ggml.tokens")
    vocab = meta.get(p + "vocab_size", None, int) or (len(tokens.data) if tokens is not None else None)
    if vocab is None:
        raise ConversionError(f"{meta.path}: metadata {p}vocab_size is missing, and no tokenizer.ggml.tokens")
    ids = {f"{name}_token_id": meta.get(f"tokenizer.ggml.{key}_token_id", None, int)
           for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": d,
            "num_hidden_layers": layers, "num_attention_heads": n_heads,
            "num_key_value_heads": meta.get(p + "attention.head_count_kv", n_heads, int), "head_dim": head_dim,
            "intermediate_size": meta.require(p + "feed_forward_length", int),
            "max_position_embeddings": meta.get(p + "context_length", 2048, int),
            "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0, (float, int))),
            "rms_norm_eps": float(meta.require(p + "attention.layer_norm_rms_epsilon", (float, int))),
            "tie_word_embeddings": "output.weight" not in tensor_names,
            "attention_bias": "blk.0.attn_q.bias" in tensor_names, **ids}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a llama GGUF of this config holds, in llama.cpp's names, with its (rows, cols)
    shape — ggml lists dimensions the other way round (``ne0`` = the row length = in-features)."""
    d, hd, f, v = cfg.d_model, cfg.dim_head, cfg.d_ff, cfg.vocab_size
    q, kv = cfg.n_heads * hd, cfg.kv_heads * hd
    layer = {"attn_norm.weight": (d,), "attn_q.weight": (q, d), "attn_k.weight": (kv, d), "attn_v.weight": (kv, d),
             "attn_output.weight": (d, q), "ffn_norm.weight": (d,), "ffn_gate.weight": (f, d),
             "ffn_up.weight": (f, d), "ffn_down.weight": (d, f)}
    if cfg.attn_bias:
        layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_output.bias": (d,)})
    out = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    if not cfg.tie_embeddings:
        out["output.weight"] = (v, d)
    out.update({f"blk.{i}.{k}": s for i in range(cfg.n_layers) for k, s in layer.items()})
    return out


def hf_name(name: str) -> str | None:
    """HF Llama's key for a llama.cpp tensor name, or ``None`` for a name the architecture lacks."""
    base, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if base in TOP:
        return f"{TOP[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER:
        return f"model.layers.{parts[1]}.{LAYER[parts[2]]}.{suffix}"
    return None


def check_tensors(path: Path, tensors: list, cfg: ModelConfig) -> None:
    """Missing, unexpected and mis-shaped tensors, and unreadable types, named in llama.cpp's names
    in one line — before anything is dequantised."""
    want = expected_shapes(cfg)
    have = {t.name: t for t in tensors}
    problems = []
    missing = [n for n in want if n not in have]
    unexpected = [n for n in have if n not in want]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
    for n in want:
        if n in have and tuple(reversed(have[n].shape.tolist())) != want[n]:
            problems.append(f"tensor {n} has shape {tuple(reversed(have[n].shape.tolist()))}, the metadata "
                            f"(llama.*) needs {want[n]}")
    if problems:
        raise ConversionError(f"{path} does not match its metadata: " + "; ".join(problems[:4]))
    for t in tensors:
        if t.tensor_type.name not in READABLE:
            raise ConversionError(f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which genmodels "
                                  f"cannot dequantise; have: {', '.join(READABLE)}")


def unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``attn_q`` / ``attn_k`` rows (interleaved RoPE pairs within each head) back in HF's
    half-split order: ``(heads, d/2, 2, …)`` -> swap the middle axes -> ``(heads·d, …)``."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantised(path: Path, tensor, cfg: ModelConfig) -> torch.Tensor:
    """One tensor in fp32, in HF's row order; a non-finite value is refused naming the tensor."""
    import numpy as np
    from gguf.quants import dequantize
    shape = tuple(reversed(tensor.shape.tolist()))
    a = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    w = torch.from_numpy(a if a.flags.writeable else a.copy()).reshape(shape)  # F32 is a view of the file
    part = tensor.name.split(".")[-2]
    if part in ("attn_q", "attn_k"):
        w = unpermute_rows(w, cfg.n_heads if part == "attn_q" else cfg.kv_heads)
    if not all(map(math.isfinite, torch.aminmax(w))):  # a NaN or ±inf reaches the min or the max
        raise ConversionError(f"{path}: tensor {tensor.name} ({tensor.tensor_type.name}) holds non-finite values")
    return w


def load_gguf(path: str | Path, build: Callable[[ModelConfig], torch.nn.Module],
              check: Callable[[ModelConfig], None] | None = None, quantized: bool = False) -> torch.nn.Module:
    """Our decoder from a llama-architecture GGUF file, weights dequantised to fp32; its tokenizer at
    ``model.tokenizer`` and its chat template (``tokenizer.chat_template``) at ``model.chat_template``.
    ``check(cfg)`` vets the config before any tensor is built (the memory estimate of ``load``).
    ``quantized``: the attention and MLP projections stored as Q8_0 / Q4_0 / Q4_1 keep their blocks
    (interop/gguf_quant.py), for inference."""
    from .decoder_hf import LlamaConverter
    from .hf import build_from_hf_state
    path = Path(path)
    reader = open_gguf(path)
    meta = Metadata(reader, path)
    cfg = read_config(path, reader)
    if check is not None:
        check(cfg)
    check_tensors(path, reader.tensors, cfg)
    tokenizer, template = _tokenizer_and_template(meta)  # refuse an unreadable tokenizer before the weights
    sd = {hf_name(t.name): dequantised(path, t, cfg) for t in reader.tensors}
    model = build_from_hf_state(LlamaConverter(), cfg, sd, build, str(path))
    if quantized:
        from .gguf_quant import keep_blocks
        del sd
        keep_blocks(model, reader.tensors, cfg, unpermute_rows)
    model.tokenizer = tokenizer
    model.chat_template = template
    return model


def read_config(path: str | Path, reader=None) -> ModelConfig:
    """The config of the model a llama-architecture GGUF file holds, from its metadata and tensor names alone
    (no tensor is read): what :func:`load_gguf` builds (a run's ``model.init_from`` section reads it so).
    ``reader``: the file already opened (:func:`open_gguf`)."""
    from .decoder_hf import LlamaConverter
    path = Path(path)
    reader = open_gguf(path) if reader is None else reader
    try:
        cfg = LlamaConverter().config_from_hf(hf_llama_config(Metadata(reader, path), {t.name for t in reader.tensors}))
    except ConversionError as e:
        raise e if str(e).startswith(str(path)) else ConversionError(f"{path}: {e}") from None
    cfg.extra = {**cfg.extra, "hf_architecture": "LlamaForCausalLM"}
    return cfg


def _tokenizer_and_template(meta: Metadata) -> tuple[Any, str | None]:
    from ..data.gguf_tokenizer import tokenizer_from_gguf
    return tokenizer_from_gguf(meta), meta.get("tokenizer.chat_template", None, str)


def read_tokenizer(path: str | Path) -> tuple[Any, str | None]:
    """``(tokenizer or None, chat template or None)`` a GGUF file's metadata describes (no tensor is read): what
    :func:`load_gguf` attaches to the model (``data.tokenizer`` / ``model.init_from`` as a tokenizer source)."""
    path = Path(path)
    return _tokenizer_and_template(Metadata(open_gguf(path), path))
