"""The denoising diffusion objective (Ho et al. 2020), with classifier-free label dropout and an EMA.

Per batch ``{"images": x0 (B, C, H, W) in [-1, 1], "labels": y (B,)}``:

    t ~ U{0, …, T−1},  ε ~ N(0, I),  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε          (Ho et al. 2020, eq. 4)
    target = ε                      (prediction_type epsilon)
           = √ᾱ_t·ε − √(1−ᾱ_t)·x0     (v_prediction; Salimans & Ho 2022, §4)
           = x0                     (sample)
    L = 1/B Σ_b w(t_b) · mean_chw (model(x_t, t, y')_b − target_b)²

with w = 1, or min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
Weighting Strategy", eq. 8 and §3.4), SNR_t = ᾱ_t/(1−ᾱ_t): the x0-space weight min(SNR_t, γ) written
for each target — min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v, min(SNR, γ) for x0.

Classifier-free guidance (Ho & Salimans 2022): in training each label is replaced by the null label
(``config.null_label``, the embedding table's extra row) with probability ``class_dropout``, so the
same network also learns the unconditional prediction that guided sampling subtracts.

EMA (Polyak averaging of the weights): after each optimizer step n (n = 1, 2, …)
θ_ema ← d_n·θ_ema + (1 − d_n)·θ with d_n = min(decay, (1 + n)/(10 + n)) (diffusers' EMAModel warm-up).
The EMA copy is the objective's submodule ``ema`` (its tensors are in every checkpoint, keys
``ema.*``); the run's ``final/`` holds the EMA weights (:meth:`DiffusionObjective.final_state`), and
evaluation samples from them.

Randomness: t, ε and the dropout mask come from torch's global generator, whose state every
checkpoint saves (``rng.safetensors``), so a resumed run draws the same noise as an unbroken one.
Evaluation passes its own seeded ``generator`` and leaves the global one untouched.

Options (``train.objective: {name: diffusion, …}``): ``class_dropout``, ``ema_decay``, ``min_snr_gamma``
(null: the default) and the image objectives' ``eval_samples`` (:mod:`.images`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError
from ..schedulers import DDPMScheduler
from .base import Batch, Metrics
from .images import ImageObjective, ImageOptions


DEFAULT_EMA_DECAY = 0.999


def training_scheduler(config) -> DDPMScheduler:
    """The forward process a DiffusionConfig's schedule fields describe (T, β schedule, prediction type)."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         beta_start=config.beta_start, beta_end=config.beta_end,
                         prediction_type=config.prediction_type)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023) of the ``prediction_type`` target, per timestep."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped  # sample (x0): the paper's weight itself


