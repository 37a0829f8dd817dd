"""Command-line names shared by `distill` and `bench`, and the combinations that cannot run.

Not part of the method: unroll.py takes torch dtypes and callables; this module maps the flags' words
to them and says, in the flags' words, what is impossible.
"""

from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}                  # --dtype
AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}       # --autocast name → matmul dtype


def option_problem(mode: str, autocast: str, device_type: str) -> Optional[str]:
    """Why this hypergradient mode and --autocast name cannot run on this device type, or None."""
    if mode == "finite-difference" and autocast != "none":
        return "--mode finite-difference needs full-precision gradients: do not combine it with --autocast"
    if autocast == "fp16" and device_type == "cpu":
        return ("--autocast fp16 is for CUDA (as in the authors' code; CPU fp16 matmuls are far slower than "
                "fp32); on the CPU use --autocast bf16")
    return None
