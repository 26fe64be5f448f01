"""Distributed training on PyTorch's own engines: DDP, or FSDP2 (``fully_shard`` per block, then
the root). Launched by ``torchrun``, which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR.

Checkpoints are layout-free: model and optimizer state are gathered as *full, unsharded* state
dicts keyed by parameter name (``torch.distributed.checkpoint.state_dict`` with
``full_state_dict=True, cpu_offload=True``), so a checkpoint written by FSDP2 on 2 processes
loads in DDP, or in one process, and the other way round.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..config import ConfigError
from .memory import transformer_blocks

PREFIX = "model."  # an objective holds its model as .model


@dataclass
class DistInfo:
    kind: str = "none"  # none | ddp | fsdp
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 or self.initialized_here

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj):
        if dist.is_initialized() and self.world_size > 1:
            out = [None] * self.world_size
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def init_distributed(kind: str, device: str) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) when launched by torchrun.

    Outside torchrun (no WORLD_SIZE) training runs in this one process whatever ``kind`` says.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if kind == "none" or "WORLD_SIZE" not in os.environ:
        if world > 1:
            raise ConfigError(f"launched by torchrun with WORLD_SIZE={world} but train.distributed=none; "
                              "set train.distributed=ddp or fsdp (--set train.distributed=fsdp)")
        return DistInfo(kind="none", device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistInfo(kind=kind, rank=rank, world_size=world, local_rank=local, device=dev, initialized_here=here)


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``module``, or FSDP2 sharding of each block the model names
    (``blocks_for_checkpointing()``) then the root (in place)."""
    if not info.active:
        return module
    if info.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in transformer_blocks(module.model):
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def no_sync(wrapped: nn.Module, last_micro_step: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-step of an accumulation."""
    if not last_micro_step and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return nullcontext()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict of the LM (keys as in a genmodels directory); empty on ranks > 0."""
    sd = get_model_state_dict(module, options=_FULL)
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in sd.items()}


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``{"state": {fqn: {name: tensor}}, "param_groups": [...]}``, full; empty on ranks > 0."""
    return get_optimizer_state_dict(module, optimizer, options=_FULL)


def load_full_state(module: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict,
                    optim_sd: dict | None, absent_ok: tuple[str, ...] = ()) -> None:
    """Load full (unsharded) model/optimizer state into any layout; every rank passes the full dicts. A tensor of
    ``module`` missing from ``model_sd`` is a ValueError naming it, unless its key starts with one of
    ``absent_ok`` (the caller then sets it: an EMA restarted from the loaded weights)."""
    opts = StateDictOptions(full_state_dict=True)
    expected = set(module.state_dict())
    own = {k for k in expected if not k.startswith(PREFIX)}  # the objective's own tensors (an EMA: ema.*)
    full = {(k if k in own else PREFIX + k): v for k, v in model_sd.items()}
    missing = sorted(k for k in expected - set(full) if not k.startswith(absent_ok))
    if missing:  # (set_model_state_dict would leave them as they are: the fresh initialisation)
        names = ", ".join(k.removeprefix(PREFIX) for k in missing[:3]) + (", …" if len(missing) > 3 else "")
        raise ValueError(f"the checkpoint's model state lacks {len(missing)} tensor(s) the run needs ({names})")
    set_model_state_dict(module, full, options=opts)
    if optimizer is not None and optim_sd is not None:
        current = optimizer.param_groups
        groups = []
        for g, cur in zip(optim_sd["param_groups"], current):
            g = dict(g)
            for k in _IMPL_KEYS:  # keep this optimizer's kernel choice (fused here, foreach under FSDP)
                if k in cur:
                    g[k] = cur[k]
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        set_optimizer_state_dict(module, optimizer, {"state": optim_sd["state"], "param_groups": groups},
                                 options=opts)
