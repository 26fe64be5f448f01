"""The transformer families' config (decoder, encoder, seq2seq share one flat :class:`ModelConfig`).

Built on the strict base of :mod:`genmodels.config` (unknown keys and bad values named by their
dotted path); the family rules come from the registry entry (``Family.check``, ``Family.unused``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import MAX_LAYERS, ConfigError, StrictConfig
from ..registry import families, get_family
from ..registry import preset as registry_preset

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")
GATED_MLPS = ("swiglu", "geglu", "geglu_tanh")  # the kinds an expert can be (nn/mlp.GATED)
NORM_PLACEMENTS = ("pre", "post")


@dataclass
class ModelConfig(StrictConfig):
    """Every architectural choice of a transformer (families decoder, encoder, seq2seq), as data.

    Shapes: ``d_model`` = hidden width, ``n_heads * head_dim`` = attention width (defaults to
    ``d_model``), ``n_kv_heads`` key/value heads (GQA when < n_heads, MQA when 1).

    The three transformer families share this one flat class, so that ``config.json`` keeps the
    layout every saved folder and checkpoint has; the fields only one family reads (token types,
    pooler and MLM head for encoders; decoder depth, relative buckets and the start id for
    seq2seq) are told apart by each family's registry entry, which lists the fields it reads
    (``Family.reads``; any other must keep its default) and holds the family's own checks
    (``Family.check``). A new family brings its own StrictConfig subclass.
    """

    family: str = "decoder"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None  # None → n_heads (multi-head attention)
    head_dim: int | None = None  # None → d_model // n_heads
    d_ff: int = 2048
    max_seq_len: int = 2048
    # positions
    position: str = "rope"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0
    # normalisation
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm only
    norm_placement: str = "pre"
    # feed-forward
    mlp: str = "swiglu"
    mlp_bias: bool = False
    # sparse mixture of experts (nn/moe.py; 0 experts = the dense feed-forward above)
    n_experts: int = 0  # E; layer i is MoE iff n_experts > 0 and (i + 1) % moe_every == 0
    experts_per_token: int = 2  # k
    expert_d_ff: int | None = None  # None → d_ff
    router_renormalize: bool = True  # divide the k picked probabilities by their sum (Mixtral)
    capacity_factor: float | None = None  # None: dropless; else training capacity ⌈cf·N·k/E⌉
    eval_capacity_factor: float | None = None  # the same at evaluation (None: dropless)
    router_jitter: float = 0.0  # router input × U(1−ε, 1+ε) in training (Switch)
    moe_every: int = 1
    # attention
    attn_bias: bool = False  # bias on q/k/v projections
    attn_out_bias: bool | None = None  # None → same as attn_bias
    attn_scale: float | None = None  # None → 1/sqrt(head_dim); T5 uses 1.0
    sliding_window: int | None = None
    # relative position buckets (T5)
    rel_buckets: int = 32
    rel_max_distance: int = 128
    # embeddings / head
    tie_embeddings: bool = False
    type_vocab_size: int = 0  # BERT token types; 0 = none
    embedding_norm: bool = False  # LayerNorm after the embedding sum (BERT)
    final_norm: bool = True  # norm before the head (pre-norm models)
    output_scale: float | None = None  # multiply final hidden by this before a tied head (T5)
    embed_scale: float = 1.0  # multiply token embeddings (original Transformer: sqrt(d_model))
    pooler: bool = False  # encoder: tanh(dense(h[:, 0])) sentence output (BertModel)
    mlm_head: bool = True  # encoder: masked-LM head (dense, act, norm, tied unembedding) (BertForMaskedLM)
    n_decoder_layers: int | None = None  # seq2seq: decoder depth (None → n_layers)
    dropout: float = 0.0
    # special tokens
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. source arch)

    # ---- derived -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def out_bias(self) -> bool:
        return self.attn_bias if self.attn_out_bias is None else self.attn_out_bias

    @property
    def expert_width(self) -> int:
        """Hidden width F of each expert (``expert_d_ff``, else ``d_ff``)."""
        return self.expert_d_ff or self.d_ff

    def is_moe_layer(self, layer_index: int) -> bool:
        """Whether layer ``layer_index`` (0-based) has a sparse MoE feed-forward."""
        return self.n_experts > 0 and (layer_index + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"model.{name}={v!r} is not allowed; choose one of {', '.join(allowed)}")

        def positive(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"model.{name}={v!r} must be a positive integer")

        family = get_family(self.family)  # unknown: a ConfigError naming the known ones
        choice("position", POSITIONS)
        choice("norm", NORMS)
        choice("mlp", MLPS)
        choice("norm_placement", NORM_PLACEMENTS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                     "rel_buckets", "rel_max_distance"):
            positive(name)
        for name in ("n_kv_heads", "head_dim", "sliding_window", "n_decoder_layers"):
            positive(name, allow_none=True)
        for name in ("n_layers", "n_decoder_layers"):
            self.check_at_most(name, MAX_LAYERS)
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_kv_heads={self.kv_heads} must divide model.n_heads={self.n_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads} "
                              "(or set model.head_dim)")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta} must be > 0")
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ConfigError(f"model.rotary_fraction={self.rotary_fraction} must be in (0, 1]")
        if self.position == "rope" and int(self.dim_head * self.rotary_fraction) % 2:
            raise ConfigError("model.rotary_fraction * head_dim must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.norm_eps <= 0:
            raise ConfigError(f"model.norm_eps={self.norm_eps} must be > 0")
        if self.type_vocab_size < 0:
            raise ConfigError("model.type_vocab_size must be >= 0")
        if self.embed_scale <= 0:
            raise ConfigError(f"model.embed_scale={self.embed_scale} must be > 0")
        family.check(self)  # what only this family allows (positions, embedding scale)
        _check_unused_fields(self, family)
        self._validate_moe()

    def _validate_moe(self) -> None:
        """The sparse-MoE fields (checked even when ``n_experts`` is 0, so a typo is caught early)."""
        if self.n_experts < 0:
            raise ConfigError(f"model.n_experts={self.n_experts} must be >= 0 (0 = dense feed-forward)")
        for name in ("experts_per_token", "moe_every", "expert_d_ff"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("capacity_factor", "eval_capacity_factor"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"model.{name}={v!r} must be > 0 (or null: dropless)")
        if not 0.0 <= self.router_jitter < 1.0:
            raise ConfigError(f"model.router_jitter={self.router_jitter} must be in [0, 1)")
        if self.n_experts == 0:
            return
        if self.experts_per_token > self.n_experts:
            raise ConfigError(f"model.experts_per_token={self.experts_per_token} must be <= "
                              f"model.n_experts={self.n_experts}")
        if self.experts_per_token == 1 and self.router_renormalize:
            raise ConfigError("model.router_renormalize=true with model.experts_per_token=1: the one picked weight "
                              "would always be 1, so the router would get no gradient; set router_renormalize: "
                              "false (Switch) or experts_per_token >= 2")
        if self.mlp not in GATED_MLPS:
            raise ConfigError(f"model.mlp={self.mlp!r}: experts (model.n_experts > 0) are gated MLPs; choose one "
                              f"of {', '.join(GATED_MLPS)}")
        if self.mlp_bias:
            raise ConfigError("model.mlp_bias=true: experts (model.n_experts > 0) have no biases; set it false")
        if self.moe_every > self.n_layers:
            raise ConfigError(f"model.moe_every={self.moe_every} exceeds model.n_layers={self.n_layers}: no layer "
                              "would be MoE")

    # ---- serialisation (StrictConfig: from_dict, to_dict, save, load, replace) -----------
    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None) -> "ModelConfig":
        return super().from_dict(d, path)


def preset(name: str, **kw: Any) -> ModelConfig:
    """The config of preset ``name`` of any registered family (:func:`genmodels.registry.preset`)."""
    return registry_preset(name, **kw)


_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _check_unused_fields(cfg: "ModelConfig", family) -> None:
    """A structural field that means nothing to this family (not in ``Family.reads``: BERT's token types or
    pooler on a decoder, T5's relative buckets on an encoder, …) must keep its default — a value set
    there would be silently ignored. Special token ids are left alone: foreign configs carry them
    whether or not the architecture reads them."""
    for f in fields(cfg):
        if f.name in family.unused and f.name not in _SPECIAL_IDS:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(cfg, f.name)
            if value != default:
                readers = [n for n, fam in families().items() if fam.config_class is type(cfg) and fam.reads
                           and f.name in fam.reads]
                why = f"it is read by family {', '.join(map(repr, readers))}" if readers else "no family reads it"
                raise ConfigError(f"model.{f.name}={value!r} means nothing for family={cfg.family!r} ({why}); "
                                  f"leave it at {default!r}" + (" or choose that family" if readers else ""))
