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

from types import SimpleNamespace

from ..config import ConfigError
from ..data import BatchSampler
from ..data.kinds import get_data_kind
from ..files import atomic_write_bytes
from ..io import attach_tokenizer, save
from ..models import build_model
from .. import objectives
from . import adapters
from .checkpoint import latest_checkpoint
from .config import RunConfig
from .distributed import DistInfo, full_model_state, init_distributed, load_full_state, wrap
from .memory import apply_activation_checkpointing, keep_freed_memory, transformer_blocks
from .metrics import MetricsLog, flops_per_token
from .optim import build_optimizer
from .loop import RunState, check_params, evaluate_run, run_loop, write_checkpoint
from .recipe import dump_config
from .rundir import RunDirError, RunLock, claim_run_dir
from .precision import autocast_dtype, precision_note
from .setup import (TrainResult, ema_on_resume, init_from_model, matmul_peak, model_config, restore_rng,
                    resume_point)
from .steps import Phase, TrainStep


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
    """Set the run up (data, model, objective, its phases, the resume point), then :func:`run_loop`."""
    tc = cfg.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    note = precision_note(tc.precision, info.device)
    if note:
        say(note)
    run = RunState(cfg=cfg, info=info, say=say, clock=clock, t_start=t_start, run_dir=Path(cfg.run_dir),
                   progress=progress, amp_dtype=autocast_dtype(tc.precision, info.device),
                   micro_bs=tc.batch_size // (tc.grad_accum * info.world_size))
    kinds = objectives.OBJECTIVES[cfg.objective()].data_kinds
    ckpt, loaded = _prepare_data(run, get_data_kind(getattr(cfg.data, "kind", kinds[0])), resume)
    # (a LoRA run's checkpoints hold only its adapters: the base comes from model.init_from on --resume too)
    again = tc.lora is not None or objectives.OBJECTIVES[cfg.objective()].initial_weights  # (DPO's reference)
    start = init_from_model(cfg, run.mcfg, say) if ckpt is None or again else None
    torch.manual_seed(tc.seed)
    model = build_model(run.mcfg)
    if start is not None:
        model.load_state_dict(start.state_dict())
        say(f"model: weights from model.init_from={cfg.init_from}")
    if tc.lora is not None:  # adapters on the frozen base (training/adapters.py); checkpoints leave the base out
        run.extra_state["lora_base"] = adapters.attach(tc.lora, model, say)
        run.frozen = adapters.frozen_keys(model)
        if ckpt is not None:
            adapters.check_base(loaded[3], run.extra_state["lora_base"], ckpt, cfg.init_from)
    model = model.to(info.device)
    if tc.activation_checkpointing != "none":
        apply_activation_checkpointing(transformer_blocks(model), tc.activation_checkpointing)
    if info.device.type == "cpu":
        keep_freed_memory()
    run.objective = objectives.build_objective(cfg.objective(), model, tc.objective, n_tokens=run.n_tokens,
                                    eos_id=run.data.eos_id, loss_chunk=tc.loss_chunk).train()
    run.objective.check_data(run.data)
    if tc.lora is not None:  # embedding rows that train with the adapters (the objective's new tokens: adapters.py)
        run.extra_state["lora_tokens"] = adapters.attach_tokens(tc.lora, model, run.objective, cfg.init_from,
                                                                None if ckpt is None else loaded[3], say)
    run.n_params = sum(p.numel() for p in model.parameters())
    seq_len = getattr(cfg.data, "seq_len", None)
    run.fpt = flops_per_token(model, seq_len) if run.objective.flops_apply and seq_len else 0.0
    scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    run.train_step, run.step_fn = build_train_step(run.objective, tc, info, run.amp_dtype, scaler)
    run.optimizer, run.watch = run.train_step.phases[-1].optimizer, run.objective.watch()
    run.sampler = BatchSampler(len(run.data.train), run.micro_bs, seed=tc.seed, rank=info.rank,
                               world_size=info.world_size)
    run.metrics = MetricsLog(run.run_dir / "metrics.jsonl")
    run.max_steps = tc.max_steps  # with max_minutes, fitted to the budget after a few steps
    if ckpt is not None:
        _restore(run, ckpt, loaded)
    elif resume:
        say(f"no checkpoint in {run.run_dir}; starting from step 0")
    elif info.is_main and run.metrics.path.exists():
        run.metrics.path.unlink()
    info.barrier()
    run.peak = matmul_peak(tc, info, say)
    _say_model(run)
    run_loop(run)
    return _finish(run)


def _prepare_data(run: RunState, kind, resume: bool):
    """The run's data (the main rank builds caches first; the others then read them), the resume point and the
    model config; ``(checkpoint, loaded state)`` (None, None on a fresh start). Writes config.yaml and the
    tokenizer (and chat template) beside the run."""
    cfg, info, say = run.cfg, run.info, run.say
    dc = cfg.data
    run.fingerprint = kind.fingerprint(dc)
    if run.fingerprint is None:  # known once prepared (images)
        run.data = kind.prepare(dc, say if info.is_main else (lambda s: None))
        run.fingerprint = run.data.fingerprint
    ckpt, loaded, dc = (resume_point(cfg, kind, run.run_dir, run.fingerprint, info, say) if resume
                        else (None, None, dc))
    if run.data is None:
        if ckpt is None:  # a fresh start: model.init_from gives the tokenizer (and, later, the weights)
            dc = kind.started(dc, cfg.init_from)
        info.barrier()
        if info.is_main:
            run.data = kind.prepare(dc, say)
        info.barrier()
        if not info.is_main:
            run.data = kind.prepare(dc, lambda s: None)
    run.mcfg, run.n_tokens = model_config(cfg, run.data.tokenizer, run.data.eos_id)
    run.make_batch = lambda idx: {k: v.to(info.device, non_blocking=True) for k, v in run.data.train.batch(idx).items()}
    if info.is_main:
        dump_config(cfg, run.run_dir / "config.yaml")
        if run.data.tokenizer is not None:
            run.data.tokenizer.save(str(run.run_dir / "tokenizer.json"))
        template = getattr(run.data, "chat_template", None)
        if template:
            atomic_write_bytes(run.run_dir / "chat_template.jinja", template.encode())
    return ckpt, loaded


def build_train_step(objective, tc, info: DistInfo, amp_dtype=None, scaler=None) -> tuple[TrainStep, object]:
    """``(train step, step_fn)``: the objective's phases, one optimizer each (``tc``: the recipe's train section);
    a phase over the whole objective runs it DDP/FSDP-wrapped (and compiled): ``step_fn``, which evaluation calls
    (the objective itself when no phase wraps it). ConfigError when the objective cannot run on these processes."""
    if info.active and not objective.distributed:
        raise ConfigError(f"train.distributed={tc.distributed!r}: {objective.name.upper()} runs train in one "
                          "process for now (set train.distributed: none)")
    phases, step_fn = [], objective
    for spec in objective.phases():
        lr = spec.lr if spec.lr is not None else tc.lr
        clip = spec.grad_clip if spec.grad_clip is not None else tc.grad_clip
        loss, sync = spec.loss, None
        if loss is None:  # the objective itself: wrapped for DDP / FSDP
            sync = wrap(objective, info)
            step_fn = loss = torch.compile(sync) if tc.compile else sync
        opt = build_optimizer(spec.module, lr, tc.weight_decay, spec.betas or tc.betas, tc.eps,
                              distributed=info.kind == "fsdp" and info.active)
        phases.append(Phase(spec.name, loss, spec.module, opt, clip, lr, sync_module=sync, tokens=spec.tokens))
    return TrainStep(phases, info, amp_dtype, scaler), step_fn


def _restore(run: RunState, ckpt: Path, loaded) -> None:
    """Load the checkpoint's weights, optimizer states, sampler position, RNG and counters into the run."""
    tc, info, say = run.cfg.train, run.info, run.say
    model_sd, optim_sd, rng, state = loaded
    model_sd, restart_ema = ema_on_resume(run.objective, model_sd, ckpt, say)
    if run.frozen:  # (LoRA: the base the checkpoint left out is the one loaded from model.init_from)
        model_sd = {**{k: v for k, v in full_model_state(run.objective).items() if k in run.frozen}, **model_sd}
    absent_ok = ("ema.",) if restart_ema else ()
    if len(run.train_step.phases) > 1:  # several optimizers, keyed by phase
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
    run.watch.load_state(state)  # (a GAN's streaks of collapsed or stuck discriminator steps continue)
    if info.is_main:
        run.metrics.truncate_after(run.step)
    run.last_ckpt_step = run.step
    say(f"resumed from {ckpt} (step {run.step}, {run.tokens:,} {run.count_unit})")


def _say_model(run: RunState) -> None:
    tc, info, dc = run.cfg.train, run.info, run.cfg.data
    per_token = f" ({run.fpt / 1e6:.1f} MFLOP/token)" if run.objective.flops_apply else ""
    rows = (f"micro-batch {run.micro_bs}×{dc.seq_len} × accum {tc.grad_accum} = global {tc.batch_size} sequences"
            if run.objective.unit == "tokens" else
            f"micro-batch {run.micro_bs} × accum {tc.grad_accum} = global {tc.batch_size} {run.objective.unit}")
    run.say(f"model: {run.mcfg.family} {run.n_params / 1e6:.2f}M params{per_token}, "
            f"{info.world_size} process(es) [{info.kind if info.active else 'single'}], device {info.device}, "
            + rows)


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


def _save_final(model, run_dir: Path, tok, res: TrainResult, save=save) -> Path:
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
        if tc.lora is not None:
            tc.lora.apply(final, run.extra_state["lora_tokens"])
        final.load_state_dict(run.objective.final_state(msd))  # (diffusion: the EMA weights)
        attach_tokenizer(final, tok)
        final.chat_template = getattr(run.data, "chat_template", None)  # (examples rendered with one)
        res.final_dir = (_save_final(final, run_dir, tok, res, run.objective.save_final) if tc.lora is None else
                         # (LoRA: PEFT's files)
                         adapters.write_final(final, run_dir / "final", cfg.init_from, tok, final.chat_template))
        ctx = SimpleNamespace(tokenizer=tok, sample=cfg.sample, eos_id=run.data.eos_id, seed=tc.seed, say=say,
                              run_dir=run_dir)
        res.samples = run.objective.samples(final, ctx)
        if res.samples:
            say("samples:")
            for prompt, text in zip(cfg.sample.prompts, res.samples):
                say(f"--- {prompt!r}\n{text}")
        unit = run.count_unit
        tps = run.units_done / max(run.train_time, 1e-9)
        ppl = f"{res.val_ppl:.2f}" if res.val_ppl is not None else "n/a"
        vl = "n/a" if res.val_loss is None else f"{res.val_loss:.4f}"
        usage = run.objective.next_command(run_dir, cli_program(), cfg.sample)
        plots = [run_dir / n for n in ("loss.png", "expert_load.png") if (run_dir / n).is_file()]
        plot = f"plot {', '.join(map(str, plots))}" if not run.plot_error else f"no plot ({run.plot_error[0]})"
        say("\n".join([
            "summary:",
            f"  trained {run.step} steps, {run.tokens:,} {unit} ({len(res.train_losses)} steps this run, "
            f"{tps:,.0f} {'tok' if unit == 'tokens' else unit}/s while training), {res.seconds:.0f}s in all",
            f"  final validation loss {vl}" + (f", perplexity {ppl}" if run.objective.perplexity else "".join(
                f", {k} {v:.3g}" for k, v in (res.image_metrics or {}).items())),
            f"  checkpoint: {res.checkpoint or latest_checkpoint(run_dir)}",
            f"  model:      {res.final_dir}  (genmodels.load('{res.final_dir}'))",
            f"  metrics:    {run_dir / 'metrics.jsonl'}, {plot}",
            usage,
        ]))
    run.info.barrier()
    return res
