"""The training loop: data → model → AdamW steps with accumulation and clipping → eval, checkpoints,
metrics, samples. One function, :func:`train`, used by ``genmodels train`` and by tests.

Determinism: the model is initialised from ``torch.manual_seed(seed)`` (identically on every
rank), batches come from a seeded sampler whose position is checkpointed, the schedule is a
function of the step, and RNG states are saved — so on CPU a resumed run reproduces, step for
step, the losses of a run never interrupted.

Nothing lost, nothing silently wrong: the run folder is claimed and locked before any work
(rundir.py); a non-finite loss or gradient stops the run before the optimizer applies it, and
parameters are checked finite before any checkpoint or final/ is written (:class:`NonFiniteError`,
the last good checkpoint left intact); ``--resume`` uses the newest readable checkpoint; plots and
samples are best-effort. Every time the loop reads comes from ``clock`` (injectable for tests).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..data import BatchSampler
from ..io import attach_tokenizer, save
from ..models import build_model
from .checkpoint import (CheckpointUnreadable, checkpoint_dir, latest_checkpoint, load_checkpoint, read_checkpoint,
                         read_state, save_checkpoint, step_dirs)
from .config import RunConfig, dump_config
from .data import corpus_spec, prepare_data
from .distributed import (DistInfo, full_model_state, full_optimizer_state, init_distributed, load_full_state,
                          no_sync, wrap)
from ..data import corpus_fingerprint, eos_id, load_tokenizer
from ..data.objectives import extra_tokens, objective_module
from .loss import CausalLMLoss
from .memory import apply_activation_checkpointing, keep_freed_memory, transformer_blocks
from .metrics import MetricsLog, flops_per_token, measure_matmul_peak, plot_losses
from .optim import build_optimizer, lr_at, set_lr
from .rundir import RunDirError, RunLock, claim_run_dir  # noqa: F401  (RunDirError: also imported from here)


class NonFiniteError(FloatingPointError):
    """The run met a non-finite loss, gradient or parameter and stopped before saving it."""


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None
    steps: int
    tokens: int
    train_losses: dict[int, float] = field(default_factory=dict)  # step → loss (this invocation)
    val_loss: float | None = None
    val_ppl: float | None = None
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)
    checkpoint: Path | None = None


def _autocast(cfg_precision: str, device: torch.device):
    if device.type != "cuda":
        if cfg_precision in ("bf16", "fp16"):
            raise ConfigError(f"train.precision={cfg_precision} needs a GPU; on CPU training computes in fp32 "
                               "(use precision: auto or fp32)")
        return None
    if cfg_precision == "fp32":
        return None
    if cfg_precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg_precision == "bf16" else torch.float16


def _rng_state(info: DistInfo) -> dict[str, torch.Tensor]:
    mine = {"cpu": torch.get_rng_state()}
    if info.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(info.device)
    out = {}
    for r, st in enumerate(info.all_gather_object(mine)):
        for k, v in st.items():
            out[f"{k}/rank{r}"] = v
    return out


def _restore_rng(rng: dict[str, torch.Tensor], info: DistInfo, seed: int) -> None:
    key = f"cpu/rank{info.rank}"
    if key in rng:
        torch.set_rng_state(rng[key])
    else:  # different world size: a deterministic fresh stream per rank
        torch.manual_seed(seed + 1000 + info.rank)
    if info.device.type == "cuda" and f"cuda/rank{info.rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda/rank{info.rank}"], info.device)


@torch.no_grad()
def evaluate(loss_mod, val, micro_bs: int, n_batches: int, info: DistInfo, amp_dtype) -> float:
    """Mean loss over the first ``n_batches`` global batches of the (unshuffled) validation windows."""
    was_training = loss_mod.training
    loss_mod.eval()
    global_bs = micro_bs * info.world_size
    n = min(n_batches, max(1, len(val) // global_bs))
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        start = i * global_bs + info.rank * micro_bs
        idx = [j % len(val) for j in range(start, start + micro_bs)]
        x, y = val.get_batch(idx)
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_mod(x.to(info.device), y.to(info.device))
        total += loss.double().cpu()
    total = info.all_reduce_sum(total) / (n * info.world_size)
    loss_mod.train(was_training)
    return float(total)


def _fit_prompt(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """``(ids, max_new)`` within the model's ``context``: a prompt that leaves no room keeps its last
    tokens, leaving room for ``max_new_tokens`` (at most half the context)."""
    if len(ids) >= context:
        ids = ids[-(context - min(max_new_tokens, context // 2)):]
    return ids, min(max_new_tokens, context - len(ids))


def _generate_samples(model, tokenizer, sample_cfg, eos: int | None, seed: int, device, say) -> list[str]:
    """One sample per prompt (``""`` where generation failed: a warning line says why; never raises)."""
    from .. import generate
    out = []
    model.eval()
    context = model.config.max_seq_len
    for i, prompt in enumerate(sample_cfg.prompts):
        try:
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids or ([eos] if eos is not None else [0])
            kept, max_new = _fit_prompt(ids, sample_cfg.max_new_tokens, context)
            if len(kept) < len(ids):
                say(f"note: sample.prompts[{i}] is {len(ids)} tokens, the model's context {context}: "
                    f"kept its last {len(kept)}")
            x = torch.tensor([kept], device=device)
            y = generate(model, x, max_new_tokens=max_new, temperature=sample_cfg.temperature,
                         top_k=sample_cfg.top_k, top_p=sample_cfg.top_p, seed=seed + i, eos_token_id=eos)
            out.append(tokenizer.decode(y[0].tolist(), skip_special_tokens=True))
        except Exception as e:  # a sample is a courtesy: it never costs the run its summary
            say(f"warning: sample.prompts[{i}] not generated ({type(e).__name__}: {' '.join(str(e).split())})")
            out.append("")
    return out


_SKIP_STEPS = 3  # the first steps fault their memory in and warm kernels up: not timed for the fit


def _fit_steps_to_budget(step: int, max_steps: int, deadline: float, now: float, step_times: list[float], tc,
                         micro_bs: int, info: DistInfo) -> int:
    """The number of steps that fit before ``deadline`` (agreed by all ranks), at most ``max_steps``.

    Step time = the median of the timed steps after the first few (which pay one-off costs),
    with a 5% margin; each evaluation costs about ``eval_batches`` forward passes of a
    micro-batch (⅓ of a training micro-step each).
    """
    t = statistics.median(step_times[_SKIP_STEPS:]) * 1.05
    eval_cost = t / tc.grad_accum / 3 * tc.eval_batches
    per_step = t + eval_cost / tc.eval_every
    fit = int((deadline - now) / per_step) if per_step > 0 else max_steps
    value = torch.tensor([float(step + max(fit, 1)) if info.is_main else 0.0], dtype=torch.float64)
    fitted = int(info.all_reduce_sum(value)[0])  # rank 0's estimate, for everyone
    return min(max_steps, max(fitted, step + 1))


def _model_config(cfg: RunConfig, tok, eos: int | None):
    """``(ModelConfig, n_tokens)`` for the tokenizer ``tok``: the vocabulary is the tokenizer's
    (at least ``data.vocab_size`` for a trained BPE) plus the objective's [MASK] / sentinel ids,
    unless the recipe sets ``model.vocab_size`` (which must hold them: ConfigError otherwise)."""
    tok_vocab = tok.get_vocab_size()
    n_tokens, _ = cfg.min_model_vocab(tok_vocab)
    mcfg = cfg.model_config(vocab_size=n_tokens + extra_tokens(cfg.objective()), eos_id=eos)
    cfg.check_model_vocab(mcfg.vocab_size, tok_vocab)
    return mcfg, n_tokens


def _check_resumed_model(saved: dict, mcfg, run_dir: Path) -> None:
    """RunDirError naming the model keys where ``mcfg`` differs from the checkpoint's."""
    old = saved.get("model_config")
    if old is None:  # a checkpoint from before model configs were stored
        return
    new = json.loads(json.dumps(mcfg.to_dict()))  # as stored: tuples become lists
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


