"""The settings of a distillation run: presets, flags, checks, and the saved settings of a resumed run.

`python -m ddattn.distill` reads its command line here: a preset (paper, cpu, quick) fills what the
flags leave open, every value is checked before anything is written, and `--resume RUN_DIR` reads the
run's config.json back (checked) and lets only --max-steps, --epochs and --device change (and the flags
of how this process runs, PROCESS, which are never saved). Either way the result is one frozen
`Settings`, built once and never changed afterwards; config.json is `saved_settings`.
"""

import argparse
import math
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from . import checks, tasks
from .distributed import local_device
from .errors import ArgumentParser, UserError
from .method.distilled import ATTENTION_TYPES, LABEL_TYPES, DistilledConfig
from .method.kernels import KERNELS
from .method.unroll import MODES
from .options import ALLOW_SLOW_BF16, AUTOCAST, DTYPES, check_bf16, option_problem
from .paths import runs_dir
from .rundir import RunDirectory

HELD_OUT = ("random", "sentences")  # --held-out: which training rows the held-out slice is drawn from
REAL_ROWS = ("all", "sentences")  # --real-rows: which training rows the real batches come from

DESCRIPTION = "Learn a distilled dataset with attention labels (paper Algorithm 1)."
STOPPING = (
    "SIGTERM or SIGUSR1 (a scheduler's preemption), or --time-limit: the outer step in flight is finished, "
    "checkpoint.pt written, one line says how to resume, and the exit status is 143. Ctrl-C stops at once "
    "(exit 130) and keeps the last checkpoint."
)

# paper: the paper's settings (Sec. 3.1, Appendix B), for bert-base-uncased on a GPU; on the default
# checkpoint its random init and η̃_0 = 1e-2 stay at chance for 150+ outer steps (results/sweeps/README.md).
# cpu: what works on 2 CPU cores within ~20 minutes of distillation, chosen by the sweeps in results/sweeps/
# on held-out *training* data. gpu: the cpu preset's choices with more outer steps: the paper's budget (30
# epochs, no cap on outer steps), or where the budget study (results/budget.md) measured 1×, 3× and 10× the
# cpu preset's steps, the one with the lowest held-out loss (TASK_PRESETS). quick: a smoke-sized run.
# Without --preset: cpu when no GPU is visible, else gpu; paper only when asked for.
_CPU = dict(
    seq_len=64,
    epochs=3,
    max_steps=450,
    val_every=50,
    val_size=500,
    val_models=2,
    max_length=128,
    inner_lr=1e-1,
    lr_inner=1e-1,
    init="real",
    attn_init="model",
)
PRESETS = {
    "paper": dict(seq_len=512, epochs=30, val_size=500, val_models=5),
    "cpu": _CPU,
    "gpu": {**_CPU, "epochs": 30, "max_steps": 0},
    "quick": dict(seq_len=64, epochs=3, val_size=128, val_models=2, max_length=64, inner_lr=1e-1),
}
# A preset's changes for one task, each chosen on held-out training data (results/sweeps/README.md). MRPC:
# under the cpu preset with soft labels every model answers the majority class; with hard labels it does not,
# and 3 shots per class have a lower held-out loss than 1 on each of three seeds' held-out slices. SST-2:
# α = 3e-2 (x̃, labels, attention labels) has a lower held-out loss than 1e-2 on each of three seeds' slices;
# its dev split is whole sentences and its training split mostly phrases cut from sentences, so the
# held-out slice is whole training sentences, their phrases left out of training (results/sweeps/README.md).
# The gpu preset's budget: of 1×, 3× and 10× the cpu preset's outer steps, the lowest held-out loss on
# seed 0's slice (results/budget.md): MRPC 3× (9 epochs, 891 steps: 0.5328, against 0.5420 at 10× and 0.5982
# at 1×), SST-2 10× (4,500 steps: 0.3813, against 0.4263 at 3× and 0.4497 at 1×), AG News 10× (30 epochs, the
# paper's budget, 4,200 steps: 0.3394, against 0.3618 at 3× and 0.3939 at 1×). Other tasks: 30 epochs.
_TASK_CHOICES = {"mrpc": dict(label_type="hard", shots=3), "sst2": dict(lr=3e-2, held_out="sentences")}
_GPU_BUDGETS = {"mrpc": dict(epochs=9), "sst2": dict(max_steps=4500)}
TASK_PRESETS = {
    **{("cpu", task): change for task, change in _TASK_CHOICES.items()},
    **{
        ("gpu", task): {**_TASK_CHOICES.get(task, {}), **_GPU_BUDGETS.get(task, {})}
        for task in _TASK_CHOICES.keys() | _GPU_BUDGETS.keys()
    },
}


