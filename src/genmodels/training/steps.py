"""Train steps: what one optimizer step does, for every shape of training.

    one optimizer       Phase("model", objective, model, AdamW): the causal / MLM / span runs
    several phases      [Phase("D", …), Phase("G", …)]: GAN-shaped, each phase its own loss,
                        parameters, optimizer, learning rate and clipping, run in order (D then G),
                        each applied before the next phase's forward
    frozen reference    :class:`FrozenReference`: a copy with requires_grad False, in eval mode, held
                        outside the module tree — not in any optimizer, not in a checkpoint's
                        trainable weights (DPO-shaped: policy vs reference log-probabilities)

A phase's step: from zero gradients on its module (another phase's backward may have reached its
parameters: G's loss flows through D), forward + backward over the micro-batches (the loss divided by their number;
or, for a phase that counts tokens, weighed by the micro-batch's share of the global batch's tokens: ``Phase.tokens``),
the gradient norm (clipped when the phase clips), one all-reduce of the loss, the metrics and the
time-budget flag (the mean over micro-steps and processes), then — only when the loss and the
gradient norm are finite — the optimizer step. Anything non-finite raises :class:`NonFiniteError`
before it is applied.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .distributed import DistInfo, no_sync


class NonFiniteError(FloatingPointError):
    """The run met a non-finite loss, gradient or parameter and stopped before saving it."""


@dataclass
class Phase:
    """One optimizer's part of a step: ``loss_fn(batch) -> (loss, metrics)`` updates ``module``."""

    name: str
    loss_fn: Callable  # the (possibly DDP/FSDP-wrapped) objective
    module: nn.Module  # whose gradients are measured and clipped
    optimizer: torch.optim.Optimizer
    grad_clip: float | None = None
    lr: float | None = None  # this phase's peak learning rate (the schedule scales it)
    sync_module: nn.Module | None = None  # the DDP-wrapped module whose all-reduce waits for the last micro-step
    tokens: Callable[[dict], int] | None = None  # per-token normalisation over the global batch (PhaseSpec.tokens)


@dataclass
class StepReport:
    """What one step did: the global mean loss and metrics per phase, the gradient norms, the stop flag."""

    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)
    stop: bool = False


