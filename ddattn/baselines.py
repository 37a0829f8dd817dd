"""Baselines for the paper's Table 2: `python -m ddattn.baselines {majority,full,random-real} --task T`.

- `majority`     the majority class of the training split, scored on the evaluation split (Table 2,
                 "Majority"). One deterministic "run", so its std is 0.
- `full`         standard fine-tuning (Table 2, "Full dataset"): AdamW, batch 32, 10 % linear warmup then
                 linear decay, one run per (lr, epochs) in {2e-5, 5e-5} × {2, 3}, trained on the training split
                 less a held-out slice that picks the row's run. The paper adopts the best run *on the
                 evaluation split* (Appendix B); that number is kept beside it in eval.json (`best_on_eval`)
                 and shown as its own, labelled row: an optimistic upper bound, not a tuned result. Each
                 finished (lr, epochs) run is saved at once (candidates.json): rerun the command to resume.
                 `--group-by-length` batches rows of similar length (far less padding on short texts).
- `random-real`  data selection instead of distillation (Sec. 1): k real training examples per class with
                 hard labels, trained for the same T plain SGD steps a distilled dataset gets. Its learning
                 rate comes from a small grid, chosen by loss on a held-out slice of the *training* split;
                 then N models (each its own random draw of examples and its own head) are scored on the
                 evaluation split. The paper argues against this baseline but never reports it.

Each writes runs/<task>/<baseline>/eval.json in the layout of `python -m ddattn.evaluate` (task, split,
examples, checkpoint, settings, summary, runs, seconds), so `python -m ddattn.report` reads both alike.
Dropout is off here as everywhere in ddattn (Appendix B, following Wang et al. 2018).
"""

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checks, distributed, tasks
from . import data as taskdata
from .data import eval_batches
from .errors import ArgumentParser, UserError, run_cli, stop_if_signalled
from .files import load_pretrained
from .method import seeds
from .method.bert import BertConfig, Params, fresh_model
from .method.evaluation import compute_metrics, format_summary, headline_metric, mean_std, score
from .method.outer import linear_schedule
from .method.unroll import outer_loss
from .paths import code_version, resolve_checkpoint, runs_dir, write_json_atomic
from .rundir import claim

Batch = Dict[str, torch.Tensor]


@dataclass
class Setting:
    """What every baseline reads: the task, its two encoded splits, and (loaded on demand) the model."""

    args: object
    task: tasks.Task
    train: taskdata.EncodedSplit
    evaluation: taskdata.EncodedSplit
    n_train: int  # training examples used: all, or the first --train-limit
    device: torch.device
    out: Path  # runs/<task>/<baseline>/
    config: Optional[BertConfig] = None
    pretrained: Optional[Params] = None

    def load_model(self) -> None:
        self.config, self.pretrained = load_pretrained(resolve_checkpoint(self.args.model), device=self.device)

    def eval_set(self) -> List[Batch]:
        return eval_batches(self.evaluation, self.args.eval_batch_size, self.device)

    def new_model(self, seed: int) -> Params:
        return fresh_model(self.pretrained, self.config, self.task.num_classes, seed)


# --- training with plain autograd ----------------------------------------------------------------------
def trainable(theta0: Params) -> Params:
    """Copies of θ_0 that are autograd leaves, word embeddings included (standard fine-tuning trains all)."""
    return {n: v.detach().clone().requires_grad_(True) for n, v in theta0.items()}


