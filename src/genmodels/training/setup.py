"""Setting a run up: the model config for the tokenizer, the resume point (the newest
readable checkpoint of the same corpus and model), RNG states, the peak FLOP/s for MFU."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..data import eos_id, load_tokenizer
from ..models import build_model
from ..objectives import extra_tokens
from .adapters import checkpoint_shapes
from .checkpoint import (CheckpointUnreadable, checkpoint_dir, latest_checkpoint, load_checkpoint, read_checkpoint,
                         read_state, step_dirs)
from .config import RunConfig
from .distributed import DistInfo
from .init_from import grown_source, open_source, vocab_for_source
from .metrics import measure_matmul_peak
from .rundir import RunDirError


@dataclass
class TrainResult:
    """What :func:`genmodels.training.train` did."""

    run_dir: Path
    final_dir: Path | None
    steps: int
    tokens: int
    train_losses: dict[int, float] = field(default_factory=dict)  # step → loss (this invocation)
    val_loss: float | None = None
    val_ppl: float | None = None
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)
    image_metrics: dict[str, float] = field(default_factory=dict)  # image runs: the last evaluation's metrics
    checkpoint: Path | None = None


def rng_state(info: DistInfo) -> dict[str, torch.Tensor]:
    mine = {"cpu": torch.get_rng_state()}
    if info.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(info.device)
    out = {}
    for r, st in enumerate(info.all_gather_object(mine)):
        for k, v in st.items():
            out[f"{k}/rank{r}"] = v
    return out


def restore_rng(rng: dict[str, torch.Tensor], info: DistInfo, seed: int) -> None:
    key = f"cpu/rank{info.rank}"
    if key in rng:
        torch.set_rng_state(rng[key])
    else:  # different world size: a deterministic fresh stream per rank
        torch.manual_seed(seed + 1000 + info.rank)
    if info.device.type == "cuda" and f"cuda/rank{info.rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda/rank{info.rank}"], info.device)



def model_config(cfg: RunConfig, tok, eos: int | None):
    """``(model config, n_tokens)`` for the tokenizer ``tok``: the vocabulary is the tokenizer's
    (at least ``data.vocab_size`` for a trained BPE) plus the objective's [MASK] / sentinel ids,
    unless the recipe sets ``model.vocab_size`` (which must hold them: ConfigError otherwise).
    Data without a tokenizer (images): the recipe's model config, and no token ids."""
    if tok is None:
        return cfg.model_config(), 0
    tok_vocab = tok.get_vocab_size()
    n_tokens, _ = cfg.min_model_vocab(tok_vocab)
    mcfg = cfg.model_config(vocab_size=n_tokens + extra_tokens(cfg.objective()), eos_id=eos)
    mcfg = vocab_for_source(cfg, mcfg, tok_vocab)  # model.init_from: a vocabulary short of the ids grows
    cfg.check_model_vocab(mcfg.vocab_size, tok_vocab)
    return mcfg, n_tokens


def _field_defaults(cfg) -> dict:
    """Every field's default value of ``cfg``'s (dataclass) config, as stored in JSON."""
    out = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
           for f in dataclasses.fields(cfg)
           if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return json.loads(json.dumps(out))


def _check_resumed_model(saved: dict, mcfg, run_dir: Path) -> None:
    """RunDirError naming the model keys where ``mcfg`` differs from the checkpoint's."""
    old = saved.get("model_config")
    if old is None:  # a checkpoint from before model configs were stored
        return
    new = json.loads(json.dumps(mcfg.to_dict()))  # as stored: tuples become lists
    old = {**_field_defaults(mcfg), **old}  # a field added since the checkpoint (n_experts, …) held its default
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise RunDirError("--resume: the model differs from the checkpoint's in "
                          + ", ".join(f"model.{k} ({old.get(k)!r} there, {new.get(k)!r} now)" for k in differ)
                          + f"; resume with the recipe in {run_dir / 'config.yaml'}, or start a new run_dir")


def _param_shapes(mcfg) -> dict[str, tuple[int, ...]] | None:
    """genmodels key → shape for the model ``mcfg`` describes (built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            model = build_model(mcfg)
    except Exception:  # a model that cannot be built on meta: tensors are then checked when loaded
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}




def _resumed_model_config(cfg: RunConfig, rdc):
    """The model config of a resumed run, whose data config ``rdc`` reads the run's own tokenizer (if any)."""
    tok_file = getattr(rdc, "tokenizer", None)
    if tok_file is None:  # no tokenizer
        return cfg.model_config()
    if not Path(tok_file).is_file():
        raise RunDirError(f"--resume: {tok_file} is missing; it holds the tokenizer the checkpoints "
                          "were trained with")
    tok = load_tokenizer(tok_file)
    return model_config(cfg, tok, eos_id(tok))[0]


