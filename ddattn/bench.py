"""`python -m ddattn.bench`: what one outer step of distillation costs in time, memory and FLOPs, versus T.

One outer step is `unroll.hypergradient`: T inner SGD steps on the M distilled samples (each a forward
and a create_graph backward through BERT at sequence length S), the outer loss on a real batch at θ_T,
and the backward through all of it to D̃. Time grows with T in both modes; memory grows with T in `graph`
mode (the paper's Limitation (i)) and stays nearly flat in `recompute` mode, which pays for that with
one more forward + backward per inner step but the last.

How it measures (bench/README.md has the details):
- each configuration (S, T, mode, attn) runs in a fresh subprocess, so no allocator cache, lazy
  initialisation or memory high-water mark leaks from one configuration into the next (--in-process
  gives that up for a smoke test's speed);
- time: one warm-up outer step, then --repeat timed ones; median and min seconds;
- memory: the peak above what is resident once the model and inputs are loaded (and one warm-up step
  has run). CUDA: torch.cuda.max_memory_allocated. CPU: the kernel's resident-set high-water mark VmHWM,
  reset at that point by writing 5 to /proc/self/clear_refs (ru_maxrss cannot be reset, so it would
  report the model-load peak whenever that is the larger);
- FLOPs: torch.utils.flop_counter on one extra, untimed outer step counts the matmul and attention FLOPs
  that are actually dispatched, double backward included; achieved GFLOP/s is compared with the run's
  one matmul peak: a large dense matmul, best of PEAK_REPEATS, timed in a worker of its own (same device,
  dtype and threads) before and after the sweep, the best reading used for every row.

With no flags it runs the T sweep that shows Limitation (i) of the paper: S = DEFAULT_SEQ_LEN,
T ∈ DEFAULT_STEPS, graph and recompute, and prints each mode's memory per inner step (the slope of a
least-squares line through peak MB over T). `--model-shape bert-base` times the paper's model shape with
random weights, so no checkpoint is needed.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import checks, reference
from .distributed import local_device
from .errors import ArgumentParser, UserError, run_cli
from .files import load_pretrained, read_bert_config
from .flops import PEAK_REPEATS, PEAK_TOLERANCE, count_flops, matmul_gflops, peak_size, peak_summary, synchronize
from .method.bert import BertConfig, Params, fresh_model, param_shapes
from .method.distilled import ATTENTION_TYPES, DistilledConfig, DistilledData
from .method.kernels import KERNELS
from .method.kernels import resolve as resolve_kernels
from .method.unroll import MODES, hypergradient
from .opcount import count_ops
from .options import ALLOW_SLOW_BF16, AUTOCAST, DTYPES, check_bf16, cpu_capability, describe_capability, option_problem
from .paths import REPO_ROOT, resolve_checkpoint, write_json_atomic
from .plots import pyplot, save_png

EXACT_MODES = ("graph", "recompute")
REFERENCE = "reference"  # reference.hypergradient: the same step written the straightforward way
NUM_CLASSES = 2  # a binary task: M = 2 × shots distilled samples
MB = 2**20
DEFAULT_MODEL = "minilm-l6"
# The default sweep (no flags): T = 1, 2, 4, 8 in both exact modes at S = 64, the cpu preset's S. The whole
# run is 8 workers of 5 outer steps each (warm-up, 3 timed, 1 counted) and two peak readings: 1.6 TFLOP
# per round of the 8 rows (counted), about two minutes on 2 idle cores at the ~110 GFLOP/s a step reaches
# there; S = 128 (2.4 TFLOP per round) would come close to three. The paper's S = 512 is a flag away
# (--seq-len 512), as is one configuration (--steps 1).
DEFAULT_SEQ_LEN = 64
DEFAULT_STEPS = (1, 2, 4, 8)
MATMUL_PEAK = "matmul-peak"  # a worker spec's "measure": the run's matmul peak, not an outer step
MODEL_SHAPES = {"bert-base": BertConfig()}  # --model-shape: bert-base-uncased's published config


# --- measuring instruments (used inside the worker subprocess) -----------------------------------
def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (resident high-water mark) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise OSError(f"no {field} in /proc/self/status")


class PeakMemory:
    """Peak memory used between start() and stop(), above what was already in use at start()."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method, self.base = "torch.cuda.max_memory_allocated", torch.cuda.memory_allocated(self.device)
            return
        try:  # hand freed heap pages back to the OS, so they cannot hide in the baseline and be reused unseen
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset VmHWM to the current VmRSS
            self.method = "VmHWM after clear_refs"
        except OSError as e:
            self.method = f"ru_maxrss, includes the model-load peak (clear_refs not writable: {e.strerror})"
        self.base = _status_bytes("VmRSS")

    def stop(self):
        """(peak above the baseline, peak of the whole process), in bytes."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = _status_bytes("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        return max(0, peak - self.base), peak


# Operators that are matrix products (the attention kernels included); everything else is elementwise
# work, reductions, copies and the framework's own time.
MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_cudnn_attention_backward",
)


def op_seconds(fn, device: torch.device) -> Dict[str, float]:
    """Self time in seconds of each operator that `fn()` runs (torch.profiler), largest first: CPU time on a
    CPU; on a GPU the time of the kernels each operator launched (its CPU time there is only the launch)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]  # operators, not kernels
    times = {e.key: (e.self_device_time_total if on_gpu else e.self_cpu_time_total) / 1e6 for e in events}
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