def ema_decay_at(decay: float, updates: int) -> float:
    """d_n = min(decay, (1 + n)/(10 + n)) for the n-th update (n ≥ 1)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@dataclass
class DiffusionOptions(ImageOptions):
    name: str = "diffusion"
    class_dropout: float | None = None  # label → null label with this probability (default 0.1 with a null class)
    ema_decay: float | None = None  # EMA of the weights, up to this decay (default 0.999; 0: none)
    min_snr_gamma: float | None = None  # min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper); null: off


class DiffusionObjective(ImageObjective):
    name = "diffusion"
    Options = DiffusionOptions
    requires = ImageObjective.requires + ("config:prediction_type",)
    ema_field = "train.objective.ema_decay"  # the recipe field that turns the EMA on or off (named on resume)

    def __init__(self, model: nn.Module, *, class_dropout: float | None = None, ema_decay: float | None = None,
                 min_snr_gamma: float | None = None):
        super().__init__(model)
        c = model.config
        self.prediction_type = c.prediction_type
        if class_dropout is None:  # default: 0.1 (the reference's p_uncond) where there is a null label
            class_dropout = 0.1 if c.null_label is not None else 0.0
        if ema_decay is None:  # default: the reference's EMA "up to 0.999"; 0 turns it off
            ema_decay = DEFAULT_EMA_DECAY
        check_options(c, class_dropout, ema_decay, min_snr_gamma)
        self.class_dropout, self.ema_decay, self.min_snr_gamma = class_dropout, ema_decay, min_snr_gamma
        sched = training_scheduler(c)
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.clone(), persistent=False)  # (T,)
        self.ema = None
        if ema_decay:
            self.ema = copy.deepcopy(model).requires_grad_(False).eval()

    @classmethod
    def check(cls, options: DiffusionOptions, model_config, recipe) -> None:
        """ConfigError naming the option this model cannot use (before any work)."""
        super().check(options, model_config, recipe)
        dropout = options.class_dropout if options.class_dropout is not None else (
            0.1 if model_config.null_label is not None else 0.0)
        check_options(model_config, dropout, options.ema_decay, options.min_snr_gamma, options.where)

    @classmethod
    def build(cls, model: nn.Module, options: DiffusionOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "DiffusionObjective":
        objective = cls(model, class_dropout=options.class_dropout, ema_decay=options.ema_decay,
                        min_snr_gamma=options.min_snr_gamma)
        objective.ema_field = options.where("ema_decay")
        return objective

    # ---- the loss --------------------------------------------------------------------------
    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
        x0 = batch["images"]  # (B, C, H, W)
        b, dev = x0.shape[0], x0.device
        t = torch.randint(0, self.alphas_cumprod.shape[0], (b,), device=dev, generator=generator)  # (B,)
        noise = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)  # (B, C, H, W)
        abar = self.alphas_cumprod.to(dev)[t].view(b, 1, 1, 1)
        a, s = abar.sqrt().to(x0.dtype), (1 - abar).sqrt().to(x0.dtype)
        x_t = a * x0 + s * noise
        target = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[self.prediction_type]
        labels = self._labels(batch.get("labels"), b, dev, generator)
        out = self.model(x_t, t, class_labels=labels)  # (B, C, H, W)
        per_sample = (out.float() - target.float()).square().flatten(1).mean(1)  # (B,)
        if self.min_snr_gamma:
            snr = abar.view(b) / (1 - abar.view(b))
            per_sample = per_sample * min_snr_weight(snr, self.min_snr_gamma, self.prediction_type)
        return per_sample.mean(), {}

    def _labels(self, labels: torch.Tensor | None, b: int, dev, generator) -> torch.Tensor | None:
        """The batch's labels with each replaced by the null label with probability class_dropout (training)."""
        null = self.model.config.null_label
        if self.model.config.num_classes == 0:
            return None
        if labels is None:
            raise ValueError("the batch has no labels, but the model is class-conditional (model.num_classes > 0)")
        if self.training and self.class_dropout > 0:
            drop = torch.rand(b, device=dev, generator=generator) < self.class_dropout  # (B,)
            labels = torch.where(drop, torch.full_like(labels, null), labels)
        return labels

    # ---- the EMA ---------------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Update the EMA after optimizer step number ``step`` (1-based: the steps done so far)."""
        if self.ema is None:
            return
        d = ema_decay_at(self.ema_decay, step)
        ema_p, p = list(self.ema.parameters()), [q.detach() for q in self.model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - d)  # θ_ema += (1 − d)(θ − θ_ema)
        for e, m in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(m)

    @torch.no_grad()
    def restart_ema(self) -> None:
        """Start the EMA from the current weights (a resume from a checkpoint that kept none: never from the
        fresh initialisation the copy was made of)."""
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())

    def sampling_model(self) -> nn.Module:
        """The weights to sample from: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model

    def final_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict of ``final/`` from a full checkpoint state: the EMA weights when kept."""
        if self.ema is None:
            return state
        return {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}


def check_options(c, class_dropout: float, ema_decay: float | None, min_snr_gamma: float | None,
                  where=lambda name: f"train.{name}") -> None:
    """ConfigError naming the option (``where(name)``: its dotted path) that the model cannot use or that is out
    of range."""
    if not isinstance(class_dropout, (int, float)) or isinstance(class_dropout, bool) or not 0 <= class_dropout < 1:
        raise ConfigError(f"{where('class_dropout')}={class_dropout!r} must be a number in [0, 1)")
    if class_dropout > 0 and c.null_label is None:
        why = ("unconditional (model.num_classes=0)" if c.num_classes == 0
               else "without a null class (model.null_class=false)")
        raise ConfigError(f"{where('class_dropout')}={class_dropout} needs a null label, but the model is {why}; "
                          "set it to 0 or leave it out")
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0 <= ema_decay < 1):
        raise ConfigError(f"{where('ema_decay')}={ema_decay!r} must be a number in [0, 1) (0 or null: no EMA)")
    if min_snr_gamma is not None and (isinstance(min_snr_gamma, bool) or not isinstance(min_snr_gamma, (int, float))
                                      or not min_snr_gamma > 0):
        raise ConfigError(f"{where('min_snr_gamma')}={min_snr_gamma!r} must be a number > 0 (5 in the paper), or null")
