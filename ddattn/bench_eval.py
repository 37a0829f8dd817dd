"""`python -m ddattn.bench --eval`: how many distilled-data evaluations per hour, against a reference.

One evaluated model (the paper's evaluation, Sec. 3.1) is: θ_0 with a fresh head, T SGD steps on D̃, then
predictions on the task's evaluation split. Three evaluators are timed, one model after the other in
the same process, so that whatever else the machine does falls on all three alike:

- reference — `reference.predictions`, the way the authors' code evaluates: eager attention with its
  (S, S) probabilities, every row of the last layer, the split in file order in batches of 128;
- fp32 — `evaluation.predict`, what `python -m ddattn.evaluate` runs: fused attention, the last layer for
  [CLS] only, no autograd state, rows sorted by length in batches of one length each (no padding); with
  `--models-at-once K` (K > 1), K models scored in one batched computation (`evaluation.predict_models`);
- bf16 — the same with `--precision bf16`: linear layers in bfloat16; timed only where the CPU has fast
  bf16 (options.py's rule), or with --allow-slow-bf16, and left out with a notice otherwise.

Models are taken K at a time (K = 1 unless `--models-at-once` says otherwise), each evaluator timed on
the K together; a model's seconds are the K's divided by K. It reports seconds per model (wall clock
and this process's CPU time), models per hour, each as a ratio of the reference, the share of examples
on which fp32 predicts what the reference predicts, how many classes each model predicts, and the
metric of every evaluator with bf16's difference from fp32 (bench/README.md).

It also counts each evaluator's arithmetic (`scoring_flops`: the FLOPs of scoring one model on the split)
and reads this device's fp32 matmul peak before and after the models (`fp32_peak`), in the same process
and threads: how fast the fp32 evaluator could be at best, had every FLOP of its scoring run at that peak
and nothing else (training on D̃, softmax, LayerNorm, copies) cost any time — the highest speed against the
reference that its arithmetic allows on this machine.
"""

import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from . import data as taskdata
from . import reference, tasks
from .checks import check_models_at_once
from .data import eval_batches
from .errors import UserError
from .files import load_pretrained, read_bert_config
from .flops import matmul_gflops, peak_size, peak_summary
from .method.bert import BertConfig, fresh_model
from .method.distilled import DistilledConfig, DistilledData
from .method.evaluation import choose_models_at_once, compute_metrics, headline_metric, predict_each
from .method.kernels import resolve as resolve_kernels
from .method.unroll import train_on_distilled
from .options import ALLOW_SLOW_BF16, check_bf16, describe_capability, slow_bf16_reason
from .paths import resolve_checkpoint
from .rundir import load_run

EVALUATORS = ("reference", "fp32", "bf16")


def load_setting(args):
    """(task, max_length, data dir, model dir, D̃): from --run, or a freshly initialised D̃ for --task (the
    paper's Algorithm 1 start: what a D̃ trains does not change the speed; agreement is checked all the same)."""
    if args.run:
        settings, distilled = load_run(args.run)
        return (
            tasks.task_from_settings(settings),
            settings["max_length"],
            settings.get("data_dir"),
            resolve_checkpoint(settings["model"]),
            distilled,
        )
    if not args.task:
        raise UserError("--eval needs --task TASK or --run RUN_DIR")
    task, model_dir = tasks.get_task(args.task), resolve_checkpoint(args.model)
    config = read_bert_config(model_dir / "config.json")
    dconfig = DistilledConfig(
        num_classes=task.num_classes,
        seq_len=64,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        inner_lr_init=0.1,
    )
    return task, 128, None, model_dir, DistilledData.initial(dconfig, torch.Generator().manual_seed(args.seed))


def evaluator_names(allow_slow_bf16: bool):
    """(evaluators to time, why bf16 is left out or None): bf16 only where it is fast, unless allowed."""
    cpu = torch.device("cpu")
    why = slow_bf16_reason(cpu)
    if why and not allow_slow_bf16:
        print(
            f"notice: the bf16 evaluator is left out: {why}, so it would be slower than fp32 here "
            f"({ALLOW_SLOW_BF16} times it anyway)",
            flush=True,
        )
        return EVALUATORS[:2], why
    check_bf16("the bf16 evaluator", cpu, allowed=True)  # where bf16 is slow: the notice, once
    return EVALUATORS, None


