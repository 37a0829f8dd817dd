"""The kernel policy: how the same maths is cut into operators, chosen by device (`--kernels`).

Not part of the method: both policies compute the same numbers (to rounding; tests/test_kernels.py).
- "cpu": cache-sized pieces and sums whose bits do not depend on the thread count — attention one head at a
  time, LayerNorm's affine part and η̃ g written out so that their gradients are summed over rows first,
  the real batch in micro-batches of 16. On a CPU these are faster (temporaries stay in cache) and make
  one process and torchrun ranks agree to the bit.
- "gpu": as few, large operators as the maths allows — all heads of a layer in one batched matmul, hidden
  states as rows (B·S, D), Linear and LayerNorm with hand-written double backwards (layers.py), plain
  products and sums, the real batch in one piece. On a GPU every operator costs a launch by the host
  (microseconds, whatever its size), so the count of operators, not the cache, sets the time.
- "auto": "gpu" on a CUDA device, "cpu" anywhere else.
"""

import torch

KERNELS = ("auto", "cpu", "gpu")
# Bytes of (rows, Sq, S) attention temporaries that the gpu policy lets one attention call hold; beyond it
# the rows (batch × heads) are taken in chunks (attention.py).
ATTENTION_BUDGET = 2**30


def resolve(kernels: str, device) -> str:
    """ "cpu" or "gpu": the policy `kernels` names, "auto" decided by the device (a torch.device or a name)."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernel policy {kernels!r}; choose from {', '.join(KERNELS)}")
    if kernels == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return kernels
