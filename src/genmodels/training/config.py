"""Training configuration: a YAML recipe validated into dataclasses before any work starts.

    model:  {preset: llama-tiny, <any field of the family's config as an override>, init_from: PATH}
    data:   the data kind's section (tokens: {corpus, path, …, vocab_size, tokenizer, seq_len};
            images: ImageDataConfig; ``kind: examples`` picks another kind the objective reads)
    train:  {batch_size, grad_accum, lr, min_lr, warmup_steps, max_steps, max_minutes, ...,
             objective: NAME | {name: NAME, <that objective's options>}}
    sample: the data kind's sample section (prompts, max_new_tokens, … ; images: n, steps, scheduler, …)
    run_dir: runs/llama-tiny

The objective (``train.objective``; ``auto``: the model family's default) owns its options
(:mod:`genmodels.objectives`, each a StrictConfig) and names its data kind (:mod:`genmodels.data.kinds`),
whose classes read the ``data:`` and ``sample:`` sections. An option written at ``train:`` level (every
``config.yaml`` written before the options moved, e.g. ``train.mlm_prob``) still loads: it moves into the
objective's options (over the same option under ``train.objective``: ``--set train.eval_samples=10`` works on
any recipe); one that only another objective reads is refused, naming it, unless it holds that objective's
default (old run folders list every field).

``train.batch_size`` is the *global* batch (sequences per optimizer step, over all processes
and accumulation micro-steps), so one recipe means the same optimisation on 1 or N processes.
Unknown keys and bad values raise :class:`~genmodels.config.ConfigError` naming the key and
what is allowed. ``--set section.key=value`` overrides are parsed with ``yaml.safe_load``
(:mod:`.recipe` reads and writes the YAML).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError
from ..data.kinds import get_data_kind
from ..objectives import OBJECTIVES, ObjectiveOptions, extra_tokens, objective_for
from ..registry import DEFAULT_FAMILY, config_from_dict, preset, presets
from ..values import allowed as _allowed, integer as _integer, number as _number
from ..values import reject_unknown as _reject_unknown, seed as _seed, string as _string
from . import image_run  # noqa: F401  (registers the images data kind)
from .adapters import check_recipe as check_lora, lora_section
from .data import DataConfig, SampleConfig  # (registers the tokens and examples data kinds)
from .init_from import check_source, source_model_section
from .memory import CHECKPOINTING

DISTRIBUTED = ("none", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """The ``train:`` section: what every run reads. ``objective`` is the objective's options once loaded."""

    batch_size: int = 8  # global sequences per optimizer step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    max_steps: int = 200
    max_minutes: float | None = None  # wall-clock budget; stops early (and saves) when reached
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    seed: int = 0
    compile: bool = False
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 100
    keep_last: int = 2
    log_every: int = 1
    distributed: str = "none"  # none | ddp | fsdp (run under torchrun for ddp/fsdp)
    mfu_peak_tflops: float | None = None  # None: measure a short fp32 matmul at start
    loss_chunk: int = 256  # rows per chunk of the fused head + cross-entropy (token objectives)
    activation_checkpointing: str = "none"  # none | selective (element-wise ops) | ffn (feed-forward branch) | full
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    # auto = the model family's default objective; or {name: NAME, <its options>}
    objective: Any = "auto"
    lora: Any = None  # LoRA adapters on a frozen model.init_from: {targets, r, alpha, dropout, rslora} (adapters.py)


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "llama-tiny"})
    data: Any = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: Any = field(default_factory=SampleConfig)
    run_dir: str = "runs/default"

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping with keys {_allowed(cls)}; got {type(d).__name__}")
        _reject_unknown(d, cls, "")
        m = d.get("model", {"preset": "llama-tiny"}) or {}
        if not isinstance(m, dict):
            raise ConfigError("model must be a mapping: {preset: NAME, <ModelConfig overrides>}")
        m = source_model_section(m)  # only model.init_from: the source's config
        train = d.get("train") or {}
        if not isinstance(train, dict):
            raise ConfigError(f"train must be a mapping with keys {_allowed(TrainConfig)}")
        train, options = _objective_options(m, dict(train))
        objective = OBJECTIVES[options.name]
        kind = _data_kind(objective, d.get("data"))
        kw: dict[str, Any] = {"model": dict(m), "train": TrainConfig(**{**train, "objective": options})}
        kw["data"] = _kind_section(kind, d.get("data"))
        sample = d.get("sample") or {}
        if not isinstance(sample, dict):
            raise ConfigError(f"sample must be a mapping with keys {_allowed(kind.sample_class)}")
        _reject_unknown(sample, kind.sample_class, "sample.")
        kw["sample"] = kind.sample_class(**sample)
        if "run_dir" in d:
            kw["run_dir"] = d["run_dir"]
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Every section checked, the objective's options against the model and data (ConfigError naming the field)."""
        if not isinstance(self.train.objective, ObjectiveOptions):  # (a RunConfig built by hand)
            self.train.objective = _objective_options(self.model, {"objective": self.train.objective})[1]
        self.data.validate()
        self._validate_train()
        self.train.lora = lora_section(self.train.lora)
        check_lora(self.train.lora, self.init_from)
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ConfigError(f"run_dir={self.run_dir!r} must be a non-empty path")
        self._check_init_from()
        m = self.model_config()  # model keys and values are checked by the family's config class
        self.sample.validate(m)
        objective = OBJECTIVES[self.objective()]
        objective.check(self.train.objective, m, self)
        t = self.train
        if objective.unit != "tokens" and t.loss_chunk != TrainConfig.loss_chunk:
            raise ConfigError(f"train.loss_chunk means nothing for objective {objective.name!r} (no token loss); "
                              "remove it")
        if t.activation_checkpointing != "none" and not hasattr(_model_class(m), "blocks_for_checkpointing"):
            raise ConfigError(f"train.activation_checkpointing={t.activation_checkpointing!r}: a {m.family} model names "
                              "no blocks to checkpoint; set it to none")
        if "vocab_size" in self.model and getattr(self.data, "seq_len", None) is not None:
            self._check_explicit_model_vocab()

    def _validate_train(self) -> None:
        """The train fields every family reads."""
        t = self.train
        for k in _STRING_KEYS:
            _string(f"train.{k}", getattr(t, k))
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches", "ckpt_every",
                     "keep_last", "log_every", "loss_chunk"):
            _integer(f"train.{name}", getattr(t, name), 1)
        _integer("train.warmup_steps", t.warmup_steps, 0)
        _seed("train.seed", t.seed)
        if t.threads is not None:
            _integer("train.threads", t.threads, 1)
        _number("train.lr", t.lr, lo=0.0, lo_open=True)
        _number("train.min_lr", t.min_lr, lo=0.0)
        if t.min_lr > t.lr:
            raise ConfigError(f"train.min_lr={t.min_lr} must be <= train.lr={t.lr}")
        _number("train.weight_decay", t.weight_decay, lo=0.0)
        _number("train.eps", t.eps, lo=0.0, lo_open=True)
        if (not isinstance(t.betas, (list, tuple)) or len(t.betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in t.betas)):
            raise ConfigError(f"train.betas={t.betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        for name in ("grad_clip", "max_minutes", "mfu_peak_tflops"):
            if getattr(t, name) is not None:
                _number(f"train.{name}", getattr(t, name), lo=0.0, lo_open=True)
        for name, allowed in (("distributed", DISTRIBUTED), ("precision", PRECISIONS), ("device", DEVICES),
                              ("activation_checkpointing", CHECKPOINTING)):
            if getattr(t, name) not in allowed:
                raise ConfigError(f"train.{name}={getattr(t, name)!r} is not allowed; "
                                  f"choose one of {', '.join(allowed)}")
        if t.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use cpu or auto")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if t.distributed == "none" and world > 1:
            raise ConfigError(f"launched by torchrun with WORLD_SIZE={world} but train.distributed=none; "
                              "set train.distributed=ddp or fsdp (--set train.distributed=fsdp)")
        if not isinstance(t.compile, bool):
            raise ConfigError(f"train.compile={t.compile!r} must be true or false")
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")

    def model_config(self, vocab_size: int | None = None, eos_id: int | None = None):
        """The ModelConfig this recipe selects; vocab/eos come from the tokenizer unless set."""
        m = dict(self.model)
        m.pop("init_from", None)  # not a config field: where the run's first weights come from
        name = m.pop("preset", None)
        _check_preset_name(name)
        if getattr(self.data, "seq_len", None) is None:  # data without tokens: the family's config as given
            return self._checked(_family_config(name, m))
        vocab_size = vocab_size if vocab_size is not None else getattr(self.data, "vocab_size", None)
        if vocab_size is not None:  # (examples name no vocabulary before their tokenizer is read: the preset's)
            m.setdefault("vocab_size", vocab_size)
        m.setdefault("max_seq_len", max(self.data.seq_len, 16))
        if eos_id is not None:
            m.setdefault("eos_token_id", eos_id)
            m.setdefault("bos_token_id", eos_id)
        cfg = _family_config(name, m)
        if cfg.max_seq_len < self.data.seq_len:
            raise ConfigError(f"model.max_seq_len={cfg.max_seq_len} must be >= data.seq_len={self.data.seq_len}")
        return self._checked(cfg)

    def _checked(self, cfg):
        """``cfg`` once ``train.objective`` is known to fit its family (ConfigError naming what it lacks)."""
        objective_for(cfg.family, self.objective())
        return cfg

    @property
    def init_from(self) -> str | None:
        """``model.init_from``: a model folder (genmodels or Hugging Face) or a GGUF file whose weights and
        tokenizer start the run, or None (fresh weights)."""
        return self.model.get("init_from")

    def _check_init_from(self) -> None:
        check_source(self.model.get("init_from"))  # a model folder or a GGUF file (training/init_from.py)

    def objective(self) -> str:
        """The resolved objective's name (``train.objective``, or the model family's for auto)."""
        o = self.train.objective
        return o.name if isinstance(o, ObjectiveOptions) else _objective_options(self.model, {"objective": o})[1].name

    def min_model_vocab(self, tokenizer_vocab: int) -> tuple[int, int]:
        """``(n_tokens, minimum model.vocab_size)`` for a tokenizer of ``tokenizer_vocab`` ids: the
        objective's extra ids ([MASK], sentinels) follow the ``n_tokens`` ordinary ones."""
        n_tokens = (tokenizer_vocab if getattr(self.data, "vocab_size", None) is None or self.data.tokenizer is not None
                    else max(self.data.vocab_size, tokenizer_vocab))
        extra = extra_tokens(self.objective())
        return n_tokens, (n_tokens + extra if extra else tokenizer_vocab)

    def check_model_vocab(self, model_vocab: int, tokenizer_vocab: int) -> None:
        """ConfigError when ``model.vocab_size`` cannot hold the tokenizer's ids plus the objective's."""
        n_tokens, need = self.min_model_vocab(tokenizer_vocab)
        if model_vocab < need:
            extra = need - n_tokens if need > tokenizer_vocab else 0
            why = (f"{n_tokens} token ids + {extra} for train.objective={self.objective()} ([MASK] / sentinels)"
                   if extra else f"the tokenizer's {tokenizer_vocab} ids")
            raise ConfigError(f"model.vocab_size={model_vocab} is too small: it must be at least {need} ({why}); "
                              f"raise model.vocab_size or leave it out (then it follows the tokenizer)")

    def _check_explicit_model_vocab(self) -> None:
        if "vocab_size" not in self.model or self.init_from is not None:  # init_from: grows to the ids (setup.py)
            return
        if self.data.tokenizer is not None:
            from ..data import load_tokenizer
            try:
                tok_vocab = load_tokenizer(self.data.tokenizer).get_vocab_size()
            except Exception as e:  # noqa: BLE001 - a broken tokenizer file is a config error
                raise ConfigError(f"data.tokenizer={self.data.tokenizer!r}: cannot be read ({e})") from None
        else:
            tok_vocab = self.data.vocab_size  # a trained BPE has at most data.vocab_size ids
        self.check_model_vocab(self.model_config().vocab_size, tok_vocab)


_STRING_KEYS = ("precision", "device", "distributed", "activation_checkpointing")


def _model_class(mcfg):
    from ..registry import get_family
    return get_family(mcfg.family).model_class


def _family_config(name: str | None, m: dict[str, Any]):
    """The family config of preset ``name`` (or of ``m["family"]``) with the overrides ``m``."""
    try:
        return preset(name, **m) if name else config_from_dict(m)
    except ConfigError as e:
        raise ConfigError(str(e).replace("unknown model config key(s):", "unknown key(s) under model:")) from None
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None


def _check_preset_name(name: Any) -> None:
    known = ", ".join(sorted(presets()))
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"model.preset={name!r} must be a string; choose one of {known}")
    if name is not None and name not in presets():
        raise ConfigError(f"model.preset={name!r} is not allowed; choose one of {known}")


