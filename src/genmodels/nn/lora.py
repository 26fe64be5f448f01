"""LoRA (Hu et al., 2021): a frozen linear plus a trainable low-rank update, one per HF projection.

    h = W₀x + b + s · B A dropout(x),    A: (r, in),  B: (out, r),  s = α/r  (rsLoRA: s = α/√r)

Our attention fuses q|k|v into one ``qkv`` linear and the gated MLP fuses gate|up; PEFT adapts
Llama's separate ``q_proj``, ``v_proj`` … So a :class:`LoRALinear` holds one adapter per *slice* of
its output rows (``{"q": (0, H·d), "v": (…)}``, the rows the linear factory and
``model.projections()`` name): slice q of our ``qkv`` with its own (A_q, B_q) computes exactly what
PEFT's adapter on ``q_proj`` computes, so adapters move between us and PEFT by renaming only
(:mod:`genmodels.interop.peft`).

=================  ============================  ================================================
paper / PEFT       here                          shape / value
=================  ============================  ================================================
W₀, b              ``weight``, ``bias``          the base linear's own parameters (frozen)
A (``lora_A``)     ``lora_A[slice]``             (r, in): PEFT's init, below
B (``lora_B``)     ``lora_B[slice]``             (rows, r): zeros at init, so h = W₀x + b
α/r, α/√r          ``scaling[slice]``            ``rslora`` picks the second
=================  ============================  ================================================

Adapters are parts passed in: :func:`lora_factory` is a linear factory (:mod:`genmodels.nn.linear`)
that wraps the roles asked for, and :func:`adapt` wraps one built linear (``genmodels.lora.apply``
calls it on a loaded model's projections: the same wrapper, after the fact). A
:class:`LoRALinear` *is* an ``nn.Linear`` holding the base's parameters (no copy; state-dict keys
``qkv.weight`` unchanged, adapters at ``qkv.lora_A.q``), but not a plain one: kernels that read a
linear's weight (the native decode step) refuse it until it is merged (:attr:`reads_as_linear`).

PEFT's init ("peft"), reproduced draw for draw so the same seed gives PEFT's A: PEFT builds
``lora_A = nn.Linear(in, r)`` and ``lora_B = nn.Linear(r, out)`` (each draws its default
kaiming-uniform init), then ``reset_lora_parameters`` draws ``kaiming_uniform_(A, a=√5)`` again and
zeros B. "gaussian": the last draw is ``normal_(A, std=1/r)`` instead.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import trainable_tokens as _tokens
from .linear import LinearFactory, Slices, plain_linear

# The projections an adapter may target, by HF role name; "all-linear": every one but the head (PEFT's
# meaning). g: RetNet's swish gate. pooler / mlm_dense (BERT's heads' denses) only when named.
ALL_LINEAR = ("q", "k", "v", "o", "gate", "up", "down", "g")
ROLES = ALL_LINEAR + ("pooler", "mlm_dense")
INITS = ("peft", "gaussian")


@dataclass(frozen=True)
class LoRASpec:
    """What to adapt and how: ``targets`` (roles, see :data:`ROLES`), rank ``r``, ``alpha``,
    ``dropout`` (on the adapter's input), ``rslora`` (s = α/√r), ``init`` ("peft" | "gaussian").
    Defaults are PEFT's (r=8, α=8, dropout 0, targets q, v as for Llama)."""

    targets: tuple[str, ...] = ("q", "v")
    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    rslora: bool = False
    init: str = "peft"

    @classmethod
    def make(cls, targets: str | tuple[str, ...] | list[str] = "q,v", r: int = 8, alpha: float = 8,
             dropout: float = 0.0, rslora: bool = False, init: str = "peft",
             where: Callable[[str], str] = "lora {}".format) -> "LoRASpec":
        """A checked spec; ``targets``: "q,v", ["q", "v"] or "all-linear". Refusals are one line
        naming the field as ``where(name)`` says (a recipe section: ``train.lora.r``)."""
        names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        if names == ["all-linear"]:
            names = list(ALL_LINEAR)
        bad = [t for t in names if t not in ROLES]
        if bad or not names:
            raise ValueError(f"{where('targets')}={targets!r}: unknown role {bad[0] if bad else '(none)'!r}; "
                             f"have {', '.join(ROLES)} or all-linear (the head is never adapted)")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"{where('r')}={r!r} must be a positive integer")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"{where('alpha')}={alpha!r} must be a positive number")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"{where('dropout')}={dropout!r} must be in [0, 1)")
        if init not in INITS:
            raise ValueError(f"{where('init')}={init!r} is not known; have {', '.join(INITS)}")
        return cls(tuple(dict.fromkeys(names)), r, alpha, float(dropout), bool(rslora), init)

    @property
    def scaling(self) -> float:
        """s = α/r, or α/√r with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def rows(self, role: str, slices: Slices | None, out_features: int) -> Slices:
        """The targeted slices of a linear the factory builds: its named ``slices`` (qkv: q/k/v;
        kv: k/v; gate_up: gate/up), else its ``role`` covering every row."""
        parts = slices if slices else {role: (0, out_features)}
        return {name: rows for name, rows in parts.items() if name in self.targets}


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b``, then per adapted slice ``y[…, a:b] += s · B (A dropout(x))`` — ``(…, in) -> (…, out)``.

    Built around an existing linear's parameters (:func:`adapt`); ``merged``: the updates are in
    ``weight`` (forward is the plain linear); ``enabled`` False (:func:`disabled`): the base alone."""

    def __init__(self, base: nn.Linear, rows: Slices, spec: LoRASpec):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the base's own parameters, no new draw
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.spec, self.rows = spec, dict(rows)
        self.scaling = {name: spec.scaling for name in rows}
        w = base.weight
        like = dict(dtype=w.dtype, device=w.device)  # pairs, not a dict: ParameterDict would sort a dict's keys
        self.lora_A = nn.ParameterDict([(n, nn.Parameter(torch.zeros(spec.r, w.shape[1], **like))) for n in rows])
        self.lora_B = nn.ParameterDict([(n, nn.Parameter(torch.zeros(b - a, spec.r, **like)))
                                        for n, (a, b) in rows.items()])
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.merged, self.enabled = False, True
        self.train(base.training)  # a model in eval mode stays so: no dropout sneaking in after apply()

    @property
    def reads_as_linear(self) -> bool:
        """True when the output is exactly ``F.linear(x, weight, bias)`` (merged): kernels may then
        read ``weight`` in place (:func:`genmodels.nn.linear.is_plain`)."""
        return self.merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (…, out)
        if self.merged or not self.enabled:
            return y
        for name, (a, b) in self.rows.items():  # PEFT's order: B(A(dropout(x))) · s, added to the base's
            delta = F.linear(F.linear(self.dropout(x), self.lora_A[name]), self.lora_B[name]) * self.scaling[name]
            if (a, b) == (0, self.out_features):
                y = y + delta
            else:
                y[..., a:b] += delta
        return y

    def delta_weight(self, name: str) -> torch.Tensor:
        """``s · B A``: the ``(rows, in)`` update slice ``name`` adds to the weight (PEFT's get_delta_weight)."""
        return (self.lora_B[name] @ self.lora_A[name]) * self.scaling[name]

    @torch.no_grad()
    def merge(self) -> None:
        """W[a:b] += s · B A for every slice (no-op when merged)."""
        if not self.merged:
            for name, (a, b) in self.rows.items():
                self.weight[a:b] += self.delta_weight(name)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W[a:b] −= s · B A for every slice (no-op when not merged)."""
        if self.merged:
            for name, (a, b) in self.rows.items():
                self.weight[a:b] -= self.delta_weight(name)
            self.merged = False

    @torch.no_grad()
    def reset_adapters(self) -> None:
        """PEFT's init of every slice, in slice order (see the module: the same draws as PEFT)."""
        for name, (a, b) in self.rows.items():
            A, B = self.lora_A[name], self.lora_B[name]
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # PEFT's nn.Linear(in, r) default init
            nn.init.kaiming_uniform_(torch.empty_like(B), a=math.sqrt(5))  # nn.Linear(r, out)'s, overwritten below
            if self.spec.init == "gaussian":
                nn.init.normal_(A, std=1 / self.spec.r)
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{super().extra_repr()}, lora={','.join(self.rows)}, r={s.r}, alpha={s.alpha}"
                f"{', rslora' if s.rslora else ''}{', merged' if self.merged else ''}")


