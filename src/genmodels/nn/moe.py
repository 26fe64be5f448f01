"""Sparse mixture of experts: a router sends each token to k of E expert feed-forwards.

Shazeer et al., 2017 ("Outrageously Large Neural Networks"); Switch Transformer (Fedus et al., 2021);
ST-MoE (Zoph et al., 2022); Mixtral (Jiang et al., 2024). For a token x ∈ R^D:

    z = W_r x ∈ R^E                  router logits (fp32), W_r (E, D), no bias
    p = softmax(z)                   router probabilities (fp32)
    S = TopK(p, k)                   the picked experts, best first
    g_e = p_e / Σ_{j∈S} p_j          renormalised (Mixtral; ``renormalize``), else g_e = p_e (Switch)
    y = Σ_{e∈S, kept} g_e · E_e(x),  E_e(x) = W_down,e (act(W_gate,e x) ⊙ W_up,e x)

Notation → names: W_r ``router.weight (E, D)``; W_gate,e | W_up,e ``experts.gate_up_proj[e] (2F, D)``
(rows [0, F) gate, [F, 2F) up); W_down,e ``experts.down_proj[e] (D, F)``; k ``k``.

Jitter (Switch §2.4): in training the router's input is multiplied by noise ~ U(1−ε, 1+ε) (the experts
see the clean x). Capacity (Switch §2.2; ST-MoE uses 1.25 in training, 2.0 at evaluation): with a
capacity factor c each expert takes at most C = ⌈c · N · k / E⌉ of the N·k (token, expert) pairs of
the batch; ``eval_capacity_factor`` applies in ``eval()``; ``None`` is dropless. A dropped pair adds
nothing (the token keeps its residual). **Which pairs drop:** each expert serves its pairs in priority
order — every token's first choice in token order, then every second choice in token order, … (the
Switch/GShard convention: position order within each expert, first choices before second) — and
drops those past C. The renormalised weights of the kept pairs are not renormalised again. With a
capacity, a token's output depends on the other tokens of its forward (the group is the forward's
B·T tokens), so cached decoding can differ from one full forward; the default
``eval_capacity_factor=None`` keeps evaluation and generation dropless.

Dispatch (MegaBlocks-style, dropless or not): the kept (token, expert) pairs are sorted by expert
(a stable sort, so the priority order holds inside each expert), the tokens gathered once, one matrix
product pair per contiguous expert slice, each row scaled by its gate weight and summed back with
``index_add_``. It computes only the k active experts per token (the dense "every expert, masked"
form computes all E; tests/nn/test_moe.py keeps it as the reference).

The routing decisions leave the model as data: the router returns a :class:`Routing` record and
:func:`record_routing` collects the records of one forward (one per MoE layer, in forward order) for
the losses and logs (objectives/router.py); generation never asks for them.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import ACTIVATIONS


class Routing(NamedTuple):
    """One MoE layer's routing of N tokens (flattened batch × time)."""

    logits: torch.Tensor  # (N, E) router logits z, fp32 (fp64 for an fp64 model)
    picks: torch.Tensor  # (N, k) int64 expert indices, best first
    weights: torch.Tensor  # (N, k) fp32 gate weights g of the picks
    kept: torch.Tensor  # (N, k) bool: the pair was dispatched (False: dropped by capacity)


def expert_capacity(factor: float, n_tokens: int, k: int, n_experts: int) -> int:
    """C = ⌈factor · N · k / E⌉: the most (token, expert) pairs one expert takes."""
    return math.ceil(factor * n_tokens * k / n_experts)


def pair_order(picks: torch.Tensor) -> torch.Tensor:
    """The flat pair index p = r·N + n (rank r, token n) of every pair sorted by expert, priority order
    (rank, then token) kept inside each expert by the stable sort. ``picks (N, k)`` → ``(N·k,)``."""
    return torch.argsort(picks.t().reshape(-1), stable=True)