def layer_flops(c: BertConfig, B: int, S: int, query_rows: int) -> int:
    """FLOPs of one encoder layer on B sequences of S tokens whose queries, attention output and FFN run on
    `query_rows` rows each (S, or 1 in ddattn's [CLS]-only last layer); keys and values on all S rows, then
    q kᵀ and P v. A matmul of (m × k) by (k × n) counts 2mkn; the rest (softmax, LayerNorm, GELU) is left out."""
    D, I = c.hidden_size, c.intermediate_size
    return 2 * B * (query_rows * (2 * D * D + 2 * D * I) + S * 2 * D * D + query_rows * S * 2 * D)


def scoring_flops(c: BertConfig, batches, cls_only_last: bool, kernels: str = "cpu") -> int:
    """FLOPs of the encoder over `batches` (each as wide as its input_ids): every layer on every row, or
    with `cls_only_last` the last layer for [CLS] only, as `evaluation.predict` runs it under the policy
    `kernels` (under gpu that layer still projects every row's query: one matmul for q, k, v; bert.py)."""
    total = 0
    for batch in batches:
        B, S = batch["input_ids"].shape
        last = 1 if cls_only_last else S
        total += sum(layer_flops(c, B, S, S) for _ in range(c.num_layers - 1)) + layer_flops(c, B, S, last)
        if cls_only_last and kernels == "gpu":
            total += 2 * B * (S - 1) * c.hidden_size**2  # the queries of the rows after [CLS]
    return total


def fp32_peak(device: torch.device, config: BertConfig, eval_set, square: int) -> float:
    """The best GFLOP/s this device's fp32 matmuls reach here: a square one (`square`²) and the two FFN
    matmuls of the evaluation's largest batch (all its tokens by hidden by FFN width, and back)."""
    rows = max(batch["input_ids"].numel() for batch in eval_set)
    D, I = config.hidden_size, config.intermediate_size
    return max(matmul_gflops(device, torch.float32, *shape) for shape in [(square,), (rows, D, I), (rows, I, D)])


