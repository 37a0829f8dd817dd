"""Command-line names shared by `distill`, `evaluate` and `bench`, the combinations that cannot run, and
the hardware that makes an option slow.

Not part of the method: unroll.py takes torch dtypes and callables; this module maps the flags' words
to them and says, in the flags' words, what is impossible or what would be slower than the default.

bf16 (`distill --autocast bf16`, `evaluate --precision bf16`, `bench --autocast bf16` and bench --eval's
bf16 evaluator) is faster than fp32 only where the hardware multiplies bf16 natively. The rule:
- CPU: bf16 is fast when torch's oneDNN bf16 kernels are enabled (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`)
  AND the CPU has bf16 instructions: AVX512-BF16 (`torch.cpu._is_avx512_bf16_supported()`) or AMX
  (`torch.cpu._is_amx_tile_supported()`). oneDNN also accepts a plain AVX512 CPU, where it emulates bf16
  (no faster than fp32), and an AVX2 CPU gets slow reference kernels (bf16 evaluation measured at 0.31× the
  reference evaluator on an AVX2 EPYC, against 3.9–6.9× on one with AVX512-BF16).
- CUDA: compute capability 8.0 or newer (Ampere on: bf16 tensor cores).
(Other CPUs, ARM ones included, count as slow: --allow-slow-bf16 runs bf16 there.)
Elsewhere a bf16 option stops with one `error:` line naming `--allow-slow-bf16`; with that flag it runs,
after one `notice:` line. It is never silently slower, and never silently replaced by fp32.
"""

import sys
from typing import Dict, Optional

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # --dtype
AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --autocast name → matmul dtype
ALLOW_SLOW_BF16 = "--allow-slow-bf16"


def option_problem(mode: str, autocast: str, device_type: str) -> Optional[str]:
    """Why this hypergradient mode and --autocast name cannot run on this device type, or None."""
    if mode == "finite-difference" and autocast != "none":
        return "--mode finite-difference needs full-precision gradients: do not combine it with --autocast"
    if autocast == "fp16" and device_type == "cpu":
        return (
            "--autocast fp16 is for CUDA (as in the authors' code; CPU fp16 matmuls are far slower than "
            "fp32); on the CPU use --autocast bf16"
        )
    return None


def _torch_cpu_flag(name: str) -> bool:
    """torch.cpu._is_<name>_supported() (private helpers of torch ≥ 2.3), False where this torch lacks it."""
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(probe()) if probe else False


def cpu_capability() -> Dict[str, object]:
    """What this CPU offers torch's kernels: the vector instruction set torch dispatches to (isa: DEFAULT,
    AVX2, AVX512, ...), AMX tiles, AVX512-BF16, whether oneDNN's bf16 kernels are enabled, and the rule's
    verdict (fast_bf16; module docstring)."""
    capability = {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "amx": _torch_cpu_flag("amx_tile"),
        "avx512_bf16": _torch_cpu_flag("avx512_bf16"),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    capability["fast_bf16"] = capability["mkldnn_bf16"] and (capability["avx512_bf16"] or capability["amx"])
    return capability


def describe_capability(capability: Dict[str, object]) -> str:
    """One phrase for tables and notices, e.g. "AVX2, no AMX, bf16: no" or "AVX512, AVX512-BF16, no AMX, bf16: yes"."""
    parts = [str(capability["isa"])] + (["AVX512-BF16"] if capability["avx512_bf16"] else [])
    parts += ["AMX" if capability["amx"] else "no AMX", "bf16: " + ("yes" if capability["fast_bf16"] else "no")]
    return ", ".join(parts)


def slow_bf16_reason(device: torch.device) -> Optional[str]:
    """Why bf16 matmuls would be slower than fp32 on this device (the module docstring's rule), or None."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return None if major >= 8 else f"this GPU (compute capability {major}.{minor}) has no bf16 tensor cores"
    capability = cpu_capability()
    if capability["fast_bf16"]:
        return None
    return f"this CPU ({describe_capability(capability)}) has no bf16 instructions that torch uses"


def check_bf16(option: str, device: torch.device, allowed: bool) -> None:
    """Refuse a bf16 option where bf16 is slow, unless `allowed` (--allow-slow-bf16): then say so, once."""
    why = slow_bf16_reason(device)
    if why is None:
        return
    if not allowed:
        raise UserError(
            f"{option}: {why}, so it would be slower than fp32 here; leave it out, or pass "
            f"{ALLOW_SLOW_BF16} to run it anyway"
        )
    print(f"notice: {option} runs slower than fp32 here: {why} ({ALLOW_SLOW_BF16})", file=sys.stderr, flush=True)
