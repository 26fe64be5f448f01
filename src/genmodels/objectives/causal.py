"""Causal language modelling: next-token cross-entropy, fused with the head and chunked.

    L = 1/N Σ_n −log softmax(h_n Wᵀ + b)_{y_n}

(see :mod:`genmodels.training.loss` for the fused, chunked computation). Batch: ``input_ids (B, T)``
and ``labels (B, T)``, the next token of each position.

A sparse MoE model (``model.n_experts > 0``) adds, in training, its router losses (:mod:`.router`):

    L = L_CE + router_aux_coef · L_aux + router_z_coef · L_z

and reports ``lm_loss`` (L_CE), ``router_aux``, ``router_z``, each expert's load, the load's spread
and the dropped share as metrics. Evaluation (``eval()``) returns L_CE alone, so validation loss and
perplexity compare with dense models. End-of-run samples: one generation per
prompt of the recipe's ``sample`` section.
"""
from __future__ import annotations

import torch

from ..nn.moe import record_routing
from ..training.loss import fused_linear_cross_entropy
from ..training.metrics import EXPERT_LOAD
from .base import Batch, Metrics, Objective
from .router import router_losses, routing_metrics


class CausalLM(Objective):
    name = "causal"

    def __init__(self, model, chunk: int = 1024, router_aux_loss: str = "switch", router_aux_coef: float = 1e-2,
                 router_z_coef: float = 1e-3):
        super().__init__(model)
        self.chunk = chunk
        self.router_aux_loss, self.router_aux_coef, self.router_z_coef = router_aux_loss, router_aux_coef, router_z_coef

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        with record_routing(self.model) as routing:  # one record per MoE layer (none: dense)
            h = self.model.hidden_states(batch["input_ids"])  # (B, T, D)
        head = self.model.head
        loss = fused_linear_cross_entropy(h, head.get_weight(), head.bias, batch["labels"], self.chunk)
        if not routing or not self.training:
            return loss, {}
        extra, metrics = router_losses(routing, self.router_aux_loss, self.router_aux_coef, self.router_z_coef)
        return loss + extra, {"lm_loss": loss.detach(), **metrics, **routing_metrics(routing)}

    def bar_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The progress bar leaves out the per-expert loads (the spread ``moe_load_cv`` stays)."""
        return {k: v for k, v in metrics.items() if not k.startswith(EXPERT_LOAD)}

    def samples(self, model, tokenizer, sample_cfg, eos, seed, say) -> list[str]:
        """One sample per prompt (``""`` where generation failed: a warning line says why; never raises)."""
        from .. import generate
        out = []
        model.eval()
        context = model.config.max_seq_len
        for i, prompt in enumerate(sample_cfg.prompts):
            try:
                ids = tokenizer.encode(prompt, add_special_tokens=False).ids or ([eos] if eos is not None else [0])
                kept, max_new = fit_prompt(ids, sample_cfg.max_new_tokens, context)
                if len(kept) < len(ids):
                    say(f"note: sample.prompts[{i}] is {len(ids)} tokens, the model's context {context}: "
                        f"kept its last {len(kept)}")
                y = generate(model, torch.tensor([kept]), max_new_tokens=max_new, temperature=sample_cfg.temperature,
                             top_k=sample_cfg.top_k, top_p=sample_cfg.top_p, seed=seed + i, eos_token_id=eos)
                out.append(tokenizer.decode(y[0].tolist(), skip_special_tokens=True))
            except Exception as e:  # a sample is a courtesy: it never costs the run its summary
                say(f"warning: sample.prompts[{i}] not generated ({type(e).__name__}: {' '.join(str(e).split())})")
                out.append("")
        return out


def fit_prompt(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """``(ids, max_new)`` within the model's ``context``: a prompt that leaves no room keeps its last
    tokens, leaving room for ``max_new_tokens`` (at most half the context)."""
    if len(ids) >= context:
        ids = ids[-(context - min(max_new_tokens, context // 2)):]
    return ids, min(max_new_tokens, context - len(ids))