class TopKRouter(nn.Module):
    """z = W_r x in fp32, p = softmax(z), the top-k picks, their (renormalised) weights and which pairs
    the capacity keeps. ``x (N, D)`` → :class:`Routing`."""

    def __init__(self, d_model: int, n_experts: int, k: int, renormalize: bool = True, jitter: float = 0.0,
                 capacity_factor: float | None = None, eval_capacity_factor: float | None = None):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"experts_per_token={k} must be in [1, n_experts={n_experts}]")
        if k == 1 and renormalize:
            raise ValueError("router_renormalize with experts_per_token=1 gives the router no gradient")
        self.n_experts, self.k, self.renormalize, self.jitter = n_experts, k, renormalize, jitter
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def capacity(self, n_tokens: int) -> int | None:
        """C for a batch of ``n_tokens`` tokens in the current mode (``None``: dropless)."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return None if factor is None else expert_capacity(factor, n_tokens, self.k, self.n_experts)

    def forward(self, x: torch.Tensor) -> Routing:
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least (bf16/fp16 ties flip picks)
        logits = F.linear(x.to(dtype), self.weight.to(dtype))  # (N, E)
        weights, picks = logits.softmax(dim=-1).topk(self.k, dim=-1)  # (N, k) each
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(logits, picks, weights, self._kept(picks))

    def _kept(self, picks: torch.Tensor) -> torch.Tensor:
        """(N, k) bool: pairs within their expert's capacity, in priority order (see the module doc)."""
        n, k = picks.shape
        cap = self.capacity(n)
        if cap is None or cap >= n * k:
            return torch.ones_like(picks, dtype=torch.bool)
        order = pair_order(picks)  # (N·k,)
        counts = torch.bincount(picks.reshape(-1), minlength=self.n_experts)  # (E,)
        starts = torch.cumsum(counts, 0) - counts  # first sorted slot of each expert
        slot = torch.arange(n * k, device=picks.device) - starts[picks.t().reshape(-1)[order]]
        kept = torch.empty(n * k, dtype=torch.bool, device=picks.device)
        kept[order] = slot < cap  # back to flat pair order
        return kept.view(k, n).t()


class StackedExperts(nn.Module):
    """E gated MLPs stored as stacked tensors, run on their tokens only (sorted dispatch).

    ``gate_up_proj (E, 2F, D)``: rows [0, F) gate, [F, 2F) up; ``down_proj (E, D, F)``."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, activation: str = "silu"):
        super().__init__()
        self.d_ff, self.activation, self.act = d_ff, activation, ACTIVATIONS[activation]
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.normal_(p, std=0.02)

    @property
    def n_experts(self) -> int:
        return self.gate_up_proj.shape[0]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """E_e(x) = W_down,e (act(W_gate,e x) ⊙ W_up,e x); ``x (M, D)`` → ``(M, D)``."""
        return self._ffn(x, self.gate_up_proj[e], self.down_proj[e])

    def _ffn(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, gate_up).split(self.d_ff, dim=-1)  # (M, F) each
        return F.linear(self.act(gate) * up, down)

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """y_n = Σ_{kept (n, e)} g_{n,e} E_e(x_n); ``x (N, D)`` → ``(N, D)``."""
        n = x.shape[0]
        flat_expert = routing.picks.t().reshape(-1)  # (N·k,) pair p = r·N + n
        order = pair_order(routing.picks)
        kept = routing.kept.t().reshape(-1)[order]
        if not bool(kept.all()):
            order = order[kept]  # still sorted by expert, priority order inside
        counts = torch.bincount(flat_expert[order], minlength=self.n_experts).tolist()  # (E,)
        token = order % n  # (M,) the token of each sorted pair
        # split / unbind (not slicing): their backward is one cat / stack, not a zero-filled copy per expert
        slices = x[token].split(counts)  # E × (c_e, D), gathered once
        gate_up, down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        outs = [self._ffn(xe, gate_up[e], down[e]) for e, xe in enumerate(slices) if counts[e]]
        if not outs:
            return torch.zeros_like(x)
        gate = routing.weights.t().reshape(-1)[order].to(x.dtype)  # (M,)
        ys = torch.cat(outs) * gate[:, None]  # (M, D)
        return torch.zeros_like(x).index_add_(0, token, ys)


class SparseMoE(nn.Module):
    """The sparse MoE feed-forward: ``router`` (:class:`TopKRouter`) then ``experts``
    (:class:`StackedExperts`). ``x (…, D)`` → ``(…, D)``; the routing record goes to whoever
    :func:`record_routing` listens."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int = 2, activation: str = "silu",
                 renormalize: bool = True, jitter: float = 0.0, capacity_factor: float | None = None,
                 eval_capacity_factor: float | None = None):
        super().__init__()
        self.router = TopKRouter(d_model, n_experts, k, renormalize, jitter, capacity_factor, eval_capacity_factor)
        self.experts = StackedExperts(d_model, d_ff, n_experts, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])  # (N, D)
        return self.experts(h, self.router(h)).view(x.shape)

    def output_projection(self) -> nn.Parameter:
        """What the layer writes into the residual stream through: the stacked down projections."""
        return self.experts.down_proj


@contextlib.contextmanager
def record_routing(model: nn.Module) -> Iterator[list[Routing]]:
    """Collect the :class:`Routing` of every router of ``model`` during the forwards run inside the
    ``with`` block, in call order (one per MoE layer per forward); nothing is kept after it ends::

        with record_routing(model) as routing:
            h = model.hidden_states(ids)
        aux = switch_balance_loss(routing)
    """
    records: list[Routing] = []
    handles = [m.register_forward_hook(lambda _m, _inp, out: records.append(out))
               for m in model.modules() if isinstance(m, TopKRouter)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()
