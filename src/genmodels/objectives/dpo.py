"""Direct preference optimisation (Rafailov et al. 2023) and its IPO and hinge variants, on preference pairs.

For a pair (x, y_w, y_l), ``log π(y|x)`` is the **sum** of the reply's token log-probabilities (prompt and
padding masked), through the chunked head (:func:`.losses.token_logprobs`: only the slots that predict a reply
token reach the head, a chunk at a time). With the reference ``π_ref`` and

    Δ = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]

the per-pair losses (β = ``beta``, ε = ``label_smoothing``) are

    sigmoid   −(1 − ε) log σ(βΔ) − ε log σ(−βΔ)        (DPO; ε > 0: conservative DPO, TRL's old sigmoid)
    hinge     max(0, 1 − βΔ)                            (SLiC)
    ipo       (Δ̄ − 1/(2β))²,  Δ̄ = Δ_w / |y_w| − Δ_l / |y_l|   (IPO, Azar et al. 2023, eq. 17, on log-ratios
              averaged over each reply's tokens as TRL 1.16 computes it, after its authors)

and the loss is their mean over the global batch's pairs (the phase weighs micro-batches by their pairs).
With π_θ = π_ref, Δ = 0 and each loss takes its step-0 value: ln 2, 1, (1/(2β))².

**RPO** (``rpo_alpha`` = α > 0; Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1; TRL's
``rpo_alpha``): each pair's loss adds the chosen reply's negative log-likelihood per token,

    loss_pair + α · (−log π_θ(y_w|x) / |y_w|)

so the chosen reply's likelihood is pushed up, not only its margin over the rejected one (plain DPO may lower
both). The step-0 value becomes the loss's plus α times the chosen replies' mean per-token NLL. (TRL averages
the NLL over all chosen tokens of the batch; here per pair, then over pairs, as the DPO term is.) With α = 0
(the default) nothing changes. With α > 0 the metric ``nll_loss`` (TRL's name) is that NLL's mean over pairs.

Metrics, TRL's names and formulas (``DPOTrainer``): ``rewards/chosen`` = mean β(log π_θ(y_w) − log π_ref(y_w)),
``rewards/rejected`` likewise, ``rewards/margins`` = their mean difference, ``rewards/accuracies`` = the share of
pairs whose chosen reward exceeds the rejected one, ``logps/chosen`` / ``logps/rejected`` = the policy's
summed log-probabilities (means over pairs).

**The reference** (``reference``): ``frozen``, a copy of the starting policy held outside the module tree
(:class:`genmodels.training.steps.FrozenReference`: in no optimizer, no checkpoint; a resume rebuilds it from
the starting weights — ``model.init_from`` — so training/ loads them on a resume too: ``initial_weights``);
or ``adapters_off``, the same model with its LoRA adapters disabled (``train.lora``; no second copy in
memory). Its forward runs under ``no_grad``: gradients reach only the policy.

Options: ``train.objective: {name: dpo, beta: 0.1, loss: sigmoid, label_smoothing: 0.0, reference: frozen,
rpo_alpha: 0.0}``.
Data: the ``pairs`` kind (one forward per pair: :mod:`.pairwise`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..nn.lora import adapted, disabled
from ..registry import GENERATES
from .base import Batch, Metrics, Objective, ObjectiveOptions, PhaseSpec, check_number
from .causal import CausalLM
from .pairwise import MASK_NEEDS, count_pairs, pair_hidden, reply_logps

LOSSES = ("sigmoid", "ipo", "hinge")
REFERENCES = ("frozen", "adapters_off")


@dataclass
class DPOOptions(ObjectiveOptions):
    name: str = "dpo"
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0  # sigmoid only: the share of pairs taken to be mislabelled (cDPO)
    reference: str = "frozen"  # frozen | adapters_off (needs train.lora)
    rpo_alpha: float = 0.0  # RPO: weight of the chosen reply's per-token NLL added to each pair's loss

    def validate(self) -> None:
        check_number(self, "beta", lo=0.0, lo_open=True)
        check_number(self, "rpo_alpha", lo=0.0)
        self.check_choice("loss", LOSSES)
        check_number(self, "label_smoothing", lo=0.0, hi=0.5, hi_open=True)
        self.check_choice("reference", REFERENCES)
        if self.label_smoothing and self.loss != "sigmoid":
            raise ConfigError(f"{self.where('label_smoothing')}={self.label_smoothing!r} means nothing with "
                              f"{self.where('loss')}={self.loss}; leave it out or use loss: sigmoid")


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               n_chosen: torch.Tensor, n_rejected: torch.Tensor, beta: float = 0.1, loss: str = "sigmoid",
               label_smoothing: float = 0.0, rpo_alpha: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """``(per-pair losses (P,), metrics)`` from summed log-probabilities ``(P,)`` of the policy and the reference
    and the replies' token counts (module docstring; ``rpo_alpha``: RPO's NLL term on the chosen reply)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected  # (P,)
    if loss == "ipo":
        delta = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        delta = chosen_ratio - rejected_ratio
        if loss == "hinge":
            losses = torch.relu(1 - beta * delta)
        elif loss == "sigmoid":
            losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                      - label_smoothing * F.logsigmoid(-beta * delta))
        else:
            raise ValueError(f"unknown DPO loss {loss!r}; have {', '.join(LOSSES)}")
    rc, rr = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(), "rewards/margins": (rc - rr).mean(),
               "rewards/accuracies": (rc > rr).float().mean(), "logps/chosen": chosen.detach().mean(),
               "logps/rejected": rejected.detach().mean()}
    if rpo_alpha:
        nll = -chosen / n_chosen.clamp(min=1)  # (P,) the chosen reply's per-token NLL
        losses = losses + rpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean()
    return losses, metrics


