"""The objective contract, for every registered objective (issue #20 d7): built by the trainer on the smallest
preset of a family it fits, it trains two steps, checkpoints, resumes bit for bit, and evaluates.

A new objective is held here as soon as it is registered (``genmodels.objectives.OBJECTIVES``); a new family
adds its tiny overrides to ``TINY`` (the test names the family that lacks them)."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genmodels.data.kinds import get_data_kind
from genmodels.metrics.evaluate import min_samples
from genmodels.objectives import OBJECTIVES
from genmodels.objectives.base import fits
from genmodels.registry import families
from genmodels.training import RunConfig, train

# per family: overrides that make its presets tiny (fields its config does not have are left out)
TINY = {
    "decoder": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "head_dim": 16},
    "encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "head_dim": 16},
    "seq2seq": {"d_model": 32, "n_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_ff": 64, "head_dim": 16},
    "retnet": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
    "diffusion": {"block_out_channels": [8, 16], "norm_num_groups": 4, "d_model": 16, "n_layers": 1, "n_heads": 2},
    "gan": {"z_dim": 8, "g_width": 8, "d_width": 8},
    # (the lexicon from a 48-token stand-in LM folder: tests/fixtures/make_spae_lm.py)
    "spae": {"lexicon": str(Path(__file__).parent.parent / "fixtures" / "spae" / "tiny-lm"), "lm_dim": 16,
             "codebook_size": 20},
}


@functools.lru_cache(maxsize=None)
def _n_params(name: str) -> int:
    from genmodels.registry import build_model, preset
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(preset(name)).parameters())


def smallest_fitting_preset(objective: str) -> tuple[str, dict]:
    """``(preset, its tiny overrides)``: the fitting preset with the fewest parameters (families the objective fits)."""
    cls, fitting = OBJECTIVES[objective], []
    for fam in families().values():
        if fits(cls, fam) is None:
            fitting += [(name, fam) for name in fam.presets]
    assert fitting, f"no registered family fits objective {objective!r}"
    name, fam = min(fitting, key=lambda nf: _n_params(nf[0]))
    assert fam.name in TINY, f"add family {fam.name!r}'s tiny overrides to TINY"
    fields = set(type(fam.presets[name]()).__dataclass_fields__)
    return name, {k: v for k, v in TINY[fam.name].items() if k in fields}


def recipe(objective: str, corpus_dir, run) -> dict:
    name, over = smallest_fitting_preset(objective)
    kind = OBJECTIVES[objective].data_kinds[0]
    train_over = {"batch_size": 4, "max_steps": 2, "warmup_steps": 1, "eval_every": 100, "ckpt_every": 1,
                  "keep_last": 2, "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1}
    if kind == "images":
        data, sample = {"source": "digits"}, {"n": 2, **({"steps": 2} if objective == "diffusion" else {})}
        train_over["objective"] = {"name": objective, "eval_samples": min_samples()}
    elif kind == "spae_images":  # (no semantic loss: it would read MiniLM; tests/objectives/test_spae.py holds it)
        data, sample = {"source": "digits"}, {"n": 2}
        train_over["objective"] = {"name": objective, "semantic_weight": 0.0, "eval_images": 20}
    elif kind == "examples":  # (fixtures/examples/sft.jsonl, gist.jsonl for gist, with a tokenizer trained on it)
        source = GIST_EXAMPLES if objective == "gist" else EXAMPLES
        data = {"kind": "examples", "path": str(source), "tokenizer": str(examples_tokenizer(run.parent, source)),
                "seq_len": 128, "val_fraction": 0.2}
        sample, train_over["objective"] = {"prompts": ["the "], "max_new_tokens": 2}, objective
    elif kind == "pairs":  # (tests/fixtures/pairs/pairs.jsonl, with a tokenizer trained on it)
        data = {"kind": "pairs", "path": str(PAIRS), "tokenizer": str(examples_tokenizer(run.parent, PAIRS)),
                "seq_len": 160, "val_fraction": 0.25}
        sample, train_over["objective"] = {"prompts": ["the "], "max_new_tokens": 2}, objective
    else:
        data = {"corpus": "folder", "path": str(corpus_dir), "vocab_size": 300, "seq_len": 16, "val_fraction": 0.2}
        sample, train_over["objective"] = {"prompts": ["the "], "max_new_tokens": 2}, objective
    assert get_data_kind(kind).name == kind
    return {"model": {"preset": name, **over}, "data": data, "train": train_over, "sample": sample,
            "run_dir": str(run)}


EXAMPLES = Path(__file__).parent.parent / "fixtures" / "examples" / "sft.jsonl"
GIST_EXAMPLES = EXAMPLES.parent / "gist.jsonl"  # instruction → <GIST> → input → output (data/gist_examples.py)
PAIRS = Path(__file__).parent.parent / "fixtures" / "pairs" / "pairs.jsonl"


def examples_tokenizer(where: Path, source: Path = EXAMPLES) -> Path:
    """A 300-id BPE trained on the examples (or pairs) fixture, saved under ``where`` (once); for the gist
    fixture, with its <GIST> token added."""
    from genmodels.data import save_tokenizer, train_bpe_tokenizer
    from genmodels.data.gist_examples import add_gist_token
    folder = where / f"{source.stem}-tokenizer"
    if not folder.exists():
        tok = train_bpe_tokenizer([source.read_text().replace("\\n", "\n")] * 4, 300)
        save_tokenizer(add_gist_token(tok) if source == GIST_EXAMPLES else tok, folder)
    return folder


def _losses(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r.get("loss", r.get(next((k for k in r if k.endswith("/loss")), ""), None))
            for r in rows if "val_loss" not in r}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_checkpoints_resumes_bit_for_bit_and_evaluates(objective, corpus_dir, tmp_path):
    run = tmp_path / "run"
    cfg = recipe(objective, corpus_dir, run)
    res = train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert res.steps == 2 and res.val_loss is not None and res.val_loss == res.val_loss  # evaluated, finite
    assert (run / "checkpoints" / "step-000001").is_dir() and (run / "final").is_dir()
    # resume from step 1: the second step and the final weights equal the uninterrupted run's, bit for bit
    again = tmp_path / "again"
    shutil.copytree(run, again, ignore=shutil.ignore_patterns("final", "step-000002", "samples*.png"))
    cfg["run_dir"] = str(again)
    res2 = train(RunConfig.from_dict(cfg), resume=True, progress=False, log=lambda s: None)
    assert res2.steps == 2 and _losses(again) == _losses(run)
    a, b = load_file(run / "final" / "model.safetensors"), load_file(again / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
