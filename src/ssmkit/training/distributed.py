"""Many processes: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we join the group and wrap the model.

    torchrun --nproc_per_node=8 -m ssmkit train --config run.yaml                  # one machine
    torchrun --nnodes=2 --node_rank=$NODE --nproc_per_node=8 \\
             --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500 -m ssmkit train --config run.yaml

Backend: nccl on CUDA, gloo on CPU. DistributedDataParallel averages gradients over ranks; with
FSDP (`distributed: fsdp`) parameters, gradients and optimizer state are sharded instead. Each rank
reads only its rows of every global batch (see data.LMBatches), so results do not depend on the
number of processes, only on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device(f"cuda:{local_rank}")
    return d


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a 1-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev)


def wrap(model: nn.Module, info: DistInfo, mode: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP around `model` (already on info.device); the model itself when 1 process."""
    if not info.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP(
            model, device_id=info.device if info.device.type == "cuda" else None, use_orig_params=True
        )
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device] if info.device.type == "cuda" else None)


def fsdp_full_state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts of an FSDP model, on CPU, complete on rank 0.

    A collective: every rank must call it.
    """
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True),
    ):
        return model.state_dict(), FSDP.optim_state_dict(model, optimizer)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def is_fsdp(model: nn.Module) -> bool:
    return type(model).__name__ == "FullyShardedDataParallel"


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
