"""Model configuration: a strict base every family's config uses, and the transformer config.

A config selects components (position, norm, MLP, bias, tying) — it never carries behaviour of
its own. It serialises to ``config.json`` beside the weights and rejects unknown keys and bad
values with a message naming the field by its dotted path (``model.blocks[2].mixer``) and what is
allowed (litgpt's "one config per family"). Families and presets live in
:mod:`genmodels.registry`; the transformer presets stay here as data with their sources.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")
GATED_MLPS = ("swiglu", "geglu", "geglu_tanh")  # the kinds an expert can be (nn/mlp.GATED)
NORM_PLACEMENTS = ("pre", "post")
# Depths beyond these are implausible (the deepest published models have ~100–200 layers; diffusers UNets
# 1–3 resnets per level), and each layer is Python modules to build — even counting parameters on the meta
# device costs O(layers) — so a typo or an edited config.json is refused at once instead of building for minutes.
MAX_LAYERS = 1000
MAX_PER_LEVEL = 100


class ConfigError(ValueError):
    """A config key is unknown or a value is not allowed; the message names the field."""


# ---- the strict base ------------------------------------------------------------------------
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("genmodels_config_path", default=None)


def _describe(kind: Any) -> str:
    """What a value of annotation ``kind`` must be, in the words of the error messages."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = _is_optional(kind)
    base = args[0] if optional and len(args) == 1 else kind
    origin = typing.get_origin(base) or base
    other = "a mapping" if _is_config(origin) else f"a {getattr(origin, '__name__', origin)}"
    word = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(origin, other)
    if optional:
        return "true, false or null" if origin is bool else f"{word} or null"
    return word


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a config class (once per class)."""
    return typing.get_type_hints(cls)


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, StrictConfig)


def _check_value(kind: Any, v: Any, path: str) -> Any:
    """``v`` checked against annotation ``kind``; nested configs and lists of them are built from
    their dicts. Raises ConfigError naming ``path``."""
    if kind is Any:
        return v
    declared = kind  # for the message: "true, false or null" when None is allowed
    if _is_optional(kind):
        if v is None:
            return None
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    origin = typing.get_origin(kind) or kind
    if _is_config(origin):
        return v if isinstance(v, origin) else origin.from_dict(v, path)
    if origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{path}={v!r} must be a list")
        (item,) = typing.get_args(kind) or (Any,)
        return [_check_value(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    ok = {bool: lambda: isinstance(v, bool),
          int: lambda: isinstance(v, int) and not isinstance(v, bool),
          float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda: isinstance(v, str),
          dict: lambda: isinstance(v, dict)}.get(origin)
    if ok is not None and not ok():
        raise ConfigError(f"{path}={v!r} must be {_describe(declared)}")
    return v


def refuse_unknown_keys(cls: type, keys: Any, path: str) -> None:
    """ConfigError naming every key of ``keys`` that is not a field of config class ``cls``, and the
    allowed ones (the one unknown-key check of every family's config, preset and converter)."""
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(keys) - known, key=str)
    if unknown:
        raise ConfigError(f"unknown {path} config key(s): {', '.join(map(str, unknown))}; "
                          f"allowed keys: {', '.join(sorted(known))}")


@dataclass
class StrictConfig:
    """Base of every family's config: a dataclass whose fields are checked against their
    annotations (bool, int, float, str, ``X | None``, ``list[...]``, ``dict``, nested configs),
    built from dicts by :meth:`from_dict` and written back by :meth:`to_dict`.

    Every error names the field by its dotted path from ``section`` (``model.blocks[2].mixer``);
    :meth:`where` gives that path for a subclass's own :meth:`validate` messages."""

    section: ClassVar[str] = "model"

    def __new__(cls, *args: Any, **kw: Any):
        """Every way in (``Config(**kw)``, a preset's overrides, :meth:`from_dict`) refuses an unknown
        key the same way: a ConfigError naming it and the allowed keys (never Python's TypeError)."""
        refuse_unknown_keys(cls, kw, _PATH.get() or cls.section)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.__dict__["_path"] = _PATH.get() or self.section  # not a field: never serialised
        hints = _hints(type(self))
        for f in fields(self):  # types first, so validate's comparisons cannot raise a bare TypeError
            setattr(self, f.name, _check_value(hints[f.name], getattr(self, f.name), self.where(f.name)))
        self.validate()

    def where(self, name: str) -> str:
        """The dotted path of field ``name`` (``model.n_heads``, ``model.blocks[2].mixer``)."""
        return f"{self.__dict__.get('_path', self.section)}.{name}"

    def validate(self) -> None:
        """Checks between fields (subclasses); raise ConfigError naming ``self.where(field)``."""

    def check_at_most(self, name: str, limit: int) -> None:
        """ConfigError naming field ``name`` when its value exceeds ``limit`` (a depth: see MAX_LAYERS)."""
        v = getattr(self, name)
        if v is not None and v > limit:
            raise ConfigError(f"{self.where(name)}={v} is implausibly deep: at most {limit} (every layer is modules to "
                              "build, so this would take minutes and gigabytes)")

    def check_choice(self, name: str, allowed: tuple) -> None:
        """ConfigError naming field ``name`` and what is allowed unless its value is one of ``allowed``."""
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{self.where(name)}={getattr(self, name)!r} is not allowed; "
                              f"choose one of {', '.join(map(str, allowed))}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None):
        """Build from a dict: unknown keys and bad values are named by their dotted path."""
        path = path or cls.section
        if not isinstance(d, dict):
            raise ConfigError(f"{path}={d!r} must be a mapping of keys to values")
        refuse_unknown_keys(cls, d, path)
        hints = _hints(cls)
        values = {k: _check_value(hints[k], v, f"{path}.{k}") for k, v in d.items()}
        token = _PATH.set(path)
        try:
            return cls(**values)
        finally:
            _PATH.reset(token)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw: Any):
        """A copy with ``kw`` changed, validated as :meth:`from_dict` would."""
        return type(self).from_dict({**self.to_dict(), **kw}, self.__dict__.get("_path"))

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_bytes
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class ModelConfig(StrictConfig):
    """Every architectural choice of a transformer (families decoder, encoder, seq2seq), as data.

    Shapes: ``d_model`` = hidden width, ``n_heads * head_dim`` = attention width (defaults to
    ``d_model``), ``n_kv_heads`` key/value heads (GQA when < n_heads, MQA when 1).

    The three transformer families share this one flat class, so that ``config.json`` keeps the
    layout every saved folder and checkpoint has; the fields only one family reads (token types,
    pooler and MLM head for encoders; decoder depth, relative buckets and the start id for
    seq2seq) are listed by each family's registry entry (``Family.unused``), which also holds the
    family's own checks (``Family.check``). A new family brings its own StrictConfig subclass.
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

        from .registry import get_family
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
    from .registry import preset as registry_preset
    return registry_preset(name, **kw)


_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _check_unused_fields(cfg: "ModelConfig", family) -> None:
    """A structural field that means nothing to this family (``Family.unused``: BERT's token types or
    pooler on a decoder, T5's relative buckets on an encoder, …) must keep its default — a value set
    there would be silently ignored. Special token ids are left alone: foreign configs carry them
    whether or not the architecture reads them."""
    for f in fields(cfg):
        if f.name in family.unused and f.name not in _SPECIAL_IDS:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(cfg, f.name)
            if value != default:
                raise ConfigError(f"model.{f.name}={value!r} means nothing for family={cfg.family!r} (it is read by "
                                  f"another family); leave it at {default!r} or choose that family")