class DPO(Objective):
    name = "dpo"
    Options = DPOOptions
    requires = (GENERATES, "method:hidden_states", *MASK_NEEDS)  # (one forward per pair: .pairwise)
    data_kinds = ("pairs",)
    unit = "pairs"
    flops_apply = False  # (FLOPs per token do not describe a step counted in pairs)
    perplexity = False
    initial_weights = True  # the frozen reference is the starting policy: a resume loads model.init_from again

    def __init__(self, model, beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0,
                 reference: str = "frozen", chunk: int = 1024, rpo_alpha: float = 0.0):
        super().__init__(model)
        self.beta, self.loss, self.label_smoothing, self.chunk = beta, loss, label_smoothing, chunk
        self.rpo_alpha = rpo_alpha
        self.reference_kind = reference
        if reference == "adapters_off" and not adapted(model):
            raise ConfigError("train.objective.reference=adapters_off needs LoRA adapters on the model (train.lora); "
                              "use reference: frozen for a full fine-tune")
        from ..training.steps import FrozenReference  # (here: training/ imports this package when it loads)
        self.reference = FrozenReference(model) if reference == "frozen" else None  # (not a submodule)

    @classmethod
    def build(cls, model, options: DPOOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "DPO":
        return cls(model, options.beta, options.loss, options.label_smoothing, options.reference, loss_chunk,
                   options.rpo_alpha)

    @classmethod
    def check(cls, options: DPOOptions, model_config, recipe) -> None:
        if options.reference == "adapters_off" and getattr(recipe.train, "lora", None) is None:
            raise ConfigError(f"{options.where('reference')}=adapters_off needs train.lora (the reference is the "
                              "model with its adapters disabled); use reference: frozen for a full fine-tune")

    def reference_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed log-probabilities of each pair's replies (no gradient)."""
        with torch.no_grad():
            if self.reference is not None:
                ref = self.reference.model
                h = pair_hidden(ref, batch)
            else:
                ref = self.model
                with disabled(self.model):
                    h = pair_hidden(ref, batch)
            chosen, rejected, _, _ = reply_logps(h, ref.head, batch, self.chunk)
        return chosen, rejected

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        h = pair_hidden(self.model, batch)  # (B, T, D)
        chosen, rejected, n_c, n_r = reply_logps(h, self.model.head, batch, self.chunk)  # (P,) each
        ref_c, ref_r = self.reference_logps(batch)
        losses, metrics = dpo_losses(chosen, rejected, ref_c, ref_r, n_c, n_r, self.beta, self.loss,
                                     self.label_smoothing, self.rpo_alpha)
        return losses.mean(), metrics

    def units(self, batch: Batch) -> int:
        return count_pairs(batch)

    def phases(self) -> list[PhaseSpec]:
        """One phase whose micro-batches weigh by their pairs (the loss is the mean over the global batch's pairs)."""
        return [PhaseSpec("model", self, tokens=count_pairs)]

    samples = CausalLM.samples  # the tuned policy generates: one sample per prompt of the recipe


__all__ = ["DPO", "DPOOptions", "LOSSES", "REFERENCES", "dpo_losses"]
