"""Shared pieces of the training tests: a small folder corpus, a private cache, tiny recipes."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.helpers.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """30 small text files of random sentences (~70 KB)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "genmodels-cache"))


def tiny_config(corpus: Path, run_dir: Path, **sections) -> dict:
    """A recipe that trains a ~40k-parameter Llama in about a second."""
    d = {
        "model": {"preset": "llama-tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64},
        "data": {"corpus": "folder", "path": str(corpus), "vocab_size": 300, "seq_len": 32, "val_fraction": 0.2},
        "train": {"batch_size": 8, "max_steps": 30, "warmup_steps": 3, "lr": 3e-3, "min_lr": 3e-4,
                  "eval_every": 10, "ckpt_every": 10, "eval_batches": 2, "threads": 1,
                  "mfu_peak_tflops": 0.1},
        "sample": {"prompts": ["the "], "max_new_tokens": 8},
        "run_dir": str(run_dir),
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            d[name] = {**d.get(name, {}), **values}
        else:
            d[name] = values
    return copy.deepcopy(d)


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if key in r:
            out[r["step"]] = r[key]
    return out
