"""Evaluating a distilled dataset the way the paper does (Sec. 3.1 "Evaluation").

For each of N models: θ_0 = the pretrained encoder with a freshly initialised classification head
(seeded), fine-tuned for the T inner steps on D̃ exactly as during distillation (same η̃, same attention
loss), then scored on the task's evaluation split. We report mean ± std over the N models.

An evaluation resumes: each scored model is written at once to a progress file beside eval.json
(`Progress`), and the same command again scores only the models that are not in it yet.
"""

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from . import checks, distributed, tasks
from . import data as taskdata
from .card import write_card
from .checks import check_models_at_once
from .errors import ArgumentParser, UserError, run_cli, stop_if_signalled
from .files import load_pretrained
from .method import seeds
from .method.distilled import DistilledData
from .method.evaluation import PRECISIONS, choose_models_at_once, evaluate_distilled, format_summary, mean_std
from .method.kernels import KERNELS
from .method.kernels import resolve as resolve_kernels
from .options import ALLOW_SLOW_BF16, check_bf16
from .paths import atomic_path, code_version, file_sha256, resolve_checkpoint, write_json_atomic
from .rundir import claim, distilled_path, load_run


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m ddattn.evaluate",
        renamed={"--batch-size": "--eval-batch-size"},
        description="Train N fresh models on a run's distilled data and score them (paper Sec. 3.1).",
        epilog="One process at a time works on a run (its lock): an evaluation while another, or a "
        "distillation, works on it is refused with one line. SIGTERM or SIGUSR1: one line, exit "
        "status 143, no file half-written; the same command again resumes (every scored model is kept "
        "in OUT's progress file, e.g. eval.partial.jsonl, until eval.json is written).",
    )
    p.add_argument("run_dir", type=Path, help="runs/<task>/<name>/ of python -m ddattn.distill")
    p.add_argument("--n-models", type=int, default=100, help="N models, each with its own random head (paper: 100)")
    p.add_argument(
        "--split",
        choices=["eval", "train"],
        default="eval",
        help="eval: the task's evaluation split (GLUE dev, AG News test)",
    )
    p.add_argument("--which", choices=["best", "last"], default="best", help="distilled_best or distilled_last")
    p.add_argument(
        "--seed", type=int, default=0, help="run seed: model i gets head i of the evaluation stream (ddattn/seeds.py)"
    )
    p.add_argument("--eval-batch-size", dest="batch_size", type=int, default=64, help="examples per batch")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: inference matmuls in bfloat16, about 2x faster on CPUs with AVX512-BF16 or AMX, "
        "approximate; refused where bf16 is slow (ddattn/options.py)",
    )
    p.add_argument(ALLOW_SLOW_BF16, action="store_true", help="run --precision bf16 even where it is slower than fp32")
    p.add_argument(
        "--models-at-once",
        default="auto",
        metavar="K|auto",
        help="score K models in one batched computation over a model axis (same predictions); "
        "auto: 1 on a CPU, where it is not faster, on a GPU as many as half its free memory holds",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument(
        "--kernels",
        choices=KERNELS,
        default="auto",
        help="cpu: cache-sized operators; gpu: few large ones; auto: gpu on CUDA, else cpu (kernels.py)",
    )
    p.add_argument("--out", type=Path, help="default RUN_DIR/eval.json")
    args = p.parse_args(argv)
    if args.n_models < 1 or args.batch_size < 1:
        raise UserError("--n-models and --eval-batch-size must be ≥ 1")
    check_models_at_once(args.models_at_once)
    checks.check_seed(args.seed)
    return args


class Progress:
    """Scored models kept as they come, so that an evaluation stopped by a signal, a crash or a lost machine
    resumes. Each model is one JSON line ({"run", "seconds", "commit"}), written at once and synced, in a
    progress file beside OUT (eval.json → eval.partial.jsonl; under torchrun one per process,
    eval.partial.rank<r>.jsonl) whose first line is the evaluation's identity: everything that decides a
    model's numbers (the distilled file's digest, split, seed, precision, batching, kernels, device type).
    Models found in a file of the same identity are not scored again; a file of another identity is
    ignored (one note) and this process's own is replaced. `remove` deletes them once eval.json is written."""

    def __init__(self, out: Path, identity: dict, commit: str):
        self.identity = json.loads(json.dumps(identity))  # as it reads back from a file
        self.commit = commit
        self.pattern = f"{out.stem}.partial*.jsonl"
        self.folder = out.parent
        own_name = "partial" if distributed.world_size() == 1 else f"partial.rank{distributed.rank()}"
        self.path = out.parent / f"{out.stem}.{own_name}.jsonl"
        self.done: Dict[int, dict] = {}  # head seed -> its line
        own = []
        for path in sorted(self.folder.glob(self.pattern)):
            header, lines = read_progress(path)
            if header != self.identity:
                if distributed.is_main():
                    print(
                        f"note: {path} was written under other settings ({differences(header, self.identity)}); "
                        "its models are scored again"
                    )
                continue
            self.done.update((line["run"]["seed"], line) for line in lines)
            own = lines if path == self.path else own
        distributed.barrier()  # every process has read every file before any is rewritten
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(line) + "\n" for line in [{"identity": self.identity}, *own]))

    def record(self, runs: List[dict], seconds: float) -> None:
        """Append the scored models of one chunk (`seconds`: the chunk's wall time, shared among them)."""
        lines = [{"run": run, "seconds": seconds / len(runs), "commit": self.commit} for run in runs]
        try:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(line) + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}; the models scored before are in it") from None

    def score(self, head_seeds: Sequence[int], score: Callable, desc: str) -> Tuple[List[dict], List[dict]]:
        """(this process's runs, the lines kept from earlier invocations): the models of `head_seeds` not
        kept are scored by `score(todo, after_models)` and recorded as they come, under a progress bar."""
        kept = [self.done[seed] for seed in head_seeds if seed in self.done]
        if kept and distributed.is_main():
            print(f"resuming: {len(kept)} of {len(head_seeds)} models were scored before ({self.path})")
        last = time.perf_counter()
        bar = tqdm(total=len(head_seeds), initial=len(kept), desc=desc, unit="model", disable=not distributed.is_main())
        with bar:

            def after_models(runs: List[dict]) -> None:  # kept at once; the bar; a stop signal Python dropped
                nonlocal last
                now = time.perf_counter()
                self.record(runs, now - last)
                last = now
                bar.update(len(runs))
                stop_if_signalled()

            new = score([seed for seed in head_seeds if seed not in self.done], after_models)
        return [line["run"] for line in kept] + new, kept

    def remove(self) -> None:
        for path in self.folder.glob(self.pattern):
            path.unlink(missing_ok=True)


