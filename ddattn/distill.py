"""`python -m ddattn.distill`: learn a distilled dataset with attention labels (paper Algorithm 1).

    for each outer step s:                                       one real mini-batch (x_s, y_s)
        θ_0 ~ p(θ_0)                                             pretrained BERT + fresh random head; one
                                                                 draw per step estimates Eq. 5's expectation
        θ_T = T SGD steps on D̃ from θ_0                         Eq. 7   (unroll.py)
        D̃ ← D̃ − α ∇_D̃ L(x_s, y_s, θ_T)                          Eq. 3–5, with Adam, warmup + linear decay,
                                                                 gradient clipping at 1.0 (Appendix B)

Everything a run produces lives in `runs/<task>/<name>/`: config.json (every setting), checkpoint.pt
(distilled data + optimiser + scheduler + step, written atomically), distilled_last / distilled_best
.safetensors, metrics.jsonl (one line per outer step), validation.jsonl and run.log. `--resume RUN_DIR`
continues from checkpoint.pt; every random draw is a pure function of (seed, step), so a resumed run on
the CPU ends bit-identical to one that was never interrupted. Every file is checked when read back
(checks.py), one process at a time works on a run (a lock, rundir.py), and a run started afresh in a
used directory begins with no files of the old one.

Validation trains K fresh models on D̃ and scores them on a held-out slice of the *training* split,
never on the evaluation split that results are reported on (the authors' code selects on the GLUE dev
set; we do not). The best D̃ by validation loss is kept.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from . import checks
from . import data as taskdata
from . import distributed
from . import rundir
from . import seeds
from .bert import BertConfig, bert_forward, fresh_model, load_pretrained
from .card import write_card
from .distilled import ATTENTION_TYPES, LABEL_TYPES, DistilledConfig, DistilledData
from .errors import ArgumentParser, UserError, first_line, run_cli
from .evaluate import eval_batches, evaluate_distilled, mean_std
from .paths import atomic_path, resolve_checkpoint, runs_dir
from .options import AUTOCAST, DTYPES, option_problem
from .unroll import MODES, hypergradient, row_sum

# paper: the paper's settings (Sec. 3.1, Appendix B), for a GPU. cpu: what works on 2 CPU cores within
# ~20 minutes of distillation, chosen by the sweep in results/sweeps/ on held-out *training* data.
# quick: a smoke-sized run (MRPC in ~7 minutes). Without --preset: cpu when no GPU is visible, else paper.
PRESETS = {
    "paper": dict(seq_len=512, epochs=30, val_size=500, val_models=5),
    "cpu": dict(seq_len=64, epochs=3, max_steps=450, val_every=50, val_size=500, val_models=2, max_length=128,
                inner_lr=1e-1, lr_inner=1e-1, init="real", attn_init="model"),
    "quick": dict(seq_len=64, epochs=3, val_size=128, val_models=2, max_length=64, inner_lr=1e-1),
}
DEFAULTS = dict(task=None, model="minilm-l6", data_dir=None, name=None, preset="paper", shots=1, steps=1,
                batch_size=0, data_per_step="same", label_type="soft", attention_type="cls", attn_weight=1.0,
                inner_lr=1e-2, init="random", attn_init="random", lr=1e-2, lr_x=None, lr_labels=None, lr_attn=None, lr_inner=None,
                optimizer="adam", weight_decay=0.0, warmup=0.1, clip=1.0, real_batch_size=32, micro_batch_size=0,
                max_length=128, mode="recompute", autocast="none", val_every=0, seed=0, device=None,
                dtype="float32", max_steps=0, train_limit=0, checkpoint_every=25, train_file=None, eval_file=None,
                text_columns=None, label_column=None, labels=None, seq_len=None, epochs=None, val_size=None,
                val_models=None)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m ddattn.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", help=f"task to distil: {', '.join(taskdata.TASK_NAMES)}")
    p.add_argument("--model", help="converted checkpoint: a name under weights/ or a directory")
    p.add_argument("--data-dir", help="task data directory (default data/, env DDATTN_DATA_DIR)")
    p.add_argument("--name", help="run name under runs/<task>/ (default: derived from the settings)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (its saved settings are used; "
                   "--max-steps and --epochs extend it, --device moves it)")
    p.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,   # how to open the run, not a setting
                   help="start afresh in a run directory that holds a run")
    g = p.add_argument_group("your own data (--task custom): CSV/TSV files with a header row")
    g.add_argument("--train-file", help="training file (.csv or .tsv)")
    g.add_argument("--eval-file", help="evaluation file, same columns")
    g.add_argument("--text-columns", help="one or two text column names, comma-separated")
    g.add_argument("--label-column", help="label column name")
    g.add_argument("--labels", help="label values as written in the file, comma-separated, in class order")
    p.add_argument("--preset", choices=sorted(PRESETS), help="paper: the paper's settings (GPU); cpu: what works on 2 CPU "
                   "cores in ~20 min; quick: a smoke run [default: cpu without a GPU, else paper]")
    g = p.add_argument_group("distilled data (Sec. 2)")
    g.add_argument("--shots", type=int, help="distilled samples per class")
    g.add_argument("--steps", type=int, help="T, inner SGD steps")
    g.add_argument("--data-per-step", choices=["same", "different"], help="same distilled batch at every step, or its own per step (Table 3)")
    g.add_argument("--batch-size", type=int, help="distilled samples per inner step (0: from --data-per-step)")
    g.add_argument("--seq-len", type=int, help="S, tokens per distilled sample")
    g.add_argument("--label-type", choices=LABEL_TYPES)
    g.add_argument("--attention-type", choices=ATTENTION_TYPES, help="attention labels: none, cls (the paper), all")
    g.add_argument("--attn-weight", type=float, help="λ, weight of the attention loss (Eq. 7)")
    g.add_argument("--inner-lr", type=float, help="η̃_0, initial learned inner learning rate (paper: 1e-2 or 1e-1)")
    g.add_argument("--init", choices=["random", "real"], help="x̃ init: N(0,1) (paper) or embeddings of real examples")
    g.add_argument("--attn-init", choices=["random", "model"], help="ã init: N(0,1) logits (paper) or the pretrained "
                   "model's own attention on the initial x̃, so that the attention loss starts at 0")
    g = p.add_argument_group("outer optimisation (Algorithm 1, Appendix B)")
    g.add_argument("--lr", type=float, help="α, Adam learning rate for every distilled tensor (paper 1e-3, 1e-2, 1e-1)")
    for name in ("x", "labels", "attn", "inner"):
        g.add_argument(f"--lr-{name}", type=float, help=f"α for the {name} group (default --lr)")
    g.add_argument("--optimizer", choices=["adam", "adamw"])
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup", type=float, help="fraction of outer steps with linear warmup, then linear decay")
    g.add_argument("--clip", type=float, help="gradient-norm clipping of the hypergradient")
    g.add_argument("--epochs", type=int, help="epochs over the real training split (paper 30)")
    g.add_argument("--real-batch-size", type=int, help="real examples per outer step (paper 32)")
    g.add_argument("--micro-batch-size", type=int, help="real examples per forward/backward; the real batch's gradient "
                   "is summed over its micro-batches (and processes): less memory, same result up to float rounding "
                   "(0: 16, or fewer so that every process gets one)")
    g.add_argument("--max-length", type=int, help="truncation length of real examples")
    g.add_argument("--mode", choices=list(MODES), help="hypergradient: whole graph (paper), per-step recompute (memory "
                   "flat in T), or finite-difference (approximate vector–Hessian products, bench/README.md)")
    g.add_argument("--autocast", choices=sorted(AUTOCAST), help="matmul precision (approximate; bf16 is faster on CPUs "
                   "with AVX512-BF16, fp16 is for CUDA; errors in bench/README.md)")
    g.add_argument("--max-steps", type=int, help="stop after this many outer steps (0: all epochs)")
    g.add_argument("--train-limit", type=int, help="use only the first N training examples (0: all)")
    g = p.add_argument_group("validation and checkpoints")
    g.add_argument("--val-size", type=int, help="held-out training examples for validation")
    g.add_argument("--val-models", type=int, help="K fresh models trained on D̃ per validation")
    g.add_argument("--val-every", type=int, help="validate every N outer steps (0: once per epoch)")
    g.add_argument("--checkpoint-every", type=int, help="write checkpoint.pt every N outer steps")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="float32, or float64 for exactness checks")
    for action in p._actions:    # show the effective defaults: the preset's, else the paper's
        presets = {name: values[action.dest] for name, values in PRESETS.items() if action.dest in values}
        if presets:
            action.help = (action.help or "") + " [" + ", ".join(f"{name} preset: {value}" for name, value in presets.items()) + "]"
        elif DEFAULTS.get(action.dest) not in (None, ""):
            action.help = (action.help or "") + f" [default: {DEFAULTS[action.dest]}]"
    args = p.parse_args(argv)
    if args.resume:
        return args
    if args.preset is None:
        args.preset, args.preset_reason = default_preset(args.device)
    settings = {**DEFAULTS, **PRESETS[args.preset], "resume": None}
    settings.update({k: v for k, v in vars(args).items() if v is not None})
    return argparse.Namespace(**settings)


def default_preset(device: Optional[str]) -> Tuple[str, str]:
    """(preset, why) when --preset is not given: the paper's settings need a GPU (S = 512 × 30 epochs is
    hours per epoch on a CPU), so a machine without one gets the cpu preset."""
    if (device or "cuda").startswith("cuda") and torch.cuda.is_available():
        return "paper", "a GPU is visible"
    return "cpu", "no GPU" + (" visible" if device is None else f" (--device {device})")


def saved_settings(args) -> dict:
    """What config.json records: every setting, less how this invocation came to them."""
    return {**{k: v for k, v in vars(args).items() if k != "preset_reason"}, "resume": None}


def preset_summary(args) -> str:
    steps = f" (at most {args.max_steps} outer steps)" if args.max_steps else ""
    alpha_inner = f" (η̃: {args.lr_inner:g})" if args.lr_inner else ""
    return (f"S = {args.seq_len}, {args.epochs} epochs{steps}, η̃_0 = {args.inner_lr:g}, α = {args.lr:g}{alpha_inner}, "
            f"λ = {args.attn_weight:g}, --init {args.init}, --attn-init {args.attn_init}, real examples cut at "
            f"{args.max_length} tokens")


def distilled_config(args, bert_config, num_classes: int) -> DistilledConfig:
    if args.data_per_step == "different" and not args.batch_size:
        if args.shots % args.steps:
            raise UserError(f"--data-per-step different needs --shots ({args.shots}) divisible by --steps ({args.steps})")
        args.batch_size = num_classes * args.shots // args.steps
    config = DistilledConfig(num_classes=num_classes, seq_len=args.seq_len, hidden_size=bert_config.hidden_size,
                             num_layers=bert_config.num_layers, num_heads=bert_config.num_heads, shots=args.shots,
                             steps=args.steps, batch_size=args.batch_size, label_type=args.label_type,
                             attention_type=args.attention_type, attn_weight=args.attn_weight,
                             inner_lr_init=args.inner_lr)
    config.validate(bert_config.max_positions)
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
    seeds.check_seed(args.seed)
    for name in ["max_steps", "train_limit", "val_every"]:
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 0 (0: {ZERO_MEANS[name]}), not {getattr(args, name)}")
    if not (args.clip > 0 and math.isfinite(args.clip)):
        raise UserError(f"--clip must be a positive number (the largest gradient norm), not {args.clip}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise UserError(f"--weight-decay must be ≥ 0, not {args.weight_decay}")


ZERO_MEANS = {"max_steps": "all epochs", "train_limit": "all examples", "val_every": "once per epoch"}


def check_fits_model(args) -> None:
    """--max-length within the checkpoint's positions, read from its config.json before the weights are
    loaded (a missing checkpoint is reported when they are; --seq-len by DistilledConfig.validate)."""
    path = resolve_checkpoint(args.model) / "config.json"
    positions = BertConfig.from_json(path).max_positions if path.is_file() else args.max_length
    if args.max_length > positions:
        raise UserError(f"--max-length {args.max_length} exceeds the {positions} positions of checkpoint {args.model}")


# --- pieces of the loop --------------------------------------------------------------------------
def init_from_real(distilled: DistilledData, pretrained, train, seed: int) -> None:
    """x̃_i ← the input embeddings of one random real training example of class i mod C (padded/cut to S):
    its word embeddings, plus, for the second text of a pair, the difference between the token-type
    embeddings 1 and 0 — distilled samples are read with token type 0, so this makes x̃_i enter BERT
    exactly as the real pair does."""
    g = seeds.generator("real-init", seed)
    C, S = distilled.config.num_classes, distilled.config.seq_len
    word, token_type = pretrained["embeddings.word"], pretrained["embeddings.token_type"]
    with torch.no_grad():
        for i in range(distilled.config.num_samples):
            candidates = torch.nonzero(train.labels == i % C).flatten()
            if len(candidates) == 0:
                raise UserError(f"--init real: the training split has no example of class {i % C}")
            row = candidates[torch.randint(len(candidates), (1,), generator=g)]
            real = {k: v[0].to(distilled.x.device) for k, v in taskdata.collate(train, row, width=S).items()}
            distilled.x[i] = word[real["input_ids"]] + token_type[real["token_type_ids"]] - token_type[0]   # (S, D)


def init_attention_from_model(distilled: DistilledData, pretrained, config) -> None:
    """ã_i ← the pretrained model's own attention on x̃_i: the logits are its attention scores, so
    softmax(ã) equals its attention and the attention loss (Eq. 6) starts at 0 instead of at a random
    target's KL. (The head does not matter: attention is computed before it.)"""
    kind = distilled.config.attention_type
    if kind == "none":
        return
    with torch.no_grad():
        out = bert_forward(pretrained, config, inputs_embeds=distilled.x, attention=kind)
        distilled.attn_logits.copy_(out.cls_scores if kind == "cls" else out.scores)   # (M, L, H, S[, S])