def task_preset(preset: str, task: Optional[str]) -> dict:
    """What `preset` changes for `task` (TASK_PRESETS), or nothing."""
    return TASK_PRESETS.get((preset, task), {})


# The distilled data's own defaults (DistilledConfig) are those of its flags: one place for each default.
_DISTILLED = {f.name: f.default for f in fields(DistilledConfig) if f.default is not MISSING}


@dataclass(frozen=True)
class Settings:
    """Every setting of one run, as an immutable record: what it computes (saved in config.json; a preset
    fills in the None ones), then how this process runs (PROCESS: never saved, free to change on
    --resume), `resume` (always None once a run is open) and `preset_reason` (how the preset was chosen)."""

    task: Optional[str] = None
    model: str = "minilm-l6"
    data_dir: Optional[str] = None
    name: Optional[str] = None
    preset: str = "paper"
    shots: int = _DISTILLED["shots"]
    steps: int = _DISTILLED["steps"]
    batch_size: int = _DISTILLED["batch_size"]  # --samples-per-step
    data_per_step: str = "same"
    label_type: str = _DISTILLED["label_type"]
    attention_type: str = _DISTILLED["attention_type"]
    attn_weight: float = _DISTILLED["attn_weight"]
    inner_lr: float = _DISTILLED["inner_lr_init"]  # --eta-init
    init: str = "random"
    attn_init: str = "random"
    lr: float = 1e-2
    lr_x: Optional[float] = None
    lr_labels: Optional[float] = None
    lr_attn: Optional[float] = None
    lr_inner: Optional[float] = None  # --lr-eta
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup: float = 0.1
    clip: float = 1.0
    real_batch_size: int = 32
    micro_batch_size: int = 0
    max_length: int = 128
    held_out: str = "random"
    real_rows: str = "all"
    balance_classes: bool = False
    mode: str = "recompute"
    autocast: str = "none"
    kernels: str = "auto"
    val_every: int = 0
    seed: int = 0
    device: Optional[str] = None
    dtype: str = "float32"
    max_steps: int = 0
    train_limit: int = 0
    checkpoint_every: int = 25
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    text_columns: Optional[str] = None
    label_column: Optional[str] = None
    labels: Optional[str] = None
    seq_len: Optional[int] = None
    epochs: Optional[int] = None
    val_size: Optional[int] = None
    val_models: Optional[int] = None
    log_every: int = 10
    time_limit: Optional[float] = None
    resume: Optional[str] = None
    preset_reason: Optional[str] = None


# How this process runs, not what the run computes: never saved in config.json, free to change on --resume.
PROCESS = {"log_every": Settings.log_every, "time_limit": Settings.time_limit}
# What a run computes, with its defaults: the fields saved in config.json.
DEFAULTS = {f.name: f.default for f in fields(Settings) if f.name not in (*PROCESS, "resume", "preset_reason")}


# Flags renamed so that one concept has one name; the old names still work, with a one-line note.
RENAMED = {"--inner-lr": "--eta-init", "--lr-inner": "--lr-eta", "--batch-size": "--samples-per-step"}


