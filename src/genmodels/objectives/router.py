"""The router's auxiliary losses and logs, from the :class:`~genmodels.nn.moe.Routing` records of
one forward (one per MoE layer; :func:`genmodels.nn.moe.record_routing`).

Notation: E experts, k picks per token, N tokens of a layer, p_n = softmax(z_n) the router
probabilities, L the MoE layers.

Switch load balancing (Fedus et al., 2021, eq. 4–6), per layer, averaged over the layers:

    L_switch = E · Σ_i f_i · P_i,   f_i = (1/(N·k)) Σ_n Σ_{e∈S_n} 1[e = i],   P_i = (1/N) Σ_n p_{n,i}

f counts the picks before any capacity drop (Switch's top-1 argmax; here every one of the k picks,
so Σ f_i = 1) and carries no gradient; P does. A uniform router gives exactly 1 for any f.

The Hugging Face Mixtral variant (transformers' ``load_balancing_loss_func``): the counts and
probabilities pooled over all layers, and f counting all k picks per token (Σ f_i = k, so the
balanced value is k):

    L_mixtral = E · Σ_i f'_i · P'_i,   f'_i = Σ_l Σ_n Σ_{e∈S_{l,n}} 1[e = i] / (L·N),   P'_i = Σ_l Σ_n p_{l,n,i} / (L·N)

Router z-loss (ST-MoE, Zoph et al., 2022, eq. 5), per layer, averaged over the layers:

    L_z = (1/N) Σ_n (log Σ_j exp z_{n,j})²      ((ln E)² for all-zero logits)

The causal objective adds ``router_aux_coef · L_aux + router_z_coef · L_z`` to the cross-entropy
in training (:mod:`.causal`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..nn.moe import Routing

EXPERT_LOAD = "moe_load_e"  # metric moe_load_e<i>: expert i's share of the router's picks (training/metrics.py plots them)

AUX_LOSSES = ("none", "switch", "mixtral")
DEFAULT_AUX_COEF = {"switch": 1e-2, "mixtral": 1e-3}  # Switch's α; transformers' MixtralConfig default
DEFAULT_Z_COEF = 1e-3  # ST-MoE's c_z


def _counts(r: Routing) -> torch.Tensor:
    """(E,) fp32: how many of the layer's picks went to each expert (before capacity drops)."""
    e = r.logits.shape[-1]
    return torch.bincount(r.picks.reshape(-1), minlength=e).to(torch.float32)


def switch_balance_loss(routing: Sequence[Routing]) -> torch.Tensor:
    """L_switch: E · Σ_i f_i P_i per layer, the mean over layers (1 when balanced or uniform)."""
    out = []
    for r in routing:
        e = r.logits.shape[-1]
        f = _counts(r) / r.picks.numel()  # (E,) fraction of the N·k picks
        p = r.logits.softmax(dim=-1).mean(dim=0)  # (E,)
        out.append(e * (f * p).sum())
    return torch.stack(out).mean()


def mixtral_balance_loss(routing: Sequence[Routing]) -> torch.Tensor:
    """L_mixtral: transformers' ``load_balancing_loss_func`` (layers pooled; balanced value k)."""
    e = routing[0].logits.shape[-1]
    rows = sum(r.logits.shape[0] for r in routing)
    f = torch.stack([_counts(r) for r in routing]).sum(0) / rows  # (E,), Σ = k
    p = torch.stack([r.logits.softmax(dim=-1).sum(0) for r in routing]).sum(0) / rows  # (E,)
    return e * (f * p).sum()


def router_z_loss(routing: Sequence[Routing]) -> torch.Tensor:
    """L_z: mean over tokens of logsumexp(z)², the mean over layers."""
    return torch.stack([torch.logsumexp(r.logits, dim=-1).square().mean() for r in routing]).mean()


BALANCE_LOSSES = {"switch": switch_balance_loss, "mixtral": mixtral_balance_loss}


def routing_metrics(routing: Sequence[Routing]) -> dict[str, torch.Tensor]:
    """What the logs show (no gradient): each expert's share of the picks, mean over layers
    (``moe_load_e<i>``; 1/E when balanced), the load's spread (``moe_load_cv``: std/mean of the
    shares per layer, mean over layers; 0 when balanced) and the share of picks dropped by the
    capacity (``moe_dropped``)."""
    with torch.no_grad():
        loads = torch.stack([_counts(r) / r.picks.numel() for r in routing])  # (L, E)
        cv = (loads.std(dim=-1, correction=0) / loads.mean(dim=-1)).mean()
        dropped = sum(float((~r.kept).sum()) for r in routing) / sum(r.kept.numel() for r in routing)
        out = {f"{EXPERT_LOAD}{i}": v for i, v in enumerate(loads.mean(0))}
        out["moe_load_cv"] = cv
        out["moe_dropped"] = torch.tensor(dropped)
    return out


def router_losses(routing: Sequence[Routing], aux_loss: str, aux_coef: float,
                  z_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``aux_coef · L_aux + z_coef · L_z`` (L_aux per ``aux_loss``: none | switch | mixtral) and the
    two losses' values as metrics (``router_aux``, ``router_z``)."""
    if aux_loss not in AUX_LOSSES:
        raise ValueError(f"router aux loss {aux_loss!r}; choose one of {', '.join(AUX_LOSSES)}")
    z = router_z_loss(routing)
    total, metrics = z_coef * z, {"router_z": z.detach()}
    if aux_loss != "none":
        aux = BALANCE_LOSSES[aux_loss](routing)
        total = total + aux_coef * aux
        metrics["router_aux"] = aux.detach()
    return total, metrics