def adapt(linear: nn.Module, rows: Slices, spec: LoRASpec) -> LoRALinear:
    """``linear`` (a plain ``nn.Linear``) with adapters on ``rows``, sharing its parameters; A and
    B are zeros until :meth:`LoRALinear.reset_adapters` or a load."""
    if type(linear) is not nn.Linear:
        raise ValueError(f"LoRA wraps a plain nn.Linear, got a {type(linear).__name__}")
    return LoRALinear(linear, rows, spec)


def lora_factory(spec: LoRASpec, base: LinearFactory = plain_linear) -> LinearFactory:
    """A linear factory building ``base``'s linears with adapters on ``spec.targets``'s slices (the
    head is never adapted). The model's ``init_weights`` then draws A and B too: call
    :func:`reset` (or load adapters) after building, as ``genmodels.lora.build`` does."""

    def build(in_features: int, out_features: int, bias: bool = True, *, role: str = "",
              layer: int | None = None, slices: Slices | None = None) -> nn.Module:
        lin = base(in_features, out_features, bias, role=role, layer=layer, slices=slices)
        rows = spec.rows(role, slices, out_features) if role != "head" else {}
        return adapt(lin, rows, spec) if rows else lin

    return build


# ---- whole-model operations ---------------------------------------------------------------------
def adapted(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """``(path, module)`` of every :class:`LoRALinear` of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _adapted_or_refuse(model: nn.Module, what: str) -> list[LoRALinear]:
    mods = [m for _, m in adapted(model)]
    if not mods:
        raise ValueError(f"{what}: {type(model).__name__} has no LoRA adapters (genmodels.lora.apply adds them)")
    return mods


def refuse_adapters(model: nn.Module, what: str) -> None:
    """A whole-model writer's check: a model carrying adapters is not its family's plain model (its
    state dict holds ``lora_A``/``lora_B`` keys no loader reads). One-line ``ValueError``."""
    mods = adapted(model)
    if mods:
        more = f" and {len(mods) - 1} more" if len(mods) > 1 else ""
        raise ValueError(f"{what}: {mods[0][0]}{more} carry LoRA adapters; genmodels.lora.save(model, DIR) writes "
                         "the adapters, genmodels.lora.unload(model) merges them into plain linears to save the whole model")


def reset(model: nn.Module) -> None:
    """PEFT's init on every adapter, in module order (PEFT's order: the same seed gives PEFT's A)."""
    for m in _adapted_or_refuse(model, "lora.reset"):
        m.reset_adapters()


def is_adapter_param(name: str) -> bool:
    """A parameter name (a state-dict key) that belongs to an adapter: ``….lora_A.q`` / ``….lora_B.q``, or the
    trainable token rows ``embed.trainable_tokens.weight`` (:mod:`genmodels.nn.trainable_tokens`)."""
    return any(f".{part}." in f".{name}" for part in ("lora_A", "lora_B", "trainable_tokens"))


def freeze(model: nn.Module) -> None:
    """The base frozen (``requires_grad`` False), every adapter trainable."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name))


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every adapter parameter (what an optimizer of a LoRA run steps)."""
    return ((n, p) for n, p in model.named_parameters() if is_adapter_param(n))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone, by our keys (``blocks.0.attn.qkv.lora_A.q`` …): a LoRA run's checkpoint."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_param(k)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Fill the adapters from :func:`adapter_state_dict`'s keys; every adapter key must be there with
    its shape and nothing else (one-line ``ValueError`` naming the first key that is not)."""
    own = adapter_state_dict(model)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"adapter state: {'missing ' + missing[0] if missing else 'unexpected ' + extra[0]}"
                         f" ({len(missing)} missing, {len(extra)} unexpected of {len(own)} adapter tensors)")
    for k, t in state.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise ValueError(f"adapter state: {k} has shape {tuple(t.shape)}, the model's is {tuple(own[k].shape)}")
    with torch.no_grad():
        merged = [m for _, m in adapted(model) if m.merged]
        rows_merged = any(e.trainable_tokens.merged for _, e in _tokens.token_tables(model))
        for m in merged:
            m.unmerge()
        _tokens.unmerge(model)
        params = dict(model.named_parameters())
        for k, t in state.items():
            params[k].copy_(t)
        for m in merged:
            m.merge()
        if rows_merged:
            _tokens.merge(model)


def merge(model: nn.Module) -> nn.Module:
    """Add every adapter's s·BA into its weight (forward then reads the plain linears; the native
    decode step may run). Refused inside :func:`disabled`."""
    mods = _adapted_or_refuse(model, "lora.merge")
    if not all(m.enabled for m in mods):
        raise ValueError("lora.merge: the adapters are disabled here (inside lora.disabled(model)); merge outside it")
    for m in mods:
        m.merge()
    _tokens.merge(model)  # the trainable token rows written into their table
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter's s·BA from its weight again (the base, to rounding); the trainable token
    rows' old values back in their table (exactly)."""
    for m in _adapted_or_refuse(model, "lora.unmerge"):
        m.unmerge()
    _tokens.unmerge(model)
    return model


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with disabled(model):`` the base model, adapters off (no copy; e.g. DPO's reference pass).
    Refused while merged (the base weights are not held apart then: unmerge first)."""
    mods = _adapted_or_refuse(model, "lora.disabled")
    if any(m.merged for m in mods):
        raise ValueError("lora.disabled: the adapters are merged into the weights; lora.unmerge(model) first")
    mods = mods + [e.trainable_tokens for _, e in _tokens.token_tables(model)]  # the rows off too: the base table
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(mods, before):
            m.enabled = was
