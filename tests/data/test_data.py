"""Tests for genmodels.data: corpora, tokenizer, token cache, packing, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genmodels.data import (
    BatchSampler,
    CorpusSpec,
    PackedDataset,
    TokenCache,
    corpus_fingerprint,
    eos_id,
    folder_documents,
    jsonl_documents,
    load_documents,
    load_tokenizer,
    save_tokenizer,
    split_train_val,
    stdlib_files,
    stdlib_root,
    token_dtype,
    tokenize_to_cache,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

torch.set_num_threads(1)


def _synthetic_docs(n: int = 60) -> list[str]:
    """Small varied documents (code-like and prose-like, some non-ASCII)."""
    docs = []
    for i in range(n):
        docs.append(
            f"def function_{i}(x, y={i}):\n"
            f'    """Return x plus {i} times y."""\n'
            f"    return x + {i} * y  # caf\u00e9 \u2014 \u00fcber {i % 7}\n"
        )
        docs.append(f"The quick brown fox number {i} jumps over the lazy dog.\n\n")
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(_synthetic_docs(), vocab_size=400)


# --------------------------------------------------------------------------- #
# Corpus
# --------------------------------------------------------------------------- #
def test_stdlib_files_excludes_packages_and_tests_and_is_sorted():
    root = stdlib_root()
    files = stdlib_files()
    rel = [f.relative_to(root).as_posix() for f in files]
    assert len(files) > 200
    assert rel == sorted(rel)
    assert "os.py" in rel and "json/__init__.py" in rel
    for r in rel:
        parts = r.split("/")
        assert "site-packages" not in parts and "dist-packages" not in parts
        assert not {"test", "tests", "idle_test"} & set(parts[:-1])
        assert r.endswith(".py")
    assert stdlib_files() == files
    with_tests = stdlib_files(exclude_tests=False)
    assert len(with_tests) > len(files)
    assert any(f.relative_to(root).parts[0] == "test" for f in with_tests)


def test_split_is_deterministic_disjoint_and_order_independent():
    paths = [Path(f"pkg/mod_{i}.py") for i in range(200)]
    train, val = split_train_val(paths, val_fraction=0.1)
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(paths)
    assert 5 <= len(val) <= 40
    train2, val2 = split_train_val(list(reversed(paths)), val_fraction=0.1)
    assert set(val2) == set(val) and set(train2) == set(train)
    # Same relative paths under a different absolute root: same split.
    a = split_train_val([Path("/a/x") / p for p in paths], 0.1, root="/a/x")[1]
    b = split_train_val([Path("/b/y") / p for p in paths], 0.1, root="/b/y")[1]
    assert [p.relative_to("/a/x") for p in a] == [p.relative_to("/b/y") for p in b]


def test_split_val_nonempty_for_two_files():
    train, val = split_train_val([Path("a.py"), Path("b.py")], val_fraction=0.01)
    assert len(train) == 1 and len(val) == 1


def test_jsonl_documents_and_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"text": "hello"}\n\n{"text": "world", "id": 2}\n', encoding="utf-8"
    )
    assert jsonl_documents(good) == ["hello", "world"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2.*'text'"):
        jsonl_documents(bad)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"content": "ok"}\n{"content": "ok"}\n{not json\n', encoding="utf-8"
    )
    with pytest.raises(
        ValueError, match=r"broken\.jsonl, line 3.*invalid JSON.*'content'"
    ):
        jsonl_documents(broken, text_field="content")


def test_corpus_spec_validation(tmp_path):
    with pytest.raises(
        ValueError, match="kind must be one of stdlib, text, folder, jsonl"
    ):
        CorpusSpec(kind="csv").validate()
    with pytest.raises(ValueError, match="corpus.path is required"):
        CorpusSpec(kind="folder").validate()
    with pytest.raises(ValueError, match="does not exist"):
        CorpusSpec(kind="text", path=str(tmp_path / "missing.txt")).validate()
    with pytest.raises(ValueError, match="val_fraction"):
        CorpusSpec(val_fraction=1.5).validate()
    with pytest.raises(ValueError, match="unknown corpus field"):
        CorpusSpec.from_dict({"kind": "stdlib", "pth": "x"})
    assert CorpusSpec().validate().kind == "stdlib"


def test_load_documents_user_corpora(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(30):
        (folder / "sub" / f"f{i:02d}.md").write_text(f"doc {i}\n", encoding="utf-8")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    assert len(folder_documents(folder)) == 30
    train, val = load_documents(
        CorpusSpec(kind="folder", path=str(folder), val_fraction=0.2)
    )
    assert (
        val and train and sorted(train + val) == sorted(f"doc {i}\n" for i in range(30))
    )

    text = tmp_path / "book.txt"
    text.write_text("".join(f"line {i}\n" for i in range(1000)), encoding="utf-8")
    train, val = load_documents(CorpusSpec(kind="text", path=str(text)))
    assert val and train and len(train) + len(val) == 10
    assert load_documents(CorpusSpec(kind="text", path=str(text))) == (train, val)

    jl = tmp_path / "data.jsonl"
    jl.write_text(
        "".join(json.dumps({"text": f"r{i}"}) + "\n" for i in range(50)),
        encoding="utf-8",
    )
    train, val = load_documents(CorpusSpec(kind="jsonl", path=str(jl)))
    assert val and train and len(train) + len(val) == 50


def test_corpus_fingerprint_stable_and_sensitive(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("aaa", encoding="utf-8")
    spec = CorpusSpec(kind="folder", path=str(folder))
    fp = corpus_fingerprint(spec)
    assert fp == corpus_fingerprint(spec) and len(fp) == 64
    (folder / "b.txt").write_text("bbb", encoding="utf-8")
    assert corpus_fingerprint(spec) != fp
    assert corpus_fingerprint(CorpusSpec()) == corpus_fingerprint(CorpusSpec())


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def test_tokenizer_deterministic_and_round_trips(tokenizer, tmp_path):
    again = train_bpe_tokenizer(_synthetic_docs(), vocab_size=400)
    assert tokenizer.get_vocab() == again.get_vocab()
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(again)
    assert tokenizer.get_vocab_size() == 400
    assert eos_id(tokenizer) == 0
    assert tokenizer.token_to_id("<|pad|>") == 1
    for text in [
        "def f(x):\n    return x  # caf\u00e9\n",
        "  leading spaces\ttab \u2603 \U0001f600",
        "",
    ]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text

    path = save_tokenizer(tokenizer, tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for where in (tmp_path / "tok", path):
        assert tokenizer_fingerprint(load_tokenizer(where)) == tokenizer_fingerprint(
            tokenizer
        )
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")


# --------------------------------------------------------------------------- #
# Token cache
# --------------------------------------------------------------------------- #
def test_tokenize_to_cache_layout(tokenizer, tmp_path):
    docs = ["hello world", "", "def f(): pass"]
    arr = tokenize_to_cache(docs, tokenizer, tmp_path / "t.bin", eos_id=0)
    assert arr.dtype == np.uint16
    expected = (
        tokenizer.encode("hello world").ids
        + [0]
        + tokenizer.encode("def f(): pass").ids
        + [0]
    )
    assert arr.tolist() == expected
    meta = json.loads((tmp_path / "t.bin.json").read_text())
    assert meta["length"] == len(expected) and meta["dtype"] == "uint16"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_cache_hit_skips_docs_fn(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    calls = {"n": 0}

    def docs_fn():
        calls["n"] += 1
        return _synthetic_docs(20)

    cache = TokenCache("corpus-fp")
    first = cache.get_or_build(docs_fn, tokenizer, "train")
    second = TokenCache("corpus-fp").get_or_build(docs_fn, tokenizer, "train")
    assert calls["n"] == 1
    assert np.array_equal(first, second)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"tokens.bin", "tokens.bin.json"}
    # A different split is a different entry.
    cache.get_or_build(docs_fn, tokenizer, "val")
    assert calls["n"] == 2


# --------------------------------------------------------------------------- #
# Packing and sampling
# --------------------------------------------------------------------------- #
def test_packed_dataset_shapes_and_shift():
    tokens = np.arange(103, dtype=np.uint16)
    ds = PackedDataset(tokens, seq_len=9)
    assert len(ds) == 10
    x, y = ds.get_batch([0, 3, 9])
    assert x.shape == y.shape == (3, 9)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x[1].tolist() == list(range(30, 39)) and y[1].tolist() == list(range(31, 40))
    with pytest.raises(IndexError):
        ds.get_batch([10])
    with pytest.raises(ValueError):
        PackedDataset(tokens[:5], seq_len=9)


def test_sampler_resume_matches_uninterrupted():
    full = BatchSampler(num_samples=50, batch_size=4, seed=7)
    reference = [next(full) for _ in range(30)]  # crosses several epochs
    assert len(full) == 12

    part = BatchSampler(num_samples=50, batch_size=4, seed=7)
    for _ in range(17):
        next(part)
    state = part.state_dict()
    resumed = BatchSampler(num_samples=50, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    for expected in reference[17:]:
        assert np.array_equal(next(resumed), expected)

    # Each epoch is a permutation prefix: no index repeats within an epoch.
    epoch0 = np.concatenate(reference[:12])
    assert len(set(epoch0.tolist())) == 48
    assert not np.array_equal(np.concatenate(reference[12:24]), epoch0)


def test_sharded_ranks_union_equals_global_batch():
    world = 4
    single = BatchSampler(num_samples=100, batch_size=3 * world, seed=1)
    ranks = [
        BatchSampler(100, 3, seed=1, rank=r, world_size=world) for r in range(world)
    ]
    for _ in range(20):
        glob = next(single)
        parts = [next(s) for s in ranks]
        assert np.array_equal(np.concatenate(parts), glob)
        assert all(len(p) == 3 for p in parts)
    # A rank's state resumes a single-process run with the same global batch.
    single_again = BatchSampler(num_samples=100, batch_size=12, seed=1)
    single_again.load_state_dict(ranks[0].state_dict())
    assert np.array_equal(next(single_again), next(single))
    with pytest.raises(ValueError, match="global_batch_size"):
        BatchSampler(100, 5, seed=1).load_state_dict(ranks[0].state_dict())