def make_optimizer(distilled: DistilledData, args):
    group_lr = {"x": args.lr_x, "label_logits": args.lr_labels, "attn_logits": args.lr_attn, "lr_raw": args.lr_inner}
    groups = [{"params": [tensor], "lr": group_lr[name] or args.lr, "name": name}
              for name, tensor in distilled.learnable().items()]
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, weight_decay=args.weight_decay)


def clip_grad_norm(parameters: List[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm, ε = 1e-6) with the norm summed by `row_sum`, which gives
    the same bits on any number of threads: one process and torchrun ranks clip alike."""
    norm = torch.stack([row_sum(p.grad * p.grad) for p in parameters]).sum().sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.mul_(scale)
    return norm


def linear_schedule(optimizer, total_steps: int, warmup: float):
    """Linear warmup over the first `warmup` fraction of steps, then linear decay to 0 (Appendix B)."""
    warmup_steps = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def settings_name(s) -> str:
    """What a run is, as a name: labels, attention labels, shots, steps, data per step, S, seed."""
    return f"{s.label_type}-{s.attention_type}-s{s.shots}-t{s.steps}-{s.data_per_step}-S{s.seq_len}-seed{s.seed}"


def run_name(prefix: str, lr: float, inner_lr: float) -> str:
    """The default run name (runs/<task>/<name>): `prefix` and the two learning rates a sweep varies."""
    return f"{prefix}-lr{lr:g}-eta{inner_lr:g}"


class RunDirectory:
    """The files of one run, worked on by one process at a time (rundir.RunLock); every write that
    matters is atomic."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path, self.overwrite = path, overwrite
        self.checkpoint = path / "checkpoint.pt"
        self.lock: Optional[rundir.RunLock] = None

    def claim(self) -> None:
        self.lock = rundir.claim(self.path)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def refuse_clobbering(self) -> None:
        if self.checkpoint.exists() and not self.overwrite:
            raise UserError(f"{self.path} already holds a run; continue it with --resume {self.path}, start it "
                            "afresh with --overwrite, or pick another --name")

    def start_afresh(self) -> None:
        """Under the lock: refuse to clobber a checkpointed run without --overwrite; remove what an earlier
        run left (one killed before its first checkpoint, or one overwritten), so that no log mixes two runs."""
        self.refuse_clobbering()
        left = rundir.leftover_files(self.path)
        if left:
            print(f"note: {self.path}: removing the files of an earlier run ({', '.join(left)})", file=sys.stderr)
            rundir.clear(self.path)

    def write_config(self, args) -> None:
        """config.json: every setting (rewritten only when it changed, e.g. a run extended on resume)."""
        path = self.path / "config.json"
        text = json.dumps(saved_settings(args), indent=2) + "\n"
        if not path.is_file() or path.read_text() != text:
            with atomic_path(path) as tmp:
                tmp.write_text(text)

    def log(self, message: str) -> None:
        tqdm.write(message)
        self.write_line("run.log", message)

    def append(self, name: str, record: dict) -> None:
        self.write_line(name, json.dumps(record))

    def write_line(self, name: str, line: str) -> None:
        try:
            with open(self.path / name, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.path / name} ({e.strerror}); the last checkpoint is intact: "
                            f"once that is fixed, continue with --resume {self.path}") from None

    def truncate_after(self, name: str, step: int) -> None:
        """Drop log lines of steps after `step` (work lost with an interrupted run, redone on resume)."""
        path = self.path / name
        if path.exists():
            records = [r for r in checks.read_jsonl(path) if r["step"] <= step]
            text = "".join(json.dumps(r) + "\n" for r in records)
            if text != path.read_text():
                with atomic_path(path) as tmp:
                    tmp.write_text(text)


