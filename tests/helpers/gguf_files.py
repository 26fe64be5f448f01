"""Tiny GGUF files written with ``gguf.GGUFWriter``: a random Llama in any ggml tensor type, and the two
tokenizer kinds (byte-level BPE, SentencePiece-style), for the GGUF tests.

The writer lays the tensors out as llama.cpp's converter does (``convert_hf_to_gguf.py``): HF Llama
weights renamed, ``attn_q`` / ``attn_k`` rows permuted per head to the interleaved RoPE layout
(``(heads, 2, d/2, in)`` with axes 1 and 2 swapped), 1-D tensors in F32.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

# a text with code, digits, whitespace runs, non-Latin scripts, emoji and chat markers
SAMPLE = ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 12345 and 3.14159\n"
          "\t\tTabs,   three spaces,\n\n\nnew lines; 2024-12-07 at 06:40 UTC costs $1,000,000.\n"
          "Привет, мир! 你好，世界。 こんにちは 안녕하세요 مرحبا Γειά σου 😀👍🏽🇫🇷 "
          "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>")

GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
GGUF_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def tiny_llama(vocab: int = 320, d: int = 256, heads: int = 4, kv_heads: int = 2, d_ff: int = 512, layers: int = 2,
               tied: bool = False, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """(HF config dict, HF state dict) of a random Llama, every parameter ~ N(0, 0.2). Rows of 256 fit the
    K-quants' 256-element blocks."""
    hd = d // heads
    cfg = dict(vocab_size=vocab, hidden_size=d, num_attention_heads=heads, num_key_value_heads=kv_heads,
               intermediate_size=d_ff, num_hidden_layers=layers, rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=128, tie_word_embeddings=tied, head_dim=hd)
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (heads * hd, d),
                       p + "self_attn.k_proj.weight": (kv_heads * hd, d),
                       p + "self_attn.v_proj.weight": (kv_heads * hd, d),
                       p + "self_attn.o_proj.weight": (d, heads * hd), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (d_ff, d), p + "mlp.up_proj.weight": (d_ff, d),
                       p + "mlp.down_proj.weight": (d, d_ff)})
    sd = {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}
    for k in sd:
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + sd[k]  # norms near one, still random
    return cfg, sd


def gguf_name(hf: str) -> str:
    base, _, suffix = hf.rpartition(".")
    if base in GGUF_TOP:
        return f"{GGUF_TOP[base]}.{suffix}"
    _, _, i, part = base.split(".", 3)
    return f"blk.{i}.{GGUF_LAYER[part]}.{suffix}"


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: HF's half-split RoPE rows -> interleaved pairs, per head."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def raw_blocks(rows: int, cols: int, qtype: Q, seed: int = 0) -> np.ndarray:
    """Random bytes as ``rows`` rows of ``qtype`` blocks. Bit 6 of every byte is cleared, so every f16
    scale (its exponent's top bit), fp8 or e8m0 scale stays finite."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8) & 0xBF).astype(np.uint8)


def encode(w: np.ndarray, qtype: Q, seed: int = 0) -> np.ndarray:
    """``w`` (rows, cols) stored as ``qtype``: quantised by gguf where it can, else random raw blocks."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    try:
        return gguf.quants.quantize(w.astype(np.float32), qtype)
    except NotImplementedError:
        return raw_blocks(*w.shape, qtype, seed)