def resume_point(cfg: RunConfig, kind, run_dir: Path, fingerprint: str, info: DistInfo, say):
    """``(checkpoint, (model_sd, optim_sd, rng, state), data config)`` to resume from — the newest
    readable checkpoint, chosen by the main rank, which says which it skipped and why — or
    ``(None, None, cfg.data)`` when the run has none. RunDirError when the data or model differs
    from the checkpoint's, or when no checkpoint is readable. ``kind``: the run's data kind."""
    dc, chosen, loaded = cfg.data, None, None
    if info.is_main and step_dirs(run_dir):
        mcfg = _resumed_model_config(cfg, kind.resumed(dc, run_dir))
        shapes, skipped = checkpoint_shapes(cfg.train.lora, _param_shapes(mcfg), mcfg), []  # (LoRA: adapters only)
        for path in reversed(step_dirs(run_dir)):
            try:
                saved = read_state(path)
            except CheckpointUnreadable as e:
                skipped.append((path, str(e)))
                continue
            saved_fp = saved.get("corpus_fingerprint")
            if saved_fp not in (None, fingerprint) and saved_fp not in kind.older(dc):
                raise RunDirError(f"--resume: the {kind.describe(dc)} differs from the one {path} was trained on; resume "
                                  "with the same data, or start a new run_dir")
            _check_resumed_model(saved, mcfg, run_dir)
            try:
                loaded = read_checkpoint(path, shapes)
            except CheckpointUnreadable as e:
                skipped.append((path, str(e)))
                continue
            chosen = path
            break
        for path, why in skipped:
            say(f"--resume: skipped {path}: {why}")
        if chosen is None:
            raise RunDirError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)} is readable ("
                              + "; ".join(f"{p.name}: {why}" for p, why in skipped)
                              + "); start a new run_dir (--set run_dir=...)")
    chosen = info.all_gather_object(None if chosen is None else str(chosen))[0]  # rank 0's choice
    if chosen is None:
        return None, None, dc
    if loaded is None:  # ranks > 0 read what rank 0 chose
        loaded = load_checkpoint(chosen)
    return Path(chosen), loaded, kind.resumed(dc, run_dir)



def ema_on_resume(objective, model_sd: dict, ckpt: Path, say) -> tuple[dict, bool]:
    """The checkpoint's model state reconciled with the objective's EMA (its ``ema.*`` tensors), said once:
    resumed with the EMA on from a checkpoint that kept none, the EMA restarts from the loaded weights (never
    from the fresh initialisation the objective copied); resumed with it off, the checkpoint's EMA is dropped.
    Returns ``(state to load, whether to call objective.restart_ema() once it is loaded)``."""
    kept = any(k.startswith("ema.") for k in model_sd)
    wanted = getattr(objective, "ema", None) is not None
    field = getattr(objective, "ema_field", "ema_decay")
    if wanted and not kept:
        say(f"--resume: {ckpt} holds no EMA of the weights (trained without one); the EMA "
            f"({field}={objective.ema_decay}) starts from its weights")
        return model_sd, True
    if kept and not wanted:
        say(f"--resume: {field} turns the EMA off: the EMA in {ckpt} is dropped, and final/ will hold the "
            "trained weights, not their average")
        return {k: v for k, v in model_sd.items() if not k.startswith("ema.")}, False
    return model_sd, False


def last_good(run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    return f"the last good checkpoint, {last}, is left intact" if last else "no checkpoint was written yet"


def matmul_peak(tc, info: DistInfo, say) -> float | None:
    """The peak FLOP/s MFU is measured against (``train.mfu_peak_tflops``, or measured on the main rank).

    On a shared CPU a busy core makes every multi-threaded kernel wait for it (6-8x slower); one
    thread is then faster. Decided once, from a short matmul at each setting (unless train.threads)."""
    peak = tc.mfu_peak_tflops * 1e12 if tc.mfu_peak_tflops else None
    if info.device.type == "cpu" and tc.threads is None and not info.active and torch.get_num_threads() > 1:
        n = torch.get_num_threads()
        p_n = measure_matmul_peak(seconds=0.3)
        torch.set_num_threads(1)
        p_1 = measure_matmul_peak(seconds=0.3)
        if p_1 > p_n:
            say(f"threads: 1 (another process is busy: {n} threads reach {p_n / 1e9:.0f} GFLOP/s, 1 thread "
                f"{p_1 / 1e9:.0f}; set train.threads to choose)")
            peak = peak or p_1
        else:
            torch.set_num_threads(n)
            peak = peak or p_n
        if tc.mfu_peak_tflops is None:
            say(f"peak: {peak / 1e9:.1f} GFLOP/s fp32 matmul (measured, 1024², {torch.get_num_threads()} "
                f"thread(s); set train.mfu_peak_tflops to fix it)")
    if peak is None and info.is_main:
        peak = measure_matmul_peak(device=info.device)
        say(f"peak: {peak / 1e9:.1f} GFLOP/s fp32 matmul (measured, 1024² for 0.5 s; "
            f"set train.mfu_peak_tflops to fix it)")
    return peak


# ---- model.init_from: the run's first weights and its tokenizer from a model folder ---------------
def init_from_model(cfg: RunConfig, mcfg, say: Callable[[str], None] = lambda s: None) -> torch.nn.Module | None:
    """The model at ``model.init_from`` (genmodels or Hugging Face folder, or GGUF file: init_from.open_source), or
    None; grown to ``mcfg``'s larger vocabulary (training/init_from.py, said with ``say``).
    ConfigError naming the field and listing the keys where its config differs from the recipe's."""
    path = getattr(cfg, "init_from", None)
    if path is None:
        return None
    src = open_source(path)
    if src.config.family != mcfg.family:
        raise ConfigError(f"model.init_from={path!r} is a {src.config.family} model; the recipe trains a "
                          f"{mcfg.family} model, so its weights cannot start this run (give a {mcfg.family} "
                          "model folder, or null for fresh weights)")
    src = grown_source(src, mcfg, path, say)  # new special tokens: new rows = the mean row
    old = json.loads(json.dumps(src.config.to_dict()))  # as stored: tuples become lists
    new = json.loads(json.dumps(mcfg.to_dict()))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise ConfigError(f"model.init_from={path!r}: its model differs from the recipe's model section in "
                          + ", ".join(f"model.{k} ({old.get(k)!r} there, {new.get(k)!r} in the recipe)" for k in differ)
                          + "; set those keys under model: to match it")
    return src
