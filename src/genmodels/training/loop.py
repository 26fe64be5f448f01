"""The loop of a training run and what it calls between steps: logging, the time budget (fitted after
warm-up), evaluations, checkpoints, and the objective's divergence watch. :mod:`.trainer` sets a run up
(:class:`RunState`), calls :func:`run_loop`, then finishes it. Every time the loop reads comes from
``run.clock`` (injectable for tests).
"""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..io import save
from .checkpoint import latest_checkpoint, save_checkpoint
from .config import RunConfig
from .distributed import DistInfo, full_model_state, full_optimizer_state
from .metrics import plot_expert_load, plot_losses
from .optim import lr_at
from .setup import TrainResult, last_good, rng_state
from .steps import NonFiniteError, evaluate, first_non_finite_param


_SKIP_STEPS = 3  # the first steps fault their memory in and warm kernels up: not timed for the fit


def fit_steps_to_budget(step: int, max_steps: int, deadline: float, now: float, step_times: list[float], tc,
                         micro_bs: int, info: DistInfo, eval_s: float | None = None) -> int:
    """The number of steps that fit before ``deadline`` (agreed by all ranks), at most ``max_steps``.

    Step time = the median of the timed steps after the first few (which pay one-off costs),
    with a 5% margin; each evaluation costs ``eval_s`` (the last one's measured time: an image run's
    sampling and scoring included), or before any was measured about ``eval_batches`` forward passes of a
    micro-batch (⅓ of a training micro-step each).
    """
    t = statistics.median(step_times[_SKIP_STEPS:]) * 1.05
    eval_cost = t / tc.grad_accum / 3 * tc.eval_batches if eval_s is None else eval_s
    per_step = t + eval_cost / tc.eval_every
    fit = int((deadline - now) / per_step) if per_step > 0 else max_steps
    value = torch.tensor([float(step + max(fit, 1)) if info.is_main else 0.0], dtype=torch.float64)
    fitted = int(info.all_reduce_sum(value)[0])  # rank 0's estimate, for everyone
    return min(max_steps, max(fitted, step + 1))


@dataclass
class RunState:
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
    n_tokens: int = 0  # the tokenizer's ordinary ids (the objective's extra ids follow them)
    data: object = None  # training.data.Data: tokenizer, train/val windows, eos id
    mcfg: object = None
    objective: object = None  # an objectives.Objective holding the model
    optimizer: object = None
    step_fn: object = None  # the objective, DDP/FSDP-wrapped (and compiled)
    make_batch: Callable = None  # sampler indices -> the objective's dict batch, on the device
    watch: object = None  # the objective's divergence watch (objectives.base.Watch: by default none)
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
    step_times: list[float] = field(default_factory=list)  # this invocation's step times (the budget's fit)
    eval_s: float | None = None  # the last evaluation's duration, by ``clock`` (the budget's fit)
    units_done: int = 0  # units this invocation trained (the summary's rate)
    last_ckpt_step: int = -1
    last_val_step: int = -1
    t_loop: float = 0.0
    train_time: float = 0.0
    bar: object = None
    result: TrainResult | None = None
    plot_error: list[str] = field(default_factory=list)  # the first failure to draw loss.png (warned once)
    frozen: frozenset[str] = frozenset()  # model keys checkpoints leave out (LoRA: the base, from model.init_from)
    extra_state: dict = field(default_factory=dict)  # what else state.json keeps (LoRA: the base's fingerprint)

    def note(self, msg: str) -> None:
        (self.bar.write(msg) if self.bar is not None else self.say(msg))

    def elapsed(self) -> float:
        return self.prev_elapsed + self.clock() - self.t_loop

    @property
    def count_unit(self) -> str:
        """What ``tokens`` counts (the objective's unit), named so in every message, log key and summary."""
        return self.objective.unit

    def units(self, batches: list[dict]) -> int:
        """How many units one optimizer step over ``batches`` (this process's micro-batches) takes, all processes."""
        return sum(self.objective.units(b) for b in batches) * self.info.world_size


@dataclass
class EvalContext:
    """What an objective's ``evaluate`` reads: the data, the batch sizes, the process, and ``mean_loss()``."""

    run: RunState

    def __getattr__(self, name: str):
        return getattr(self.__dict__["run"], name)

    @property
    def n_batches(self) -> int:
        return self.run.cfg.train.eval_batches

    @property
    def seed(self) -> int:
        return self.run.cfg.train.seed

    @property
    def sample(self):
        return self.run.cfg.sample

    @property
    def options(self):
        return self.run.cfg.train.objective

    def mean_loss(self, loss_fn: Callable | None = None) -> float:
        """The mean validation loss of ``loss_fn(batch) -> loss`` (default: the wrapped objective's loss)."""
        run = self.run
        fn = loss_fn or (lambda b: run.step_fn(b)[0])
        return evaluate(fn, run.data.val, run.micro_bs, run.cfg.train.eval_batches, run.info, run.amp_dtype,
                        module=run.step_fn, seed=run.cfg.train.seed)