def _family(model: dict) -> str:
    """The model family a recipe's model section names (its preset's, or ``family``)."""
    name = model.get("preset")
    if name is not None:
        _check_preset_name(name)
        return preset(name).family
    return model.get("family", DEFAULT_FAMILY)


def _objective_options(model: dict, train: dict) -> tuple[dict, ObjectiveOptions]:
    """``(train section without the objective's options, the objective's options)``. ``train.objective`` is a
    name (``auto``: the family's) or ``{name: …, <options>}``; an option written at ``train:`` level (an old
    recipe or config.yaml) moves in; one only another objective reads is refused unless at that one's default."""
    section = train.pop("objective", "auto")
    section = {"name": section} if isinstance(section, str) else section
    if not isinstance(section, dict) or not isinstance(section.get("name", "auto"), str):
        raise ConfigError(f"train.objective={section!r} must be a name (auto, {', '.join(OBJECTIVES)}) or "
                          "{name: NAME, <options>}")
    section = dict(section)
    name = objective_for(_family(model), section.pop("name", "auto"))
    cls = OBJECTIVES[name].Options
    own = {f.name for f in dataclasses.fields(cls)} - {"name"}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    moved = {}
    for key in [k for k in train if k not in known]:
        value = train.pop(key)
        if key in own:
            moved[key] = value
            continue
        owners = [n for n, o in OBJECTIVES.items() if key in {f.name for f in dataclasses.fields(o.Options)}]
        if not owners:
            train[key] = value  # an unknown key: refused by name below
        elif any(value == getattr(OBJECTIVES[n].Options, key, object()) for n in owners):
            continue  # another objective's field at its default: what every old config.yaml lists
        else:
            raise ConfigError(f"train.{key} means nothing for objective {name!r} (read by {', '.join(owners)} only); "
                              "remove it")
    _reject_unknown(train, TrainConfig, "train.")
    path = "train" if moved and not section else "train.objective"
    return train, cls.from_dict({"name": name, **section, **moved}, path)  # (--set train.<option> wins)


def _data_kind(objective, section: Any):
    """The data kind a recipe's ``data.kind`` picks among those the objective reads (default: its first)."""
    kinds = objective.data_kinds
    name = section.get("kind", kinds[0]) if isinstance(section, dict) else kinds[0]
    if name not in kinds:
        raise ConfigError(f"data.kind={name!r} is not read by train.objective={objective.name!r}; "
                          f"choose one of {', '.join(kinds)}")
    return get_data_kind(name, objective.name)


def _kind_section(kind, section: Any):
    """The data section as the kind's config (``kind`` passed on only to a class that records it)."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError(f"data must be a mapping with keys {_allowed(kind.config_class)}")
    if "kind" not in {f.name for f in dataclasses.fields(kind.config_class)}:
        section = {k: v for k, v in section.items() if k != "kind"}
    return kind.config_class.from_dict(section, "data")