class TrainStep:
    """Runs the phases of one optimizer step over the same micro-batches."""

    def __init__(self, phases: list[Phase], info: DistInfo | None = None, amp_dtype=None, scaler=None):
        self.phases, self.info = phases, info or DistInfo()
        self.amp_dtype, self.scaler = amp_dtype, scaler

    def set_lr(self, scale: Callable[[Phase], float]) -> None:
        """Each phase's learning rate from ``scale(phase)`` (the schedule's value for that phase)."""
        for ph in self.phases:
            for g in ph.optimizer.param_groups:
                g["lr"] = scale(ph)

    def __call__(self, batches: list[dict], step: int, stop_flag: Callable[[], float] = lambda: 0.0,
                 where: Callable[[], str] = lambda: "") -> StepReport:
        """One step over ``batches`` (the micro-batches); ``step`` is the number of the step done so far."""
        report = StepReport()
        for ph in self.phases:
            loss_sum, metric_sums = self._accumulate(ph, batches)
            gnorm = grad_norm(ph.module, ph.grad_clip, self.scaler, ph.optimizer)
            # one all-reduce, before the update: the global mean loss and metrics, and whether any rank must stop
            red = self.info.all_reduce_sum(torch.tensor([float(loss_sum), stop_flag(), *metric_sums.values()],
                                                        dtype=torch.float64))
            loss_val = float(red[0]) / self.info.world_size
            report.stop = report.stop or bool(red[1] > 0)
            prefix = "" if len(self.phases) == 1 else f"{ph.name}/"
            report.losses[ph.name] = loss_val
            report.grad_norms[ph.name] = gnorm
            for name, v in zip(metric_sums, red[2:].tolist()):
                report.metrics[prefix + name] = v / self.info.world_size
            self._check_finite(ph, step, loss_val, gnorm, where)
            if self.scaler:
                self.scaler.step(ph.optimizer)
                self.scaler.update()
            else:
                ph.optimizer.step()
            ph.optimizer.zero_grad(set_to_none=True)
        return report

    def _accumulate(self, ph: Phase, batches: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward + backward of every micro-batch; the summed loss/n and metrics/n (float64, CPU; a phase counting
        tokens weighs each micro-batch's loss and metrics by its share of the global count instead)."""
        n = len(batches)
        for p in ph.module.parameters():  # another phase's backward may have reached them (G's loss through D)
            p.grad = None
        loss_sum = torch.zeros((), dtype=torch.float64)
        metric_sums: dict[str, torch.Tensor] = {}
        weights = self._token_weights(ph, batches)
        with self._autocast():  # (this outer context keeps autocast's weight casts for all the micro-batches)
            for micro, batch in enumerate(batches):
                with no_sync(ph.sync_module or ph.loss_fn, micro == n - 1):
                    with self._autocast():
                        loss, metrics = ph.loss_fn(batch)
                        loss = loss / n if weights is None else loss * weights[micro]
                    with self._autocast(enabled=False):
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_sum += loss.detach().double().cpu()
                for k, v in metrics.items():  # (weighed as the loss: with token weights, a mean over the global batch)
                    v = float(v.detach())
                    metric_sums[k] = metric_sums.get(k, 0.0) + (v / n if weights is None else v * weights[micro])
        return loss_sum, metric_sums

    def _autocast(self, enabled: bool = True):
        """``torch.autocast`` in ``amp_dtype`` (``enabled=False``: off, for the backward), or nothing in fp32.

        Autocast caches its cast of each weight (a leaf that requires grad) until the outermost autocast context
        exits; the weights change only at the optimizer step, so one context around all the micro-batches of a
        step casts each weight to bf16 once per step instead of once per micro-batch (SmolLM2: 135 M values),
        the same bf16 values. The backwards run under an inner disabled context: outside autocast, as before."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=enabled)

    def _token_weights(self, ph: Phase, batches: list[dict]) -> list[float] | None:
        """Per-token normalisation (``ph.tokens`` set): micro-batch ``m``, whose loss is the mean over its ``c_m``
        tokens, weighs ``c_m · world / C`` (``C``: the tokens of the global batch, one all-reduce), so that after
        data parallelism's mean over processes the gradient is that of Σ token losses / C. None: 1/n each."""
        if ph.tokens is None:
            return None
        counts = [ph.tokens(b) for b in batches]
        total = float(self.info.all_reduce_sum(torch.tensor([float(sum(counts))], dtype=torch.float64))[0])
        return [c * self.info.world_size / total for c in counts]

    def _check_finite(self, ph: Phase, step: int, loss_val: float, gnorm: float, where: Callable[[], str]) -> None:
        # nothing non-finite is applied (with fp16 AMP, inf gradients are the scaler's: it skips the step)
        bad = [f"loss {loss_val}"] if not math.isfinite(loss_val) else []
        if self.scaler is None and not math.isfinite(gnorm):
            bad.append(f"gradient norm {gnorm}")
        if bad:
            phase = "" if len(self.phases) == 1 else f" (phase {ph.name})"
            raise NonFiniteError(f"step {step + 1}{phase}: {' and '.join(bad)} (non-finite); stopped before the "
                                 f"optimizer step, {where()}; lower train.lr or check the data")

    # ---- checkpoints: one optimizer keeps its plain state; several are keyed by phase ------------
    def optimizer_state(self) -> dict:
        """One state dict for all phases: the plain one for a single phase, else each phase's state
        under ``<phase>/<param>`` and its param groups tagged ``phase``."""
        if len(self.phases) == 1:
            return self.phases[0].optimizer.state_dict()
        out: dict = {"state": {}, "param_groups": []}
        for ph in self.phases:
            sd = ph.optimizer.state_dict()
            out["state"].update({f"{ph.name}/{k}": v for k, v in sd["state"].items()})
            out["param_groups"] += [{**g, "phase": ph.name} for g in sd["param_groups"]]
        return out

    def load_optimizer_state(self, sd: dict) -> None:
        if len(self.phases) == 1:
            self.phases[0].optimizer.load_state_dict(sd)
            return
        for ph in self.phases:
            state = {_param_index(k): v for k, v in sd["state"].items() if k.split("/", 1)[0] == ph.name}
            groups = [{k: v for k, v in g.items() if k != "phase"} for g in sd["param_groups"] if g["phase"] == ph.name]
            ph.optimizer.load_state_dict({"state": state, "param_groups": groups})


def _param_index(key: str):
    rest = key.split("/", 1)[1]
    return int(rest) if rest.isdigit() else rest


class FrozenReference:
    """A frozen copy of a model (requires_grad False, eval mode), held outside any module tree.

    Assigning it to a module attribute does not register it (it is not an ``nn.Module``), so its
    parameters are in no ``parameters()``, no optimizer and no ``state_dict()``; call it as the model.
    """

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):  # hidden_states, head, … of the frozen model
        return getattr(self.__dict__["model"], name)


def grad_norm(module: nn.Module, clip: float | None, scaler=None, optimizer=None) -> float:
    """The total gradient norm (one norm per step); clips to ``clip`` when set (clip_grad_norm_'s norm).
    With a GradScaler the gradients are unscaled first."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in module.parameters() if p.grad is not None]
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def first_non_finite_param(module: nn.Module, info: DistInfo) -> str | None:
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


@torch.no_grad()
def evaluate(loss_fn, val, micro_bs: int, n_batches: int, info: DistInfo, amp_dtype,
             module: nn.Module | None = None, seed: int | None = None) -> float:
    """Mean loss over the first ``n_batches`` global batches of the (unshuffled) validation split.
    ``loss_fn(batch) -> loss`` (``batch``: the split's dict batch on the device); ``module`` (default: ``loss_fn`` when it is a module) is in eval mode meanwhile.

    With ``seed``, whatever the objective draws (masked-LM masks, corrupted spans) comes from a stream seeded
    ``seed + rank`` under a forked RNG: every evaluation scores the same masks, so validation losses compare
    across steps, and the training stream is left as it was (how often a run evaluates never changes it)."""
    module = module if module is not None else (loss_fn if isinstance(loss_fn, nn.Module) else None)
    was_training = module.training if module is not None else None
    if module is not None:
        module.eval()
    global_bs = micro_bs * info.world_size
    n = min(n_batches, max(1, len(val) // global_bs))
    total = torch.zeros((), dtype=torch.float64)
    devices = [info.device] if info.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed + info.rank)
        for i in range(n):
            start = i * global_bs + info.rank * micro_bs
            idx = [j % len(val) for j in range(start, start + micro_bs)]
            batch = {k: v.to(info.device) for k, v in val.batch(idx).items()}
            with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(batch)
            total += loss.double().cpu()
    total = info.all_reduce_sum(total) / (n * info.world_size)
    if module is not None:
        module.train(was_training)
    return float(total)
