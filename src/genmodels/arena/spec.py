"""An arena spec: who competes, on which data, for how long, with which seeds, and what is measured.

    name: text-tiny
    equal: active_compute        # parameters | active_compute | none: what the contestants are matched on
    contestants:                 # a recipe (configs/*.yaml) or a preset, each with overrides
      - {name: llama, recipe: ../configs/llama-tiny.yaml}
      - {name: gpt2, recipe: ../configs/gpt2-tiny.yaml, overrides: {model.d_ff: 904}}
      - {name: small, preset: llama-tiny, overrides: {model.n_layers: 2}}
    data: {corpus: stdlib, vocab_size: 8192, seq_len: 256}   # every contestant's data section
    budget: {minutes: 3}         # exactly one of tokens | images | steps | minutes, the same for all
    seeds: [0, 1, 2]
    threads: 2                   # torch threads of every training and measuring process
    measure: {contexts: [128], long_context: 4096, decode_tokens: 32}

The spec is a :class:`~genmodels.config.StrictConfig`: an unknown key or a bad value is refused
naming its dotted path (``arena.contestants[1].overrides``). Each (contestant, seed) becomes one
ordinary training recipe (:meth:`ArenaSpec.recipe`), validated here by the trainer's own config
class, so a recipe error is a spec error naming the contestant and the field, before any work.
Paths in a spec (``recipe``, ``data.path``, ``data.tokenizer``) are relative to the spec's folder.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, StrictConfig

EQUAL = ("parameters", "active_compute", "none")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MINUTES_MAX_STEPS = 1_000_000  # a minutes budget: the trainer fits the schedule to the time, not to this
# train fields the arena sets for every contestant: an override of one is refused
RESERVED_TRAIN = ("max_steps", "max_minutes", "seed", "threads")
LOWER_IS_BETTER = {"held_out_loss": True, "val_loss": True, "kid": True, "fid": True,
                   "accuracy": False, "precision": False, "recall": False}


@dataclass
class Budget(StrictConfig):
    """The training budget every contestant gets: exactly one of the four."""

    section = "arena.budget"
    tokens: int | None = None  # text arenas: max_steps = ceil(tokens / (batch_size × seq_len))
    images: int | None = None  # image arenas: max_steps = ceil(images / batch_size)
    steps: int | None = None  # optimizer steps
    minutes: float | None = None  # train.max_minutes (the schedule is fitted to it); reported, not reproduced

    def validate(self) -> None:
        given = [k for k in ("tokens", "images", "steps", "minutes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{self.where('')[:-1]} must set exactly one of tokens, images, steps, minutes; "
                              f"got {', '.join(given) or 'none'}")
        value = getattr(self, given[0])
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{self.where(given[0])}={value!r} must be > 0")

    @property
    def kind(self) -> str:
        return next(k for k in ("tokens", "images", "steps", "minutes") if getattr(self, k) is not None)


@dataclass
class Measure(StrictConfig):
    """What is measured after training, in one subprocess with ``threads`` torch threads."""

    section = "arena.measure"
    eval_windows: int = 64  # held-out windows scored (the first ones of the validation split, for all alike)
    eval_batch: int = 8  # windows per forward pass
    speed: bool = True  # decode / prefill timings (text families)
    contexts: list[int] = field(default_factory=lambda: [128])  # contexts timed, besides each full context
    full_context: bool = True  # also at each contestant's own max_seq_len
    long_context: int | None = 4096  # also here, for families whose context has no limit (RetNet)
    decode_tokens: int = 32  # tokens decoded per timing (the context is reached at the last one)
    repeats: int = 3  # timings per point (the median is reported)
    image_samples: int = 500  # images sampled and scored (image families)

    def validate(self) -> None:
        for name in ("eval_windows", "eval_batch", "decode_tokens", "repeats", "image_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.where(name)}={getattr(self, name)} must be an integer >= 1")
        if self.decode_tokens < 2:
            raise ConfigError(f"{self.where('decode_tokens')}={self.decode_tokens} must be >= 2 (the first new "
                              "token comes with the prefill)")
        for i, c in enumerate(self.contexts):
            if c <= self.decode_tokens:
                raise ConfigError(f"{self.where('contexts')}[{i}]={c} must exceed measure.decode_tokens="
                                  f"{self.decode_tokens} (the prompt is the context less the decoded tokens)")
        if self.long_context is not None and self.long_context <= self.decode_tokens:
            raise ConfigError(f"{self.where('long_context')}={self.long_context} must exceed measure.decode_tokens")


@dataclass
class Contestant(StrictConfig):
    """One architecture: a recipe file or a preset, and dotted overrides of the recipe (``model.d_ff: 904``)."""

    section = "arena.contestants"
    name: str = ""
    recipe: str | None = None
    preset: str | None = None
    overrides: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not NAME.match(self.name):
            raise ConfigError(f"{self.where('name')}={self.name!r} must be a name of letters, digits, '_', '.', '-'")
        if (self.recipe is None) == (self.preset is None):
            raise ConfigError(f"{self.where('recipe')}: give exactly one of recipe (a YAML recipe) or preset")
        for key in self.overrides:
            parts = str(key).split(".")
            if len(parts) < 2 or not all(parts) or parts[0] not in ("model", "train", "sample"):
                raise ConfigError(f"{self.where('overrides')}: key {key!r} must be a dotted recipe key under "
                                  "model., train. or sample. (the data: and budget are the arena's, for all alike)")
            if parts[0] == "train" and parts[1] in RESERVED_TRAIN:
                raise ConfigError(f"{self.where('overrides')}: {key} is set by the arena for every contestant "
                                  f"(budget:, seeds:, threads:); remove it")


@dataclass
class ArenaSpec(StrictConfig):
    """The whole spec (module docstring); :meth:`recipe` makes the training recipe of one entry."""

    section = "arena"
    name: str = "arena"
    equal: str = "none"
    contestants: list[Contestant] = field(default_factory=list)
    data: dict | None = None
    budget: Budget | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    threads: int = 1
    rank_by: str | None = None  # null: held_out_loss (text) or kid (images)
    measure: Measure = field(default_factory=Measure)
    base_dir: str = "."  # the spec's folder (set by load_spec; relative paths start there)

    def validate(self) -> None:
        self.check_choice("equal", EQUAL)
        if not self.contestants:
            raise ConfigError(f"{self.where('contestants')} must list at least one contestant")
        names = [c.name for c in self.contestants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{self.where('contestants')}: names must differ; {', '.join(dup)} appears twice")
        if not isinstance(self.data, dict) or not self.data:
            raise ConfigError(f"{self.where('data')} is required: the data section every contestant trains and "
                              "is measured on (a recipe's data: section)")
        if self.budget is None:
            raise ConfigError(f"{self.where('budget')} is required: one of tokens, images, steps, minutes")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{self.where('seeds')}={self.seeds!r} must be distinct integers >= 0")
        if self.threads < 1:
            raise ConfigError(f"{self.where('threads')}={self.threads} must be an integer >= 1")
        if self.rank_by is not None:
            self.check_choice("rank_by", tuple(LOWER_IS_BETTER))
        kinds = {i: _trains_images(self.run_config(i, self.seeds[0])) for i in range(len(self.contestants))}
        if len(set(kinds.values())) > 1:
            odd = next(i for i, k in kinds.items() if k != kinds[0])
            raise ConfigError(f"arena.contestants[{odd}] ({self.contestants[odd].name}) trains "
                              f"{'images' if kinds[odd] else 'text'} but contestants[0] does not; "
                              "an arena compares one kind")
        images = self.__dict__["_images"] = kinds[0]  # (not a field: never serialised)
        if self.budget.kind == ("tokens" if images else "images"):
            raise ConfigError(f"arena.budget.{self.budget.kind} does not fit a "
                              f"{'image' if images else 'text'} arena; use {'images' if images else 'tokens'}, "
                              "steps or minutes")
        if self.rank_by is not None and (self.rank_by == "held_out_loss") == images:
            raise ConfigError(f"arena.rank_by={self.rank_by!r} does not fit a {'image' if images else 'text'} "
                              f"arena; choose {'kid, fid, accuracy, precision, recall' if images else 'held_out_loss'}")

    # ---- entries and their recipes --------------------------------------------------------------
    @property
    def images(self) -> bool:
        """Whether the contestants are image families (diffusion, GANs) rather than text models."""
        return self.__dict__["_images"]

    @property
    def ranking(self) -> str:
        """The measure the ranked table sorts by."""
        return self.rank_by or ("kid" if self.images else "held_out_loss")

    def entries(self) -> list[tuple[str, int, int]]:
        """``(entry id, contestant index, seed)`` in training order: seed by seed, contestants in turn."""
        return [(entry_id(c.name, s), i, s) for s in self.seeds for i, c in enumerate(self.contestants)]

    def _resolve(self, p: str) -> str:
        return str(p) if Path(p).is_absolute() else str(Path(self.base_dir) / p)

    def recipe(self, index: int, seed: int, run_dir: str = "runs/arena") -> dict[str, Any]:
        """The training recipe of contestant ``index`` with ``seed``: its recipe (or preset), the shared
        data, its overrides, then the budget, seed and threads."""
        c = self.contestants[index]
        where = f"arena.contestants[{index}] ({c.name})"
        if c.recipe is not None:
            d = read_mapping(Path(self._resolve(c.recipe)), f"{where}.recipe={c.recipe!r}", "a training recipe")
        else:
            d = {"model": {"preset": c.preset}}
        d = copy.deepcopy(d)
        data = copy.deepcopy(self.data)
        for key in ("path", "tokenizer"):
            if isinstance(data.get(key), str):
                data[key] = self._resolve(data[key])
        d["data"] = data
        for key, value in c.overrides.items():
            section, *rest = str(key).split(".")
            node = d.setdefault(section, {}) or {}
            d[section] = node
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = value
        train = d.setdefault("train", {}) or {}
        d["train"] = train
        train.update(seed=seed, threads=self.threads)
        kind, value = self.budget.kind, getattr(self.budget, self.budget.kind)
        train["max_minutes"] = value if kind == "minutes" else None
        per_step = int(train.get("batch_size", 8)) * (int(data.get("seq_len", 256)) if kind == "tokens" else 1)
        train["max_steps"] = {"steps": value, "minutes": MINUTES_MAX_STEPS}.get(kind) or -(-value // per_step)
        d["run_dir"] = run_dir
        return d

    def run_config(self, index: int, seed: int, run_dir: str = "runs/arena"):
        """:meth:`recipe` validated by the trainer's RunConfig; its errors name the contestant."""
        from ..training.config import RunConfig
        try:
            return RunConfig.from_dict(self.recipe(index, seed, run_dir))
        except ConfigError as e:
            msg = str(e)
            prefix = f"arena.contestants[{index}] ({self.contestants[index].name})"
            raise ConfigError(msg if msg.startswith(prefix) else f"{prefix}: {msg}") from None