def fit(
    theta: Params,
    config: BertConfig,
    batches: Iterable[Batch],
    optimizer,
    scheduler=None,
    clip: float = 0.0,
    bar: Optional[tqdm] = None,
) -> Params:
    """One optimiser step per batch on its cross-entropy (real attention masks, fused attention); returns
    the trained parameters, detached."""
    for batch in batches:
        stop_if_signalled()
        loss = outer_loss(theta, config, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(list(theta.values()), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
    return {n: v.detach() for n, v in theta.items()}


def no_decay(name: str) -> bool:
    """Biases and LayerNorm parameters are not weight-decayed, as in BERT's fine-tuning recipe."""
    return name.endswith("bias") or ".norm." in name


def adamw(theta: Params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on the weight matrices only; the fused kernel (one pass over all parameters) is
    several times faster than the default on CPU."""
    groups = [
        {"params": [v for n, v in theta.items() if no_decay(n) == skip], "weight_decay": 0.0 if skip else weight_decay}
        for skip in (False, True)
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def shuffled_epochs(
    split: taskdata.EncodedSplit,
    indices: torch.Tensor,
    batch_size: int,
    epochs: int,
    seed: int,
    device,
    group_by_length: bool = False,
) -> Iterable[Batch]:
    """`epochs` passes over `indices` in mini-batches, reshuffled each epoch from one seeded generator;
    `group_by_length`: each epoch's batches are `length_grouped`."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        if not group_by_length:
            yield from taskdata.batches(
                split, batch_size, indices=indices, shuffle=True, generator=generator, device=device
            )
            continue
        for rows in length_grouped(
            indices[torch.randperm(len(indices), generator=generator)], split.lengths, batch_size, generator
        ):
            yield taskdata.collate(split, rows, device)


def length_grouped(
    rows: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator, group: int = 50
) -> List[torch.Tensor]:
    """Shuffled `rows` cut into batches of similar lengths, so that little of each batch is padding: every
    run of `group` batches' worth of rows is sorted by length and cut into batches, and the batches are
    shuffled (as Hugging Face's `group_by_length`). Same examples per epoch, less randomness per batch."""
    chunks = rows.split(batch_size * group)
    grouped = [b for chunk in chunks for b in chunk[lengths[chunk].argsort(stable=True)].split(batch_size)]
    return [grouped[i] for i in torch.randperm(len(grouped), generator=generator)]


def nan_to(value: float, x: float) -> float:
    """x, or `value` where x is NaN (a diverged model), for choosing with min/max."""
    return value if math.isnan(x) else x


# --- majority ------------------------------------------------------------------------------------------
def majority(s: Setting) -> Tuple[dict, List[dict], dict]:
    """Always predict the most frequent training class. Its "loss" is the cross-entropy of the best constant
    prediction, the training class frequencies."""
    counts = torch.bincount(s.train.labels[: s.n_train], minlength=s.task.num_classes)
    winner = int(counts.argmax())
    labels = s.evaluation.labels
    prior = counts.double() / counts.sum()
    loss = F.nll_loss(prior.log().expand(len(labels), -1), labels).item()
    run = {"loss": loss, **compute_metrics(s.task.metrics, torch.full_like(labels, winner), labels)}
    settings = {
        "majority_class": winner,
        "majority_label": s.task.label_names[winner],
        "train_class_counts": counts.tolist(),
    }
    return settings, [run], {}


# --- full dataset --------------------------------------------------------------------------------------
def fine_tune_full(s: Setting, rows: torch.Tensor, lr: float, epochs: int) -> Params:
    """Standard fine-tuning of θ_0 (a head of the baseline stream) on the training rows `rows`."""
    a = s.args
    theta = trainable(s.new_model(seeds.stream_seed("baseline", a.seed)))
    optimizer = adamw(theta, lr, a.weight_decay)
    total = epochs * math.ceil(len(rows) / a.batch_size)
    scheduler = linear_schedule(optimizer, total, a.warmup)
    batches = shuffled_epochs(
        s.train, rows, a.batch_size, epochs, seeds.stream_seed("baseline", a.seed, 1), s.device, a.group_by_length
    )
    with tqdm(
        total=total, desc=f"full {s.task.name}, lr {lr:g}, {epochs} epochs", unit="step", dynamic_ncols=True
    ) as bar:
        return fit(theta, s.config, batches, optimizer, scheduler, clip=a.clip, bar=bar)


def full_recipe(s: Setting) -> dict:
    """Everything but (lr, epochs) that decides a fine-tuning run of `full`: a finished candidate is reused
    only under the same recipe."""
    a = s.args
    return {
        "task": s.task.name,
        "model": str(a.model),
        "max_length": a.max_length,
        "seed": a.seed,
        "train_examples": s.n_train,
        "val_size": a.val_size,
        "batch_size": a.batch_size,
        "weight_decay": a.weight_decay,
        "warmup": a.warmup,
        "clip": a.clip,
        "group_by_length": a.group_by_length,
        "eval_examples": len(s.evaluation),
    }


def finished_candidates(path: Path, recipe: dict) -> List[dict]:
    """The candidates an interrupted `full` run finished under the same recipe (none if it differs)."""
    if not path.is_file():
        return []
    saved = checks.read_json(path)
    if saved.get("recipe") != recipe:
        print(f"{path}: written under other settings; its candidates are not reused")
        return []
    checks.require_fields(saved, ["candidates"], path)
    return saved["candidates"]


def full(s: Setting) -> Tuple[dict, List[dict], dict]:
    """One fine-tuning run per (lr, epochs) on the training split less a held-out slice; the run with the
    best headline metric on that held-out slice is the row. The paper instead adopts the best on the
    evaluation split (Appendix B): recorded beside it as `best_on_eval`, an optimistic upper bound.
    Each finished candidate is saved at once (candidates.json), so a killed run resumes where it stopped."""
    a = s.args
    s.load_model()
    pool, val_idx = taskdata.split_train_val(s.n_train, a.val_size, seeds.stream_seed("train-val-split", a.seed))
    val_set, eval_set = eval_batches(s.train, a.eval_batch_size, s.device, indices=val_idx), s.eval_set()
    saved, recipe = s.out / "candidates.json", full_recipe(s)
    done = {(c["lr"], c["epochs"]): c for c in finished_candidates(saved, recipe)}
    candidates = []
    for lr in a.lrs:
        for epochs in a.epochs:
            if (lr, epochs) in done:
                candidates.append(done[(lr, epochs)])
                print(f"lr {lr:g}, {epochs} epochs: finished before, read from {saved}")
                continue
            started = time.perf_counter()
            theta = fine_tune_full(s, pool, lr, epochs)
            validation, run = (score(theta, s.config, batches, s.task.metrics) for batches in (val_set, eval_set))
            candidates.append(
                {
                    "lr": lr,
                    "epochs": epochs,
                    "validation": validation,
                    "summary": mean_std([run]),
                    "runs": [run],
                    "seconds": time.perf_counter() - started,
                }
            )
            write_json_atomic(saved, {"recipe": recipe, "candidates": [*done.values(), *candidates]})
            print(
                f"lr {lr:g}, {epochs} epochs: held-out {format_summary(mean_std([validation]))}; "
                f"eval {format_summary(candidates[-1]['summary'])}"
            )
    metric = headline_metric(candidates[0]["summary"])
    chosen = max(candidates, key=lambda c: (nan_to(-math.inf, c["validation"][metric]), -c["validation"]["loss"]))
    best_on_eval = max(candidates, key=lambda c: nan_to(-math.inf, c["summary"][metric]["mean"]))
    settings = {
        "lr": chosen["lr"],
        "epochs": chosen["epochs"],
        "lr_grid": list(a.lrs),
        "epochs_grid": list(a.epochs),
        "weight_decay": a.weight_decay,
        "batch_size": a.batch_size,
        "warmup": a.warmup,
        "clip": a.clip,
        "optimizer": "adamw",
        "val_size": a.val_size,
        "trained_on": len(pool),
        "group_by_length": a.group_by_length,
        "selection": f"the (lr, epochs) with the best {metric} on {a.val_size} held-out training examples "
        "(never the eval split); trained on the rest of the training split",
    }
    paper = {
        "lr": best_on_eval["lr"],
        "epochs": best_on_eval["epochs"],
        "summary": best_on_eval["summary"],
        "selection": f"the best {metric} on the eval split, as the paper (Appendix B): an optimistic upper bound",
    }
    return settings, chosen["runs"], {"candidates": candidates, "best_on_eval": paper}


# --- k random real examples per class --------------------------------------------------------------------
def draw_shots(
    labels: torch.Tensor, pool: torch.Tensor, shots: int, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """`shots` random rows of each class from `pool`, ordered like D̃ (row i has class i mod C)."""
    picks = []
    for c in range(num_classes):
        candidates = pool[labels[pool] == c]
        if len(candidates) < shots:
            raise UserError(
                f"the training pool has {len(candidates)} examples of class {c}, fewer than --shots {shots}"
            )
        picks.append(candidates[torch.randperm(len(candidates), generator=generator)[:shots]])
    return torch.stack(picks, dim=1).flatten()


def random_real_model(s: Setting, pool: torch.Tensor, lr: float, seed: int) -> Params:
    """θ_0 with head `seed`, then T plain SGD steps on one random draw (also from `seed`) of k examples per
    class, the whole k·C batch at every step, hard labels."""
    rows = draw_shots(s.train.labels, pool, s.args.shots, s.task.num_classes, torch.Generator().manual_seed(seed))
    batch = taskdata.collate(s.train, rows, s.device)
    theta = trainable(s.new_model(seed))
    return fit(theta, s.config, [batch] * s.args.steps, torch.optim.SGD(list(theta.values()), lr=lr))


def scored_models(s: Setting, pool, lr: float, seeds: Sequence[int], batches: List[Batch], bar) -> List[dict]:
    runs = []
    for seed in seeds:
        stop_if_signalled()
        runs.append({"seed": seed, **score(random_real_model(s, pool, lr, seed), s.config, batches, s.task.metrics)})
        bar.update(1)
    return runs


def random_real(s: Setting) -> Tuple[dict, List[dict], dict]:
    """Pick η from --lr-grid by mean held-out *training* loss, then score N fresh draws on the eval split."""
    a = s.args
    s.load_model()
    pool, val_idx = taskdata.split_train_val(s.n_train, a.val_size, seeds.stream_seed("train-val-split", a.seed))
    val_set = eval_batches(s.train, a.eval_batch_size, s.device, indices=val_idx)
    val_seeds = [seeds.stream_seed("validation-head", a.seed, k) for k in range(a.val_models)]
    total = len(a.lr_grid) * a.val_models + a.n_models
    with tqdm(total=total, desc=f"random-real {s.task.name}", unit="model", dynamic_ncols=True) as bar:
        search = []
        for lr in a.lr_grid:
            bar.set_postfix(lr=f"{lr:g}")
            search.append({"lr": lr, "validation": mean_std(scored_models(s, pool, lr, val_seeds, val_set, bar))})
        best = min(search, key=lambda c: nan_to(math.inf, c["validation"]["loss"]["mean"]))
        if not math.isfinite(best["validation"]["loss"]["mean"]):
            raise UserError(f"every learning rate in --lr-grid {a.lr_grid} diverged; try smaller ones")
        bar.set_postfix(lr=f"{best['lr']:g} (chosen)")
        runs = scored_models(
            s,
            pool,
            best["lr"],
            [seeds.stream_seed("evaluation-head", a.seed, i) for i in range(a.n_models)],
            s.eval_set(),
            bar,
        )
    settings = {
        "shots": a.shots,
        "steps": a.steps,
        "lr": best["lr"],
        "lr_grid": list(a.lr_grid),
        "val_size": a.val_size,
        "val_models": a.val_models,
        "label_type": "hard",
        "optimizer": "sgd",
        "selection": "the lr with the lowest mean cross-entropy on a held-out slice of the training "
        "split (never the eval split)",
    }
    return settings, runs, {"lr_search": search}


BASELINES = {"majority": majority, "full": full, "random-real": random_real}


# --- command line ------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]):
    p = ArgumentParser(
        prog="python -m ddattn.baselines",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("baseline", choices=sorted(BASELINES))
    p.add_argument("--task", required=True, choices=sorted(tasks.TASKS))
    p.add_argument("--model", default="minilm-l6", help="converted checkpoint: a name under weights/ or a directory")
    p.add_argument("--data-dir", help="task data directory (default data/, env DDATTN_DATA_DIR)")
    p.add_argument("--max-length", type=int, default=128, help="truncation length of real examples")
    p.add_argument("--seed", type=int, default=0, help="run seed of the random streams (ddattn/seeds.py)")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training examples (0: all)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when present)")
    g = p.add_argument_group("full: standard fine-tuning (Appendix B)")
    g.add_argument("--epochs", type=int, nargs="+", default=[2, 3], help="epoch counts of the grid")
    g.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 5e-5], help="AdamW learning rates of the grid")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warmup, then linear decay")
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    g.add_argument(
        "--group-by-length",
        action="store_true",
        help="batches of similar lengths (less padding: ~3× fewer tokens on SST-2); same examples per epoch",
    )
    g = p.add_argument_group("random-real: k real examples per class, T SGD steps")
    g.add_argument("--shots", type=int, default=1, help="k real examples per class")
    g.add_argument("--steps", type=int, default=1, help="T plain SGD steps on the whole k·C batch")
    g.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    g = p.add_argument_group("full and random-real: selection on held-out training data")
    g.add_argument("--val-size", type=int, default=500, help="held-out training examples that choose the settings")
    g.add_argument("--val-models", type=int, default=5, help="random draws per lr on the held-out slice")
    g.add_argument("--n-models", type=int, default=100, help="N draws scored on the eval split")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(a) -> None:
    at_least_one = {
        "--max-length": a.max_length,
        "--eval-batch-size": a.eval_batch_size,
        "--batch-size": a.batch_size,
        "--shots": a.shots,
        "--steps": a.steps,
        "--val-size": a.val_size,
        "--val-models": a.val_models,
        "--n-models": a.n_models,
        "--epochs": min(a.epochs),
    }
    for flag, value in at_least_one.items():
        if value < 1:
            raise UserError(f"{flag} must be ≥ 1, not {value}")
    if a.train_limit < 0:
        raise UserError(f"--train-limit must be ≥ 0, not {a.train_limit}")
    for flag, values in {"--lrs": a.lrs, "--lr-grid": a.lr_grid}.items():
        if not all(v > 0 and math.isfinite(v) for v in values):
            raise UserError(f"{flag} must be positive numbers, not {values}")
    if not 0 <= a.warmup < 1 or a.weight_decay < 0 or a.clip < 0:
        raise UserError("--warmup must be in [0, 1), --weight-decay and --clip ≥ 0")
    checks.check_fits_model(a.model, a.max_length)


def load_setting(args) -> Setting:
    task = tasks.get_task(args.task)
    tokenizer = resolve_checkpoint(args.model) / "tokenizer.json"
    train, evaluation = (
        taskdata.load_split(task, split, tokenizer, args.max_length, args.data_dir) for split in ("train", "eval")
    )
    n_train = min(len(train), args.train_limit) if args.train_limit else len(train)
    if args.baseline in ("random-real", "full") and n_train <= args.val_size:
        raise UserError(f"{n_train} training examples cannot hold --val-size {args.val_size} and a training pool")
    device = distributed.local_device(args.device)
    return Setting(args, task, train, evaluation, n_train, device, runs_dir() / task.name / args.baseline)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    s = load_setting(args)
    out = s.out
    checks.writable_dir(out, "DDATTN_RUNS_DIR")  # now, not after the work
    lock = claim(out)  # one process per baseline folder: no result replaces another's
    try:
        started = time.perf_counter()
        commit = code_version()  # the code that runs, read before HEAD can move
        settings, runs, extra = BASELINES[args.baseline](s)
        summary = mean_std(runs)
        write_json_atomic(
            out / "eval.json",
            {
                "task": s.task.name,
                "split": "eval",
                "examples": len(s.evaluation),
                "checkpoint": str(args.model),
                "n_models": len(runs),
                "settings": {
                    "baseline": args.baseline,
                    **settings,
                    "model": str(args.model),
                    "max_length": args.max_length,
                    "seed": args.seed,
                    "train_examples": s.n_train,
                    "train_limit": args.train_limit,
                    "data_dir": args.data_dir,
                },
                "summary": summary,
                "runs": runs,
                **extra,
                "seconds": time.perf_counter() - started,
                "device": str(s.device),
                "commit": commit,
            },
        )
    finally:
        lock.release()
    print(
        f"{args.baseline} {s.task.name} eval ({len(s.evaluation)} examples), {len(runs)} model(s): "
        f"{format_summary(summary)} → {out / 'eval.json'}"
    )


if __name__ == "__main__":
    run_cli(main)
