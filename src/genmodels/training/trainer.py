"""A training run: data → model (fresh, or ``model.init_from``) → the objective
(:mod:`genmodels.objectives`) → train steps (:mod:`.steps`: accumulation, clipping, non-finite
guards), run by the loop of :mod:`.loop` (eval, checkpoints, metrics, the time budget) → final model,
samples, summary. :func:`train` is used by ``genmodels train`` and tests; setting up (resume point,
model config, RNG, peak) is in :mod:`.setup`.

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

import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..data import BatchSampler, corpus_fingerprint
from ..io import attach_tokenizer, save
from ..models import build_model
from .checkpoint import latest_checkpoint
from .config import RunConfig, dump_config
from .data import corpus_spec, prepare_data
from .distributed import DistInfo, full_model_state, init_distributed, load_full_state, wrap
from .memory import apply_activation_checkpointing, keep_freed_memory, transformer_blocks
from .metrics import MetricsLog, flops_per_token
from . import gan, image_run
from .optim import build_optimizer
from .loop import RunState, check_params, evaluate_run, run_loop, write_checkpoint
from .rundir import RunDirError, RunLock, claim_run_dir  # noqa: F401  (RunDirError: also imported from here)
from .setup import (TrainResult, autocast_dtype, ema_on_resume, init_from_data, init_from_model, matmul_peak,
                    model_config, restore_rng, resume_point)
from .steps import NonFiniteError, Phase, TrainStep, evaluate, first_non_finite_param  # noqa: F401  (re-exported)


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
    """Set the run up (resume point, data, model, objective, optimizer, train step), then :func:`run_loop`."""
    from ..objectives import OBJECTIVES, build_objective  # (objectives import training.loss: not at module level)
    tc, dc = cfg.train, cfg.data
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    run = RunState(cfg=cfg, info=info, say=say, clock=clock, t_start=t_start, run_dir=Path(cfg.run_dir),
                   progress=progress, amp_dtype=autocast_dtype(tc.precision, info.device),
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
    scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    if gan.two_player(run.objective):  # a GAN: D then G, one optimizer each (training/gan.py), one process
        run.train_step = gan.gan_train_step(run.objective, tc, info, run.amp_dtype, scaler)
        run.optimizer = run.train_step.phases[-1].optimizer
        run.watch = gan.CollapseWatch.from_config(tc, run.objective.loss)
    else:
        wrapped = wrap(run.objective, info)
        run.optimizer = build_optimizer(run.objective, tc.lr, tc.weight_decay, tc.betas, tc.eps,
                                        distributed=info.kind == "fsdp" and info.active)
        run.step_fn = torch.compile(wrapped) if tc.compile else wrapped
        run.train_step = TrainStep([Phase("model", run.step_fn, run.objective, run.optimizer, tc.grad_clip, tc.lr,
                                          sync_module=wrapped)], info, run.amp_dtype, scaler)
    run.sampler = BatchSampler(len(run.data.train), run.micro_bs, seed=tc.seed, rank=info.rank,
                               world_size=info.world_size)
    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl")
    run.max_steps = tc.max_steps  # with max_minutes, fitted to the budget after a few steps
    if ckpt is not None:
        model_sd, optim_sd, rng, state = loaded
        model_sd, restart_ema = ema_on_resume(run.objective, model_sd, ckpt, say)
        absent_ok = ("ema.",) if restart_ema else ()
        if run.watch is not None:  # two optimizers, keyed by phase
            load_full_state(run.objective, None, model_sd, None, absent_ok)
            run.train_step.load_optimizer_state(optim_sd)
        else:
            load_full_state(run.objective, run.optimizer, model_sd, optim_sd, absent_ok)
        if restart_ema:
            run.objective.restart_ema()
        run.sampler.load_state_dict(state["sampler"])
        restore_rng(rng, info, tc.seed)
        run.step, run.tokens, run.prev_elapsed = int(state["step"]), int(state["tokens"]), float(
            state.get("elapsed_s", 0.0))
        if state.get("calibrated"):
            run.max_steps, run.calibrated = int(state["max_steps"]), True
        if run.watch is not None:  # a GAN's streaks of collapsed or stuck discriminator steps continue where they were
            run.watch.load_state(state)
        if info.is_main:
            run.metrics.truncate_after(run.step)
        run.last_ckpt_step = run.step
        say(f"resumed from {ckpt} (step {run.step}, {run.tokens:,} {run.count_unit})")
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
    run_loop(run)
    return _finish(run)


def _batch(xy: tuple[torch.Tensor, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A window of token ids and its next tokens as the objectives' dict batch."""
    x, y = xy
    return {"input_ids": x.to(device, non_blocking=True), "labels": y.to(device, non_blocking=True)}


