"""Evaluating a distilled dataset the way the paper does (Sec. 3.1 "Evaluation").

For each of N models: θ_0 = the pretrained encoder with a freshly initialised classification head
(seeded), fine-tuned for the T inner steps on D̃ exactly as during distillation (same η̃, same attention
loss), then scored on the task's evaluation split. We report mean ± std over the N models.
"""

import time
from pathlib import Path
from typing import Optional, Sequence

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
from .paths import code_version, resolve_checkpoint, write_json_atomic
from .rundir import claim, distilled_path, load_run


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(
        prog="python -m ddattn.evaluate",
        renamed={"--batch-size": "--eval-batch-size"},
        description="Train N fresh models on a run's distilled data and score them (paper Sec. 3.1).",
        epilog="One process at a time works on a run (its lock): an evaluation while another, or a "
        "distillation, works on it is refused with one line. SIGTERM or SIGUSR1: one line, exit "
        "status 143, no file half-written.",
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
    if args.precision == "bf16":
        check_bf16("--precision bf16", distributed.local_device(args.device), args.allow_slow_bf16)
    settings, distilled = load_run(args.run_dir, args.which)
    out = args.out or args.run_dir / "eval.json"
    checks.writable_file(out, "--out")  # now, not after N models of work
    device = distributed.local_device(args.device)
    distributed.setup(device)
    lock = claim(args.run_dir) if distributed.is_main() else None  # one process per run: no result replaces another's
    try:
        task = tasks.task_from_settings(settings)
        model_dir = resolve_checkpoint(settings["model"])
        config, pretrained = load_pretrained(model_dir, device=device)
        checks.check_distilled_for_model(distilled.config, config, distilled_path(args.run_dir, args.which), model_dir)
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
        started = time.perf_counter()
        commit = code_version()  # the code that runs, read before HEAD can move
        with tqdm(
            total=len(head_seeds), desc=f"evaluate {task.name}", unit="model", disable=not distributed.is_main()
        ) as bar:

            def after_models(k: int) -> None:  # the bar; and a stop signal whose exception Python dropped
                bar.update(k)
                stop_if_signalled()

            runs = evaluate_distilled(
                pretrained,
                config,
                distilled,
                lambda: eval_set,
                head_seeds,
                task.metrics,
                after_models=after_models,
                precision=args.precision,
                models_at_once=models_at_once,
                kernels=args.kernels,
            )
        runs = sorted(distributed.gather(runs), key=lambda r: r["seed"])
        summary = mean_std(runs)
        if distributed.is_main():
            write_json_atomic(
                out,
                {
                    "task": task.name,
                    "split": args.split,
                    "examples": len(split),
                    "checkpoint": str(settings["model"]),
                    "distilled": f"distilled_{args.which}.safetensors",
                    "n_models": args.n_models,
                    "precision": args.precision,
                    "models_at_once": models_at_once,
                    "kernels": resolve_kernels(args.kernels, device),
                    "settings": settings,
                    "summary": summary,
                    "runs": runs,
                    "seconds": time.perf_counter() - started,
                    "processes": distributed.world_size(),
                    "device": str(device),
                    "commit": commit,
                },
            )
            print(
                f"{task.name} {args.split} ({len(split)} examples), {args.n_models} models: {format_summary(summary)}"
            )
            print(f"card: {write_card(args.run_dir)}")
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()


if __name__ == "__main__":
    run_cli(main)