def write_llama_gguf(path: Path, hf_cfg: dict, sd: dict[str, torch.Tensor], qtype: Q | list[Q] = Q.F32, *,
                     arch: str = "llama", tokenizer=None, meta: dict | None = None, drop: tuple = (),
                     stored: dict | None = None) -> dict[str, np.ndarray]:
    """Write a GGUF of a HF Llama state dict (2-D weights as ``qtype`` — a list: the 2-D weights take its
    types in turn, in the state dict's order —, 1-D as F32; ``stored`` overrides
    a tensor's array and type by GGUF name). Returns what each tensor holds, dequantised by gguf, in
    HF's row order (the expected weights). ``tokenizer(writer)`` adds tokenizer metadata; ``meta`` adds or
    replaces (None: removes) ``llama.*`` keys."""
    w = gguf.GGUFWriter(str(path), arch)
    keys = {"block_count": hf_cfg["num_hidden_layers"], "context_length": hf_cfg["max_position_embeddings"],
            "embedding_length": hf_cfg["hidden_size"], "feed_forward_length": hf_cfg["intermediate_size"],
            "attention.head_count": hf_cfg["num_attention_heads"],
            "attention.head_count_kv": hf_cfg["num_key_value_heads"],
            "rope.freq_base": float(hf_cfg["rope_theta"]), "rope.dimension_count": hf_cfg["head_dim"],
            "attention.layer_norm_rms_epsilon": float(hf_cfg["rms_norm_eps"]), "vocab_size": hf_cfg["vocab_size"]}
    keys.update(meta or {})
    for k, v in keys.items():
        if v is None:
            continue
        adder = w.add_float32 if isinstance(v, float) else w.add_string if isinstance(v, str) else w.add_uint32
        adder(f"{arch}.{k}", v)
    if tokenizer is not None:
        tokenizer(w)
    expected = {}
    types = qtype if isinstance(qtype, list) else [qtype]
    n2d = 0
    for j, (hf, t) in enumerate(sd.items()):
        name = gguf_name(hf)
        if name in drop:
            continue
        a = t.numpy().astype(np.float32)
        part = name.split(".")[-2]
        heads = {"attn_q": hf_cfg["num_attention_heads"], "attn_k": hf_cfg["num_key_value_heads"]}.get(part)
        if a.ndim == 1:
            data, kind = a, Q.F32
        else:
            kind, n2d = types[n2d % len(types)], n2d + 1
            data = encode(a, kind, seed=j)
        if stored and name in stored:  # (array, type); type None: the writer's choice for the dtype (F64…)
            data, kind = stored[name]
        if kind is not None:
            deq = gguf.quants.dequantize(data, kind).reshape(data.shape[0], -1) if kind != Q.F32 else data
            expected[hf] = deq.reshape(a.shape) if deq.size == a.size else deq
        if heads is not None:
            data = permute_rows(data, heads)  # rows of blocks: a row permutation commutes with quantising
        w.add_tensor(name, data, raw_dtype=None if kind in (Q.F32, None) else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def byte_level_tokenizer(pre: str = "smollm", vocab: int = 320, add_bos: bool | None = False,
                         trained_as: str | None = None):
    """A writer step adding a byte-level BPE tokenizer (trained here on SAMPLE-like text, split as
    ``trained_as`` — by default as ``pre`` — splits) with control tokens ``<|endoftext|>``,
    ``<|im_start|>``, ``<|im_end|>`` and user-defined ``<tool>`` and ``<tool call>``."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from genmodels.data.gguf_tokenizer import PRE_TOKENIZERS
    text = [SAMPLE * 3, "def f(x): return x * 2\n" * 5, "1234567890 12 34 56 " * 5, "the cat sat on the mat " * 5]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = PRE_TOKENIZERS[trained_as or pre]()
    trained.decoder = decoders.ByteLevel()
    trained.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=vocab - 1, min_frequency=1, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(trained.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    tokens += ["<tool>", "<tool call>"]  # user-defined; the second stored in plain text (a space)
    types = [3, 3, 3] + [1] * (len(tokens) - 5) + [4, 4]

    def add(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(0)
        if add_bos is not None:
            w.add_add_bos_token(add_bos)
    return add, len(tokens)


def sentencepiece_tokenizer(vocab: int = 400, add_bos: bool | None = None, space_prefix: bool | None = None):
    """A writer step adding a SentencePiece-style (``llama``) tokenizer: ``<unk>``, ``<s>``, ``</s>``, the
    256 byte tokens, then pieces learned here (``▁`` for a space) scored by their rank; no merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=1, show_progress=False)
    t.train_from_iterator([SAMPLE * 3, "the cat sat on the mat " * 9, "def f(x): return x * 2\n" * 4], trainer)
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    learned = [p for p, _ in sorted(t.get_vocab().items(), key=lambda kv: kv[1]) if p not in bytes_]
    tokens = ["<unk>", "<s>", "</s>", *bytes_, *learned]
    types = [2, 3, 3] + [6] * 256 + [1] * len(learned)
    scores = [0.0] * 259 + [-float(i) for i in range(len(learned))]

    def add(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        if add_bos is not None:
            w.add_add_bos_token(add_bos)
        if space_prefix is not None:
            w.add_add_space_prefix(space_prefix)
    return add, len(tokens)
