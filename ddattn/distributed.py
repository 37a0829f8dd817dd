"""Data parallelism on torch.distributed, for `torchrun --nproc_per_node N -m ddattn.distill ...`.

The outer loss is a mean over the real mini-batch, and the hypergradient is linear in it. So each rank
computes the hypergradient of the mean over its own shard, scales it by shard size / global batch size,
and an all-reduce (sum) gives exactly the gradient of the whole batch's mean, even for uneven shards.
Every other random draw is a pure function of (seed, step), so all ranks hold identical distilled data.
Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op for one process.
"""

import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from .errors import UserError


def setup(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment: gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def local_device(name: Optional[str] = None) -> torch.device:
    """The device a `--device` flag names (default: cuda when present, else cpu); a bare `cuda` under
    torchrun becomes this rank's GPU (LOCAL_RANK)."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a batch's rows (sizes differ by at most one)."""
    return rows.tensor_split(world_size())[rank()]


def sum_weighted(values: Dict[str, torch.Tensor], weight: float) -> Dict[str, torch.Tensor]:
    """Σ_ranks weight_r · values_r, for every tensor (in place on the returned tensors)."""
    out = {k: v * weight for k, v in values.items()}
    if dist.is_initialized():
        for tensor in out.values():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return out


def gather(items: List) -> List:
    """Concatenate every rank's list, in rank order."""
    if not dist.is_initialized():
        return items
    everything = [None] * world_size()
    dist.all_gather_object(everything, items)
    return [item for part in everything for item in part]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