def _same_corpus(saved: str | None, fingerprint: str, dc) -> bool:
    """Whether a checkpoint's corpus fingerprint names this corpus: today's content hash, or — for a
    checkpoint written before content hashing — the old one (paths, sizes, modification times)."""
    if saved is None or saved == fingerprint:
        return True
    return saved == corpus_fingerprint(corpus_spec(dc), version=1)


def _resume_point(cfg: RunConfig, run_dir: Path, fingerprint: str, info: DistInfo, say):
    """``(checkpoint, (model_sd, optim_sd, rng, state), data config)`` to resume from — the newest
    readable checkpoint, chosen by the main rank, which says which it skipped and why — or
    ``(None, None, cfg.data)`` when the run has none. RunDirError when the corpus or model differs
    from the checkpoint's, or when no checkpoint is readable."""
    dc, chosen, loaded = cfg.data, None, None
    if info.is_main and step_dirs(run_dir):
        tok_file = run_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise RunDirError(f"--resume: {tok_file} is missing; it holds the tokenizer the checkpoints "
                              "were trained with")
        tok = load_tokenizer(tok_file)
        mcfg = _model_config(cfg, tok, eos_id(tok))[0]
        shapes, skipped = _param_shapes(mcfg), []
        for path in reversed(step_dirs(run_dir)):
            try:
                saved = read_state(path)
            except CheckpointUnreadable as e:
                skipped.append((path, str(e)))
                continue
            if not _same_corpus(saved.get("corpus_fingerprint"), fingerprint, dc):
                raise RunDirError(f"--resume: the corpus (data.corpus={dc.corpus!r}, data.path={dc.path!r}, ...) "
                                  f"differs from the one {path} was trained on; resume with the same data, "
                                  "or start a new run_dir")
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
    return Path(chosen), loaded, dataclasses.replace(dc, tokenizer=str(run_dir / "tokenizer.json"))


