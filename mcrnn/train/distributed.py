"""torch.distributed plumbing: process-group setup, DDP / FSDP2 wrapping, full state dicts.

Launch with ``torchrun --nproc_per_node=N -m mcrnn train ...``: ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` come
from the environment; the backend is NCCL on CUDA and gloo on CPU. With one process nothing is wrapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process runs: ``rank`` of ``world``, on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``) and pick the device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world=world, device=target)


def wrap(model: nn.Module, ctx: DistContext, parallel: str) -> nn.Module:
    """DDP, or FSDP2 (``fully_shard`` on every block, then the whole model); as is for one process.

    FSDP2 also runs on CPU with gloo (tested there); it is meant for GPUs, where sharding saves memory.
    """
    if not ctx.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(getattr(model, "model", model), "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True for an FSDP2 model, whose parameters are DTensors."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over processes (identity for one process)."""
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, CPU) state dict of the user's model; collective under FSDP2."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (strict) into a plain, DDP or FSDP2 model."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
        return
    unwrap(model).load_state_dict(state, strict=True)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state (collective under FSDP2)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
