"""Training: the loop only — config, data wiring (data kinds), AdamW + schedule, checkpoints, DDP/FSDP2,
metrics, train steps (the objective's phases, a frozen reference); it asks the objective
(:mod:`genmodels.objectives`), never branches on a family.
Entry point: :func:`train` (``genmodels train CONFIG.yaml``)."""
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import DataConfig, SampleConfig, prepare_data
from .recipe import load_config
from .metrics import flops_per_token, measure_matmul_peak
from .optim import build_optimizer, lr_at, param_groups
from .setup import TrainResult
from .steps import FrozenReference, NonFiniteError, Phase, StepReport, TrainStep, evaluate
from .trainer import train

__all__ = ["DataConfig", "FrozenReference", "NonFiniteError", "Phase", "StepReport", "TrainStep",
           "RunConfig", "SampleConfig", "TrainConfig", "TrainResult",
           "build_optimizer", "evaluate", "flops_per_token", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "load_config", "lr_at", "measure_matmul_peak", "param_groups",
           "prepare_data", "save_checkpoint", "train"]