def read_progress(path: Path):
    """(identity, model lines) of a progress file; reading stops at the first line that is not a whole model
    line (a write cut short: only the last line can be), and a file that is not one has no identity."""
    try:
        rows = path.read_text().splitlines()
        header = json.loads(rows[0])["identity"] if rows else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None, []
    lines = []
    for row in rows[1:]:
        try:
            line = json.loads(row)
            if isinstance(line["run"]["seed"], int) and isinstance(line["seconds"], (int, float)):
                lines.append(line)
                continue
        except (ValueError, KeyError, TypeError):
            pass
        break
    return header, lines


def differences(found, wanted: dict) -> str:
    """What differs between a progress file's identity and this evaluation's, for one line."""
    if not isinstance(found, dict):
        return "not a progress file"
    return ", ".join(f"{k} {found.get(k)!r} instead of {v!r}" for k, v in wanted.items() if found.get(k) != v)


@dataclass
class Evaluation:
    """One evaluation, ready to score: the run's task and split, the distilled file, this process's share of
    the N heads, what decides their numbers (`identity`, Progress), and `score(todo, after_models)`."""

    task: tasks.Task
    split: taskdata.EncodedSplit
    distilled_file: Path
    head_seeds: List[int]
    models_at_once: int
    identity: dict
    score: Callable[[List[int], Callable], List[dict]]