def entry_id(name: str, seed: int) -> str:
    """The folder name of one (contestant, seed): ``llama-seed0``."""
    return f"{name}-seed{seed}"


def read_mapping(path: Path, what: str, kind: str) -> dict:
    """The YAML mapping in ``path``; a missing file, bad YAML or another shape is refused naming ``what``."""
    from ..files import read_utf8
    if not path.is_file():
        raise ConfigError(f"{what}: {path} is a folder; give a YAML file" if path.is_dir() else
                          f"{what}: no such file ({path})")
    try:
        d = yaml.safe_load(read_utf8(path, what)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must hold a mapping: {kind}")
    return d


def load_spec(path: str | Path) -> ArenaSpec:
    """Read and validate an arena spec (YAML); every error names the file and the field."""
    p = Path(path)
    d = read_mapping(p, f"arena spec {str(p)!r}", "an arena spec (name, contestants, data, budget, ...)")
    if "base_dir" in d:
        raise ConfigError(f"{p}: arena.base_dir is not a spec key (paths are relative to the spec's folder)")
    from ..training.recipe import _fix_floats
    try:
        return ArenaSpec.from_dict({**_fix_floats(d), "base_dir": str(p.resolve().parent)})
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _trains_images(cfg) -> bool:
    """Whether a contestant's recipe trains on images (its objective counts images), not text."""
    from ..objectives import OBJECTIVES
    return OBJECTIVES[cfg.objective()].unit == "images"

