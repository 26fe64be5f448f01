"""The training loop: data → model (fresh, or ``model.init_from``) → the objective
(:mod:`genmodels.objectives`) → train steps (:mod:`.steps`: accumulation, clipping, non-finite
guards) → eval, checkpoints, metrics, samples. :func:`train` is used by ``genmodels train`` and tests;
setting up (resume point, model config, RNG, peak) is in :mod:`.setup`.

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

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..data import BatchSampler, corpus_fingerprint
from ..io import attach_tokenizer, save
from ..models import build_model
from .checkpoint import latest_checkpoint, save_checkpoint
from .config import RunConfig, dump_config
from .data import corpus_spec, prepare_data
from .distributed import DistInfo, full_model_state, full_optimizer_state, init_distributed, load_full_state, wrap
from .memory import apply_activation_checkpointing, keep_freed_memory, transformer_blocks
from .metrics import MetricsLog, flops_per_token, plot_expert_load, plot_losses
from . import gan, image_run
from .optim import build_optimizer, lr_at
from .rundir import RunDirError, RunLock, claim_run_dir  # noqa: F401  (RunDirError: also imported from here)
from .setup import (TrainResult, autocast_dtype, init_from_data, init_from_model, last_good, matmul_peak,
                    model_config, restore_rng, resume_point, rng_state)
from .steps import NonFiniteError, Phase, TrainStep, evaluate, first_non_finite_param  # noqa: F401  (re-exported)


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
    autocast_dtype(tc.precision, info.device)  # ConfigError before anything is touched
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
    """Set the run up (resume point, data, model, objective, optimizer, train step), then :func:`_loop`."""
    from ..objectives import OBJECTIVES, build_objective  # (objectives import training.loss: not at module level)
    tc, dc = cfg.train, cfg.data
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    run = _Run(cfg=cfg, info=info, say=say, clock=clock, t_start=t_start, run_dir=Path(cfg.run_dir), progress=progress,
               amp_dtype=autocast_dtype(tc.precision, info.device),
               micro_bs=tc.batch_size // (tc.grad_accum * info.world_size))
    if cfg.images:  # image families: no tokenizer; the images' own fingerprint
        run.data = image_run.prepare_image_data(cfg, say if info.is_main else (lambda s: None))
        run.fingerprint, run.mcfg, n_tokens = run.data.fingerprint, cfg.model_config(), 0
        ckpt, loaded, _ = resume_point(cfg, run.run_dir, run.fingerprint, info, say) if resume else (None, None, dc)
        run.make_batch = lambda idx: image_run.image_batch(run.data.train.get_batch(idx), info.device)
    else:
        run.fingerprint = corpus_fingerprint(corpus_spec(dc))
        ckpt, loaded, data_cfg = (resume_point(cfg, run.run_dir, run.fingerprint, info, say) if resume
                                  else (None, None, dc))
        if ckpt is None:  # a fresh start: model.init_from gives the tokenizer (and, below, the weights)
            data_cfg = init_from_data(cfg, data_cfg)
        info.barrier()
        if info.is_main:  # the main rank builds caches first; the others then read them
            run.data = prepare_data(data_cfg, log=say)
        info.barrier()
        if not info.is_main:
            run.data = prepare_data(data_cfg, log=lambda s: None)
        run.mcfg, n_tokens = model_config(cfg, run.data.tokenizer, run.data.eos_id)
        run.make_batch = lambda idx: _batch(run.data.train.get_batch(idx), info.device)
    tok = run.data.tokenizer
    if info.is_main:
        dump_config(cfg, run.run_dir / "config.yaml")
        if tok is not None:
            tok.save(str(run.run_dir / "tokenizer.json"))

    start = init_from_model(cfg, run.mcfg) if ckpt is None else None

    torch.manual_seed(tc.seed)
    model = build_model(run.mcfg)
    if start is not None:
        model.load_state_dict(start.state_dict())
        say(f"model: weights from model.init_from={cfg.init_from}")
    model = model.to(info.device)
    if not cfg.images:  # (image recipes refuse train.activation_checkpointing)
        apply_activation_checkpointing(transformer_blocks(model), tc.activation_checkpointing)
    if info.device.type == "cpu":
        keep_freed_memory()
    if cfg.images:
        run.objective = OBJECTIVES[cfg.objective()].from_config(model, tc).train()
    else:
        run.objective = build_objective(cfg.objective(), model, n_tokens=n_tokens, eos_id=run.data.eos_id,
                                        chunk=tc.loss_chunk, mlm_prob=tc.mlm_prob,
                                        noise_density=tc.span_noise_density, mean_span_length=tc.span_mean_length,
                                        **tc.router_losses()).train()
    run.n_params = sum(p.numel() for p in model.parameters())
    run.fpt = 0.0 if cfg.images else flops_per_token(model, dc.seq_len)
    wrapped = wrap(run.objective, info)
    run.optimizer = build_optimizer(run.objective, tc.lr, tc.weight_decay, tc.betas, tc.eps,
                                    distributed=info.kind == "fsdp" and info.active)
    scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    run.step_fn = torch.compile(wrapped) if tc.compile else wrapped
    if gan.two_player(run.objective):  # a GAN: D then G, one optimizer each (training/gan.py)
        run.train_step = gan.gan_train_step(run.objective, tc, info, run.amp_dtype, scaler)
        run.optimizer, run.watch = run.train_step.phases[-1].optimizer, gan.CollapseWatch.from_config(tc)
    else:
        run.train_step = TrainStep([Phase("model", run.step_fn, run.objective, run.optimizer, tc.grad_clip, tc.lr,
                                          sync_module=wrapped)], info, run.amp_dtype, scaler)
    run.sampler = BatchSampler(len(run.data.train), run.micro_bs, seed=tc.seed, rank=info.rank,
                               world_size=info.world_size)
    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl")
    run.max_steps = tc.max_steps  # with max_minutes, fitted to the budget after a few steps
    if ckpt is not None:
        model_sd, optim_sd, rng, state = loaded
        if run.watch is not None:  # two optimizers, keyed by phase
            load_full_state(run.objective, None, model_sd, None)
            run.train_step.load_optimizer_state(optim_sd)
        else:
            load_full_state(run.objective, run.optimizer, model_sd, optim_sd)
        run.sampler.load_state_dict(state["sampler"])
        restore_rng(rng, info, tc.seed)
        run.step, run.tokens, run.prev_elapsed = int(state["step"]), int(state["tokens"]), float(
            state.get("elapsed_s", 0.0))
        if state.get("calibrated"):
            run.max_steps, run.calibrated = int(state["max_steps"]), True
        if run.watch is not None:  # a GAN's streak of collapsed-discriminator steps continues where it was
            run.watch.count = int(state.get("collapse_count", 0))
        if info.is_main:
            run.metrics.truncate_after(run.step)
        run.last_ckpt_step = run.step
        say(f"resumed from {ckpt} (step {run.step}, {run.tokens:,} tokens)")
    elif resume:
        say(f"no checkpoint in {run.run_dir}; starting from step 0")
    elif info.is_main and run.metrics.path.exists():
        run.metrics.path.unlink()
    info.barrier()
    run.peak = matmul_peak(tc, info, say)
    per_token = "" if cfg.images else f" ({run.fpt / 1e6:.1f} MFLOP/token)"
    say(f"model: {run.mcfg.family} {run.n_params / 1e6:.2f}M params{per_token}, "
        f"{info.world_size} process(es) [{info.kind if info.active else 'single'}], device {info.device}, "
        + (f"micro-batch {run.micro_bs} × accum {tc.grad_accum} = global {tc.batch_size} images" if cfg.images else
           f"micro-batch {run.micro_bs}×{dc.seq_len} × accum {tc.grad_accum} = global {tc.batch_size} sequences"))
    _loop(run)
    return _finish(run)


@dataclass
class _Run:
    """The state a run carries between the loop, evaluation, checkpoints and the end."""

    cfg: RunConfig
    info: DistInfo
    say: Callable
    clock: Callable[[], float]
    t_start: float
    run_dir: Path
    amp_dtype: object
    micro_bs: int
    progress: bool = True
    fingerprint: str = ""
    data: object = None  # training.data.Data: tokenizer, train/val windows, eos id
    mcfg: object = None
    objective: object = None  # an objectives.Objective holding the model
    optimizer: object = None
    step_fn: object = None  # the objective, DDP/FSDP-wrapped (and compiled)
    make_batch: Callable = None  # sampler indices -> the objective's dict batch, on the device
    watch: object = None  # a GAN's divergence watch (training/gan.py); None for one-optimizer runs
    train_step: object = None
    sampler: object = None
    metrics: object = None
    n_params: int = 0
    fpt: float = 0.0
    peak: float | None = None
    step: int = 0
    tokens: int = 0
    prev_elapsed: float = 0.0
    max_steps: int = 0
    calibrated: bool = False
    last_ckpt_step: int = -1
    last_val_step: int = -1
    t_loop: float = 0.0
    train_time: float = 0.0
    bar: object = None
    result: TrainResult | None = None
    plot_error: list[str] = field(default_factory=list)  # the first failure to draw loss.png (warned once)

    def note(self, msg: str) -> None:
        (self.bar.write(msg) if self.bar is not None else self.say(msg))

    def elapsed(self) -> float:
        return self.prev_elapsed + self.clock() - self.t_loop


def _loop(run: _Run) -> None:
    """The loop: steps (the train step's phases), logging, the time budget, evaluations, checkpoints."""
    tc, main = run.cfg.train, run.info.is_main
    tokens_per_step = tc.batch_size * (1 if run.cfg.images else run.cfg.data.seq_len)  # units: tokens or images
    count_key = "images" if run.cfg.images else "tokens"
    unit = run.objective.unit
    rate_key = "tok_s" if unit == "tokens" else f"{unit}_s"
    run.result = TrainResult(run_dir=run.run_dir, final_dir=None, steps=run.step, tokens=run.tokens)
    if main and run.progress:
        from tqdm import tqdm
        run.bar = tqdm(total=run.max_steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.5)
    run.t_loop = run.clock()
    deadline = run.t_loop + tc.max_minutes * 60 if tc.max_minutes else None
    step_times: list[float] = []
    stop = False

    def over_budget() -> float:  # the train step's stop flag
        return 1.0 if deadline is not None and run.clock() > deadline else 0.0

    try:
        while run.step < run.max_steps and not stop:
            t0 = run.clock()
            # each phase's rate follows the schedule, scaled by its peak (a GAN's D: train.lr_d / train.lr)
            run.train_step.set_lr(lambda ph: lr_at(run.step, tc.lr, tc.min_lr, tc.warmup_steps, run.max_steps)
                                  * (ph.lr / tc.lr))
            batches = [run.make_batch(next(run.sampler)) for _ in range(tc.grad_accum)]
            if run.watch is not None:
                run.objective.set_step(run.step)  # lazy R1
            try:
                report = run.train_step(batches, run.step, stop_flag=over_budget, where=lambda: last_good(run.run_dir))
            except NonFiniteError as e:
                if run.watch is None:
                    raise
                _diverged(run, str(e), whole_step=False)
            stop = report.stop
            if run.watch is None:
                loss_val, gnorm = report.losses["model"], report.grad_norms["model"]
                record = {"loss": loss_val, "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": gnorm}
                shown = f"loss {loss_val:.3f}"
            else:  # D/loss, G/loss, D/grad_norm, G/grad_norm, lr (G's), D/lr
                loss_val = report.losses["D"]
                record, shown = gan.step_record(report, run.train_step)
            run.step += 1
            run.objective.after_step(run.step)  # (the EMA of the weights, where the objective keeps one)
            run.tokens += tokens_per_step
            dt = run.clock() - t0
            run.train_time += dt
            run.result.train_losses[run.step] = loss_val
            if main:
                rate = tokens_per_step / max(dt, 1e-9)
                mfu = rate * run.fpt / run.peak if run.peak and run.objective.flops_apply else None
                if run.step % tc.log_every == 0 or run.step == run.max_steps or stop:
                    run.metrics.append({"step": run.step, count_key: run.tokens, **record,
                                        rate_key: round(rate, 1), "mfu": None if mfu is None else round(mfu, 4),
                                        **report.metrics, "time_s": round(run.elapsed(), 3)})
                if run.bar is not None:
                    run.bar.set_postfix_str(f"{shown} | {rate:,.0f} {rate_key.replace('_', '/')}"
                                            + "".join(f" | {k} {v:.3g}"
                                                      for k, v in run.objective.bar_metrics(report.metrics).items())
                                            + (f" | MFU {100 * mfu:.0f}%" if mfu is not None else ""), refresh=False)
                    run.bar.update(1)
            why = run.watch.update(loss_val) if run.watch is not None else None
            if why is not None:
                _diverged(run, f"step {run.step}: {why}", whole_step=True)
            if deadline is not None and not run.calibrated:
                step_times.append(dt)
                if len(step_times) == max(tc.warmup_steps, _SKIP_STEPS + 5):  # fit at the end of warm-up
                    _calibrate(run, deadline, step_times)
            if run.step % tc.eval_every == 0 and run.step < run.max_steps and not stop:
                _evaluate(run)
            if run.step % tc.ckpt_every == 0 and run.step < run.max_steps and not stop:
                _checkpoint(run)
    finally:
        if run.bar is not None:
            run.bar.close()
    if stop:
        run.say(f"time budget train.max_minutes={tc.max_minutes} reached at step {run.step}/{run.max_steps}")


def _diverged(run: _Run, why: str, whole_step: bool) -> None:
    """A GAN run diverged: save what can be saved, then stop with one clear message (training/gan.py).
    ``whole_step``: the state is a finished step (a regular checkpoint); else the weights go to RUN/diverged/."""
    if whole_step:
        if run.last_ckpt_step != run.step:
            _checkpoint(run)
        saved = f"checkpoint {latest_checkpoint(run.run_dir)} written"
    elif first_non_finite_param(run.objective, run.info) is None:
        saved = f"the weights before that update saved to {save(run.objective.model, run.run_dir / 'diverged')}"
    else:
        saved = "the weights are not finite: not saved"
    raise gan.GANDiverged(f"training diverged: {why.rstrip('; ')}; {saved}; {gan.advice(run.mcfg)}")


def _batch(xy: tuple[torch.Tensor, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A window of token ids and its next tokens as the objectives' dict batch."""
    x, y = xy
    return {"input_ids": x.to(device, non_blocking=True), "labels": y.to(device, non_blocking=True)}


def _calibrate(run: _Run, deadline: float, step_times: list[float]) -> None:
    tc = run.cfg.train
    run.max_steps = _fit_steps_to_budget(run.step, run.max_steps, deadline, run.clock(), step_times, tc,
                                         run.micro_bs, run.info)
    run.calibrated = True
    if run.bar is not None:
        run.bar.total = run.max_steps
        run.bar.refresh()
    if run.max_steps < tc.max_steps:
        run.note(f"train.max_minutes={tc.max_minutes}: {tc.max_steps} steps do not fit at "
                 f"{1000 * statistics.median(step_times[_SKIP_STEPS:]):.0f} ms/step; "
                 f"schedule fitted to {run.max_steps} steps")


def _evaluate(run: _Run) -> None:
    """Validation loss (and perplexity), logged, plotted (best-effort) and noted."""
    tc, res = run.cfg.train, run.result
    if run.cfg.images:  # validation loss (fixed noise) and the offline metrics of sampled images
        vl = image_run.validation_loss(run.objective, run.data.val, run.micro_bs, tc.eval_batches, run.info.device,
                                       tc.seed)
        extra = image_run.evaluate_samples(run.objective, run.data, run.cfg) if run.info.is_main else {}
        res.image_metrics = extra
        record = {"step": run.step, "images": run.tokens, "val_loss": vl, **extra}
    else:
        vl = evaluate(lambda x, y: run.step_fn({"input_ids": x, "labels": y})[0], run.data.val, run.micro_bs,
                      tc.eval_batches, run.info, run.amp_dtype, module=run.step_fn)
        record = {"step": run.step, "tokens": run.tokens, "val_loss": vl}
    res.val_loss = vl
    res.val_ppl = math.exp(min(vl, 50.0)) if run.objective.perplexity and vl is not None else None
    run.last_val_step = run.step
    if run.info.is_main:
        run.metrics.append({**record, **({} if run.cfg.images else {"val_ppl": res.val_ppl}),
                            "time_s": round(run.elapsed(), 3)})
        records, title = run.metrics.read(), f"{run.run_dir.name}: {run.n_params / 1e6:.2f}M params"
        for name, plot in (("loss.png", plot_losses), ("expert_load.png", plot_expert_load)):  # (MoE: the load)
            try:
                plot(records, run.run_dir / name, title=title)
            except Exception as e:  # a picture is best-effort: one warning line, never the end of a run
                if not run.plot_error:
                    run.plot_error.append(f"{type(e).__name__}: {' '.join(str(e).split())}")
                    run.note(f"warning: could not draw {run.run_dir / name} ({run.plot_error[0]}); training goes on")
        ppl = f", perplexity {res.val_ppl:.2f}" if res.val_ppl is not None else ""
        shown = "".join(f", {k} {v:.3g}" for k, v in (res.image_metrics or {}).items())
        run.note(f"step {run.step}: val loss {'n/a' if vl is None else f'{vl:.4f}'}{ppl}{shown}")


def _check_params(run: _Run, what: str) -> None:
    bad = first_non_finite_param(run.objective, run.info)
    if bad is not None:
        raise NonFiniteError(f"step {run.step}: parameter {bad} is not finite (NaN/inf); {what} not written, "
                             f"{last_good(run.run_dir)}; lower train.lr or check the data")


def _checkpoint(run: _Run) -> None:
    _check_params(run, "checkpoint")  # before anything is written or pruned
    info, cfg = run.info, run.cfg
    msd = full_model_state(run.objective)
    osd = (run.train_step.optimizer_state() if run.watch is not None  # a GAN: both optimizers, keyed by phase
           else full_optimizer_state(run.objective, run.optimizer))
    rng = rng_state(info)
    if info.is_main:
        state = {"step": run.step, "tokens": run.tokens, "sampler": run.sampler.state_dict(),
                 "world_size": info.world_size, "max_steps": run.max_steps, "calibrated": run.calibrated,
                 "layout": info.kind if info.active else "single", "elapsed_s": run.elapsed(),
                 "config": cfg.to_dict(), "model_config": run.mcfg.to_dict(), "corpus_fingerprint": run.fingerprint,
                 **({"collapse_count": run.watch.count} if run.watch is not None else {})}
        run.result.checkpoint = save_checkpoint(run.run_dir, run.step, msd, osd, rng, state, cfg.train.keep_last)
    run.last_ckpt_step = run.step
    info.barrier()


def _finish(run: _Run) -> TrainResult:
    """The end: validation, last checkpoint, final model, samples, summary."""
    cfg, tc, res, say, run_dir = run.cfg, run.cfg.train, run.result, run.say, run.run_dir
    if run.last_val_step != run.step:
        _evaluate(run)
    if run.last_ckpt_step != run.step:
        _checkpoint(run)
    _check_params(run, "final model")
    msd = full_model_state(run.objective)
    res.steps, res.tokens = run.step, run.tokens
    res.seconds = run.clock() - run.t_start
    if run.info.is_main:
        tok = run.data.tokenizer
        final = build_model(run.mcfg)
        final.load_state_dict(run.objective.final_state(msd))  # (diffusion: the EMA weights)
        attach_tokenizer(final, tok)
        res.final_dir = save(final, run_dir / "final", tok)
        if cfg.images:
            grid = image_run.write_samples(final, cfg, run_dir, say)
            if grid is not None:
                say(f"samples: {grid}")
        elif cfg.sample.prompts and cfg.sample.max_new_tokens > 0:
            res.samples = run.objective.samples(final, tok, cfg.sample, run.data.eos_id, tc.seed, say)
            if res.samples:
                say("samples:")
                for prompt, text in zip(cfg.sample.prompts, res.samples):
                    say(f"--- {prompt!r}\n{text}")
        unit = "images" if cfg.images else "tokens"
        per_step = tc.batch_size * (1 if cfg.images else cfg.data.seq_len)
        tps = len(res.train_losses) * per_step / max(run.train_time, 1e-9)
        ppl = f"{res.val_ppl:.2f}" if res.val_ppl is not None else "n/a"
        vl = "n/a" if res.val_loss is None else f"{res.val_loss:.4f}"
        usage = {"generate": f"  sample:     genmodels generate {run_dir}",
                 "embed": f"  embed:      genmodels embed {run_dir} \"some text\"",
                 "sample": None}[run.objective.usage] or f"  sample:     {image_run.sample_command(run_dir, cfg)}"
        plots = [run_dir / n for n in ("loss.png", "expert_load.png") if (run_dir / n).is_file()]
        plot = f"plot {', '.join(map(str, plots))}" if not run.plot_error else f"no plot ({run.plot_error[0]})"
        say("\n".join([
            "summary:",
            f"  trained {run.step} steps, {run.tokens:,} {unit} ({len(res.train_losses)} steps this run, "
            f"{tps:,.0f} {'images/s' if cfg.images else 'tok/s'} while training), {res.seconds:.0f}s in all",
            f"  final validation loss {vl}" + (f", perplexity {ppl}" if not cfg.images else "".join(
                f", {k} {v:.3g}" for k, v in (res.image_metrics or {}).items())),
            f"  checkpoint: {res.checkpoint or latest_checkpoint(run_dir)}",
            f"  model:      {res.final_dir}  (genmodels.load('{res.final_dir}'))",
            f"  metrics:    {run_dir / 'metrics.jsonl'}, {plot}",
            usage,
        ]))
    run.info.barrier()
    return res
