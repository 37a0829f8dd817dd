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
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from tqdm import tqdm

from . import checks
from . import data as taskdata
from . import tasks
from . import distributed
from .method import seeds
from .method.bert import bert_forward, fresh_model
from .card import write_card
from .method.distilled import DistilledData
from .errors import STOPPED, UserError, first_line, on_stop_signals, run_cli
from .evaluate import eval_batches, evaluate_distilled, mean_std
from .method.kernels import resolve as resolve_kernels
from .options import AUTOCAST, DTYPES
from .paths import atomic_path, resolve_checkpoint
from .rundir import RunDirectory
from .settings import distilled_config, load_or_start, preset_summary, saved_settings
from .method.unroll import hypergradient, row_sum
from .files import load_pretrained, save_distilled


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


def init_attention_from_model(distilled: DistilledData, pretrained, config, kernels: str = "auto") -> None:
    """ã_i ← the pretrained model's own attention on x̃_i: the logits are its attention scores, so
    softmax(ã) equals its attention and the attention loss (Eq. 6) starts at 0 instead of at a random
    target's KL. (The head does not matter: attention is computed before it.)"""
    kind = distilled.config.attention_type
    if kind == "none":
        return
    with torch.no_grad():
        out = bert_forward(pretrained, config, inputs_embeds=distilled.x, attention=kind, kernels=kernels)
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


