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

An outer step never waits for the device: its metrics and finite checks stay there, and the loop reads
them (one copy for all the steps since the last read) every --log-every steps and before each validation
and checkpoint, so a non-finite step still ends the run within one interval and nothing non-finite is
validated or saved. SIGTERM or SIGUSR1 (a scheduler's preemption), or a time limit about to pass, stop
the loop between outer steps (all processes at the same one): checkpoint, one line, exit status 143.
"""

import math
import os
import signal
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from . import checks, distributed, tasks
from . import data as taskdata
from .card import write_card
from .data import eval_batches
from .errors import STOPPED, UserError, first_line, on_stop_signals, run_cli
from .files import load_pretrained, save_distilled
from .method import seeds
from .method.distilled import DistilledData
from .method.evaluation import evaluate_distilled, mean_std
from .method.kernels import resolve as resolve_kernels
from .method.outer import (
    Outer,
    OuterStep,
    algorithm_1,
    init_attention_from_model,
    init_from_real,
    linear_schedule,
    make_optimizer,
    real_init_rows,
)
from .options import AUTOCAST, DTYPES
from .paths import atomic_path, resolve_checkpoint
from .rundir import RunDirectory
from .settings import distilled_config, load_or_start, preset_summary, saved_settings


# --- pieces of the loop ---------------------------------------------------------------------------
def optimizer_for(distilled: DistilledData, args) -> torch.optim.Optimizer:
    """Adam over D̃ (method/outer.py) with the α of --lr, or of --lr-x / --lr-labels / --lr-attn / --lr-eta
    for their tensor."""
    group_lrs = {"x": args.lr_x, "label_logits": args.lr_labels, "attn_logits": args.lr_attn, "lr_raw": args.lr_inner}
    return make_optimizer(distilled, args.lr, group_lrs, args.optimizer, args.weight_decay)


def to_host(records: List[dict]) -> List[dict]:
    """`records` with every tensor read as Python numbers (nested lists as `.tolist()` gives, exactly the
    same values): one device-to-host copy for all of them, the only wait for the device."""
    tensors = [v for r in records for v in r.values() if isinstance(v, torch.Tensor)]
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).cpu()  # (Σ numel,)
    values = iter([part.view(t.shape).tolist() for t, part in zip(tensors, flat.split([t.numel() for t in tensors]))])
    return [{k: next(values) if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in records]


class StopSignal:
    """The handler of SIGTERM and SIGUSR1 during the loop: it only notes the signal, which the loop reads
    between outer steps (`Distillation.should_stop`)."""

    def __init__(self):
        self.name: Optional[str] = None

    def __call__(self, signum: int, frame) -> None:
        self.name = signal.Signals(signum).name


class StepClock:
    """When an outer step started: by the precise clock (its `seconds` in metrics.jsonl) and by the wall
    clock that `Deadline` counts in."""

    def __init__(self):
        self.precise, self.wall = time.perf_counter(), time.time()

    def seconds(self) -> float:
        return time.perf_counter() - self.precise

    def deadline_seconds(self) -> float:
        return time.time() - self.wall


class Deadline:
    """The time to be done by: --time-limit seconds after the command started, or SLURM_JOB_END_TIME (a Unix
    time) where SLURM sets it, whichever comes first. Before each outer step the loop asks whether that step
    (with its validation, if it has one) and a checkpoint would still end in time, from the mean durations
    of this process's steps, validations and checkpoints so far."""

    def __init__(self, time_limit: Optional[float], started: float):
        ends = [started + time_limit] if time_limit else []
        if os.environ.get("SLURM_JOB_END_TIME"):
            ends.append(slurm_end_time(os.environ["SLURM_JOB_END_TIME"]))
        self.at = min(ends, default=None)
        self.total, self.count = defaultdict(float), defaultdict(int)

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        started = time.time()
        yield
        self.add(part, time.time() - started)

    def add(self, part: str, seconds: float) -> None:
        self.total[part] += seconds
        self.count[part] += 1

    def mean(self, part: str) -> float:
        return self.total[part] / self.count[part] if self.count[part] else 0.0

    def too_close(self, validates: bool) -> bool:
        if self.at is None:
            return False
        needed = self.mean("step") + (self.mean("validation") if validates else 0.0) + self.mean("save")
        return time.time() + needed > self.at


def slurm_end_time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserError(f"SLURM_JOB_END_TIME is {value!r}, not a Unix time") from None


# --- the loop ------------------------------------------------------------------------------------
class Distillation:
    """Algorithm 1 with its state: model, data, D̃, optimiser, schedule, step counter, best validation."""

    def __init__(self, args, run: RunDirectory, checkpoint: Optional[dict], started: Optional[float] = None):
        """`started`: when the command started (time.time()), from which --time-limit counts (default: now)."""
        self.args, self.run = args, run
        self.stop, self.stop_reason = StopSignal(), None
        self.deadline = Deadline(args.time_limit, time.time() if started is None else started)
        self.pending: List[dict] = []  # records of the outer steps not yet read (`read_metrics`)
        self.step_started = StepClock()  # of the next outer step (`after_step`)
        self.progress = None  # the progress bar, during `run_to_end`
        self.device = distributed.local_device(args.device)
        distributed.setup(self.device)
        self.kernels = resolve_kernels(args.kernels, self.device)
        self.task = tasks.task_from_settings(vars(args))
        self.model_dir = resolve_checkpoint(args.model)
        self.bert_config, self.pretrained = load_pretrained(self.model_dir, DTYPES[args.dtype], self.device)
        self.load_data()
        self.start_distilled()
        self.step, self.best_val = 0, math.inf
        self.open_run(checkpoint)
        self.eta = self.inner_lrs().tolist()  # η̃ on the host: that of the next step, for an error line

    def load_data(self) -> None:
        """The training split, its held-out slice (validation), the micro-batches and the outer steps."""
        args = self.args
        self.train = taskdata.load_split(
            self.task, "train", self.model_dir / "tokenizer.json", args.max_length, args.data_dir
        )
        n = min(len(self.train), args.train_limit) if args.train_limit else len(self.train)
        if not args.real_batch_size + args.val_size <= n:
            raise UserError(
                f"{n} training examples cannot hold --val-size {args.val_size} plus one batch of {args.real_batch_size}"
            )
        processes = distributed.world_size()
        if processes > args.real_batch_size:
            raise UserError(f"{processes} processes need --real-batch-size ≥ {processes}")
        largest = 16 if self.kernels == "cpu" else args.real_batch_size  # gpu: one micro-batch (kernels.py)
        self.micro_batch_size = args.micro_batch_size or min(largest, args.real_batch_size // processes)
        micro_batches = -(-args.real_batch_size // self.micro_batch_size)
        if processes > micro_batches:
            raise UserError(
                f"{processes} processes need as many micro-batches, not {micro_batches}: "
                f"use --micro-batch-size {args.real_batch_size // processes} or less"
            )
        self.train_idx, self.val_idx = self.held_out_split(n)
        self.val_batches = eval_batches(self.train, args.real_batch_size, self.device, indices=self.val_idx)
        self.check_real_rows()
        self.steps_per_epoch = len(self.train_idx) // args.real_batch_size  # full batches only
        self.total_steps = self.steps_per_epoch * args.epochs
        if args.max_steps:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.val_every = args.val_every or self.steps_per_epoch

    def held_out_split(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(rows of the real batches, rows of the held-out slice) among the first n training rows, as
        --held-out and --real-rows say."""
        args, seed = self.args, seeds.stream_seed("train-val-split", self.args.seed)
        if args.held_out == "random" and args.real_rows == "all":
            return taskdata.split_train_val(n, args.val_size, seed)
        if self.task.is_pair:
            raise UserError(f"--held-out/--real-rows sentences need a single-text task; {self.task.name} has pairs")
        texts = [example.text_a for example in tasks.read_examples(self.task, "train", args.data_dir)[:n]]
        whole = taskdata.whole_rows(texts)  # (a few seconds on SST-2: computed once)
        if args.held_out == "sentences":
            train, val = taskdata.split_sentences_val(texts, whole, args.val_size, seed)
        else:
            train, val = taskdata.split_train_val(n, args.val_size, seed)
        if args.real_rows == "sentences":
            train = train[torch.isin(train, whole)]
        return train, val

    def check_real_rows(self) -> None:
        """Enough rows for one real batch, and with --balance-classes a place and a row for every class."""
        args, classes = self.args, self.task.num_classes
        if len(self.train_idx) < args.real_batch_size:
            raise UserError(
                f"{len(self.train_idx)} training rows are left for the real batches, fewer than "
                f"--real-batch-size {args.real_batch_size}; lower --val-size or --real-batch-size"
            )
        if args.balance_classes:
            counts = torch.bincount(self.train.labels[self.train_idx], minlength=classes)
            if args.real_batch_size < classes or not counts.all():
                raise UserError(
                    f"--balance-classes needs --real-batch-size ≥ {classes} and training rows of every class "
                    f"(rows per class: {counts.tolist()})"
                )

    def start_distilled(self) -> None:
        """Algorithm 1, lines 1–2: D̃ = (x̃, ỹ, ã) and η̃ ← η̃_0 (then, with --init real / --attn-init model,
        from data), and its outer optimiser and schedule (method/outer.py)."""
        args = self.args
        config = distilled_config(args, self.bert_config, self.task.num_classes)
        self.distilled = DistilledData.initial(
            config, seeds.generator("distilled-init", args.seed), dtype=DTYPES[args.dtype], device=self.device
        )
        if args.init == "real":
            init_from_real(self.distilled, self.pretrained, self.real_examples())
        if args.attn_init == "model":
            init_attention_from_model(self.distilled, self.pretrained, self.bert_config, self.kernels)
        self.optimizer = optimizer_for(self.distilled, args)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, args.warmup)
        self.outer = Outer(
            self.pretrained,
            self.bert_config,
            self.task.num_classes,
            self.distilled,
            self.optimizer,
            self.scheduler,
            args.seed,
            args.clip,
            args.mode,
            args.real_batch_size,
            AUTOCAST[args.autocast],
            distributed.all_reduce_sum,
            self.kernels,
        )

    def open_run(self, checkpoint: Optional[dict]) -> None:
        """Take the run's lock (once every setting is checked); a new run starts its directory afresh with
        config.json, a resumed one restores its checkpoint."""
        args, run = self.args, self.run
        if distributed.is_main():
            run.claim()
        if checkpoint is not None:
            self.restore(checkpoint)
            return
        if distributed.is_main():
            run.start_afresh()
            run.write_config(saved_settings(args))
        if args.preset_reason:
            self.log(
                f"preset {args.preset} ({args.preset_reason}): {preset_summary(args)}; "
                f"--preset {'gpu' if args.preset == 'cpu' else 'cpu'} for the other one"
            )
        self.log(
            f"run {run.path}: {self.task.name}, {len(self.train_idx)} training / {args.val_size} validation "
            f"examples, {self.total_steps} outer steps, device {self.device} × {distributed.world_size()}, "
            f"checkpoint {self.model_dir}"
        )

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
            raise UserError(
                f"{self.run.checkpoint}: its optimiser or schedule state is damaged "
                f"({first_line(e)}); start the run afresh with --overwrite"
            ) from None
        self.step, self.best_val = checkpoint["step"], checkpoint["best_val_loss"]
        if distributed.is_main():
            for name in ("metrics.jsonl", "validation.jsonl"):
                self.run.truncate_after(name, self.step)
            self.run.write_config(saved_settings(self.args))  # --max-steps / --epochs / --device given with --resume
        self.log(f"resumed {self.run.path} at outer step {self.step}/{self.total_steps}")

    def check_checkpoint(self, checkpoint: dict) -> None:
        """checkpoint.pt holds this run's state: every tensor of D̃ with exactly its shape and dtype, Adam
        moments of the same shapes, a step within the run and a schedule at that step."""
        where = self.run.checkpoint
        checks.require_fields(checkpoint, ("step", "best_val_loss", "optimizer", "scheduler", "distilled"), where)
        checks.check_tensors(checkpoint["distilled"], self.distilled.tensors(), f"{where} (distilled data)")
        step = checkpoint["step"]
        if not isinstance(step, int) or not 0 <= step <= self.total_steps:
            raise UserError(
                f"{where} is at outer step {step!r}, outside this run's {self.total_steps} steps; "
                "extend the run with a larger --max-steps or --epochs"
            )
        if not isinstance(checkpoint["best_val_loss"], (int, float)):
            raise UserError(f"{where}: best_val_loss is {checkpoint['best_val_loss']!r}, not a number")
        if (
            not isinstance(checkpoint["optimizer"], dict)
            or not isinstance(checkpoint["scheduler"], dict)
            or checkpoint["scheduler"].get("last_epoch") != step
        ):
            raise UserError(f"{where}: the optimiser or schedule state does not match its step {step}")
        checks.check_optimizer_state(checkpoint["optimizer"], list(self.distilled.learnable().values()), str(where))

    def save(self) -> None:
        """distilled_last + checkpoint.pt, each written atomically (rank 0 only), once the steps so far are
        read and known to be finite."""
        self.read_metrics()
        if not distributed.is_main():
            return
        save_distilled(self.distilled, self.run.path / "distilled_last.safetensors", extra=self.provenance())
        state = {
            "step": self.step,
            "best_val_loss": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "distilled": {k: v.detach().cpu() for k, v in self.distilled.tensors().items()},
        }
        with atomic_path(self.run.checkpoint) as tmp:
            torch.save(state, tmp)

    def provenance(self, **extra) -> dict:
        return {"task": self.task.name, "model": str(self.args.model), "step": self.step, **extra}

    def real_examples(self) -> Dict[str, torch.Tensor]:
        """For --init real: one random training example of each sample's class, S tokens wide."""
        config = self.distilled.config
        try:
            rows = real_init_rows(self.train.labels, config.num_samples, config.num_classes, self.args.seed)
        except ValueError as e:  # a class without a training example
            raise UserError(f"--init real: {e}") from None
        return taskdata.collate(self.train, rows, self.device, width=config.seq_len)

    def real_batch(self, s: int) -> List[Dict[str, torch.Tensor]]:
        """This rank's micro-batches of outer step s's real mini-batch (Algorithm 1, line 13)."""
        args, (epoch, offset) = self.args, divmod(s, self.steps_per_epoch)
        generator = seeds.generator("real-batch-order", args.seed, epoch)
        if args.balance_classes:
            order = taskdata.balanced_order(
                self.train_idx,
                self.train.labels,
                self.task.num_classes,
                args.real_batch_size,
                self.steps_per_epoch,
                generator,
            )
        else:
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=generator)]
        rows = order[offset * args.real_batch_size : (offset + 1) * args.real_batch_size]
        micro_batches = rows.split(self.micro_batch_size)
        return [taskdata.collate(self.train, micro, self.device) for micro in distributed.shard(micro_batches)]

    def record(self, s: int, result: OuterStep, seconds: float) -> dict:
        """Outer step s's metrics.jsonl line, still on the device (read by `read_metrics`). `alpha` and
        `inner_lr` are as the update left them: those of the next step. `seconds`: the host's time."""
        return {
            "step": s + 1,
            "epoch": s // self.steps_per_epoch,
            "loss": result.loss,
            "inner_losses": result.inner_losses,
            "inner_lr": self.inner_lrs(),
            "grad_norm": result.grad_norm,
            "alpha": self.scheduler.get_last_lr()[0],
            "seconds": seconds,
            "finite": result.finite,
        }

    def inner_lrs(self) -> torch.Tensor:
        """(T,) η̃_t of the current D̃, detached."""
        return torch.stack([self.distilled.inner_lr(t) for t in range(self.distilled.config.steps)]).detach()

    def read_metrics(self) -> None:
        """The steps since the last read, read from the device in one copy: each one's metrics.jsonl line (the
        last one on the progress bar); the first non-finite step ends the run with one line instead, before
        anything after it is written, validated or saved."""
        if not self.pending:
            return
        records, self.pending = to_host(self.pending), []
        for record in records:
            self.check_finite(record.pop("finite"), record["step"])
            self.eta = record["inner_lr"]
            if distributed.is_main():
                self.run.append("metrics.jsonl", record)
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", eta=f"{record['inner_lr'][0]:.4f}")

    def check_finite(self, finite: List[float], step: int) -> None:
        """`finite` of outer step `step` (see `outer_step`); self.eta is still the η̃ that step trained with."""
        names = list(self.distilled.learnable())
        losses, grads, data = finite[:2], finite[2 : 2 + len(names)], finite[2 + len(names) :]
        if not all(losses + grads):
            bad = [k for k, ok in zip(names, grads) if not ok]
            what = f"gradient of {', '.join(bad)}" if bad else "loss"
            raise UserError(
                f"non-finite {what} at outer step {step}: the learning rates are probably too high "
                f"(--lr {self.args.lr:g}, inner η̃ {[round(x, 5) for x in self.eta]}); {self.kept()}"
            )
        bad = [k for k, ok in zip(names, data) if not ok]
        if bad:
            raise UserError(
                f"non-finite {', '.join(bad)} after the update of outer step {step}: the "
                f"learning rates are probably too high (--lr {self.args.lr:g}); {self.kept()}"
            )

    def kept(self) -> str:
        if self.run.checkpoint.exists():
            return f"the last good checkpoint {self.run.checkpoint} is intact"
        return "nothing was saved yet"

    def validate(self) -> dict:
        """K fresh models trained on D̃ (once the steps so far are read and known to be finite), scored on the
        held-out slice of the training split."""
        self.read_metrics()
        head_seeds = [seeds.stream_seed("validation-head", self.args.seed, k) for k in range(self.args.val_models)]
        head_seeds = head_seeds[distributed.rank() :: distributed.world_size()]
        runs = evaluate_distilled(
            self.pretrained,
            self.bert_config,
            self.distilled,
            lambda: self.val_batches,
            seeds=head_seeds,
            metric_names=self.task.metrics,
            kernels=self.kernels,
        )
        return mean_std(distributed.gather(runs))

    def run_to_end(self) -> bool:
        """The outer steps, then the best D̃; False when stopped early (checkpointed)."""
        self.progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"distil {self.task.name}",
            unit="step",
            dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        with self.progress:  # closed (its line ended) before any error message
            finished = self.loop()
        if not finished:
            self.log(
                f"preempted ({self.stop_reason}): checkpoint at outer step {self.step} in {self.run.path}; "
                f"resume with {resume_command()} --resume {self.run.path}"
            )
            return False
        if not math.isfinite(self.best_val):  # never validated, or every validation loss was NaN
            raise UserError(
                f"no validation of {self.run.path} had a finite loss, so there is no distilled_best; "
                "the learning rates are probably too high"
            )
        self.log(f"done: {self.run.path}/distilled_best.safetensors (validation loss {self.best_val:.4f})")
        return True

    def loop(self) -> bool:
        """Algorithm 1 from the current step (method/outer.py), with `after_step` around each outer step;
        False when stopped early (after a checkpoint)."""
        if self.step < self.total_steps and self.should_stop():
            self.save()
            return False
        self.step_started = StepClock()
        return algorithm_1(self.outer, range(self.step, self.total_steps), self.real_batch, self.after_step)

    def after_step(self, s: int, result: OuterStep) -> bool:
        """What follows outer step s: a read of the metrics every --log-every steps, validation and
        checkpoint when due (each reads the metrics first; between reads nothing waits for the device),
        then whether to go on."""
        self.step = s + 1
        self.pending.append(self.record(s, result, self.step_started.seconds()))
        self.progress.update(1)
        if self.step % self.args.log_every == 0:
            self.read_metrics()
        self.deadline.add("step", self.step_started.deadline_seconds())
        if self.validates(self.step):
            with self.deadline.timing("validation"):
                self.after_validation(self.validate())
        if self.validates(self.step) or self.step % self.args.checkpoint_every == 0:
            with self.deadline.timing("save"):
                self.save()
        if self.step < self.total_steps and self.should_stop():
            self.save()
            return False
        self.step_started = StepClock()
        return True

    def validates(self, step: int) -> bool:
        return step % self.val_every == 0 or step == self.total_steps

    def should_stop(self) -> bool:
        """Stop before the next outer step? On a stop signal, or when that step and a checkpoint would pass
        the deadline, in any process: all of them get the same answer (a host-side all-reduce; no device
        sync), so all stop after the same step."""
        local = self.stop.name or ("the time limit" if self.deadline.too_close(self.validates(self.step + 1)) else None)
        if not distributed.any_rank(local is not None):
            return False
        self.stop_reason = local or "a signal or the time limit in another process"
        return True

    def after_validation(self, summary: dict) -> None:
        val_loss = summary["loss"]["mean"]
        improved = val_loss < self.best_val
        if improved:
            self.best_val = val_loss
            if distributed.is_main():
                save_distilled(
                    self.distilled,
                    self.run.path / "distilled_best.safetensors",
                    extra=self.provenance(val_loss=val_loss),
                )
        if distributed.is_main():
            self.run.append("validation.jsonl", {"step": self.step, **summary})
        self.log(
            f"step {self.step}: validation loss {val_loss:.4f}, accuracy {summary['accuracy']['mean']:.4f}"
            f"{' (best)' if improved else ''}"
        )


def resume_command() -> str:
    """How this run was launched, for the line that says how to resume it."""
    processes = distributed.world_size()
    launcher = f"torchrun --nproc_per_node {processes}" if processes > 1 else "python"
    return f"{launcher} -m ddattn.distill"


def main(argv: Optional[Sequence[str]] = None) -> None:
    started = time.time()
    args, run, checkpoint = load_or_start(argv)
    ended_cleanly = False
    try:
        distillation = Distillation(args, run, checkpoint, started)
        with on_stop_signals(distillation.stop):  # from here on a stop signal ends the run after its step
            finished = distillation.run_to_end()
        if finished and distributed.is_main():
            distillation.log(f"card: {write_card(run.path)}")
        ended_cleanly = True
    finally:
        run.release()
        distributed.teardown(wait_for_others=ended_cleanly)
    if not finished:
        sys.exit(STOPPED)


if __name__ == "__main__":
    run_cli(main)