# --- the loop ------------------------------------------------------------------------------------
def load_or_start(argv):
    """(settings, run directory, checkpoint or None) for a new run or for `--resume RUN_DIR`."""
    args = parse_args(argv)
    overwrite = vars(args).pop("overwrite", False)
    if args.resume:
        if overwrite:
            raise UserError("--overwrite starts a run afresh; it cannot be combined with --resume")
        run = RunDirectory(Path(args.resume))
        if not (run.path / "config.json").is_file() or not run.checkpoint.is_file():
            raise UserError(f"{args.resume} has no config.json/checkpoint.pt to resume from")
        return resumed_settings(args), run, checks.load_checkpoint(run.checkpoint)
    if not args.task:
        raise UserError(f"--task is required: one of {', '.join(taskdata.TASK_NAMES)}")
    for name in ("train_file", "eval_file"):      # absolute, so that --resume works from anywhere
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    task = taskdata.task_from_settings(vars(args))      # an unknown task fails here, before anything is written
    if task.name == "custom":
        taskdata.read_examples(task, "eval")            # and a bad --eval-file, not after hours of distillation
    check_settings(args)
    check_fits_model(args)
    args.name = args.name or run_name(settings_name(args), args.lr, args.inner_lr)
    run = RunDirectory(runs_dir() / args.task / args.name, overwrite)
    run.refuse_clobbering()      # early; checked again under the run's lock
    return args, run, None