def to_host(records: List[dict]) -> List[dict]:
    """`records` with every tensor read as Python numbers (nested lists as `.tolist()` gives, exactly the
    same values): one device-to-host copy for all of them, the only wait for the device."""
    tensors = [v for r in records for v in r.values() if isinstance(v, torch.Tensor)]
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).cpu()       # (Σ numel,)
    values = iter([part.view(t.shape).tolist() for t, part in zip(tensors, flat.split([t.numel() for t in tensors]))])
    return [{k: next(values) if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in records]


class StopSignal:
    """The handler of SIGTERM and SIGUSR1 during the loop: it only notes the signal, which the loop reads
    between outer steps (`Distillation.should_stop`)."""

    def __init__(self):
        self.name: Optional[str] = None

    def __call__(self, signum: int, frame) -> None:
        self.name = signal.Signals(signum).name


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
        self.total[part] += time.time() - started
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
        self.pending: List[dict] = []          # records of the outer steps not yet read (`read_metrics`)
        self.progress = None                   # the progress bar, during `run_to_end`
        device = distributed.local_device(args.device)
        distributed.setup(device)
        self.device = device
        self.kernels = resolve_kernels(args.kernels, device)
        self.task = tasks.task_from_settings(vars(args))
        self.model_dir = resolve_checkpoint(args.model)
        dtype = DTYPES[args.dtype]
        self.bert_config, self.pretrained = load_pretrained(self.model_dir, dtype=dtype, device=device)
        config = distilled_config(args, self.bert_config, self.task.num_classes)

        self.train = taskdata.load_split(self.task, "train", self.model_dir / "tokenizer.json", args.max_length, args.data_dir)
        n = min(len(self.train), args.train_limit) if args.train_limit else len(self.train)
        if not args.real_batch_size + args.val_size <= n:
            raise UserError(f"{n} training examples cannot hold --val-size {args.val_size} plus one batch of {args.real_batch_size}")
        processes = distributed.world_size()
        if processes > args.real_batch_size:
            raise UserError(f"{processes} processes need --real-batch-size ≥ {processes}")
        largest = 16 if self.kernels == "cpu" else args.real_batch_size     # gpu: one micro-batch (kernels.py)
        self.micro_batch_size = args.micro_batch_size or min(largest, args.real_batch_size // processes)
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
            init_attention_from_model(self.distilled, self.pretrained, self.bert_config, self.kernels)
        self.optimizer = make_optimizer(self.distilled, args)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, args.warmup)
        self.step, self.best_val = 0, math.inf
        if distributed.is_main():
            run.claim()                        # only once every setting has been checked
        if checkpoint is None:
            if distributed.is_main():
                run.start_afresh()
                run.write_config(saved_settings(args))
            if args.preset_reason:
                self.log(f"preset {args.preset} ({args.preset_reason}): {preset_summary(args)}; "
                         f"--preset {'gpu' if args.preset == 'cpu' else 'cpu'} for the other one")
            self.log(f"run {run.path}: {self.task.name}, {len(self.train_idx)} training / {args.val_size} validation "
                     f"examples, {self.total_steps} outer steps, device {device} × {distributed.world_size()}, "
                     f"checkpoint {self.model_dir}")
        else:
            self.restore(checkpoint)
        self.eta = self.inner_lrs().tolist()   # η̃ on the host: that of the next step, for an error line

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
            self.run.write_config(saved_settings(self.args))      # --max-steps / --epochs / --device given with --resume
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
        """distilled_last + checkpoint.pt, each written atomically (rank 0 only), once the steps so far are
        read and known to be finite."""
        self.read_metrics()
        if not distributed.is_main():
            return
        save_distilled(self.distilled, self.run.path / "distilled_last.safetensors", extra=self.provenance())
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
        """One outer step: θ_0 ~ p(θ_0), the hypergradient on a real batch, one Adam update of D̃. Its record
        (a metrics.jsonl line) holds device tensors, read later by `read_metrics`: nothing here waits for the
        device. `finite`: is each of loss, inner losses, gradients (by name) and D̃ after the update finite.
        `seconds` is the host's time (on a GPU the device's backlog is waited for at the reads)."""
        started = time.perf_counter()
        theta0 = fresh_model(self.pretrained, self.bert_config, self.task.num_classes,      # line 4: θ_0 ~ p(θ_0)
                             seed=seeds.stream_seed("training-head", self.args.seed, self.step))
        # lines 5–13: the inner loop on D̃, then ∇_D̃ of the real batch's loss at θ_T (unroll.py)
        result = hypergradient(theta0, self.bert_config, self.distilled, self.real_batch(), mode=self.args.mode,
                               real_batch_size=self.args.real_batch_size, autocast=AUTOCAST[self.args.autocast],
                               all_reduce=distributed.all_reduce_sum, kernels=self.kernels)
        finite = [torch.isfinite(x).all() for x in (result.loss, result.inner_losses, *result.grads.values())]
        for name, tensor in self.distilled.learnable().items():
            tensor.grad = result.grads[name]
        grad_norm = clip_grad_norm(list(self.distilled.learnable().values()), self.args.clip)
        self.optimizer.step()                         # lines 14–15: D̃ ← D̃ − α ∇_D̃ L (Adam, Appendix B)
        finite += [torch.isfinite(v).all() for v in self.distilled.learnable().values()]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, "loss": result.loss,
                "inner_losses": result.inner_losses, "inner_lr": self.inner_lrs(), "grad_norm": grad_norm,
                "alpha": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started,
                "finite": torch.stack(finite)}

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
        losses, grads, data = finite[:2], finite[2:2 + len(names)], finite[2 + len(names):]
        if not all(losses + grads):
            bad = [k for k, ok in zip(names, grads) if not ok]
            what = f"gradient of {', '.join(bad)}" if bad else "loss"
            raise UserError(f"non-finite {what} at outer step {step}: the learning rates are probably too high "
                            f"(--lr {self.args.lr:g}, inner η̃ {[round(x, 5) for x in self.eta]}); {self.kept()}")
        bad = [k for k, ok in zip(names, data) if not ok]
        if bad:
            raise UserError(f"non-finite {', '.join(bad)} after the update of outer step {step}: the "
                            f"learning rates are probably too high (--lr {self.args.lr:g}); {self.kept()}")

    def kept(self) -> str:
        if self.run.checkpoint.exists():
            return f"the last good checkpoint {self.run.checkpoint} is intact"
        return "nothing was saved yet"

    def validate(self) -> dict:
        """K fresh models trained on D̃ (once the steps so far are read and known to be finite), scored on the
        held-out slice of the training split."""
        self.read_metrics()
        head_seeds = [seeds.stream_seed("validation-head", self.args.seed, k) for k in range(self.args.val_models)]
        head_seeds = head_seeds[distributed.rank()::distributed.world_size()]
        runs = evaluate_distilled(self.pretrained, self.bert_config, self.distilled, lambda: self.val_batches,
                                  seeds=head_seeds, metric_names=self.task.metrics, kernels=self.kernels)
        return mean_std(distributed.gather(runs))

    def run_to_end(self) -> bool:
        """The outer steps, then the best D̃ and the card; False when stopped early (checkpointed)."""
        self.progress = tqdm(total=self.total_steps, initial=self.step, desc=f"distil {self.task.name}", unit="step",
                             dynamic_ncols=True, disable=not distributed.is_main())
        with self.progress:   # closed (its line ended) before any error message
            finished = self.loop()
        if not finished:
            self.log(f"preempted ({self.stop_reason}): checkpoint at outer step {self.step} in {self.run.path}; "
                     f"resume with {resume_command()} --resume {self.run.path}")
            return False
        if not math.isfinite(self.best_val):     # never validated, or every validation loss was NaN
            raise UserError(f"no validation of {self.run.path} had a finite loss, so there is no distilled_best; "
                            "the learning rates are probably too high")
        self.log(f"done: {self.run.path}/distilled_best.safetensors (validation loss {self.best_val:.4f})")
        if distributed.is_main():
            self.log(f"card: {write_card(self.run.path)}")
        return True

    def loop(self) -> bool:
        """Outer steps until the last (True) or until `should_stop` (False, after a checkpoint)."""
        while self.step < self.total_steps:                         # Algorithm 1, line 3: outer steps s = 1..S
            if self.should_stop():
                self.save()
                return False
            self.advance()
        return True

    def advance(self) -> None:
        """One outer step and what follows it: a read of the metrics every --log-every steps, validation and
        checkpoint when due (each reads the metrics first). Between reads nothing waits for the device."""
        with self.deadline.timing("step"):
            self.pending.append(self.outer_step())
            self.progress.update(1)
            if self.step % self.args.log_every == 0:
                self.read_metrics()
        if self.validates(self.step):
            with self.deadline.timing("validation"):
                self.after_validation(self.validate())
        if self.validates(self.step) or self.step % self.args.checkpoint_every == 0:
            with self.deadline.timing("save"):
                self.save()

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
                save_distilled(self.distilled, self.run.path / "distilled_best.safetensors", extra=self.provenance(val_loss=val_loss))
        if distributed.is_main():
            self.run.append("validation.jsonl", {"step": self.step, **summary})
        self.log(f"step {self.step}: validation loss {val_loss:.4f}, accuracy {summary['accuracy']['mean']:.4f}"
                 f"{' (best)' if improved else ''}")


def resume_command() -> str:
    """How this run was launched, for the line that says how to resume it."""
    processes = distributed.world_size()
    launcher = f"torchrun --nproc_per_node {processes}" if processes > 1 else "python"
    return f"{launcher} -m ddattn.distill"


def main(argv: Optional[Sequence[str]] = None) -> None:
    started = time.time()
    args, run, checkpoint = load_or_start(argv)
    try:
        distillation = Distillation(args, run, checkpoint, started)
        with on_stop_signals(distillation.stop):    # from here on a stop signal ends the run after its step
            finished = distillation.run_to_end()
    finally:
        run.release()
        distributed.teardown()
    if not finished:
        sys.exit(STOPPED)


if __name__ == "__main__":
    run_cli(main)
