"""Training configuration: a YAML recipe validated into dataclasses before any work starts.

    model:  {preset: llama-tiny, <any field of the family's config as an override>, init_from: PATH}
    data:   {corpus, path, extensions, text_field, exclude_tests, val_fraction,
             vocab_size, tokenizer, tokenizer_max_mb, seq_len}
    train:  {batch_size, grad_accum, lr, min_lr, warmup_steps, max_steps, max_minutes, ...}
    sample: {prompts, max_new_tokens, temperature, top_k, top_p}
    run_dir: runs/llama-tiny

An image family (its objective declares ``data = "images"``: diffusion, GANs) reads another
``data:`` section, :class:`~genmodels.data.images.ImageDataConfig` (source, path, image_size,
channels, …), and another ``sample:`` section, :class:`ImageSampleConfig` (n, steps, scheduler,
guidance). A ``train:`` field that only another family reads (``train.mlm_prob`` for diffusion,
``train.class_dropout`` for a decoder) is refused, naming it.

``train.batch_size`` is the *global* batch (sequences per optimizer step, over all processes
and accumulation micro-steps), so one recipe means the same optimisation on 1 or N processes.
Unknown keys and bad values raise :class:`~genmodels.config.ConfigError` naming the key and
what is allowed. ``--set section.key=value`` overrides are parsed with ``yaml.safe_load``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..models.config import ModelConfig
from ..registry import config_from_dict, preset, presets
from ..data.corpus import CORPUS_KINDS
from ..data.images import ImageDataConfig
from .train_fields import IMAGE_TRAIN_FIELDS, TOKEN_TRAIN_FIELDS  # noqa: F401  (re-exported)
from .train_fields import check_router_losses, objective_class, reject_other_families_fields
from .values import allowed as _allowed, integer as _integer, number as _number
from .values import reject_unknown as _reject_unknown, seed as _seed, string as _string

DISTRIBUTED = ("none", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTING = ("none", "selective", "full")


@dataclass
class DataConfig:
    corpus: str = "stdlib"  # stdlib | text | folder | jsonl
    path: str | None = None
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".py"])
    text_field: str = "text"
    exclude_tests: bool = True
    val_fraction: float = 0.05
    vocab_size: int = 8192  # BPE vocabulary trained when `tokenizer` is null
    tokenizer: str | None = None  # an existing tokenizer.json (or a folder holding one)
    tokenizer_max_mb: float | None = None  # cap on the text used to train the BPE (None: all)
    seq_len: int = 256


@dataclass
class TrainConfig:
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
    loss_chunk: int = 256  # rows per chunk of the fused head + cross-entropy
    activation_checkpointing: str = "none"  # none | selective (recompute element-wise ops) | full
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    # objective: auto = by model family (decoder: causal, encoder: mlm, seq2seq: span)
    objective: str = "auto"
    mlm_prob: float = 0.15  # mlm: share of tokens to predict (80% [MASK], 10% random, 10% kept)
    span_noise_density: float = 0.15  # span: share of tokens corrupted
    span_mean_length: float = 3.0  # span: mean corrupted-span length
    # sparse MoE models only (model.n_experts > 0; objectives/router.py); null = the default
    router_aux_loss: str | None = None  # none | switch | mixtral (default switch)
    router_aux_coef: float | None = None  # default: switch 1e-2 (Switch's α), mixtral 1e-3 (transformers)
    router_z_coef: float | None = None  # ST-MoE z-loss coefficient (default 1e-3)
    # image families only (objectives/diffusion.py; null = the objective's default)
    class_dropout: float | None = None  # label → null label with this probability (default 0.1 with a null class)
    ema_decay: float | None = None  # EMA of the weights, up to this decay (default 0.999; 0: none)
    min_snr_gamma: float | None = None  # min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper); null: off
    eval_samples: int = 200  # images sampled (classes in turn, fixed seed) for the metrics at each evaluation
    # GANs only (training/gan.py: the D phase's optimizer, the divergence watch); null = G's value / the default
    lr_d: float | None = None  # D's peak learning rate (null: train.lr)
    betas_d: list[float] | None = None  # D's Adam betas (null: train.betas)
    grad_clip_d: float | None = None  # D's gradient clipping (null: train.grad_clip)
    collapse_d_loss: float | None = None  # D loss below this … (default 0.01; 0: no watch)
    collapse_steps: int | None = None  # … for this many consecutive steps stops the run (default 200)
    stuck_steps: int | None = None  # D loss above 1.5 × a no-judgement D's for this many steps stops it (100; 0: off)

    def router_losses(self) -> dict[str, Any]:
        """The router-loss settings with the defaults filled in (what :func:`build_objective` takes)."""
        from ..objectives.router import DEFAULT_AUX_COEF, DEFAULT_Z_COEF
        kind = self.router_aux_loss or "switch"
        coef = self.router_aux_coef if self.router_aux_coef is not None else DEFAULT_AUX_COEF.get(kind, 0.0)
        z = self.router_z_coef if self.router_z_coef is not None else DEFAULT_Z_COEF
        return {"router_aux_loss": kind, "router_aux_coef": coef, "router_z_coef": z}


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=lambda: ["def ", "import "])
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None


@dataclass
class ImageSampleConfig:
    """The ``sample:`` section of an image recipe: the grid written at the end of a run, and the
    sampler the evaluations use (null: the sampler's default; a GAN takes none of steps, scheduler, guidance)."""

    n: int = 64  # images in the end-of-run grid (classes in turn)
    steps: int | None = None  # diffusion: sampler steps (default 25)
    scheduler: str | None = None  # diffusion: ddim | ddpm | dpm (default ddim)
    guidance: float | None = None  # diffusion: classifier-free guidance scale w (default 1: none)
    seed: int = 0


# train.* fields that only the token objectives read (refused for an image family)


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "llama-tiny"})
    data: DataConfig | ImageDataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig | ImageSampleConfig = field(default_factory=SampleConfig)
    run_dir: str = "runs/default"

    @property
    def images(self) -> bool:
        """Whether the recipe trains an image family (its data: and sample: sections are the image ones)."""
        return isinstance(self.data, ImageDataConfig)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping with keys {_allowed(cls)}; got {type(d).__name__}")
        _reject_unknown(d, cls, "")
        kw: dict[str, Any] = {}
        objective = objective_class(d.get("model"), d.get("train"))
        images = getattr(objective, "data", "tokens") == "images"
        for name, sub in (("data", ImageDataConfig if images else DataConfig), ("train", TrainConfig),
                          ("sample", ImageSampleConfig if images else SampleConfig)):
            if name in d or (images and name != "train"):
                sec = d.get(name) or {}
                if not isinstance(sec, dict):
                    raise ConfigError(f"{name} must be a mapping with keys {_allowed(sub)}")
                if sub is ImageDataConfig:
                    kw[name] = ImageDataConfig.from_dict(sec, "data")
                    continue
                _reject_unknown(sec, sub, name + ".")
                kw[name] = sub(**sec)
        reject_other_families_fields(d.get("train") or {}, objective, images,
                                      {f.name: f.default for f in fields(TrainConfig)})
        if "model" in d:
            m = d["model"] or {}
            if not isinstance(m, dict):
                raise ConfigError("model must be a mapping: {preset: NAME, <ModelConfig overrides>}")
            kw["model"] = dict(m)
        if "run_dir" in d:
            kw["run_dir"] = d["run_dir"]
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        if self.images:
            return self._validate_images()
        d, s = self.data, self.sample
        for k in ("corpus", "text_field"):
            _string(f"data.{k}", getattr(d, k))
        for k in ("path", "tokenizer"):
            if getattr(d, k) is not None:
                _string(f"data.{k}", getattr(d, k))
        if not isinstance(d.exclude_tests, bool):
            raise ConfigError(f"data.exclude_tests={d.exclude_tests!r} must be true or false")
        if d.corpus not in CORPUS_KINDS:
            raise ConfigError(f"data.corpus={d.corpus!r} is not allowed; choose one of {', '.join(CORPUS_KINDS)}")
        if d.corpus != "stdlib":
            if not d.path:
                raise ConfigError(f"data.path is required when data.corpus is {d.corpus!r}")
            p = Path(d.path)
            if not p.exists():
                raise ConfigError(f"data.path={d.path!r} does not exist")
            if (d.corpus == "folder") != p.is_dir():
                raise ConfigError(f"data.path={d.path!r} must be a {'folder' if d.corpus == 'folder' else 'file'} "
                                  f"for data.corpus={d.corpus!r}")
        if not isinstance(d.extensions, list) or not all(isinstance(e, str) and e for e in d.extensions):
            raise ConfigError(f"data.extensions={d.extensions!r} must be a list of file endings like ['.txt', '.py']")
        _number("data.val_fraction", d.val_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _integer("data.seq_len", d.seq_len, 1)
        _integer("data.vocab_size", d.vocab_size, 258)
        if d.tokenizer is not None:
            tp = Path(d.tokenizer)
            if not (tp.is_file() or (tp / "tokenizer.json").is_file()):
                raise ConfigError(f"data.tokenizer={d.tokenizer!r}: no tokenizer.json there "
                                  "(give a tokenizer.json file, a folder holding one, or null to train a BPE)")
        if d.tokenizer_max_mb is not None:
            _number("data.tokenizer_max_mb", d.tokenizer_max_mb, lo=0.0, lo_open=True)

        self._validate_train()

        if not isinstance(s.prompts, list) or not all(isinstance(p, str) for p in s.prompts):
            raise ConfigError(f"sample.prompts={s.prompts!r} must be a list of strings")
        _integer("sample.max_new_tokens", s.max_new_tokens, 0)
        _number("sample.temperature", s.temperature, lo=0.0)
        if s.top_k is not None:
            _integer("sample.top_k", s.top_k, 1)
        if s.top_p is not None:
            _number("sample.top_p", s.top_p, lo=0.0, hi=1.0, lo_open=True)

        self._validate_common()
        self._check_explicit_model_vocab()

    def _validate_common(self) -> None:
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ConfigError(f"run_dir={self.run_dir!r} must be a non-empty path")
        self._check_init_from()
        self.model_config()  # model keys and values are checked by the family's config class

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

    def _validate_images(self) -> None:
        """An image recipe: the train fields, the sample section, the model against the data."""
        from ..generation.images import check_sample_settings
        t, s, d = self.train, self.sample, self.data
        self._validate_train()
        from ..metrics.evaluate import PR_K, min_samples
        if not isinstance(t.eval_samples, int) or isinstance(t.eval_samples, bool) or t.eval_samples < min_samples():
            raise ConfigError(f"train.eval_samples={t.eval_samples!r} must be an integer >= {min_samples()} (the "
                              f"evaluation's precision/recall compares each image with its {PR_K} nearest neighbours)")
        from .gan import check_gan_train
        check_gan_train(t)  # GAN-only fields (refused for the other families by the objectives' train_options)
        _integer("sample.n", s.n, 1)
        _seed("sample.seed", s.seed)
        self._validate_common()
        m = self.model_config()
        for field_name, data_name in (("image_size", "image_size"), ("in_channels", "channels")):
            if getattr(m, field_name, getattr(d, data_name)) != getattr(d, data_name):
                raise ConfigError(f"model.{field_name}={getattr(m, field_name)} differs from data.{data_name}="
                                  f"{getattr(d, data_name)}; the model must take the images the data section makes")
        check_sample_settings(m, {"steps": s.steps, "scheduler": s.scheduler, "guidance": s.guidance}, "sample.")
        from ..objectives import OBJECTIVES
        check = getattr(OBJECTIVES[self.objective()], "check_config", None)
        if check is not None:  # the objective's own train fields against the model
            check(m, t)

    def model_config(self, vocab_size: int | None = None, eos_id: int | None = None) -> ModelConfig:
        """The ModelConfig this recipe selects; vocab/eos come from the tokenizer unless set."""
        m = dict(self.model)
        m.pop("init_from", None)  # not a config field: where the run's first weights come from
        name = m.pop("preset", None)
        _check_preset_name(name)
        if self.images:  # no tokenizer: the family's config as the recipe gives it
            return self._image_model_config(name, m)
        m.setdefault("vocab_size", vocab_size if vocab_size is not None else self.data.vocab_size)
        m.setdefault("max_seq_len", max(self.data.seq_len, 16))
        if eos_id is not None:
            m.setdefault("eos_token_id", eos_id)
            m.setdefault("bos_token_id", eos_id)
        cfg = _family_config(name, m)
        if cfg.max_seq_len < self.data.seq_len:
            raise ConfigError(f"model.max_seq_len={cfg.max_seq_len} must be >= data.seq_len={self.data.seq_len}")
        from ..data.objectives import N_SENTINELS, OBJECTIVES, objective_for, span_counts
        t = self.train
        if not isinstance(t.objective, str) or t.objective not in ("auto", *OBJECTIVES):
            raise ConfigError(f"train.objective={t.objective!r} is not allowed; "
                              f"choose one of auto, {', '.join(OBJECTIVES)}")
        objective = objective_for(cfg.family, t.objective)  # raises ConfigError when they do not fit
        _number("train.mlm_prob", t.mlm_prob, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _number("train.span_noise_density", t.span_noise_density, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _number("train.span_mean_length", t.span_mean_length, lo=1.0)
        check_router_losses(t, cfg)
        if objective == "mlm" and not cfg.mlm_head:
            raise ConfigError(f"train.objective=mlm needs a masked-LM head, but model.mlm_head=false"
                              f"{f' (preset {name})' if name else ''}; set model.mlm_head: true")
        if objective == "span":
            if self.data.seq_len < 2:
                raise ConfigError(f"data.seq_len={self.data.seq_len} must be >= 2 for train.objective=span")
            n_spans = span_counts(self.data.seq_len, t.span_noise_density, t.span_mean_length)[1]
            if n_spans > N_SENTINELS:
                raise ConfigError(
                    f"span corruption of data.seq_len={self.data.seq_len} with train.span_noise_density="
                    f"{t.span_noise_density} and train.span_mean_length={t.span_mean_length} makes {n_spans} spans, "
                    f"more than the {N_SENTINELS} sentinel ids; lower data.seq_len or "
                    f"train.span_noise_density, or raise train.span_mean_length")
        return cfg

    def _image_model_config(self, name: str | None, m: dict[str, Any]):
        from ..objectives import objective_for
        cfg = _family_config(name, m)
        objective_for(cfg.family, self.train.objective)  # raises ConfigError when they do not fit
        check_router_losses(self.train, cfg)
        return cfg

    @property
    def init_from(self) -> str | None:
        """``model.init_from``: a model folder (genmodels or Hugging Face) whose weights and tokenizer
        start the run, or None (fresh weights)."""
        return self.model.get("init_from")

    def _check_init_from(self) -> None:
        path = self.model.get("init_from")
        if path is None:
            return
        if not isinstance(path, str) or not path:
            raise ConfigError(f"model.init_from={path!r} must be a path to a model folder, or null")
        if not Path(path).expanduser().is_dir():
            raise ConfigError(f"model.init_from={path!r} is not an existing folder; give a genmodels or "
                              "Hugging Face model folder (or null for fresh weights)")

    def objective(self) -> str:
        """The resolved pre-training objective (``train.objective``, or the model family's for auto)."""
        from ..data.objectives import objective_for
        return objective_for(self.model_config().family, self.train.objective)

    def min_model_vocab(self, tokenizer_vocab: int) -> tuple[int, int]:
        """``(n_tokens, minimum model.vocab_size)`` for a tokenizer of ``tokenizer_vocab`` ids: the
        objective's extra ids ([MASK], sentinels) follow the ``n_tokens`` ordinary ones."""
        from ..data.objectives import extra_tokens
        n_tokens = tokenizer_vocab if self.data.tokenizer is not None else max(self.data.vocab_size, tokenizer_vocab)
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
        if "vocab_size" not in self.model:
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


_STRING_KEYS = ("precision", "device", "distributed", "activation_checkpointing", "objective")
# (train.router_aux_loss may be null: checked by check_router_losses)


# the YAML side (reading a recipe, --set overrides, writing it back) lives in recipe.py
from .recipe import apply_overrides, dump_config, load_config, parse_override  # noqa: E402,F401
