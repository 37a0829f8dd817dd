"""Arithmetic and the rate a device does it at, for the benchmarks (bench.py, bench_eval.py): the FLOPs a
function dispatches (torch's FLOP counter) and the device's matmul peak (the best of a few timed matmuls)."""

import time
from typing import List, Optional

import torch

PEAK_REPEATS = 10  # each peak reading: the best of this many matmuls, after one warm-up
PEAK_TOLERANCE = 0.10  # readings before and after the timed work further apart than this: say so


def peak_size(device: torch.device, requested: Optional[int] = None) -> int:
    """n of the n×n matmul whose best rate is a run's peak (--matmul-size): large enough to fill the device."""
    return requested or (8192 if device.type == "cuda" else 2048)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device, dtype: torch.dtype, m: int, k: Optional[int] = None, n: Optional[int] = None
) -> float:
    """What this device does at its best: GFLOP/s of an (m × k) by (k × n) matmul (2mkn FLOPs; k and n default
    to m, a square one), best of PEAK_REPEATS after one warm-up."""
    k, n = k or m, n or m
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best / 1e9


def count_flops(fn) -> int:
    """FLOPs that `fn()` dispatches: matmuls and attention, forward and (double) backward."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    # PyTorch's table knows the CUDA attention kernels, not the CPU one the outer loss's fused attention uses.
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(
            q, k, v
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda grad, q, k, v, *_, out_shape=None, **__: (
            sdpa_backward_flop_count(grad, q, k, v)
        ),
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn()
    return counter.get_total_flops()


def peak_summary(readings: List[float]) -> dict:
    """The run's one matmul peak from its readings (before and after the timed work): the best of them, and how
    far they moved apart ((best − worst) ÷ best; above PEAK_TOLERANCE the machine's speed changed)."""
    best = max(readings)
    spread = (best - min(readings)) / best
    return {
        "readings_gflops": readings,
        "gflops": best,
        "spread": spread,
        "tolerance": PEAK_TOLERANCE,
        "moved": spread > PEAK_TOLERANCE,
    }