def _grad_norm(module: torch.nn.Module, clip: float | None) -> float:
    """The total gradient norm (one norm per step); clips to ``clip`` when set (clip_grad_norm_'s norm)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def _first_non_finite_param(module: torch.nn.Module, info: DistInfo) -> str | None:
    """The name of a parameter (this rank's shard) holding NaN/inf, agreed by all ranks; None if all finite."""
    bad = None
    with torch.no_grad():
        for name, p in module.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if not bool(torch.isfinite(local).all()):
                bad = name.removeprefix("model.")
                break
    if info.all_reduce_sum(torch.tensor([0.0 if bad is None else 1.0]))[0] == 0:
        return None
    return bad or "a parameter (on another rank)"


def _last_good(run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    return f"the last good checkpoint, {last}, is left intact" if last else "no checkpoint was written yet"


def train(cfg: RunConfig, resume: bool = False, log=None, progress: bool = True,
          clock: Callable[[], float] = time.monotonic) -> TrainResult:
    """Run (or resume) the training recipe ``cfg``; returns what was done. See docs/training.md.

    ``clock`` (seconds, monotonic) is what the time budget, step times and elapsed times read;
    tests pass a fake one. The peak FLOP/s measurement keeps its own timer.
    """
    t_start = clock()
    tc = cfg.train
    info = init_distributed(tc.distributed, tc.device)
    try:
        return _train(cfg, resume, info, log, progress, t_start, clock)
    finally:
        info.close()


def _train(cfg: RunConfig, resume: bool, info: DistInfo, log, progress: bool, t_start: float,
           clock: Callable[[], float]) -> TrainResult:
    """Check the recipe, claim and lock the run folder (main rank), run, release the lock."""
    tc = cfg.train
    say = (log or (lambda s: print(s, flush=True))) if info.is_main else (lambda s: None)
    _autocast(tc.precision, info.device)  # ConfigError before anything is touched
    per_step = tc.grad_accum * info.world_size
    if tc.batch_size % per_step:
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by grad_accum × processes "
                           f"= {tc.grad_accum} × {info.world_size}")
    lock = None
    if info.is_main:
        claim_run_dir(Path(cfg.run_dir), resume)
        lock = RunLock.acquire(Path(cfg.run_dir), say)
    try:
        info.barrier()
        return _run(cfg, resume, info, say, progress, t_start, clock)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: RunConfig, resume: bool, info: DistInfo, say, progress: bool, t_start: float,
         clock: Callable[[], float]) -> TrainResult:
    tc, dc = cfg.train, cfg.data
    main = info.is_main
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    amp_dtype = _autocast(tc.precision, info.device)
    micro_bs = tc.batch_size // (tc.grad_accum * info.world_size)
    run_dir = Path(cfg.run_dir)
    fingerprint = corpus_fingerprint(corpus_spec(dc))
    ckpt, loaded, data_cfg = (_resume_point(cfg, run_dir, fingerprint, info, say) if resume
                              else (None, None, dc))
    info.barrier()

    # ---- data (the main rank builds caches first; the others then read them) --------------------
    if main:
        data = prepare_data(data_cfg, log=say)
    info.barrier()
    if not main:
        data = prepare_data(data_cfg, log=lambda s: None)
    tok = data.tokenizer
    objective = cfg.objective()
    mcfg, n_tokens = _model_config(cfg, tok, data.eos_id)
    if main:
        dump_config(cfg, run_dir / "config.yaml")
        tok.save(str(run_dir / "tokenizer.json"))

    # ---- model, optimizer ---------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    model = build_model(mcfg).to(info.device)
    apply_activation_checkpointing(transformer_blocks(model), tc.activation_checkpointing)
    if info.device.type == "cpu":
        keep_freed_memory()
    if objective == "causal":
        loss_mod = CausalLMLoss(model, chunk=tc.loss_chunk).train()
    else:
        loss_mod = objective_module(objective, model, n_tokens=n_tokens, eos_id=data.eos_id,
                                    mlm_prob=tc.mlm_prob, noise_density=tc.span_noise_density,
                                    mean_span_length=tc.span_mean_length).train()
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, dc.seq_len)
    wrapped = wrap(loss_mod, info)
    optimizer = build_optimizer(loss_mod, tc.lr, tc.weight_decay, tc.betas, tc.eps,
                                distributed=info.kind == "fsdp" and info.active)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step_fn = torch.compile(wrapped) if tc.compile else wrapped
    sampler = BatchSampler(len(data.train), micro_bs, seed=tc.seed, rank=info.rank, world_size=info.world_size)
    metrics = MetricsLog(run_dir / "metrics.jsonl")

    step, tokens, prev_elapsed = 0, 0, 0.0
    max_steps, calibrated = tc.max_steps, False  # with max_minutes, fitted to the budget after a few steps
    if ckpt is not None:
        model_sd, optim_sd, rng, state = loaded
        load_full_state(loss_mod, optimizer, model_sd, optim_sd)
        sampler.load_state_dict(state["sampler"])
        _restore_rng(rng, info, tc.seed)
        step, tokens, prev_elapsed = int(state["step"]), int(state["tokens"]), float(state.get("elapsed_s", 0.0))
        if state.get("calibrated"):
            max_steps, calibrated = int(state["max_steps"]), True
        if main:
            metrics.truncate_after(step)
        say(f"resumed from {ckpt} (step {step}, {tokens:,} tokens)")
    elif resume:
        say(f"no checkpoint in {run_dir}; starting from step 0")
    elif main and metrics.path.exists():
        metrics.path.unlink()
    info.barrier()

    peak = tc.mfu_peak_tflops * 1e12 if tc.mfu_peak_tflops else None
    if info.device.type == "cpu" and tc.threads is None and not info.active and torch.get_num_threads() > 1:
        # On a shared machine a busy core makes every multi-threaded kernel wait for it (6-8x
        # slower); one thread is then faster. Decide once, from a short matmul at each setting.
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
    if peak is None and main:
        peak = measure_matmul_peak(device=info.device)
        say(f"peak: {peak / 1e9:.1f} GFLOP/s fp32 matmul (measured, 1024² for 0.5 s; "
            f"set train.mfu_peak_tflops to fix it)")
    say(f"model: {mcfg.family} {n_params / 1e6:.2f}M params ({fpt / 1e6:.1f} MFLOP/token), "
        f"{info.world_size} process(es) [{info.kind if info.active else 'single'}], device {info.device}, "
        f"micro-batch {micro_bs}×{dc.seq_len} × accum {tc.grad_accum} = global {tc.batch_size} sequences")

    # ---- loop ---------------------------------------------------------------------------------
    tokens_per_step = tc.batch_size * dc.seq_len
    result = TrainResult(run_dir=run_dir, final_dir=None, steps=step, tokens=tokens)
    bar = None
    if main and progress:
        from tqdm import tqdm
        bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   file=sys.stderr, mininterval=0.5)
    t_loop = clock()
    deadline = t_loop + tc.max_minutes * 60 if tc.max_minutes else None
    last_val_step = -1
    step_times: list[float] = []
    last_ckpt_step = step if ckpt is not None else -1
    train_time = 0.0
    plot_error: list[str] = []  # the first failure to draw loss.png (warned once; the run goes on)

    def note(msg: str) -> None:
        (bar.write(msg) if bar is not None else say(msg))

    def do_eval() -> None:
        nonlocal last_val_step
        vl = evaluate(step_fn, data.val, micro_bs, tc.eval_batches, info, amp_dtype)
        result.val_loss, result.val_ppl = vl, math.exp(min(vl, 50.0))
        last_val_step = step
        if main:
            metrics.append({"step": step, "tokens": tokens, "val_loss": vl, "val_ppl": result.val_ppl,
                            "time_s": round(prev_elapsed + clock() - t_loop, 3)})
            try:
                plot_losses(metrics.read(), run_dir / "loss.png", title=f"{run_dir.name}: {n_params / 1e6:.2f}M params")
            except Exception as e:  # a picture is best-effort: one warning line, never the end of a run
                if not plot_error:
                    plot_error.append(f"{type(e).__name__}: {' '.join(str(e).split())}")
                    note(f"warning: could not draw {run_dir / 'loss.png'} ({plot_error[0]}); training goes on")
            note(f"step {step}: val loss {vl:.4f}, perplexity {result.val_ppl:.2f}")

    def check_params(what: str) -> None:
        bad = _first_non_finite_param(loss_mod, info)
        if bad is not None:
            raise NonFiniteError(f"step {step}: parameter {bad} is not finite (NaN/inf); {what} not written, "
                                 f"{_last_good(run_dir)}; lower train.lr or check the data")

    def do_ckpt() -> None:
        nonlocal last_ckpt_step
        check_params("checkpoint")  # before anything is written or pruned
        msd = full_model_state(loss_mod)
        osd = full_optimizer_state(loss_mod, optimizer)
        rng = _rng_state(info)
        if main:
            state = {"step": step, "tokens": tokens, "sampler": sampler.state_dict(), "world_size": info.world_size,
                     "max_steps": max_steps, "calibrated": calibrated,
                     "layout": info.kind if info.active else "single", "elapsed_s": prev_elapsed + clock() - t_loop,
                     "config": cfg.to_dict(), "model_config": mcfg.to_dict(), "corpus_fingerprint": fingerprint}
            result.checkpoint = save_checkpoint(run_dir, step, msd, osd, rng, state, tc.keep_last)
        last_ckpt_step = step
        info.barrier()

    stop = False
    try:
        while step < max_steps and not stop:
            t0 = clock()
            set_lr(optimizer, lr_at(step, tc.lr, tc.min_lr, tc.warmup_steps, max_steps))
            loss_sum = torch.zeros((), dtype=torch.float64)
            for micro in range(tc.grad_accum):
                x, y = data.train.get_batch(next(sampler))
                x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
                with no_sync(wrapped, micro == tc.grad_accum - 1):
                    with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = step_fn(x, y) / tc.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach().double().cpu()
            if scaler:
                scaler.unscale_(optimizer)
            gnorm = _grad_norm(loss_mod, tc.grad_clip)
            # one all-reduce, before the update: the global mean loss, and whether any rank hit the time budget
            flag = 1.0 if deadline is not None and clock() > deadline else 0.0
            red = info.all_reduce_sum(torch.tensor([float(loss_sum), flag], dtype=torch.float64))
            loss_val = float(red[0]) / info.world_size
            stop = bool(red[1] > 0)
            # nothing non-finite is applied (with fp16 AMP, inf gradients are the scaler's: it skips the step)
            bad = [f"loss {loss_val}"] if not math.isfinite(loss_val) else []
            if scaler is None and not math.isfinite(gnorm):
                bad.append(f"gradient norm {gnorm}")
            if bad:
                raise NonFiniteError(f"step {step + 1}: {' and '.join(bad)} (non-finite); stopped before the "
                                     f"optimizer step, {_last_good(run_dir)}; lower train.lr or check the data")
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            dt = clock() - t0
            train_time += dt
            result.train_losses[step] = loss_val
            if main:
                tok_s = tokens_per_step / max(dt, 1e-9)
                mfu = tok_s * fpt / peak if peak else None
                if step % tc.log_every == 0 or step == max_steps or stop:
                    metrics.append({"step": step, "tokens": tokens, "loss": loss_val,
                                    "lr": optimizer.param_groups[0]["lr"], "grad_norm": gnorm,
                                    "tok_s": round(tok_s, 1), "mfu": None if mfu is None else round(mfu, 4),
                                    "time_s": round(prev_elapsed + clock() - t_loop, 3)})
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss_val:.3f} | {tok_s:,.0f} tok/s"
                                        + (f" | MFU {100 * mfu:.0f}%" if mfu is not None else ""), refresh=False)
                    bar.update(1)
            if deadline is not None and not calibrated:
                step_times.append(dt)
                if len(step_times) == max(tc.warmup_steps, _SKIP_STEPS + 5):  # fit at the end of warm-up
                    max_steps = _fit_steps_to_budget(step, max_steps, deadline, clock(), step_times, tc, micro_bs,
                                                     info)
                    calibrated = True
                    if bar is not None:
                        bar.total = max_steps
                        bar.refresh()
                    if max_steps < tc.max_steps:
                        note(f"train.max_minutes={tc.max_minutes}: {tc.max_steps} steps do not fit at "
                             f"{1000 * statistics.median(step_times[_SKIP_STEPS:]):.0f} ms/step; "
                             f"schedule fitted to {max_steps} steps")
            if step % tc.eval_every == 0 and step < max_steps and not stop:
                do_eval()
            if step % tc.ckpt_every == 0 and step < max_steps and not stop:
                do_ckpt()
    finally:
        if bar is not None:
            bar.close()
    if stop:
        say(f"time budget train.max_minutes={tc.max_minutes} reached at step {step}/{max_steps}")

    # ---- the end: validation, last checkpoint, final model, samples, summary ----------------------
    if last_val_step != step:
        do_eval()
    if last_ckpt_step != step:
        do_ckpt()
    check_params("final model")
    msd = full_model_state(loss_mod)
    result.steps, result.tokens = step, tokens
    result.seconds = clock() - t_start
    if main:
        final = build_model(mcfg)
        final.load_state_dict(msd)
        attach_tokenizer(final, tok)
        result.final_dir = save(final, run_dir / "final", tok)
        if cfg.sample.prompts and cfg.sample.max_new_tokens > 0 and mcfg.family == "decoder":
            result.samples = _generate_samples(final, tok, cfg.sample, data.eos_id, tc.seed, "cpu", say)
            say("samples:")
            for prompt, text in zip(cfg.sample.prompts, result.samples):
                say(f"--- {prompt!r}\n{text}")
        tps = len(result.train_losses) * tokens_per_step / max(train_time, 1e-9)
        ppl = f"{result.val_ppl:.2f}" if result.val_ppl is not None else "n/a"
        plot = f"plot {run_dir / 'loss.png'}" if not plot_error else f"no plot ({plot_error[0]})"
        say("\n".join([
            "summary:",
            f"  trained {step} steps, {tokens:,} tokens ({len(result.train_losses)} steps this run, "
            f"{tps:,.0f} tok/s while training), {result.seconds:.0f}s in all",
            f"  final validation loss {result.val_loss:.4f}, perplexity {ppl}",
            f"  checkpoint: {result.checkpoint or latest_checkpoint(run_dir)}",
            f"  model:      {result.final_dir}  (genmodels.load('{result.final_dir}'))",
            f"  metrics:    {run_dir / 'metrics.jsonl'}, {plot}",
            (f"  sample:     genmodels generate {run_dir}" if mcfg.family != "encoder" else
             f"  embed:      genmodels embed {run_dir} \"some text\""),
        ]))
    info.barrier()
    return result