def step_record(report, train_step) -> tuple[dict[str, float], str]:
    """``(record, bar text)`` of a step. One phase: ``loss``, ``lr``, ``grad_norm``; several (a GAN's D, G):
    ``<phase>/loss``, ``<phase>/grad_norm``, ``lr`` (the last phase's) and ``<phase>/lr`` for the others."""
    phases = train_step.phases
    lrs = {ph.name: ph.optimizer.param_groups[0]["lr"] for ph in phases}
    if len(phases) == 1:
        name = phases[0].name
        loss = report.losses[name]
        return {"loss": loss, "lr": lrs[name], "grad_norm": report.grad_norms[name]}, f"loss {loss:.3f}"
    out = {f"{name}/loss": v for name, v in report.losses.items()}
    out.update({f"{name}/grad_norm": v for name, v in report.grad_norms.items()})
    out["lr"] = lrs[phases[-1].name]
    out.update({f"{ph.name}/lr": lrs[ph.name] for ph in phases[:-1]})
    return out, " ".join(f"{name} {v:.3f}" for name, v in report.losses.items())


def run_loop(run: RunState) -> None:
    """The loop: steps (the train step's phases), logging, the time budget, evaluations, checkpoints."""
    tc, main = run.cfg.train, run.info.is_main
    count_key = run.count_unit  # (images or tokens)
    unit = run.objective.unit
    rate_key = "tok_s" if unit == "tokens" else f"{unit}_s"
    run.result = TrainResult(run_dir=run.run_dir, final_dir=None, steps=run.step, tokens=run.tokens)
    if main and run.progress:
        from tqdm import tqdm
        run.bar = tqdm(total=run.max_steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.5)
    run.t_loop = run.clock()
    deadline = run.t_loop + tc.max_minutes * 60 if tc.max_minutes else None
    step_times = run.step_times
    stop = False
    before_first_step(run, deadline)

    def over_budget() -> float:  # the train step's stop flag
        return 1.0 if deadline is not None and run.clock() > deadline else 0.0

    try:
        while run.step < run.max_steps and not stop:
            t0 = run.clock()
            # each phase's rate follows the schedule, scaled by its peak (a GAN's D: train.lr_d / train.lr)
            run.train_step.set_lr(lambda ph: lr_at(run.step, tc.lr, tc.min_lr, tc.warmup_steps, run.max_steps)
                                  * (ph.lr / tc.lr))
            batches = [run.make_batch(next(run.sampler)) for _ in range(tc.grad_accum)]
            tokens_per_step = run.units(batches)
            run.objective.before_step(run.step)  # (a GAN's lazy R1)
            try:
                report = run.train_step(batches, run.step, stop_flag=over_budget, where=lambda: last_good(run.run_dir))
            except NonFiniteError as e:
                if run.watch.error is None:
                    raise
                diverged(run, str(e), whole_step=False)
            stop = report.stop
            loss_val = report.losses[run.train_step.phases[0].name]
            record, shown = step_record(report, run.train_step)
            run.step += 1
            run.objective.after_step(run.step)  # (the EMA of the weights, where the objective keeps one)
            run.tokens += tokens_per_step
            run.units_done += tokens_per_step
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
            why = run.watch.update(report.losses)
            if why is not None:
                diverged(run, f"step {run.step}: {why}", whole_step=True)
            if deadline is not None:
                step_times.append(dt)
                if not run.calibrated and len(step_times) == max(tc.warmup_steps, _SKIP_STEPS + 5):
                    calibrate(run, deadline, step_times)  # fit at the end of warm-up
            # the checkpoint first: an evaluation that fails (or is killed) never costs the steps before it
            if run.step % tc.ckpt_every == 0 and run.step < run.max_steps and not stop:
                write_checkpoint(run)
            if run.step % tc.eval_every == 0 and run.step < run.max_steps and not stop:
                evaluate_in_loop(run, deadline)
    finally:
        if run.bar is not None:
            run.bar.close()
    if stop:
        run.say(f"time budget train.max_minutes={tc.max_minutes} reached at step {run.step}/{run.max_steps}")


def diverged(run: RunState, why: str, whole_step: bool) -> None:
    """The run diverged (its objective's watch said so): save what can be saved, then stop with one clear message
    (the watch's ``error``). ``whole_step``: the state is a finished step (a regular checkpoint); else the weights
    go to RUN/diverged/."""
    if whole_step:
        if run.last_ckpt_step != run.step:
            write_checkpoint(run)
        saved = f"checkpoint {latest_checkpoint(run.run_dir)} written"
    elif first_non_finite_param(run.objective, run.info) is None:
        saved = f"the weights before that update saved to {save(run.objective.model, run.run_dir / 'diverged')}"
    else:
        saved = "the weights are not finite: not saved"
    raise run.watch.error(f"training diverged: {why.rstrip('; ')}; {saved}; {run.watch.advice(run.mcfg)}")