RESUME_CHANGES = ("max_steps", "epochs", "device")       # what --resume may change: extend a run, or move it
ADDED_LATER = {"autocast": "none", "dtype": "float32", "attn_init": "random"}   # absent from older runs: their values


def resumed_settings(args) -> argparse.Namespace:
    """The saved settings of `--resume RUN_DIR` (checked), with --max-steps, --epochs and --device applied.
    Any other flag is refused unless it repeats the saved value: never silently dropped."""
    path = Path(args.resume) / "config.json"
    saved = checks.read_json(path)
    checks.require_fields(saved, [name for name in DEFAULTS if name not in ("micro_batch_size", *ADDED_LATER)], path)
    saved.setdefault("micro_batch_size", saved["real_batch_size"])    # runs from before micro-batches
    for name, value in ADDED_LATER.items():
        saved.setdefault(name, value)
    wrong = [name for name in DEFAULTS if not fits_type(name, saved[name])]
    if wrong:
        raise UserError(f"{path}: {wrong[0]} is {saved[wrong[0]]!r}, not of type {expected_type(wrong[0]).__name__}")
    try:
        check_settings(argparse.Namespace(**saved))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    given = {k: v for k, v in vars(args).items() if v is not None and k != "resume"}
    given.update({k: str(Path(given[k]).resolve()) for k in ("train_file", "eval_file") if k in given})
    conflicts = [k for k, v in given.items() if k not in RESUME_CHANGES and v != saved.get(k)]
    if conflicts:
        flag = conflicts[0]
        raise UserError(f"--{flag.replace('_', '-')} {given[flag]} conflicts with the run's {saved.get(flag)!r} "
                        f"({path}); a resumed run keeps its settings: only --max-steps, --epochs and --device "
                        "may change")
    if "epochs" in given and "max_steps" not in given and saved["max_steps"]:
        raise UserError(f"the run stops at --max-steps {saved['max_steps']} ({path}), so --epochs alone cannot extend "
                        "it; give a larger --max-steps too (0: all epochs)")
    settings = argparse.Namespace(**{**saved, **given})
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