# --- one configuration, in its own process ---------------------------------------------------------
def random_weights(config: BertConfig, seed: int, dtype: torch.dtype = torch.float32, device="cpu") -> Params:
    """Encoder and pooler weights of `config`'s shape as BERT initialises them (Devlin et al. 2019):
    N(0, 0.02²) matrices and embeddings, zero biases, LayerNorm weight 1 and bias 0. A step's time and
    memory depend on the shapes, not on the values (--model-shape)."""
    g = torch.Generator().manual_seed(seed)
    theta = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm.weight"):
            value = torch.ones(shape, dtype=dtype)
        elif name.endswith("bias"):
            value = torch.zeros(shape, dtype=dtype)
        else:
            value = torch.randn(shape, generator=g, dtype=dtype) * 0.02
        theta[name] = value.to(device)
    return theta


def shape_config(shape: str, layers: Optional[int] = None) -> BertConfig:
    """The published config of `shape`, cut to its first `layers` layers when given (--layers)."""
    config = MODEL_SHAPES[shape]
    return dataclasses.replace(config, num_layers=layers) if layers else config


def load_model(spec: dict, dtype: torch.dtype, device: torch.device):
    """(config, encoder + pooler θ): the checkpoint spec["model"], or random weights of spec["model_shape"]."""
    if spec.get("model_shape"):
        config = shape_config(spec["model_shape"], spec.get("layers"))
        return config, random_weights(config, spec["seed"], dtype, device)
    return load_pretrained(Path(spec["model"]), dtype=dtype, device=device)


def _worker_setup(spec: dict):
    """(device, dtype) of a worker spec, with its CPU thread count applied."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    return torch.device(spec["device"]), DTYPES[spec["dtype"]]


def matmul_peak_worker(spec: dict) -> dict:
    """One reading of the run's matmul peak, in a worker like the configurations' (same device, dtype, threads)."""
    device, dtype = _worker_setup(spec)
    return {
        **spec,
        "matmul_gflops": matmul_gflops(device, dtype, spec["matmul_size"]),
        "threads": torch.get_num_threads(),
    }


def step_inputs(spec: dict, config: BertConfig, dtype: torch.dtype, device) -> Tuple[DistilledData, dict]:
    """A freshly initialised D̃ of the spec's shape (Algorithm 1's start) on `device`, and a real batch of
    random token ids, unpadded (the worst case), on the CPU; both drawn from the spec's seed."""
    distilled_config = DistilledConfig(
        num_classes=NUM_CLASSES,
        seq_len=spec["seq_len"],
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        shots=spec["shots"],
        steps=spec["steps"],
        attention_type=spec["attn"],
    )
    checks.check_distilled_config(distilled_config, config.max_positions)
    g = torch.Generator().manual_seed(spec["seed"])
    distilled = DistilledData.initial(distilled_config, g, dtype=dtype, device=device)
    B, L = spec["real_batch"], spec["real_len"]
    batch = {
        "input_ids": torch.randint(1, config.vocab_size, (B, L), generator=g),
        "token_type_ids": torch.zeros(B, L, dtype=torch.long),
        "attention_mask": torch.ones(B, L, dtype=torch.long),
        "labels": torch.randint(0, NUM_CLASSES, (B,), generator=g),
    }
    return distilled, batch