def before_first_step(run: RunState, deadline: float | None) -> None:
    """A run under a budget has its objective load what evaluation needs (an image run's scoring classifier,
    trained once, on first use) before the budget's fit, which then counts it; a run resumed from the checkpoint written just before an evaluation that did not
    finish (it failed, or the process was killed) evaluates that step now."""
    tc = run.cfg.train
    if deadline is not None and tc.eval_every < run.max_steps and run.info.is_main:
        run.objective.prepare_evaluation(run.data)
    if 0 < run.step < run.max_steps and run.step % tc.eval_every == 0 and not evaluated(run):
        evaluate_in_loop(run, deadline)


def evaluated(run: RunState) -> bool:
    """Whether metrics.jsonl holds the evaluation of ``run.step`` (all ranks agree: the main rank's answer)."""
    have = run.info.is_main and any(r.get("step") == run.step and "val_loss" in r for r in run.metrics.read())
    return bool(run.info.all_gather_object(have)[0])


def evaluate_in_loop(run: RunState, deadline: float | None) -> None:
    """:func:`evaluate_run`, timed by ``run.clock`` for the budget (which it refits, fewer steps only, once the
    schedule was fitted); an evaluation that fails first checkpoints the step it was at."""
    t0 = run.clock()
    try:
        evaluate_run(run)
    except Exception:
        if run.last_ckpt_step != run.step:
            try:
                write_checkpoint(run)
                run.note(f"step {run.step}: the evaluation failed; checkpoint {latest_checkpoint(run.run_dir)} "
                         "written first (--resume continues from it)")
            except Exception:  # (non-finite weights, a full disk) the evaluation's failure is the one to report
                pass
        raise
    run.eval_s = run.clock() - t0
    if deadline is None or not run.calibrated or len(run.step_times) <= _SKIP_STEPS:
        return
    fitted = fit_steps_to_budget(run.step, run.max_steps, deadline, run.clock(), run.step_times, run.cfg.train,
                                 run.micro_bs, run.info, eval_s=run.eval_s)
    if fitted < run.max_steps:
        run.max_steps = fitted
        if run.bar is not None:
            run.bar.total = run.max_steps
            run.bar.refresh()
        run.note(f"train.max_minutes={run.cfg.train.max_minutes}: after the evaluation of step {run.step} "
                 f"({run.eval_s:.1f} s each) at {1000 * statistics.median(run.step_times[_SKIP_STEPS:]):.0f} "
                 f"ms/step, schedule refitted to {run.max_steps} steps")


def calibrate(run: RunState, deadline: float, step_times: list[float]) -> None:
    tc = run.cfg.train
    run.max_steps = fit_steps_to_budget(run.step, run.max_steps, deadline, run.clock(), step_times, tc,
                                         run.micro_bs, run.info, eval_s=run.eval_s)
    run.calibrated = True
    if run.bar is not None:
        run.bar.total = run.max_steps
        run.bar.refresh()
    if run.max_steps < tc.max_steps:
        run.note(f"train.max_minutes={tc.max_minutes}: {tc.max_steps} steps do not fit at "
                 f"{1000 * statistics.median(step_times[_SKIP_STEPS:]):.0f} ms/step; "
                 f"schedule fitted to {run.max_steps} steps")


def evaluate_run(run: RunState) -> None:
    """Validation loss (and perplexity), logged, plotted (best-effort) and noted."""
    res = run.result
    vl, extra = run.objective.evaluate(EvalContext(run))  # (images: fixed-noise loss, sampled images' metrics)
    res.image_metrics = extra
    record = {"step": run.step, run.count_unit: run.tokens, "val_loss": vl, **extra}
    res.val_loss = vl
    res.val_ppl = math.exp(min(vl, 50.0)) if run.objective.perplexity and vl is not None else None
    run.last_val_step = run.step
    if run.info.is_main:
        run.metrics.append({**record, **({"val_ppl": res.val_ppl} if run.objective.perplexity else {}),
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


def check_params(run: RunState, what: str) -> None:
    bad = first_non_finite_param(run.objective, run.info)
    if bad is not None:
        raise NonFiniteError(f"step {run.step}: parameter {bad} is not finite (NaN/inf); {what} not written, "
                             f"{last_good(run.run_dir)}; lower train.lr or check the data")


def write_checkpoint(run: RunState) -> None:
    check_params(run, "checkpoint")  # before anything is written or pruned
    info, cfg = run.info, run.cfg
    msd = {k: v for k, v in full_model_state(run.objective).items() if k not in run.frozen}
    osd = (run.train_step.optimizer_state() if len(run.train_step.phases) > 1  # each optimizer, keyed by phase
           else full_optimizer_state(run.objective, run.optimizer))
    rng = rng_state(info)
    if info.is_main:
        state = {"step": run.step, "tokens": run.tokens, "sampler": run.sampler.state_dict(),
                 "world_size": info.world_size, "max_steps": run.max_steps, "calibrated": run.calibrated,
                 "layout": info.kind if info.active else "single", "elapsed_s": run.elapsed(),
                 "config": cfg.to_dict(), "model_config": run.mcfg.to_dict(), "corpus_fingerprint": run.fingerprint,
                 **run.watch.state(), **run.extra_state}
        run.result.checkpoint = save_checkpoint(run.run_dir, run.step, msd, osd, rng, state, cfg.train.keep_last)
    run.last_ckpt_step = run.step
    info.barrier()