class Distillation:
    """Algorithm 1 with its state: model, data, D̃, optimiser, schedule, step counter, best validation."""

    def __init__(self, args, run: RunDirectory, checkpoint: Optional[dict]):
        self.args, self.run = args, run
        device = distributed.local_device(args.device)
        distributed.setup(device)
        self.device = device
        problem = option_problem(args.mode, args.autocast, device.type)
        if problem:
            raise UserError(problem)
        self.task = taskdata.task_from_settings(vars(args))
        self.model_dir = resolve_checkpoint(args.model)
        dtype = DTYPES[getattr(args, "dtype", "float32")]
        self.bert_config, self.pretrained = load_pretrained(self.model_dir, dtype=dtype, device=device)
        config = distilled_config(args, self.bert_config, self.task.num_classes)

        self.train = taskdata.load_split(self.task, "train", self.model_dir / "tokenizer.json", args.max_length, args.data_dir)
        n = min(len(self.train), args.train_limit) if args.train_limit else len(self.train)
        if not args.real_batch_size + args.val_size <= n:
            raise UserError(f"{n} training examples cannot hold --val-size {args.val_size} plus one batch of {args.real_batch_size}")
        processes = distributed.world_size()
        if processes > args.real_batch_size:
            raise UserError(f"{processes} processes need --real-batch-size ≥ {processes}")
        self.micro_batch_size = args.micro_batch_size or min(16, args.real_batch_size // processes)
        micro_batches = -(-args.real_batch_size // self.micro_batch_size)
        if processes > micro_batches:
            raise UserError(f"{processes} processes need as many micro-batches, not {micro_batches}: "
                            f"use --micro-batch-size {args.real_batch_size // processes} or less")
        self.train_idx, val_idx = taskdata.split_train_val(n, args.val_size, seeds.stream_seed("train-val-split", args.seed))
        self.val_batches = eval_batches(self.train, args.real_batch_size, device, indices=val_idx)
        self.steps_per_epoch = len(self.train_idx) // args.real_batch_size      # full batches only
        self.total_steps = self.steps_per_epoch * args.epochs
        if args.max_steps:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.val_every = args.val_every or self.steps_per_epoch

        # Algorithm 1, lines 1–2: D̃ = (x̃, ỹ, ã) and η̃ ← η̃_0 (then, with --init real / --attn-init model, from data)
        self.distilled = DistilledData.initial(config, seeds.generator("distilled-init", args.seed), dtype=dtype, device=device)
        if args.init == "real":
            init_from_real(self.distilled, self.pretrained, self.train, args.seed)
        if args.attn_init == "model":
            init_attention_from_model(self.distilled, self.pretrained, self.bert_config)
        self.optimizer = make_optimizer(self.distilled, args)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, args.warmup)
        self.step, self.best_val = 0, math.inf
        if distributed.is_main():
            run.claim()                        # only once every setting has been checked
        if checkpoint is None:
            if distributed.is_main():
                run.start_afresh()
                run.write_config(args)
            if getattr(args, "preset_reason", None):
                self.log(f"preset {args.preset} ({args.preset_reason}): {preset_summary(args)}; "
                         f"--preset {'paper' if args.preset == 'cpu' else 'cpu'} for the other one")
            self.log(f"run {run.path}: {self.task.name}, {len(self.train_idx)} training / {args.val_size} validation "
                     f"examples, {self.total_steps} outer steps, device {device} × {distributed.world_size()}, "
                     f"checkpoint {self.model_dir}")
        else:
            self.restore(checkpoint)

    def log(self, message: str) -> None:
        if distributed.is_main():
            self.run.log(message)

    def restore(self, checkpoint: dict) -> None:
        self.check_checkpoint(checkpoint)
        with torch.no_grad():
            for name, tensor in self.distilled.tensors().items():
                tensor.copy_(checkpoint["distilled"][name])
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise UserError(f"{self.run.checkpoint}: its optimiser or schedule state is damaged "
                            f"({first_line(e)}); start the run afresh with --overwrite") from None
        self.step, self.best_val = checkpoint["step"], checkpoint["best_val_loss"]
        if distributed.is_main():
            for name in ("metrics.jsonl", "validation.jsonl"):
                self.run.truncate_after(name, self.step)
            self.run.write_config(self.args)      # --max-steps / --epochs / --device given with --resume
        self.log(f"resumed {self.run.path} at outer step {self.step}/{self.total_steps}")

    def check_checkpoint(self, checkpoint: dict) -> None:
        """checkpoint.pt holds this run's state: every tensor of D̃ with exactly its shape and dtype, Adam
        moments of the same shapes, a step within the run and a schedule at that step."""
        where = self.run.checkpoint
        checks.require_fields(checkpoint, ("step", "best_val_loss", "optimizer", "scheduler", "distilled"), where)
        checks.check_tensors(checkpoint["distilled"], self.distilled.tensors(), f"{where} (distilled data)")
        step = checkpoint["step"]
        if not isinstance(step, int) or not 0 <= step <= self.total_steps:
            raise UserError(f"{where} is at outer step {step!r}, outside this run's {self.total_steps} steps; "
                            "extend the run with a larger --max-steps or --epochs")
        if not isinstance(checkpoint["best_val_loss"], (int, float)):
            raise UserError(f"{where}: best_val_loss is {checkpoint['best_val_loss']!r}, not a number")
        if not isinstance(checkpoint["optimizer"], dict) or not isinstance(checkpoint["scheduler"], dict) \
                or checkpoint["scheduler"].get("last_epoch") != step:
            raise UserError(f"{where}: the optimiser or schedule state does not match its step {step}")
        checks.check_optimizer_state(checkpoint["optimizer"], list(self.distilled.learnable().values()), str(where))

    def save(self) -> None:
        """distilled_last + checkpoint.pt, each written atomically (rank 0 only)."""
        if not distributed.is_main():
            return
        self.distilled.save(self.run.path / "distilled_last.safetensors", extra=self.provenance())
        state = {"step": self.step, "best_val_loss": self.best_val, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "distilled": {k: v.detach().cpu() for k, v in self.distilled.tensors().items()}}
        with atomic_path(self.run.checkpoint) as tmp:
            torch.save(state, tmp)

    def provenance(self, **extra) -> dict:
        return {"task": self.task.name, "model": str(self.args.model), "step": self.step, **extra}

    def real_batch(self) -> List[Dict[str, torch.Tensor]]:
        """This rank's micro-batches of outer step `step`'s real mini-batch (Algorithm 1, line 13)."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        order = self.train_idx[torch.randperm(len(self.train_idx),
                                              generator=seeds.generator("real-batch-order", self.args.seed, epoch))]
        rows = order[offset * self.args.real_batch_size:(offset + 1) * self.args.real_batch_size]
        micro_batches = rows.split(self.micro_batch_size)
        return [taskdata.collate(self.train, micro, self.device) for micro in distributed.shard(micro_batches)]

    def outer_step(self) -> dict:
        """One outer step: θ_0 ~ p(θ_0), the hypergradient on a real batch, one Adam update of D̃."""
        started = time.perf_counter()
        theta0 = fresh_model(self.pretrained, self.bert_config, self.task.num_classes,      # line 4: θ_0 ~ p(θ_0)
                             seed=seeds.stream_seed("training-head", self.args.seed, self.step))
        # lines 5–13: the inner loop on D̃, then ∇_D̃ of the real batch's loss at θ_T (unroll.py)
        result = hypergradient(theta0, self.bert_config, self.distilled, self.real_batch(), mode=self.args.mode,
                               real_batch_size=self.args.real_batch_size, autocast=AUTOCAST[self.args.autocast],
                               all_reduce=distributed.all_reduce_sum)
        self.check_finite(result.loss, result.inner_losses, result.grads)
        for name, tensor in self.distilled.learnable().items():
            tensor.grad = result.grads[name]
        grad_norm = clip_grad_norm(list(self.distilled.learnable().values()), self.args.clip)
        self.optimizer.step()                         # lines 14–15: D̃ ← D̃ − α ∇_D̃ L (Adam, Appendix B)
        self.check_finite_data()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, "loss": result.loss.item(),
                "inner_losses": result.inner_losses.tolist(), "inner_lr": self.inner_lrs(),
                "grad_norm": grad_norm.item(), "alpha": self.scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - started}

    def inner_lrs(self) -> List[float]:
        return [self.distilled.inner_lr(t).item() for t in range(self.distilled.config.steps)]

    def check_finite(self, loss, inner_losses, grads) -> None:
        bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
        if torch.isfinite(loss) and torch.isfinite(inner_losses).all() and not bad:
            return
        what = f"gradient of {', '.join(bad)}" if bad else "loss"
        raise UserError(f"non-finite {what} at outer step {self.step + 1}: the learning rates are probably too high "
                        f"(--lr {self.args.lr:g}, inner η̃ {[round(x, 5) for x in self.inner_lrs()]}); {self.kept()}")

    def check_finite_data(self) -> None:
        """D̃ after the Adam update: a non-finite value is never validated or saved."""
        bad = [k for k, v in self.distilled.learnable().items() if not torch.isfinite(v).all()]
        if bad:
            raise UserError(f"non-finite {', '.join(bad)} after the update of outer step {self.step + 1}: the "
                            f"learning rates are probably too high (--lr {self.args.lr:g}); {self.kept()}")

    def kept(self) -> str:
        if self.run.checkpoint.exists():
            return f"the last good checkpoint {self.run.checkpoint} is intact"
        return "nothing was saved yet"

    def validate(self) -> dict:
        """K fresh models trained on D̃, scored on the held-out slice of the training split."""
        head_seeds = [seeds.stream_seed("validation-head", self.args.seed, k) for k in range(self.args.val_models)]
        head_seeds = head_seeds[distributed.rank()::distributed.world_size()]
        runs = evaluate_distilled(self.pretrained, self.bert_config, self.distilled, lambda: self.val_batches,
                                  seeds=head_seeds, metric_names=self.task.metrics)
        return mean_std(distributed.gather(runs))

    def run_to_end(self) -> None:
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"distil {self.task.name}", unit="step",
                        dynamic_ncols=True, disable=not distributed.is_main())
        with progress:   # closed (its line ended) before any error message
            self.loop(progress)
        if not math.isfinite(self.best_val):     # never validated, or every validation loss was NaN
            raise UserError(f"no validation of {self.run.path} had a finite loss, so there is no distilled_best; "
                            "the learning rates are probably too high")
        self.log(f"done: {self.run.path}/distilled_best.safetensors (validation loss {self.best_val:.4f})")
        if distributed.is_main():
            self.log(f"card: {write_card(self.run.path)}")

    def loop(self, progress) -> None:
        while self.step < self.total_steps:                         # Algorithm 1, line 3: outer steps s = 1..S
            record = self.outer_step()
            if distributed.is_main():
                self.run.append("metrics.jsonl", record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", eta=f"{record['inner_lr'][0]:.4f}")
            progress.update(1)
            if self.step % self.val_every == 0 or self.step == self.total_steps:
                self.after_validation(self.validate())
            if self.step % self.args.checkpoint_every == 0 or self.step % self.val_every == 0 or self.step == self.total_steps:
                self.save()

    def after_validation(self, summary: dict) -> None:
        val_loss = summary["loss"]["mean"]
        improved = val_loss < self.best_val
        if improved:
            self.best_val = val_loss
            if distributed.is_main():
                self.distilled.save(self.run.path / "distilled_best.safetensors", extra=self.provenance(val_loss=val_loss))
        if distributed.is_main():
            self.run.append("validation.jsonl", {"step": self.step, **summary})
        self.log(f"step {self.step}: validation loss {val_loss:.4f}, accuracy {summary['accuracy']['mean']:.4f}"
                 f"{' (best)' if improved else ''}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, run, checkpoint = load_or_start(argv)
    try:
        Distillation(args, run, checkpoint).run_to_end()
    finally:
        run.release()
        distributed.teardown()


if __name__ == "__main__":
    run_cli(main)