def timed(fn):
    """(fn(), wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run(args) -> dict:
    check_models_at_once(args.models_at_once)
    if args.threads:
        torch.set_num_threads(args.threads)
    task, max_length, data_dir, model_dir, distilled = load_setting(args)
    config, pretrained = load_pretrained(model_dir)
    distilled = distilled.detached()
    split = taskdata.load_split(task, "eval", model_dir / "tokenizer.json", max_length, data_dir)
    rows = torch.arange(min(args.eval_limit or len(split), len(split)))  # the first rows, in file order
    order = rows[split.lengths[rows].argsort(stable=True)]  # eval_batches' order
    eval_set = eval_batches(split, args.eval_batch_size, indices=rows, one_length=True)  # built once for all models
    labels = split.labels[rows]
    names, bf16_left_out = evaluator_names(args.allow_slow_bf16)
    k = choose_models_at_once(
        args.models_at_once, pretrained["pooler.weight"].device, pretrained, config, eval_set, args.n_models
    )

    kernels = resolve_kernels(args.kernels, pretrained["pooler.weight"].device)

    def fast(theta0s, precision):
        thetas = [train_on_distilled(theta0, config, distilled, kernels=kernels)[0] for theta0 in theta0s]
        return [
            torch.empty_like(p).index_put_((order,), p)  # file order
            for _, p, _ in predict_each(thetas, config, lambda: eval_set, k, precision, kernels)
        ]

    evaluators = {
        "reference": lambda theta0s: [
            reference.predictions(theta0, config, distilled, split, rows) for theta0 in theta0s
        ],
        "fp32": lambda theta0s: fast(theta0s, "fp32"),
        "bf16": lambda theta0s: fast(theta0s, "bf16"),
    }
    device = pretrained["pooler.weight"].device
    square = peak_size(device, args.matmul_size)  # as the outer step's peak
    peaks = [fp32_peak(device, config, eval_set, square)]  # before the models, and after them below
    num_classes = distilled.config.num_classes
    per_model, agreement = time_models(
        evaluators,
        names,
        lambda seeds: [fresh_model(pretrained, config, num_classes, seed) for seed in seeds],
        args.n_models,
        k,
        lambda p: compute_metrics(task.metrics, p, labels),
    )
    peaks.append(fp32_peak(device, config, eval_set, square))
    fast_flops = scoring_flops(config, eval_set, cls_only_last=True, kernels=kernels)  # fp32 and bf16 alike
    reference_batches = taskdata.batches(split, reference.EVAL_BATCH_SIZE, indices=rows)
    flops = {"reference": scoring_flops(config, reference_batches, cls_only_last=False)}
    flops.update({name: fast_flops for name in names if name != "reference"})
    summary = summarise(per_model, agreement, task, len(rows), args, k, flops)
    walls = {name: summary["summary"][name]["wall_s_per_model"] for name in ("reference", "fp32")}
    return {
        **summary,
        "fp32_ceiling": ceiling(walls["reference"], walls["fp32"], fast_flops, peaks),
        "kernels": kernels,
        "bf16_left_out": bf16_left_out,
    }


def time_models(
    evaluators: Dict[str, Callable],
    names: Sequence[str],
    theta0s_of: Callable,
    n_models: int,
    k: int,
    metrics: Callable,
) -> Tuple[Dict[str, List[dict]], Dict[str, List[float]]]:
    """Every evaluator in turn on the same models, k at a time: (each evaluator's per-model records, the
    shares of examples on which fp32 predicts what the reference predicts and bf16 what fp32 predicts)."""
    per_model: Dict[str, List[dict]] = {name: [] for name in names}
    agreement = {"fp32 = reference": [], **({"bf16 = fp32": []} if "bf16" in names else {})}
    for start in range(0, n_models, k):
        seeds = range(start, min(start + k, n_models))
        theta0s = theta0s_of(seeds)
        predictions = {}
        for name in names:
            predictions[name], wall, cpu = timed(lambda: evaluators[name](theta0s))
            per_model[name] += [
                {
                    "seed": seed,
                    "wall_s": wall / len(seeds),
                    "cpu_s": cpu / len(seeds),
                    "classes_predicted": len(p.unique()),
                    **metrics(p),
                }
                for seed, p in zip(seeds, predictions[name])
            ]
            which = f"models {seeds.start}–{seeds.stop - 1}" if len(seeds) > 1 else f"model {seeds.start}"
            print(f"{which} {name}: {wall / len(seeds):.1f} s ({cpu / len(seeds):.1f} s CPU) per model", flush=True)
        for fp32, ref in zip(predictions["fp32"], predictions["reference"]):
            agreement["fp32 = reference"].append((fp32 == ref).double().mean().item())
        for bf16, fp32 in zip(predictions.get("bf16", []), predictions["fp32"]):
            agreement["bf16 = fp32"].append((bf16 == fp32).double().mean().item())
    return per_model, agreement


def ceiling(reference_wall: float, fp32_wall: float, fp32_flops: int, peaks: List[float]) -> dict:
    """The fp32 evaluator at its best: all of its scoring at the best peak reading and nothing else, against
    the reference's mean wall seconds per model. A peak below the rate fp32 actually reached cannot bound
    it (`peak_too_low`: a larger --matmul-size, or a machine whose speed changed)."""
    peak = peak_summary(peaks)
    fastest = fp32_flops / (peak["gflops"] * 1e9)
    return {
        "peak": peak,
        "fastest_s_per_model": fastest,
        "highest_speed_vs_reference_wall": reference_wall / fastest,
        "peak_too_low": fp32_wall < fastest,
    }


def summarise(
    per_model: Dict[str, List[dict]],
    agreement: Dict[str, List[float]],
    task,
    examples: int,
    args,
    models_at_once: int,
    flops: Dict[str, int],
) -> dict:
    metric = headline_metric(per_model["fp32"][0])
    reference_wall = statistics.mean(r["wall_s"] for r in per_model["reference"])
    reference_cpu = statistics.mean(r["cpu_s"] for r in per_model["reference"])
    fp32_metric = [r[metric] for r in per_model["fp32"]]
    summary = {}
    for name, runs in per_model.items():
        wall, cpu = statistics.mean(r["wall_s"] for r in runs), statistics.mean(r["cpu_s"] for r in runs)
        differences = [r[metric] - m for r, m in zip(runs, fp32_metric)]
        summary[name] = {
            "wall_s_per_model": wall,
            "cpu_s_per_model": cpu,
            "models_per_hour": 3600 / wall,
            "scoring_gflop_per_model": flops[name] / 1e9,
            "gflops_per_s_wall": flops[name] / 1e9 / wall,  # scoring FLOPs over all of a model's time
            "speed_vs_reference_wall": reference_wall / wall,
            "speed_vs_reference_cpu": reference_cpu / cpu,
            "metric": metric,
            "metric_mean": statistics.mean(r[metric] for r in runs),
            "metric_minus_fp32_points": 100 * statistics.mean(differences),
            "largest_metric_difference_points": 100 * max(map(abs, differences)),
            "fewest_classes_predicted": min(r["classes_predicted"] for r in runs),
        }
    return {
        "task": task.name,
        "split": "eval",
        "examples": examples,
        "n_models": args.n_models,
        "eval_batch_size": args.eval_batch_size,
        "models_at_once": models_at_once,
        "run": str(args.run) if args.run else None,
        "summary": summary,
        "agreement": {k: min(v) for k, v in agreement.items()},
        "per_model": per_model,
    }


def markdown(result: dict, env: dict) -> str:
    lines = [
        f"# ddattn evaluation throughput: {result['task']} {result['split']} ({result['examples']} examples)",
        "",
        f"{env['cpu']} ({describe_capability(env['cpu_capability'])}), {env['threads']} threads, torch "
        f"{env['torch']}; {result['n_models']} models, each timed by every evaluator in turn, "
        f"{result['models_at_once']} at a time; {env['date']}; "
        f"`{env['command']}`."
        + (
            f" bf16 left out: {result['bf16_left_out']} ({ALLOW_SLOW_BF16} times it)."
            if result.get("bf16_left_out")
            else ""
        ),
        "",
        f"| evaluator | s / model (wall) | s / model (CPU) | models / hour | speed vs reference (wall) "
        f"| (CPU) | scoring GFLOP / model | GFLOP/s (wall) | {result['summary']['fp32']['metric']} "
        "| minus fp32 (points) | largest per model |",
        "|---|" + "---:|" * 10,
    ]
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {s['wall_s_per_model']:.1f} | {s['cpu_s_per_model']:.1f} | {s['models_per_hour']:.1f} "
            f"| **{s['speed_vs_reference_wall']:.2f}×** | {s['speed_vs_reference_cpu']:.2f}× "
            f"| {s['scoring_gflop_per_model']:.1f} | {s['gflops_per_s_wall']:.1f} "
            f"| {100 * s['metric_mean']:.2f} | {s['metric_minus_fp32_points']:+.2f} "
            f"| {s['largest_metric_difference_points']:.2f} |"
        )
    c, peak = result["fp32_ceiling"], result["fp32_ceiling"]["peak"]
    moved = " — they moved apart by more than the tolerance: the machine's speed changed" if peak["moved"] else ""
    lines += [
        "",
        f"fp32 matmul peak, this run: {peak['gflops']:.1f} GFLOP/s, the best rate torch's fp32 matmuls reached "
        "(readings before and after the models: "
        + ", ".join(f"{g:.1f}" for g in peak["readings_gflops"])
        + f"; spread {100 * peak['spread']:.1f} %, tolerance {100 * peak['tolerance']:.0f} %{moved}). All of fp32's "
        f"scoring at that rate and nothing else would take {c['fastest_s_per_model']:.2f} s per model: at most "
        f"**{c['highest_speed_vs_reference_wall']:.2f}×** the reference (wall) with this arithmetic here."
        + (
            " Warning: fp32 ran faster than that, so the peak reading is too low to bound it (try a larger "
            "--matmul-size)."
            if c["peak_too_low"]
            else ""
        ),
    ]
    lines += [
        "",
        "Same predictions (the worst model): "
        + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in result["agreement"].items()),
        "",
        "Classes predicted (the model that predicts fewest): "
        + ", ".join(f"{name} {s['fewest_classes_predicted']}" for name, s in result["summary"].items()),
    ]
    return "\n".join(lines) + "\n"
