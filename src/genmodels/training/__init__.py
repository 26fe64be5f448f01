"""Training: config, data wiring, fused causal-LM loss, AdamW + schedule, checkpoints, DDP/FSDP2,
metrics, train steps (one optimizer, several phases, a frozen reference), and the loop.
Entry point: :func:`train` (``genmodels train CONFIG.yaml``)."""
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import DataConfig, RunConfig, SampleConfig, TrainConfig, load_config
from .data import prepare_data
from .loss import CausalLMLoss, fused_linear_cross_entropy, token_logprobs
from .metrics import flops_per_token, measure_matmul_peak
from .optim import build_optimizer, lr_at, param_groups
from .steps import FrozenReference, NonFiniteError, Phase, StepReport, TrainStep
from .trainer import TrainResult, evaluate, train

__all__ = ["CausalLMLoss", "DataConfig", "FrozenReference", "NonFiniteError", "Phase", "StepReport", "TrainStep",
           "token_logprobs", "RunConfig", "SampleConfig", "TrainConfig", "TrainResult",
           "build_optimizer", "evaluate", "flops_per_token", "fused_linear_cross_entropy", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "load_config", "lr_at", "measure_matmul_peak", "param_groups",
           "prepare_data", "save_checkpoint", "train"]