def parse_args(argv: Optional[Sequence[str]]):
    """The settings a command line asks for: `Settings` for a new run; for `--resume RUN_DIR`, the flags
    given (resumed_settings reads the rest from the run)."""
    flags = parse_flags(argv)
    vars(flags).pop("overwrite", None)
    vars(flags).pop("allow_slow_bf16", None)
    return flags if flags.resume else from_flags(flags)


def parse_flags(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line as given: None for every flag left out."""
    p = ArgumentParser(prog="python -m ddattn.distill", description=DESCRIPTION, epilog=STOPPING, renamed=RENAMED)
    p.add_argument("--task", help=f"task to distil: {', '.join(tasks.TASK_NAMES)}")
    p.add_argument("--model", help="converted checkpoint: a name under weights/ or a directory")
    p.add_argument("--data-dir", help="task data directory (default data/, env DDATTN_DATA_DIR)")
    p.add_argument("--name", help="run name under runs/<task>/ (default: derived from the settings)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run (its saved settings are used; "
        "--max-steps and --epochs extend it, --device moves it)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=argparse.SUPPRESS,  # how to open the run, not a setting
        help="start afresh in a run directory that holds a run",
    )
    g = p.add_argument_group("your own data (--task custom): CSV/TSV files with a header row")
    g.add_argument("--train-file", help="training file (.csv or .tsv)")
    g.add_argument("--eval-file", help="evaluation file, same columns")
    g.add_argument("--text-columns", help="one or two text column names, comma-separated")
    g.add_argument("--label-column", help="label column name")
    g.add_argument("--labels", help="label values as written in the file, comma-separated, in class order")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="cpu: what works on 2 CPU cores in ~20 min; gpu: the cpu preset's choices with more outer "
        "steps (30 epochs; MRPC 9, SST-2 4,500 steps: results/budget.md); paper: the paper's settings, for "
        "bert-base-uncased on a GPU; quick: a smoke run [default: cpu without a GPU, else gpu]",
    )
    g = p.add_argument_group("distilled data (Sec. 2)")
    g.add_argument("--shots", type=int, help="distilled samples per class")
    g.add_argument("--steps", type=int, help="T, inner SGD steps")
    g.add_argument(
        "--data-per-step",
        choices=["same", "different"],
        help="same distilled batch at every step, or its own per step (Table 3)",
    )
    g.add_argument(
        "--samples-per-step",
        dest="batch_size",
        type=int,
        help="distilled samples per inner step (0: from --data-per-step)",
    )
    g.add_argument("--seq-len", type=int, help="S, tokens per distilled sample")
    g.add_argument(
        "--label-type",
        choices=LABEL_TYPES,
        help="hard: fixed one-hot; soft: softmax of learned logits (the "
        "paper); unrestricted: learned raw values [cpu preset on mrpc: hard]",
    )
    g.add_argument("--attention-type", choices=ATTENTION_TYPES, help="attention labels: none, cls (the paper), all")
    g.add_argument("--attn-weight", type=float, help="λ, weight of the attention loss (Eq. 7)")
    g.add_argument(
        "--eta-init", dest="inner_lr", type=float, help="η̃_0, initial learned inner learning rate (paper: 1e-2 or 1e-1)"
    )
    g.add_argument("--init", choices=["random", "real"], help="x̃ init: N(0,1) (paper) or embeddings of real examples")
    g.add_argument(
        "--attn-init",
        choices=["random", "model"],
        help="ã init: N(0,1) logits (paper) or the pretrained "
        "model's own attention on the initial x̃, so that the attention loss starts at 0",
    )
    g = p.add_argument_group("outer optimisation (Algorithm 1, Appendix B)")
    g.add_argument("--lr", type=float, help="α, Adam learning rate for every distilled tensor (paper 1e-3, 1e-2, 1e-1)")
    for name, dest, what in (
        ("x", "lr_x", "x̃"),
        ("labels", "lr_labels", "ỹ"),
        ("attn", "lr_attn", "ã"),
        ("eta", "lr_inner", "η̃"),
    ):
        g.add_argument(f"--lr-{name}", dest=dest, type=float, help=f"α for {what} (default --lr)")
    g.add_argument("--optimizer", choices=["adam", "adamw"])
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup", type=float, help="fraction of outer steps with linear warmup, then linear decay")
    g.add_argument("--clip", type=float, help="gradient-norm clipping of the hypergradient")
    g.add_argument("--epochs", type=int, help="epochs over the real training split (paper 30)")
    g.add_argument("--real-batch-size", type=int, help="real examples per outer step (paper 32)")
    g.add_argument(
        "--micro-batch-size",
        type=int,
        help="real examples per forward/backward; the real batch's gradient "
        "is summed over its micro-batches (and processes): less memory, same result up to float rounding "
        "(0: 16 under --kernels cpu, the whole batch under gpu; fewer so that every process gets one)",
    )
    g.add_argument("--max-length", type=int, help="truncation length of real examples")
    g.add_argument(
        "--balance-classes",
        action="store_true",
        default=None,
        help="real batches with as many examples of each class (a minority class repeats within an epoch; "
        "outer steps per epoch unchanged)",
    )
    g.add_argument(
        "--real-rows",
        choices=REAL_ROWS,
        help="training rows the real batches come from: all, or whole sentences only (rows no other row "
        "contains: SST-2's sentences, not their phrases; single-text tasks)",
    )
    g.add_argument(
        "--mode",
        choices=list(MODES),
        help="hypergradient: whole graph (paper), per-step recompute (memory "
        "flat in T), or finite-difference (approximate vector–Hessian products, bench/README.md)",
    )
    g.add_argument(
        "--autocast",
        choices=sorted(AUTOCAST),
        help="matmul precision (approximate; bf16 is faster on CPUs "
        "with AVX512-BF16 or AMX, fp16 is for CUDA; errors in bench/README.md)",
    )
    g.add_argument(
        ALLOW_SLOW_BF16,
        action="store_true",
        default=argparse.SUPPRESS,  # how to run, not a setting
        help="run --autocast bf16 even where this CPU or GPU has no fast bf16 (refused otherwise: it "
        "would be slower than fp32; ddattn/options.py)",
    )
    g.add_argument("--max-steps", type=int, help="stop after this many outer steps (0: all epochs)")
    g.add_argument("--train-limit", type=int, help="use only the first N training examples (0: all)")
    g = p.add_argument_group("validation and checkpoints")
    g.add_argument("--val-size", type=int, help="held-out training examples for validation")
    g.add_argument(
        "--held-out",
        choices=HELD_OUT,
        help="the held-out slice: random training rows, or whole sentences only, their phrases then left "
        "out of training (SST-2: its dev split holds whole sentences; single-text tasks)",
    )
    g.add_argument("--val-models", type=int, help="K fresh models trained on D̃ per validation")
    g.add_argument("--val-every", type=int, help="validate every N outer steps (0: once per epoch)")
    g.add_argument("--checkpoint-every", type=int, help="write checkpoint.pt every N outer steps")
    g.add_argument(
        "--log-every",
        type=int,
        help="append to metrics.jsonl and update the progress bar every N outer "
        "steps (and at each validation and checkpoint): the only times the loop waits to read the device",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="checkpoint and stop (exit 143) before this "
        "many seconds from the start have passed, as on a stop signal (also before SLURM_JOB_END_TIME)",
    )
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    g.add_argument(
        "--kernels",
        choices=KERNELS,
        help="how the maths is cut into operators: cpu (cache-sized, "
        "the same bits on any thread count), gpu (few large operators), auto (gpu on CUDA, else cpu)",
    )
    g.add_argument("--dtype", choices=sorted(DTYPES), help="float32, or float64 for exactness checks")
    defaults = {**DEFAULTS, **PROCESS}
    for action in p._actions:  # show the effective defaults: the preset's, else the paper's
        presets = {name: values[action.dest] for name, values in PRESETS.items() if action.dest in values}
        if presets:
            action.help = (
                (action.help or "")
                + " ["
                + ", ".join(f"{name} preset: {value}" for name, value in presets.items())
                + "]"
            )
        elif defaults.get(action.dest) not in (None, ""):
            action.help = (action.help or "") + f" [default: {defaults[action.dest]}]"
    return p.parse_args(argv)


def from_flags(flags: argparse.Namespace) -> "Settings":
    """A new run's settings: the flags given, then the preset's values, then DEFAULTS; file paths made
    absolute (so that --resume works from anywhere)."""
    given = {k: v for k, v in vars(flags).items() if v is not None}
    if "preset" not in given:
        given["preset"], given["preset_reason"] = default_preset(flags.device)
    given.update({k: str(Path(given[k]).resolve()) for k in ("train_file", "eval_file") if k in given})
    preset = given["preset"]
    return Settings(**{**DEFAULTS, **PRESETS[preset], **task_preset(preset, given.get("task")), **given})


def default_preset(device: Optional[str]) -> Tuple[str, str]:
    """(preset, why) when --preset is not given: the paper's budget (30 epochs) needs a GPU, so a machine
    without one gets the cpu preset, and one with a GPU the gpu preset (the cpu preset's choices, the
    paper's budget); the paper preset itself is for bert-base-uncased and only taken when asked for."""
    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        return "gpu", "a GPU is visible"
    return "cpu", "no GPU" + (" visible" if device is None else f" (--device {device})")


def saved_settings(args) -> dict:
    """What config.json records: every setting, less how this invocation came to them and runs."""
    return {k: v for k, v in vars(args).items() if k != "preset_reason" and k not in PROCESS}


def step_batch_size(args, num_classes: int) -> int:
    """Distilled samples per inner step: --samples-per-step, or with --data-per-step different (and no
    --samples-per-step) each step's own C × shots / T samples."""
    if args.data_per_step != "different" or args.batch_size:
        return args.batch_size
    if args.shots % args.steps:
        raise UserError(f"--data-per-step different needs --shots ({args.shots}) divisible by --steps ({args.steps})")
    return num_classes * args.shots // args.steps


def preset_summary(args) -> str:
    steps = f" (at most {args.max_steps} outer steps)" if args.max_steps else ""
    alpha_inner = f" (η̃: {args.lr_inner:g})" if args.lr_inner else ""
    return (
        f"S = {args.seq_len}, {args.epochs} epochs{steps}, η̃_0 = {args.inner_lr:g}, α = {args.lr:g}{alpha_inner}, "
        f"λ = {args.attn_weight:g}, --init {args.init}, --attn-init {args.attn_init}, real examples cut at "
        f"{args.max_length} tokens"
        + "".join(
            f", --{k.replace('_', '-')} {v} for {args.task}" for k, v in task_preset(args.preset, args.task).items()
        )
    )


def distilled_config(args, bert_config, num_classes: int) -> DistilledConfig:
    """D̃'s shape and inner-loop settings; args.batch_size is already resolved (step_batch_size, in
    load_or_start for a new run; a resumed run's config.json holds the resolved value)."""
    config = DistilledConfig(
        num_classes=num_classes,
        seq_len=args.seq_len,
        hidden_size=bert_config.hidden_size,
        num_layers=bert_config.num_layers,
        num_heads=bert_config.num_heads,
        shots=args.shots,
        steps=args.steps,
        batch_size=args.batch_size,
        label_type=args.label_type,
        attention_type=args.attention_type,
        attn_weight=args.attn_weight,
        inner_lr_init=args.inner_lr,
    )
    checks.check_distilled_config(config, bert_config.max_positions)
    return config


def check_settings(args) -> None:
    positive = ["epochs", "real_batch_size", "max_length", "val_models", "checkpoint_every"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, not {getattr(args, name)}")
    for name in ["lr", "lr_x", "lr_labels", "lr_attn", "lr_inner"]:
        value = getattr(args, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    if not 0 <= args.warmup < 1:
        raise UserError(f"--warmup is a fraction in [0, 1), not {args.warmup}")
    if args.micro_batch_size < 0:
        raise UserError(f"--micro-batch-size must be ≥ 0 (0: automatic), not {args.micro_batch_size}")
    if args.val_size < 1:
        raise UserError(f"--val-size must be ≥ 1, not {args.val_size}")
    checks.check_seed(args.seed)
    for name in ["max_steps", "train_limit", "val_every"]:
        if getattr(args, name) < 0:
            raise UserError(
                f"--{name.replace('_', '-')} must be ≥ 0 (0: {ZERO_MEANS[name]}), not {getattr(args, name)}"
            )
    if not (args.clip > 0 and math.isfinite(args.clip)):
        raise UserError(f"--clip must be a positive number (the largest gradient norm), not {args.clip}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise UserError(f"--weight-decay must be ≥ 0, not {args.weight_decay}")
    for name, choices in (("held_out", HELD_OUT), ("real_rows", REAL_ROWS)):
        if getattr(args, name) not in choices:
            raise UserError(f"--{name.replace('_', '-')} is one of {', '.join(choices)}, not {getattr(args, name)!r}")


def check_process(args) -> None:
    """The PROCESS flags of a new or a resumed run."""
    if args.log_every < 1:
        raise UserError(f"--log-every must be ≥ 1, not {args.log_every}")
    if args.time_limit is not None and not (args.time_limit > 0 and math.isfinite(args.time_limit)):
        raise UserError(f"--time-limit must be a positive number of seconds, not {args.time_limit}")


ZERO_MEANS = {"max_steps": "all epochs", "train_limit": "all examples", "val_every": "once per epoch"}


def check_options(args, allow_slow_bf16: bool) -> None:
    """--mode and --autocast on the run's device: no impossible combination (options.option_problem), and
    bf16 only where it is fast or with --allow-slow-bf16 (options.check_bf16); a known --kernels (a resumed
    run's config.json may say anything)."""
    if args.kernels not in KERNELS:
        raise UserError(f"unknown kernel policy {args.kernels!r}; choose from {', '.join(KERNELS)}")
    device = local_device(args.device)
    problem = option_problem(args.mode, args.autocast, device.type)
    if problem:
        raise UserError(problem)
    if args.autocast == "bf16":
        check_bf16("--autocast bf16", device, allow_slow_bf16)


def settings_name(s) -> str:
    """What a run is, as a name: labels, attention labels, shots, steps, data per step, S, seed."""
    return f"{s.label_type}-{s.attention_type}-s{s.shots}-t{s.steps}-{s.data_per_step}-S{s.seq_len}-seed{s.seed}"


def run_name(prefix: str, lr: float, inner_lr: float) -> str:
    """The default run name (runs/<task>/<name>): `prefix` and the two learning rates a sweep varies."""
    return f"{prefix}-lr{lr:g}-eta{inner_lr:g}"


def load_or_start(argv):
    """(settings, run directory, checkpoint or None) for a new run or for `--resume RUN_DIR`."""
    flags = parse_flags(argv)
    overwrite = vars(flags).pop("overwrite", False)
    allow_slow_bf16 = vars(flags).pop("allow_slow_bf16", False)
    if flags.resume:
        if overwrite:
            raise UserError("--overwrite starts a run afresh; it cannot be combined with --resume")
        run = RunDirectory(Path(flags.resume))
        if not (run.path / "config.json").is_file() or not run.checkpoint.is_file():
            raise UserError(f"{flags.resume} has no config.json/checkpoint.pt to resume from")
        args = resumed_settings(flags)
        check_process(args)
        check_options(args, allow_slow_bf16)
        return args, run, checks.load_checkpoint(run.checkpoint)
    args = from_flags(flags)
    if not args.task:
        raise UserError(f"--task is required: one of {', '.join(tasks.TASK_NAMES)}")
    task = tasks.task_from_settings(vars(args))  # an unknown task fails here, before anything is written
    if task.name == "custom":
        tasks.read_examples(task, "eval")  # and a bad --eval-file, not after hours of distillation
    check_settings(args)
    check_process(args)
    checks.check_fits_model(args.model, args.max_length)
    check_options(args, allow_slow_bf16)
    args = replace(
        args,
        name=args.name or run_name(settings_name(args), args.lr, args.inner_lr),
        batch_size=step_batch_size(args, task.num_classes),
    )
    run = RunDirectory(runs_dir() / args.task / args.name, overwrite)
    run.refuse_clobbering()  # early; checked again under the run's lock
    return args, run, None


RESUME_CHANGES = ("max_steps", "epochs", "device")  # what --resume may change: extend a run, or move it
# absent from older runs: their values
ADDED_LATER = {
    "autocast": "none",
    "dtype": "float32",
    "attn_init": "random",
    "kernels": "auto",
    "held_out": "random",
    "real_rows": "all",
    "balance_classes": False,
}


def with_added_later(saved: dict) -> dict:
    """A distillation's saved settings with those it predates filled in: ADDED_LATER's values, which it ran."""
    return {**saved, **{name: value for name, value in ADDED_LATER.items() if name not in saved}}


def read_saved_settings(path: Path) -> dict:
    """A run's config.json, completed where the run predates a setting (`with_added_later`; a run from before
    micro-batches took its real batch whole); any other missing setting is an error."""
    saved = checks.read_json(path)
    checks.require_fields(saved, [name for name in DEFAULTS if name not in ("micro_batch_size", *ADDED_LATER)], path)
    saved.setdefault("micro_batch_size", saved["real_batch_size"])  # runs from before micro-batches
    return with_added_later(saved)


def resumed_settings(args) -> "Settings":
    """The saved settings of `--resume RUN_DIR` (checked), with --max-steps, --epochs and --device applied.
    Any other flag is refused unless it repeats the saved value: never silently dropped."""
    path = Path(args.resume) / "config.json"
    saved = read_saved_settings(path)
    wrong = [name for name in DEFAULTS if not fits_type(name, saved[name])]
    if wrong:
        raise UserError(f"{path}: {wrong[0]} is {saved[wrong[0]]!r}, not of type {expected_type(wrong[0]).__name__}")
    try:
        check_settings(argparse.Namespace(**saved))  # before Settings: an unknown key is not the problem
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    given = {k: v for k, v in vars(args).items() if v is not None and k != "resume"}
    given.update({k: str(Path(given[k]).resolve()) for k in ("train_file", "eval_file") if k in given})
    conflicts = [k for k, v in given.items() if k not in (*RESUME_CHANGES, *PROCESS) and v != saved.get(k)]
    if conflicts:
        flag = conflicts[0]
        raise UserError(
            f"--{flag.replace('_', '-')} {given[flag]} conflicts with the run's {saved.get(flag)!r} "
            f"({path}); a resumed run keeps its settings: only --max-steps, --epochs and --device "
            "may change"
        )
    if "epochs" in given and "max_steps" not in given and saved["max_steps"]:
        raise UserError(
            f"the run stops at --max-steps {saved['max_steps']} ({path}), so --epochs alone cannot extend "
            "it; give a larger --max-steps too (0: all epochs)"
        )
    known = {k: v for k, v in {**saved, **given}.items() if k in DEFAULTS or k in PROCESS}  # a stray key is ignored
    settings = Settings(**known)
    check_settings(settings)
    return settings


def expected_type(name: str) -> type:
    """The type of a setting's default (the paper preset's where the default is None)."""
    default = DEFAULTS[name] if DEFAULTS[name] is not None else PRESETS["paper"].get(name)
    return type(default)


def fits_type(name: str, value) -> bool:
    """A saved setting has its default's type (an int where a float is expected is fine); one without a
    default (task, files, per-group learning rates, ...) may hold anything."""
    kind = expected_type(name)
    if kind is type(None):
        return True
    if kind is float and isinstance(value, int):
        kind = int
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