def worker(spec: dict) -> dict:
    """Load the model, build θ_0, D̃ and a real batch, then time, measure and count `hypergradient`."""
    device, dtype = _worker_setup(spec)
    kernels = resolve_kernels(spec.get("kernels", "auto"), device)
    torch.manual_seed(spec["seed"])
    started = time.perf_counter()
    config, pretrained = load_model(spec, dtype, device)
    theta0 = fresh_model(pretrained, config, NUM_CLASSES, spec["seed"])
    distilled, batch = step_inputs(spec, config, dtype, device)
    whole_batch = {k: v.to(device) for k, v in batch.items()}
    micro_batches = [
        {k: v[rows].to(device) for k, v in batch.items()}
        for rows in torch.arange(spec["real_batch"]).split(spec["micro_batch"])
    ]
    load_s = time.perf_counter() - started

    def outer_step(mode=spec["mode"], autocast=spec["autocast"]):
        """(outer loss, hypergradient by name) of one outer step."""
        if mode == REFERENCE:
            loss, grads = reference.hypergradient(theta0, config, distilled, whole_batch)
        else:
            result = hypergradient(
                theta0, config, distilled, micro_batches, mode=mode, autocast=AUTOCAST[autocast], kernels=kernels
            )
            loss, grads = result.loss, result.grads
        synchronize(device)
        return loss, grads

    outer_step()  # warm-up: lazy initialisation, kernel selection, code pages faulted in
    memory = PeakMemory(device)
    memory.start()
    times, cpu_times = [], []  # wall clock, and CPU time of this process (robust to other work on the machine)
    for _ in range(spec["repeat"]):
        started, cpu_started = time.perf_counter(), time.process_time()
        loss, grads = outer_step()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    peak, process_peak = memory.stop()
    flops = count_flops(outer_step)  # one more step, untimed and after the memory reading
    ops = op_seconds(outer_step, device) if spec.get("profile") else None  # and one more, profiled
    op_count = count_ops(outer_step) if spec.get("ops") else {}  # and one more, its ops counted
    median = statistics.median(times)
    errors = None
    if spec["mode"] not in EXACT_MODES or spec["autocast"] != "none":  # approximate or reference: vs recompute
        _, exact = outer_step(mode="recompute", autocast="none")
        errors = {k: ((grads[k] - g).norm() / g.norm()).item() for k, g in exact.items()}
    return {
        **spec,
        "kernels": kernels,
        **op_count,
        "num_samples": distilled.config.num_samples,
        "outer_loss": loss.item(),
        "load_s": load_s,
        "relative_error": errors,
        "max_relative_error": max(errors.values()) if errors else 0.0,
        "times_s": times,
        "median_s": median,
        "min_s": min(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "peak_mb": peak / MB,
        "process_peak_mb": process_peak / MB,
        "memory_method": memory.method,
        "flops": flops,
        "gflop_per_step": flops / 1e9,
        "gflops_per_s": flops / median / 1e9,
        **(
            {
                "op_seconds": ops,
                "profiled_s": sum(ops.values()),
                "matmul_s": sum(t for op, t in ops.items() if op in MATMUL_OPS),
            }
            if ops
            else {}
        ),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "device_name": device_name(device),
    }


def run_here(spec: dict) -> dict:
    """Run one configuration (or one matmul peak reading) in this process and return its result (or its error)."""
    measure = matmul_peak_worker if spec.get("measure") == MATMUL_PEAK else worker
    try:
        return measure(spec)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        return {**spec, "error": "out of memory: " + (str(e).splitlines() or [""])[0]}
    except UserError as e:
        return {**spec, "error": str(e)}
    except Exception as e:  # a bug or a broken setup: still a row of the table, with the traceback on stderr
        import traceback

        traceback.print_exc()
        return {**spec, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}


def worker_main(spec_json: str) -> None:
    """`--worker SPEC`: run one configuration and print its result as one JSON line (exit 1 on failure)."""
    result = run_here(json.loads(spec_json))
    print(json.dumps(result), flush=True)
    if "error" in result:
        sys.exit(1)


def run_in_subprocess(spec: dict) -> dict:
    """Run one configuration in a fresh Python process and return its result (or its error)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "ddattn.bench", "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}"
        why += " (out of memory?)" if -proc.returncode == signal.SIGKILL else ""
    else:
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        why = errors[-1] if errors else f"exit status {proc.returncode}"
    return {**spec, "error": why}


# --- the run's matmul peak and memory slopes ------------------------------------------------------
def apply_peak(results: List[dict], peak: Optional[dict]) -> None:
    """Every row's "% of matmul peak" against the run's one peak, so that at equal FLOPs a faster row
    never shows a lower share than a slower one."""
    for r in results:
        if "error" not in r and peak:
            r["matmul_gflops"] = peak["gflops"]
            r["pct_of_matmul_peak"] = 100 * r["gflops_per_s"] / peak["gflops"]


def peak_text(peak: Optional[dict], settings: dict) -> str:
    """The peak's readings, spread and tolerance, in one sentence (with a warning when they moved)."""
    if not peak:
        return "No matmul peak could be measured: the % of peak column is empty."
    readings = " and ".join(f"{g:.1f}" for g in peak["readings_gflops"])
    text = (
        f"Matmul peak: {settings['matmul_size']}² {settings['dtype']} matmuls, best of {PEAK_REPEATS}, in a worker "
        f"with the rows' threads, before and after the sweep: {readings} GFLOP/s (spread "
        f"{100 * peak['spread']:.1f} %, tolerance {100 * peak['tolerance']:.0f} %); every row's % of peak "
        f"uses {peak['gflops']:.1f}."
    )
    if peak["moved"]:
        text += (
            f" **Warning: the readings moved by more than {100 * peak['tolerance']:.0f} %: the machine's "
            "speed changed during the run (other work?), so its times are suspect.**"
        )
    return text


def fit_line(xs: Sequence[float], ys: Sequence[float]):
    """(slope, intercept) of the least-squares line y ≈ intercept + slope · x (needs two distinct x)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs at least two distinct x")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return slope, mean_y - slope * mean_x


def series(results: List[dict]) -> Dict[tuple, List[dict]]:
    """The measured rows as lines over T: (mode label, S, attn) → rows sorted by T. The mode label carries
    the autocast type when there is one ("graph + bf16")."""
    groups: Dict[tuple, List[dict]] = {}
    for r in results:
        if "error" not in r:
            mode = r["mode"] + ("" if r.get("autocast", "none") == "none" else f" + {r['autocast']}")
            groups.setdefault((mode, r["seq_len"], r["attn"]), []).append(r)
    return {key: sorted(rows, key=lambda r: r["steps"]) for key, rows in groups.items()}


def memory_slopes(results: List[dict]) -> Dict[tuple, float]:
    """Peak memory per inner step, MB: the slope of the least-squares line through (T, peak MB) of each
    line of `series` measured at two or more T."""
    return {
        key: fit_line([r["steps"] for r in rows], [r["peak_mb"] for r in rows])[0]
        for key, rows in series(results).items()
        if len({r["steps"] for r in rows}) > 1
    }


def slope_text(results: List[dict]) -> List[str]:
    """One line per (S, attn): each mode's MB per inner step, and graph ÷ recompute where both were run."""
    slopes = memory_slopes(results)
    lines = []
    for S, attn in sorted({key[1:] for key in slopes}):
        modes = {mode: slope for (mode, s, a), slope in slopes.items() if (s, a) == (S, attn)}
        line = f"- S = {S}, attn = {attn}: " + ", ".join(f"{mode} {slope:.1f} MB/step" for mode, slope in modes.items())
        if {"graph", "recompute"} <= set(modes) and modes["recompute"] > 0:
            line += f"; graph ÷ recompute = {modes['graph'] / modes['recompute']:.1f}"
        lines.append(line)
    if lines:
        lines.insert(0, "Peak memory per inner step (slope of the least-squares line through peak MB over T):")
    return lines


# --- reporting -----------------------------------------------------------------------------------
COLUMNS = [
    "S",
    "T",
    "mode",
    "autocast",
    "attn",
    "median s",
    "min s",
    "peak MB",
    "process MB",
    "GFLOP/step",
    "GFLOP/s",
    "% of matmul peak",
    "rel. error vs exact",
]


OP_COLUMNS = ["aten ops", "host syncs"]  # with --ops (opcount.py)


def table_row(r: dict, ops: bool = False) -> List[str]:
    cells = [str(r["seq_len"]), str(r["steps"]), r["mode"], r.get("autocast", "none"), r["attn"]]
    width = len(COLUMNS) + ops * len(OP_COLUMNS)
    if "error" in r:
        return cells + ["—"] * (width - 5) + [r["error"].replace("|", "/")]
    error = f"{r['max_relative_error']:.1e}" if r.get("relative_error") else "exact"
    share = f"{r['pct_of_matmul_peak']:.0f} %" if "pct_of_matmul_peak" in r else "—"
    counts = [f"{r['aten_ops']:,}", str(r["host_syncs"])] if ops else []
    return cells + [
        f"{r['median_s']:.3g}",
        f"{r['min_s']:.3g}",
        f"{r['peak_mb']:.0f}",
        f"{r['process_peak_mb']:.0f}",
        f"{r['gflop_per_step']:.4g}",
        f"{r['gflops_per_s']:.3g}",
        share,
        error,
        *counts,
        "",
    ]


def model_label(settings: dict) -> str:
    if settings.get("model_shape"):
        shape, layers = settings["model_shape"], settings.get("layers")
        depth = f" ({layers} of its {MODEL_SHAPES[shape].num_layers} layers)" if layers else ""
        return f"{shape} shape{depth} with random weights"
    return Path(settings["model"]).name


def markdown(results: List[dict], env: dict) -> str:
    s = env["settings"]
    ops = bool(s.get("ops"))
    lines = [
        f"# ddattn benchmark: {env['device']} ({env['device_name']})",
        "",
        f"{env['cpu']} ({describe_capability(env['cpu_capability'])}), {env['threads']} threads, "
        f"torch {env['torch']}, {s['dtype']}, model {model_label(s)}, "
        f"M = {NUM_CLASSES * s['shots']} distilled samples, real batch {s['real_batch']}×{s['real_len']} "
        f"in micro-batches of {min(s.get('micro_batch') or s['real_batch'], s['real_batch'])}, "
        f"kernels {s.get('kernels', 'cpu')} (ddattn's rows), "
        f"median of {s['repeat']} outer steps after 1 warm-up; {env['date']}.",
        "Peak MB: above the loaded model and inputs; process MB: the whole process (MB = 2^20 bytes). "
        "Rel. error: the largest ‖g − g_exact‖ / ‖g_exact‖ over the distilled tensors, against an fp32 "
        "`recompute` step on the same inputs. "
        + peak_text(env.get("matmul_peak"), s)
        + (" Aten ops and host syncs: one more outer step under torch.profiler (ddattn/opcount.py)." if ops else ""),
        "",
        "| " + " | ".join(COLUMNS + OP_COLUMNS * ops + ["error"]) + " |",
        "|" + "---:|" * 2 + "---|" * 3 + "---:|" * (len(COLUMNS) - 6) + "---|" + "---:|" * (2 * ops) + "---|",
    ]
    lines += ["| " + " | ".join(table_row(r, ops)) + " |" for r in results]
    slopes = slope_text(results)
    lines += [""] + slopes if slopes else []
    return "\n".join(lines) + "\n"


def reference_rows(results: List[dict]) -> Dict[tuple, dict]:
    """The reference's measured rows, by (S, T, attn)."""
    return {(r["seq_len"], r["steps"], r["attn"]): r for r in results if r["mode"] == REFERENCE and "error" not in r}


def reference_ratios(results: List[dict]) -> List[dict]:
    """For each ddattn row, its time and memory as a ratio of the reference row of the same S, T and attn."""
    references = reference_rows(results)
    ratios = []
    for r in results:
        ref = references.get((r["seq_len"], r["steps"], r["attn"]))
        if r["mode"] != REFERENCE and "error" not in r and ref:
            ratios.append(
                {
                    "row": r,
                    "time": r["median_s"] / ref["median_s"],
                    "min_time": r["min_s"] / ref["min_s"],
                    "cpu_time": r["median_cpu_s"] / ref["median_cpu_s"],
                    "peak": r["peak_mb"] / ref["peak_mb"],
                    "process": r["process_peak_mb"] / ref["process_peak_mb"],
                    "reference": ref,
                }
            )
    return ratios


def profile_table(results: List[dict]) -> str:
    """Where one profiled step's time goes (--profile): matrix products against everything else. The
    matmul seconds alone bound what any removal of the other work could reach."""
    references = reference_rows(results)
    lines = [
        "",
        "Where the time goes (`--profile`: one more step under torch.profiler; self time of each operator: "
        "CPU time on a CPU, its kernels' time on a GPU). "
        "*Matmul-only ÷ reference*: this step's matmul seconds over the reference's median step, the ratio "
        "it would reach if all its other work took no time.",
        "",
        "| S | T | mode | profiled s | matmul s | other s | matmul share | largest other operators "
        "| matmul-only ÷ reference |",
        "|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if "matmul_s" not in r:
            continue
        others = [(op, t) for op, t in r["op_seconds"].items() if op not in MATMUL_OPS][:3]
        ref = references.get((r["seq_len"], r["steps"], r["attn"]))
        bound = f"{r['matmul_s'] / ref['median_s']:.2f}" if ref and r is not ref else "—"
        lines.append(
            f"| {r['seq_len']} | {r['steps']} | {r['mode']} | {r['profiled_s']:.3f} | {r['matmul_s']:.3f} | "
            f"{r['profiled_s'] - r['matmul_s']:.3f} | {100 * r['matmul_s'] / r['profiled_s']:.0f} % | "
            + ", ".join(f"{op.removeprefix('aten::')} {t:.3f}" for op, t in others)
            + f" | {bound} |"
        )
    return "\n".join(lines) + "\n"


def ratio_table(results: List[dict]) -> str:
    """ddattn ÷ reference (ddattn/reference.py), both measured in this run: below 1 is better."""
    lines = [
        "",
        "ddattn ÷ reference (the same step written the straightforward way, ddattn/reference.py), "
        "measured in this run; below 1 is better.",
        "",
        "| S | T | mode | autocast | attn | reference s | ddattn s | time ratio (median) | time ratio (min) "
        "| CPU-time ratio | reference peak MB | ddattn peak MB | peak ratio | process MB ratio |",
        "|" + "---:|" * 2 + "---|" * 3 + "---:|" * 9,
    ]
    for x in reference_ratios(results):
        r, ref = x["row"], x["reference"]
        lines.append(
            f"| {r['seq_len']} | {r['steps']} | {r['mode']} | {r['autocast']} | {r['attn']} | "
            f"{ref['median_s']:.3g} | {r['median_s']:.3g} | **{x['time']:.2f}** | {x['min_time']:.2f} | "
            f"{x['cpu_time']:.2f} | "
            f"{ref['peak_mb']:.0f} | {r['peak_mb']:.0f} | **{x['peak']:.2f}** | {x['process']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: List[dict], path: Path) -> None:
    """Time and peak memory versus T, one line per mode (and per S and attn when several were run)."""
    plt = pyplot()
    if plt is None:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
        return
    groups, slopes = series(results), memory_slopes(results)
    if not groups:
        print("no plot: every configuration failed")
        return
    several = len({key[1:] for key in groups}) > 1
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, rows in sorted(groups.items()):
        mode, S, attn = key
        label = f"{mode}, S={S}, attn={attn}" if several else mode
        steps = [r["steps"] for r in rows]
        ax_time.plot(steps, [r["median_s"] for r in rows], marker="o", label=label)
        slope = f" ({slopes[key]:.0f} MB/step)" if key in slopes else ""
        ax_mem.plot(steps, [r["peak_mb"] for r in rows], marker="o", label=label + slope)
    ax_time.set(xlabel="T (inner steps)", ylabel="seconds per outer step (median)", title="time")
    ax_mem.set(xlabel="T (inner steps)", ylabel="peak MB above the loaded model", title="memory")
    all_steps = sorted({r["steps"] for rows in groups.values() for r in rows})
    for ax in (ax_time, ax_mem):
        if all_steps[-1] >= 8 * all_steps[0]:
            ax.set_xscale("log", base=2)  # T = 1, 2, 4, ... 32 evenly spaced
        ax.set_xticks(all_steps, [str(t) for t in all_steps])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
    _, S, attn = next(iter(groups))
    fig.suptitle(f"ddattn outer step on {results[0]['device']}" + ("" if several else f", S={S}, attn={attn}"))
    fig.tight_layout()
    save_png(fig, path, dpi=120)
    print(f"wrote {path}")


# --- command line ----------------------------------------------------------------------------------
def _flat(values: Sequence[str], convert, flag: str) -> list:
    """`--steps 1 2 4` or `--steps 1,2,4` → [1, 2, 4] (duplicates dropped, order kept)."""
    out = []
    for text in ",".join(values).split(","):
        try:
            value = convert(text.strip())
        except ValueError:
            raise UserError(f"{flag}: {text!r} is not a valid value") from None
        if value not in out:
            out.append(value)
    return out


def parse_args(argv: Optional[Sequence[str]]):
    p = ArgumentParser(
        prog="python -m ddattn.bench",
        description="Time, peak memory and FLOPs of one distillation outer step, per configuration.",
        epilog="example: python -m ddattn.bench --seq-len 512 --steps 1 --no-plot",
    )
    p.add_argument(
        "--model", help=f"converted checkpoint: a name under weights/ or a directory (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--model-shape",
        choices=sorted(MODEL_SHAPES),
        help="instead of --model: random weights of this published shape (bert-base: bert-base-uncased's "
        "12 layers, hidden 768, 12 heads, 30,522 tokens), so the paper's step is timed without its weights",
    )
    p.add_argument(
        "--layers",
        type=int,
        help="with --model-shape: only its first N layers (the same width, less time; a smoke test's size)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument(
        "--seq-len",
        nargs="+",
        default=[str(DEFAULT_SEQ_LEN)],
        metavar="S",
        help=f"S, tokens per distilled sample (list; default {DEFAULT_SEQ_LEN}; the paper's is 512)",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=[str(t) for t in DEFAULT_STEPS],
        metavar="T",
        help=f"T, inner SGD steps (list; default {' '.join(map(str, DEFAULT_STEPS))}; one configuration: --steps 1)",
    )
    p.add_argument(
        "--mode",
        nargs="+",
        default=list(EXACT_MODES),
        metavar="MODE",
        help="hypergradient modes: graph, recompute (exact; default both), finite-difference (approximate)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also time the same step written the straightforward way (ddattn/reference.py) before each "
        "configuration, and print ddattn's time and memory as ratios of it",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="run one more step under torch.profiler and report the matmul share of its time",
    )
    p.add_argument(
        "--autocast",
        nargs="+",
        default=["none"],
        metavar="DTYPE",
        help="matmul precision: none (default), bf16, fp16 (torch.autocast; approximate)",
    )
    p.add_argument(
        ALLOW_SLOW_BF16,
        action="store_true",
        help="run bf16 (--autocast bf16, the --eval bf16 evaluator) even where this CPU or GPU has no fast "
        "bf16, which is refused (--autocast) or left out (--eval) otherwise (ddattn/options.py)",
    )
    p.add_argument(
        "--attn", nargs="+", default=["cls"], metavar="ATTN", help="attention-label types: none, cls, all (default cls)"
    )
    p.add_argument("--shots", type=int, default=1, help="distilled samples per class (2 classes)")
    p.add_argument("--real-batch", type=int, default=32, help="real examples in the outer loss")
    p.add_argument("--real-len", type=int, default=64, help="tokens per real example")
    p.add_argument(
        "--micro-batch",
        type=int,
        help="real examples per forward/backward (distill's default: 16 under "
        "--kernels cpu, the whole real batch under gpu)",
    )
    p.add_argument(
        "--kernels",
        choices=KERNELS,
        default="auto",
        help="kernel policy of ddattn's rows: cpu, gpu, auto (gpu on CUDA, else cpu; kernels.py)",
    )
    p.add_argument(
        "--ops",
        action="store_true",
        help="count one more outer step's aten ops and host syncs (torch.profiler; ddattn/opcount.py)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--repeat", type=int, default=3, help="timed outer steps after one warm-up")
    p.add_argument(
        "--matmul-size",
        type=int,
        help=f"n of the n×n matmul whose best rate (of {PEAK_REPEATS}, before and after the sweep) is the "
        "run's peak (default 2048, 8192 on CUDA)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads per worker (default 0: torch's choice)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration and peak reading in this process, not each in a fresh one: no isolation "
        "(memory and warm-up carry over), so only for a smoke test (bench/gpu_check.sh --dry-run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json",
        type=Path,
        help="results file (default bench/results/<device>.json); the .md table and .png plot go beside it",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    evaluation = p.add_argument_group("evaluation throughput (--eval; ddattn/bench_eval.py)")
    evaluation.add_argument(
        "--eval",
        action="store_true",
        help="time N evaluated models (T steps on D̃ + the eval split) against a reference evaluator, "
        "and the most fp32 arithmetic allows at this machine's matmul peak",
    )
    evaluation.add_argument("--task", help="the task whose evaluation split is used (with a fresh D̃)")
    evaluation.add_argument("--run", type=Path, help="or a distillation run directory: its task and distilled_best")
    evaluation.add_argument("--n-models", type=int, default=2, help="models, each timed by every evaluator (default 2)")
    evaluation.add_argument("--eval-limit", type=int, default=0, help="only the split's first N rows (default: all)")
    evaluation.add_argument("--eval-batch-size", type=int, default=64, help="ddattn's evaluation batch size")
    evaluation.add_argument(
        "--models-at-once",
        default="auto",
        metavar="K|auto",
        help="ddattn scores K models in one batched computation (as python -m ddattn.evaluate; auto: 1 on a CPU)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # --worker SPEC: how the parent runs one configuration
    args = p.parse_args(argv)
    if args.model_shape and args.model:
        raise UserError("--model-shape replaces --model's checkpoint with random weights: give one of them")
    if args.layers is not None and not args.model_shape:
        raise UserError("--layers cuts a --model-shape's depth; a checkpoint (--model) keeps its own")
    if args.model_shape and args.eval:
        raise UserError("--model-shape is for the outer step; --eval needs a real checkpoint (--model)")
    args.model = args.model or (None if args.model_shape else DEFAULT_MODEL)
    return args


def environment(argv: Optional[Sequence[str]], threads: int) -> dict:
    """Where and when this was measured, and with which command."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m ddattn.bench", *(sys.argv[1:] if argv is None else argv)]),
    }


def eval_main(args, argv: Optional[Sequence[str]]) -> None:
    """--eval: evaluation throughput, ddattn (fp32, bf16) against the reference evaluator, one process."""
    from . import bench_eval

    if min(args.n_models, args.eval_batch_size) < 1 or args.eval_limit < 0:
        raise UserError("--n-models and --eval-batch-size must be ≥ 1, --eval-limit ≥ 0")
    result = bench_eval.run(args)
    env = environment(argv, args.threads)
    json_path = args.json or REPO_ROOT / "bench" / "results" / f"eval-{result['task']}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, {"environment": env, **result})
    table = bench_eval.markdown(result, env)
    json_path.with_suffix(".md").write_text(table)
    print("\n" + table + f"\nwrote {json_path} and {json_path.with_suffix('.md')}")


def model_config(args):
    """(BertConfig, checkpoint directory or None): --model-shape's published config, or --model's."""
    if args.model_shape:
        return shape_config(args.model_shape, args.layers), None
    model_dir = resolve_checkpoint(args.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"checkpoint {model_dir} not found: run `make weights` (python -m ddattn.convert) "
            "or pass --model DIR (or --model-shape bert-base for random weights)"
        )
    return read_bert_config(model_dir / "config.json"), model_dir


def sweep_axes(args) -> Dict[str, list]:
    """The lists the flags give, by spec key: S, T, modes, autocast types, attention types."""
    return {
        "seq_len": _flat(args.seq_len, int, "--seq-len"),
        "steps": _flat(args.steps, int, "--steps"),
        "mode": _flat(args.mode, str, "--mode"),
        "autocast": _flat(args.autocast, str, "--autocast"),
        "attn": _flat(args.attn, str, "--attn"),
    }


def configurations(axes: Dict[str, list], reference: bool) -> List[dict]:
    """Every configuration of the sweep, in the order it runs: for each S, attn and T, the reference first
    (with --reference: just before the rows it is compared with), then every mode × autocast."""
    variants = [(REFERENCE, "none")] if reference else []
    variants += [(mode, autocast) for mode in axes["mode"] for autocast in axes["autocast"]]
    return [
        dict(seq_len=S, steps=T, mode=mode, autocast=autocast, attn=attn)
        for S in axes["seq_len"]
        for attn in axes["attn"]
        for T in axes["steps"]
        for mode, autocast in variants
    ]


def check_flags(args, axes: Dict[str, list], config: BertConfig, device: torch.device) -> None:
    """Every flag of the outer-step bench, before anything runs (one `error:` line for the first bad one)."""
    seq_lens, steps, modes, autocasts, attns = (axes[k] for k in ("seq_len", "steps", "mode", "autocast", "attn"))
    problems = sorted(filter(None, (option_problem(m, a, device.type) for m in modes for a in autocasts)))
    shape_layers = MODEL_SHAPES[args.model_shape].num_layers if args.model_shape else None
    checks = [
        (
            all(1 <= s <= config.max_positions for s in seq_lens),
            f"--seq-len must be between 1 and the model's {config.max_positions} positions, not {seq_lens}",
        ),
        (all(t >= 1 for t in steps), f"--steps must be ≥ 1, not {steps}"),
        (set(modes) <= set(MODES), f"unknown --mode {sorted(set(modes) - set(MODES))}; choose from {list(MODES)}"),
        (
            set(autocasts) <= set(AUTOCAST),
            f"unknown --autocast {sorted(set(autocasts) - set(AUTOCAST))}; choose from {list(AUTOCAST)}",
        ),
        (not problems, problems[0] if problems else ""),
        (
            set(attns) <= set(ATTENTION_TYPES),
            f"unknown --attn {sorted(set(attns) - set(ATTENTION_TYPES))}; choose from {list(ATTENTION_TYPES)}",
        ),
        (
            1 <= args.real_len <= config.max_positions,
            f"--real-len must be between 1 and the model's {config.max_positions} positions, not {args.real_len}",
        ),
        (
            min(args.shots, args.real_batch, args.micro_batch or 1, args.repeat) >= 1,
            "--shots, --real-batch, --micro-batch and --repeat must be ≥ 1",
        ),
        (args.threads >= 0, "--threads must be ≥ 0 (0: torch's default)"),
        (args.matmul_size is None or args.matmul_size >= 1, "--matmul-size must be ≥ 1"),
        (
            args.layers is None or 1 <= args.layers <= shape_layers,
            f"--layers must be between 1 and the shape's {shape_layers} layers, not {args.layers}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if "bf16" in autocasts:
        check_bf16("--autocast bf16", device, args.allow_slow_bf16)


def read_peak(settings: dict, when: str, run) -> Optional[float]:
    """One reading of the matmul peak in its own worker (by `run`), printed; None (and the reason) if it failed."""
    r = run({**settings, "measure": MATMUL_PEAK})
    if "error" in r:
        print(f"matmul peak {when}: error: {r['error']}", flush=True)
        return None
    print(f"matmul peak {when}: {r['matmul_gflops']:.1f} GFLOP/s", flush=True)
    return r["matmul_gflops"]


def worker_settings(args, device: torch.device, model_dir: Optional[Path]) -> dict:
    """What every configuration of the sweep shares (its spec is this plus S, T, mode, autocast, attn)."""
    kernels = resolve_kernels(args.kernels, device)
    return dict(
        model=str(model_dir) if model_dir else None,
        model_shape=args.model_shape,
        layers=args.layers,
        device=str(device),
        dtype=args.dtype,
        shots=args.shots,
        real_batch=args.real_batch,
        real_len=args.real_len,
        kernels=kernels,
        micro_batch=args.micro_batch or (16 if kernels == "cpu" else args.real_batch),
        repeat=args.repeat,
        seed=args.seed,
        profile=args.profile,
        ops=args.ops,
        threads=args.threads,
        matmul_size=peak_size(device, args.matmul_size),
    )


def run_sweep(specs: List[dict], run, json_path: Path, env: dict) -> List[dict]:
    """Each configuration by `run`, one line each, the JSON rewritten after every one."""
    results = []
    for i, spec in enumerate(specs, 1):
        print(
            f"[{i}/{len(specs)}] S={spec['seq_len']} T={spec['steps']} {spec['mode']} autocast={spec['autocast']} "
            f"attn={spec['attn']}: ",
            end="",
            flush=True,
        )
        r = run(spec)
        results.append(r)
        print(
            f"error: {r['error']}"
            if "error" in r
            else f"{r['median_s']:.3g} s/step, peak {r['peak_mb']:.0f} MB, {r['gflop_per_step']:.4g} GFLOP, "
            f"{r['gflops_per_s']:.3g} GFLOP/s",
            flush=True,
        )
        write_json_atomic(json_path, {"environment": env, "results": results})  # a sweep cut short keeps its rows
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    if args.eval:
        return eval_main(args, argv)
    device = local_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device.type}: only cpu and cuda are benchmarked")
    config, model_dir = model_config(args)
    axes = sweep_axes(args)
    check_flags(args, axes, config, device)

    json_path = args.json or REPO_ROOT / "bench" / "results" / f"{device.type}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    settings = worker_settings(args, device, model_dir)
    env = {
        "device": device.type,
        "device_name": device_name(device),
        **environment(argv, args.threads),
        "settings": settings,
    }
    specs = [dict(settings, **c) for c in configurations(axes, args.reference)]
    run = run_here if args.in_process else run_in_subprocess
    readings = [read_peak(settings, "before the sweep", run)]
    results = run_sweep(specs, run, json_path, env)
    readings = [g for g in readings + [read_peak(settings, "after the sweep", run)] if g is not None]
    env["matmul_peak"] = peak_summary(readings) if readings else None
    apply_peak(results, env["matmul_peak"])
    write_json_atomic(json_path, {"environment": env, "results": results})
    table = (
        markdown(results, env)
        + (ratio_table(results) if args.reference else "")
        + (profile_table(results) if args.profile else "")
    )
    md_path = json_path.with_suffix(".md")
    md_path.write_text(table)
    print("\n" + table)
    if env["matmul_peak"] and env["matmul_peak"]["moved"]:
        print(
            f"warning: the matmul peak moved by {100 * env['matmul_peak']['spread']:.0f} % during the run "
            f"(tolerance {100 * PEAK_TOLERANCE:.0f} %): the machine's speed changed, so the times are suspect"
        )
    print(f"wrote {json_path} and {md_path}")
    if not args.no_plot:
        plot(results, json_path.with_suffix(".png"))
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} configurations failed; see their error column")


if __name__ == "__main__":
    run_cli(main)
