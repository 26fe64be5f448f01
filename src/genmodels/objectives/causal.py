"""Causal language modelling: next-token cross-entropy, fused with the head and chunked.

    L = 1/N Σ_n −log softmax(h_n Wᵀ + b)_{y_n}

(see :mod:`.losses` for the fused, chunked computation, ``train.loss_chunk`` rows at a time). Batch: ``input_ids (B, T)``
and ``labels (B, T)``, the next token of each position (``ignore_index`` −100: no loss there); packed examples
(the ``examples`` data kind) add ``segment_ids (B, T)`` (0: padding) and ``position_ids (B, T)``, passed to the
model, so attention never crosses examples and positions restart in each.

A sparse MoE model (``model.n_experts > 0``) adds, in training, its router losses (:mod:`.router`):

    L = L_CE + router_aux_coef · L_aux + router_z_coef · L_z

and reports ``lm_loss`` (L_CE), ``router_aux``, ``router_z``, each expert's load, the load's spread
and the dropped share as metrics. Evaluation (``eval()``) returns L_CE alone, so validation loss and
perplexity compare with dense models. End-of-run samples: one generation per
prompt of the recipe's ``sample`` section.

Options (``train.objective: {name: causal, …}``), for a sparse MoE model:
``router_aux_loss`` (none | switch | mixtral), ``router_aux_coef``, ``router_z_coef`` (null: the default).
Requires a model with ``hidden_states()`` and ``head`` that generates (decoders, RetNet).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..nn.moe import record_routing
from ..registry import GENERATES
from .base import Batch, Metrics, Objective, ObjectiveOptions, check_number
from .losses import fused_linear_cross_entropy
from .router import AUX_LOSSES, DEFAULT_AUX_COEF, DEFAULT_Z_COEF, EXPERT_LOAD, router_losses, routing_metrics


@dataclass
class CausalOptions(ObjectiveOptions):
    name: str = "causal"
    # sparse MoE models only (model.n_experts > 0; router.py); null = the default
    router_aux_loss: str | None = None  # none | switch | mixtral (default switch)
    router_aux_coef: float | None = None  # default: switch 1e-2 (Switch's α), mixtral 1e-3 (transformers)
    router_z_coef: float | None = None  # ST-MoE z-loss coefficient (default 1e-3)

    def validate(self) -> None:
        if self.router_aux_loss is not None:
            self.check_choice("router_aux_loss", AUX_LOSSES)
        for name in ("router_aux_coef", "router_z_coef"):
            check_number(self, name, lo=0.0, allow_none=True)
        if self.router_aux_loss == "none" and self.router_aux_coef is not None:
            raise ConfigError(f"{self.where('router_aux_coef')}={self.router_aux_coef!r} means nothing with "
                              f"{self.where('router_aux_loss')}=none; leave it out or choose switch or mixtral")

    def router_losses(self) -> dict:
        """The router-loss settings with the defaults filled in."""
        kind = self.router_aux_loss or "switch"
        coef = self.router_aux_coef if self.router_aux_coef is not None else DEFAULT_AUX_COEF.get(kind, 0.0)
        z = self.router_z_coef if self.router_z_coef is not None else DEFAULT_Z_COEF
        return {"router_aux_loss": kind, "router_aux_coef": coef, "router_z_coef": z}


PACKED = ("position_ids", "segment_ids", "allowed")  # what a batch of packed examples adds (data kind
# examples); allowed (B, T, T) pairs: an objective's own mask (gist.py)


class CausalLM(Objective):
    name = "causal"
    Options = CausalOptions
    requires = (GENERATES, "method:hidden_states")
    data_kinds = ("tokens", "examples")

    def __init__(self, model, chunk: int = 1024, router_aux_loss: str = "switch", router_aux_coef: float = 1e-2,
                 router_z_coef: float = 1e-3):
        super().__init__(model)
        self.chunk = chunk
        self.router_aux_loss, self.router_aux_coef, self.router_z_coef = router_aux_loss, router_aux_coef, router_z_coef

    @classmethod
    def build(cls, model, options: CausalOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "CausalLM":
        return cls(model, loss_chunk, **options.router_losses())

    @classmethod
    def check(cls, options: CausalOptions, model_config, recipe) -> None:
        """The router options are set only for a sparse MoE model."""
        if getattr(model_config, "n_experts", 0) == 0:
            for name in ("router_aux_loss", "router_aux_coef", "router_z_coef"):
                if getattr(options, name) is not None:
                    raise ConfigError(f"{options.where(name)}={getattr(options, name)!r} means nothing for a dense "
                                      "model (model.n_experts is 0); leave it out or set model.n_experts")

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        packed = {k: batch[k] for k in PACKED if k in batch}  # examples: attention within each, positions restart
        with record_routing(self.model) as routing:  # one record per MoE layer (none: dense)
            h = self.model.hidden_states(batch["input_ids"], **packed)  # (B, T, D)
        head = self.model.head
        loss = fused_linear_cross_entropy(h, head.get_weight(), head.bias, batch["labels"], self.chunk)
        if not routing or not self.training:
            return loss, {}
        extra, metrics = router_losses(routing, self.router_aux_loss, self.router_aux_coef, self.router_z_coef)
        return loss + extra, {"lm_loss": loss.detach(), **metrics, **routing_metrics(routing)}

    def units(self, batch: Batch) -> int:
        """Tokens: every input id of a window; of packed examples, the real ones (``segment_ids > 0``)."""
        segments = batch.get("segment_ids")
        return batch["input_ids"].numel() if segments is None else int((segments > 0).sum())

    def bar_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The progress bar leaves out the per-expert loads (the spread ``moe_load_cv`` stays)."""
        return {k: v for k, v in metrics.items() if not k.startswith(EXPERT_LOAD)}

    def samples(self, model, ctx) -> list[str]:
        """One sample per prompt (``""`` where generation failed: a warning line says why; never raises)."""
        from ..generation import generate
        tokenizer, sample_cfg, eos, seed, say = ctx.tokenizer, ctx.sample, ctx.eos_id, ctx.seed, ctx.say
        out: list[str] = []
        if sample_cfg.max_new_tokens <= 0:
            return out
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
