"""Caches never serve stale or broken data (issue #8, item 4a/4b) and a short corpus is refused with a
message that says what is too small (item 8)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from genmodels.files import file_sha256
from genmodels.training.data import DataConfig
from genmodels.training.data import prepare_data, tokenizer_cache_path


def data_config(path: Path, **kw) -> DataConfig:
    return DataConfig(**{**dict(corpus="folder", path=str(path), vocab_size=300, seq_len=32, val_fraction=0.2), **kw})


def prepare(d: DataConfig, root: Path):
    lines: list[str] = []
    return prepare_data(d, log=lines.append, cache_root=root), lines


@pytest.fixture
def corpus(corpus_dir, tmp_path) -> Path:
    """A private copy of the shared corpus (these tests edit it)."""
    return Path(shutil.copytree(corpus_dir, tmp_path / "corpus"))


def test_same_size_same_mtime_edit_is_not_served_from_the_cache(corpus, tmp_path):
    d, root = data_config(corpus), tmp_path / "cache"
    first, _ = prepare(d, root)
    doc = corpus / "doc00.txt"
    st = doc.stat()
    text = doc.read_text()
    doc.write_text(text.replace("the", "THE"))  # same size
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert doc.stat().st_size == st.st_size and doc.stat().st_mtime_ns == st.st_mtime_ns
    second, _ = prepare(d, root)
    fresh, _ = prepare(d, tmp_path / "fresh-cache")  # what an empty cache gives for the edited corpus
    assert second.info["corpus_fingerprint"] != first.info["corpus_fingerprint"]
    assert np.array_equal(np.asarray(second.train.tokens), np.asarray(fresh.train.tokens))
    assert np.array_equal(np.asarray(second.val.tokens), np.asarray(fresh.val.tokens))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_cached_tokenizer_is_retrained(corpus_dir, tmp_path, damage):
    d, root = data_config(corpus_dir), tmp_path / "cache"
    first, _ = prepare(d, root)
    path = tokenizer_cache_path(first.info["corpus_fingerprint"], d, root)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else os.urandom(len(blob)))
    second, lines = prepare(d, root)
    said = [ln for ln in lines if ln.startswith("tokenizer cache:")]
    assert len(said) == 1 and str(path) in said[0] and "retraining" in said[0], lines
    assert second.tokenizer.to_str() == first.tokenizer.to_str()
    assert path.read_bytes() == blob  # rebuilt in place
    assert np.array_equal(np.asarray(second.train.tokens), np.asarray(first.train.tokens))


@pytest.mark.parametrize("damage", ["garbage", "ids-outside-vocab"])
def test_corrupted_token_file_is_rebuilt(corpus_dir, tmp_path, damage):
    d, root = data_config(corpus_dir), tmp_path / "cache"
    first, _ = prepare(d, root)
    want = np.array(first.train.tokens)
    files = sorted((root / "tokens").rglob("tokens.bin"), key=lambda p: p.stat().st_size)
    path = files[-1]  # the train split (the larger one)
    size = path.stat().st_size
    if damage == "garbage":  # right size, wrong bytes
        path.write_bytes(np.random.default_rng(0).integers(0, 300, size // 2, dtype=np.uint16).tobytes())
    else:  # ids past the vocabulary, and a sidecar whose checksum agrees: only the range check sees it
        bad = np.fromfile(path, dtype=np.uint16)
        bad[len(bad) // 2] = 60000
        bad.tofile(path)
        side = path.with_name(path.name + ".json")
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "sha256": file_sha256(path)}))
    assert path.stat().st_size == size
    second, lines = prepare(d, root)
    said = [ln for ln in lines if ln.startswith("token cache:")]
    assert len(said) == 1 and str(path) in said[0] and "rebuilding" in said[0], lines
    assert np.array_equal(np.asarray(second.train.tokens), want)


# ---- item 8: a corpus too small for a train and a validation split --------------------------------------
def test_short_text_file_names_what_is_too_small(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("a few lines\nof text\nonly\n")
    with pytest.raises(ValueError) as e:
        prepare(data_config(text, corpus="text"), tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and str(text) in msg and "too small" in msg
    assert "3 line(s) make 1 block(s)" in msg and "data.val_fraction=0.2" in msg and "data.seq_len+1 = 33" in msg
    assert "empty" not in msg  # the old message blamed empty documents


def test_folder_with_one_file_names_what_is_too_small(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "only.txt").write_text("hello world\n" * 500)
    with pytest.raises(ValueError) as e:
        prepare(data_config(folder), tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg and "1 non-empty file(s)" in msg and "at least 2 files" in msg
    assert "data.val_fraction=0.2" in msg


def test_split_shorter_than_a_window_names_seq_len(corpus_dir, tmp_path):
    with pytest.raises(ValueError) as e:
        prepare(data_config(corpus_dir, seq_len=100_000), tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and str(corpus_dir) in msg and "data.seq_len+1 = 100001" in msg and "tokens" in msg
