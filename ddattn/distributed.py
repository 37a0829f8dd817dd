"""Data parallelism on torch.distributed, for `torchrun --nproc_per_node N -m ddattn.distill ...`.

Only the outer gradient g_T = ∂L_outer/∂θ_T depends on the real mini-batch (unroll.py). The batch is cut
into micro-batches and each rank takes a contiguous share of them; the ranks' sums of per-micro-batch
gradients are added by an all-reduce, so every rank holds the whole batch's g_T, runs the same reverse
sweep and gets the same hypergradient, even for uneven shares. Every other random draw is a pure function
of (seed, step), so all ranks hold identical distilled data. Without torchrun (no WORLD_SIZE in the
environment) every function here is a no-op for one process.

Decisions taken on the host (stop at this step boundary?) are agreed over gloo, which reduces host
memory: the default group on CPU, a gloo side group under nccl, so that no GPU work is waited for.
"""

import os
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from .errors import UserError

HOST_GROUP = None  # the gloo group for host-side values (None: the default group, itself gloo)


def setup(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment: gloo on CPU, nccl on CUDA (plus a
    gloo group for host-side values)."""
    global HOST_GROUP
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
            HOST_GROUP = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo")


def local_device(name: Optional[str] = None) -> torch.device:
    """The device a `--device` flag names (default: cuda when present, else cpu); a bare `cuda` under
    torchrun becomes this rank's GPU (LOCAL_RANK)."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this PyTorch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: Sequence) -> list:
    """This rank's contiguous share of a list (sizes differ by at most one)."""
    n, size = len(items), world_size()
    return list(items[rank() * n // size : (rank() + 1) * n // size])


def all_reduce_sum(tensors: List[torch.Tensor]) -> None:
    """Σ over ranks, in place, for every tensor (one process: nothing to do): the tensors of one dtype are
    flattened into one buffer, reduced by one all-reduce and copied back (one call instead of one per tensor).
    Every element is the sum of the same numbers as with one call per tensor; with two processes, a + b, the
    same bits."""
    if not dist.is_initialized():
        return
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])  # (Σ numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for tensor, part in zip(group, flat.split([t.numel() for t in group])):
            tensor.copy_(part.view_as(tensor))


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank: every rank gets the same answer (a host-side all-reduce)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=HOST_GROUP)
    return bool(value)


def barrier() -> None:
    """Wait until every rank gets here (one process: nothing to wait for)."""
    if dist.is_initialized():
        dist.barrier(group=HOST_GROUP)


def gather(items: List) -> List:
    """Concatenate every rank's list, in rank order."""
    if not dist.is_initialized():
        return items
    everything = [None] * world_size()
    dist.all_gather_object(everything, items)
    return [item for part in everything for item in part]


def teardown(wait_for_others: bool = False) -> None:
    """Leave the process group. After a clean end (`wait_for_others`) every rank first waits for the
    others, so that none destroys its group while another still uses it: gloo can then abort a process
    (SIGABRT, "terminate called without an active exception", seen once in CI at a two-process run's end).
    After an error no rank waits: the others may never come."""
    global HOST_GROUP
    if dist.is_initialized():
        if wait_for_others:
            barrier()
        dist.destroy_process_group()
    HOST_GROUP = None
