"""Which ``train:`` fields a recipe may set: each objective reads its own (``train_options``), the token and
image families each read a shared few, and a field only another family reads is refused by name."""
from __future__ import annotations

from typing import Any

from ..config import ConfigError
from ..registry import preset
from .values import number


TOKEN_TRAIN_FIELDS = ("loss_chunk", "activation_checkpointing", "mlm_prob", "span_noise_density",
                      "span_mean_length")
IMAGE_TRAIN_FIELDS = ("eval_samples",)  # read by every image objective (refused for the token families)


def check_router_losses(t: Any, cfg: Any) -> None:
    """train.router_*: allowed values, and set only where they mean something (a sparse MoE model;
    a coefficient for an auxiliary loss that is on)."""
    from ..objectives.router import AUX_LOSSES
    names = ("router_aux_loss", "router_aux_coef", "router_z_coef")
    if t.router_aux_loss is not None and t.router_aux_loss not in AUX_LOSSES:
        raise ConfigError(f"train.router_aux_loss={t.router_aux_loss!r} is not allowed; "
                          f"choose one of {', '.join(AUX_LOSSES)}")
    for name in names[1:]:
        if getattr(t, name) is not None:
            number(f"train.{name}", getattr(t, name), lo=0.0)
    if getattr(cfg, "n_experts", 0) == 0:
        for name in names:
            if getattr(t, name) is not None:
                raise ConfigError(f"train.{name}={getattr(t, name)!r} means nothing for a dense model "
                                  "(model.n_experts is 0); leave it out or set model.n_experts")
    if t.router_aux_loss == "none" and t.router_aux_coef is not None:
        raise ConfigError(f"train.router_aux_coef={t.router_aux_coef!r} means nothing with "
                          "train.router_aux_loss=none; leave it out or choose switch or mixtral")


def objective_class(model: Any, train: Any) -> type | None:
    """The objective class a recipe's model and train sections select (None when they do not say yet:
    validation names the problem later)."""
    from ..objectives import OBJECTIVES, objective_for
    from ..registry import DEFAULT_FAMILY
    m = model if isinstance(model, dict) else {"preset": "llama-tiny"}
    name = m.get("preset")
    try:
        family = preset(name).family if isinstance(name, str) else m.get("family", DEFAULT_FAMILY)
        objective = objective_for(family, (train or {}).get("objective", "auto") if isinstance(train, dict) else "auto")
    except (ConfigError, TypeError, AttributeError):
        return None
    return OBJECTIVES.get(objective) if isinstance(objective, str) else None


def reject_other_families_fields(train: dict, objective: type | None, images: bool,
                                  defaults: dict[str, Any]) -> None:
    """ConfigError for a train field set (to a value other than its default) in the recipe that only another
    family's objective reads."""
    from ..objectives import OBJECTIVES
    if not isinstance(train, dict) or objective is None:
        return
    own = set(getattr(objective, "train_options", ()))
    owners: dict[str, list[str]] = {}
    for name, cls in OBJECTIVES.items():
        for f in getattr(cls, "train_options", ()):
            owners.setdefault(f, []).append(name)
    for f in (*TOKEN_TRAIN_FIELDS, *IMAGE_TRAIN_FIELDS):
        owners.setdefault(f, []).append("image objectives" if f in IMAGE_TRAIN_FIELDS else "token objectives")
    refused = {f for f, who in owners.items() if f not in own}
    refused -= set(IMAGE_TRAIN_FIELDS if images else TOKEN_TRAIN_FIELDS)
    for key, value in train.items():
        # a field at its default means nothing either way: a run's own config.yaml lists every field
        if key in refused and value != defaults.get(key, object()):
            raise ConfigError(f"train.{key} means nothing for objective {objective.name!r} (read by "
                              f"{', '.join(owners[key])} only); remove it")