def cli_program() -> str:
    """How the user runs genmodels, for the commands a run prints: ``genmodels`` when that name finds this
    installation, else the path of this environment's script (``.venv/bin/genmodels``, as the README spells it)."""
    script = Path(sys.executable).parent / "genmodels"
    found = shutil.which("genmodels")
    if not script.is_file() or (found is not None and Path(found).resolve() == script.resolve()):
        return "genmodels"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:  # (outside the working directory: its absolute path)
        return shlex.quote(str(script))


def _save_final(model, run_dir: Path, tok, res: TrainResult) -> Path:
    """``RUN/final/``; a file there that genmodels did not write (dropped in during the run) is kept, and the run
    stops naming it (RunDirError: one line), its work safe in the last checkpoint."""
    try:
        return save(model, run_dir / "final", tok)
    except FileExistsError as e:
        found = re.search(r"already holds other files \((.*?)\);", str(e))
        what = found.group(1) if found else " ".join(str(e).split())
        raise RunDirError(f"{run_dir / 'final'} holds files genmodels did not write ({what}); they are kept and "
                          f"the final model was not written; the run is saved in "
                          f"{res.checkpoint or latest_checkpoint(run_dir)}: move those files out of "
                          f"{run_dir / 'final'}, then --resume writes it") from None


def _finish(run: RunState) -> TrainResult:
    """The end: validation, last checkpoint, final model, samples, summary."""
    cfg, tc, res, say, run_dir = run.cfg, run.cfg.train, run.result, run.say, run.run_dir
    if run.last_val_step != run.step:
        evaluate_run(run)
    if run.last_ckpt_step != run.step:
        write_checkpoint(run)
    check_params(run, "final model")
    msd = full_model_state(run.objective)
    res.steps, res.tokens = run.step, run.tokens
    res.seconds = run.clock() - run.t_start
    if run.info.is_main:
        tok = run.data.tokenizer
        final = build_model(run.mcfg)
        final.load_state_dict(run.objective.final_state(msd))  # (diffusion: the EMA weights)
        attach_tokenizer(final, tok)
        res.final_dir = _save_final(final, run_dir, tok, res)
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
        unit = run.count_unit
        tps = len(res.train_losses) * run.units_per_step / max(run.train_time, 1e-9)
        ppl = f"{res.val_ppl:.2f}" if res.val_ppl is not None else "n/a"
        vl = "n/a" if res.val_loss is None else f"{res.val_loss:.4f}"
        program, where = cli_program(), shlex.quote(str(run_dir))
        usage = {"generate": f"  sample:     {program} generate {where}",
                 "embed": f"  embed:      {program} embed {where} \"some text\"",
                 "sample": None}[run.objective.usage]
        usage = usage or f"  sample:     {image_run.sample_command(run_dir, cfg, program)}"
        plots = [run_dir / n for n in ("loss.png", "expert_load.png") if (run_dir / n).is_file()]
        plot = f"plot {', '.join(map(str, plots))}" if not run.plot_error else f"no plot ({run.plot_error[0]})"
        say("\n".join([
            "summary:",
            f"  trained {run.step} steps, {run.tokens:,} {unit} ({len(res.train_losses)} steps this run, "
            f"{tps:,.0f} {'tok' if unit == 'tokens' else unit}/s while training), {res.seconds:.0f}s in all",
            f"  final validation loss {vl}" + (f", perplexity {ppl}" if not cfg.images else "".join(
                f", {k} {v:.3g}" for k, v in (res.image_metrics or {}).items())),
            f"  checkpoint: {res.checkpoint or latest_checkpoint(run_dir)}",
            f"  model:      {res.final_dir}  (genmodels.load('{res.final_dir}'))",
            f"  metrics:    {run_dir / 'metrics.jsonl'}, {plot}",
            usage,
        ]))
    run.info.barrier()
    return res