def prepare(args: argparse.Namespace, settings: dict, distilled: DistilledData, device) -> Evaluation:
    """Load the run's checkpoint, D̃ and split onto `device` (checked against each other) and cut the split
    into batches once for all N models."""
    task = tasks.task_from_settings(settings)
    model_dir = resolve_checkpoint(settings["model"])
    config, pretrained = load_pretrained(model_dir, device=device)
    distilled_file = distilled_path(args.run_dir, args.which)
    checks.check_distilled_for_model(distilled.config, config, distilled_file, model_dir)
    distilled = DistilledData(distilled.config, {k: v.to(device) for k, v in distilled.tensors().items()})
    split = taskdata.load_split(
        task, args.split, model_dir / "tokenizer.json", settings["max_length"], settings.get("data_dir")
    )
    eval_set = taskdata.eval_batches(split, args.batch_size, device, one_length=True)
    head_seeds = [seeds.stream_seed("evaluation-head", args.seed, i) for i in range(args.n_models)]
    head_seeds = head_seeds[distributed.rank() :: distributed.world_size()]
    models_at_once = choose_models_at_once(
        args.models_at_once, device, pretrained, config, eval_set, max(1, len(head_seeds))
    )
    identity = {
        "task": task.name,
        "split": args.split,
        "distilled": f"{distilled_file.name} sha256 {file_sha256(distilled_file)}",
        "checkpoint": str(settings["model"]),
        "seed": args.seed,
        "eval_batch_size": args.batch_size,
        "precision": args.precision,
        "models_at_once": models_at_once,
        "kernels": resolve_kernels(args.kernels, device),
        "device": device.type,
    }

    def score(todo: List[int], after_models: Callable) -> List[dict]:
        return evaluate_distilled(
            pretrained,
            config,
            distilled,
            lambda: eval_set,
            todo,
            task.metrics,
            after_models=after_models,
            precision=args.precision,
            models_at_once=models_at_once,
            kernels=args.kernels,
        )

    return Evaluation(task, split, distilled_file, head_seeds, models_at_once, identity, score)


def result_record(
    args, evaluation: Evaluation, settings: dict, runs: List[dict], kept: List[dict], seconds: float, device, commit
) -> dict:
    """eval.json: every model's metrics, their mean ± std, and what made them; `seconds` is this invocation's
    wall time, to which the time earlier invocations spent on the models kept from them is added."""
    earlier = sum(line["seconds"] for line in kept)
    result = {
        "task": evaluation.task.name,
        "split": args.split,
        "examples": len(evaluation.split),
        "checkpoint": str(settings["model"]),
        "distilled": evaluation.distilled_file.name,
        "n_models": args.n_models,
        "precision": args.precision,
        "models_at_once": evaluation.models_at_once,
        "kernels": evaluation.identity["kernels"],
        "settings": settings,
        "summary": mean_std(runs),
        "runs": runs,
        "seconds": seconds + earlier,
        "processes": distributed.world_size(),
        "device": str(device),
        "commit": commit,
    }
    if kept:
        result["resumed"] = {
            "models": len(kept),
            "seconds": earlier,
            "commits": sorted({line["commit"] for line in kept}),
        }
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.precision == "bf16":
        check_bf16("--precision bf16", distributed.local_device(args.device), args.allow_slow_bf16)
    settings, distilled = load_run(args.run_dir, args.which)
    out = args.out or args.run_dir / "eval.json"
    checks.writable_file(out, "--out")  # now, not after N models of work
    device = distributed.local_device(args.device)
    distributed.setup(device)
    lock = claim(args.run_dir) if distributed.is_main() else None  # one process per run: no result replaces another's
    ended_cleanly = False
    try:
        evaluation = prepare(args, settings, distilled, device)
        commit = code_version()  # the code that runs, read before HEAD can move
        progress = Progress(out, evaluation.identity, commit)
        started = time.perf_counter()
        runs, kept = progress.score(evaluation.head_seeds, evaluation.score, f"evaluate {evaluation.task.name}")
        runs = sorted(distributed.gather(runs), key=lambda r: r["seed"])
        kept = distributed.gather(kept)
        if distributed.is_main():
            seconds = time.perf_counter() - started
            result = result_record(args, evaluation, settings, runs, kept, seconds, device, commit)
            write_json_atomic(out, result)
            progress.remove()
            print(
                f"{evaluation.task.name} {args.split} ({len(evaluation.split)} examples), {args.n_models} models: "
                f"{format_summary(result['summary'])}"
            )
            print(f"card: {write_card(args.run_dir)}")
        ended_cleanly = True
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(wait_for_others=ended_cleanly)


if __name__ == "__main__":
    run_cli(main)
