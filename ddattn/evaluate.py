"""Evaluating a distilled dataset the way the paper does (Sec. 3.1 "Evaluation").

For each of N models: θ_0 = the pretrained encoder with a freshly initialised classification head
(seeded), fine-tuned for the T inner steps on D̃ exactly as during distillation (same η̃, same attention
loss), then scored on the task's evaluation split. We report mean ± std over the N models.
"""

import math
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checks
from . import data as taskdata
from . import tasks
from . import distributed
from .method import seeds
from .method.bert import BertConfig, Params, bert_forward, fresh_model
from .method.distilled import DistilledData
from .errors import ArgumentParser, UserError, run_cli, stop_if_signalled
from .method.kernels import KERNELS
from .options import ALLOW_SLOW_BF16, check_bf16
from .paths import code_version, resolve_checkpoint, write_json_atomic
from .rundir import claim
from .method.unroll import FROZEN, train_on_distilled
from .files import load_pretrained, load_distilled, read_distilled_metadata


# --- metrics -------------------------------------------------------------------------------------
def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).double().mean().item()


def f1_positive(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of class 1 (as GLUE reports for MRPC); 0 when there is no true, or no predicted, positive."""
    true_pos = ((predictions == 1) & (labels == 1)).sum().item()
    predicted, actual = (predictions == 1).sum().item(), (labels == 1).sum().item()
    return 0.0 if true_pos == 0 else 2 * true_pos / (predicted + actual)


def compute_metrics(metric_names: Sequence[str], predictions: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Named metrics of one model's predictions: `accuracy`, `f1` (positive class), `acc_f1` (their mean,
    the number the paper's MRPC column shows)."""
    values = {"accuracy": accuracy(predictions, labels)}
    if "f1" in metric_names:
        values["f1"] = f1_positive(predictions, labels)
        values["acc_f1"] = (values["accuracy"] + values["f1"]) / 2
    return values


def mean_std(runs: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """{metric: {"mean", "std"}} over runs (population std, as over a fixed set of seeds)."""
    summary = {}
    for name in (k for k in runs[0] if k != "seed"):
        values = torch.tensor([r[name] for r in runs], dtype=torch.float64)
        summary[name] = {"mean": values.mean().item(), "std": values.std(correction=0).item()}
    return summary


def headline_metric(summary: Dict[str, Dict[str, float]]) -> str:
    """The metric the paper's tables show: for MRPC the mean of accuracy and F1 (`acc_f1`), else accuracy."""
    return "acc_f1" if "acc_f1" in summary else "accuracy"


def format_summary(summary: Dict[str, Dict[str, float]]) -> str:
    """'accuracy 68.4 ± 0.0, f1 81.2 ± 0.0, ...' in percent (the loss is left out)."""
    return ", ".join(f"{k} {v['mean'] * 100:.1f} ± {v['std'] * 100:.1f}" for k, v in summary.items() if k != "loss")


# --- models ----------------------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16")


def inference_weights(theta: Params, precision: str) -> Params:
    """θ for `predict`: as it is in fp32; in bf16 the matrices of its linear layers are cast once per model
    (so autocast does not cast them again for every batch); embeddings, LayerNorm and biases stay fp32."""
    if precision == "fp32":
        return theta
    return {k: v.to(torch.bfloat16) if v.dim() == 2 and not k.startswith("embeddings.") else v
            for k, v in theta.items()}


@torch.inference_mode()
def predict(theta: Params, config: BertConfig, batches: Iterable[Dict[str, torch.Tensor]], precision: str = "fp32",
            kernels: str = "auto"):
    """Mean cross-entropy, predictions and labels of `theta` over batches: fused attention, no autograd
    state, the last layer for [CLS] only (bert.py). precision "bf16": matmuls in bfloat16 under
    torch.autocast, faster where the CPU or GPU has bf16 units, approximate (bench/README.md: its effect
    on the metrics)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    theta = inference_weights(theta, precision)
    device_type = theta["pooler.bias"].device.type
    losses, predictions, labels = [], [], []
    for batch in batches:
        mask = None if batch["attention_mask"].all() else batch["attention_mask"]    # unpadded: no mask to apply
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = bert_forward(theta, config, batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                  attention_mask=mask, attention="none", fused=True, kernels=kernels).logits
        losses.append(F.cross_entropy(logits.double(), batch["labels"], reduction="sum"))
        predictions.append(logits.argmax(-1))
        labels.append(batch["labels"])
    labels = torch.cat(labels)
    return (torch.stack(losses).sum() / len(labels)).item(), torch.cat(predictions), labels


@torch.inference_mode()
def predict_models(thetas: Sequence[Params], config: BertConfig, batches: Iterable[Dict[str, torch.Tensor]],
                   precision: str = "fp32", kernels: str = "auto"):
    """`predict` for K models in one batched computation over a model axis: the K parameter sets stacked
    along a new leading axis (the word embeddings, which training leaves at θ_0's, kept once) and the
    same forward mapped over it by torch.func.vmap, so each linear layer is one batched matmul over the K
    models. The same maths as K calls of `predict`, rounded differently, so the same predictions up to
    fp32 rounding (tests/test_batched_eval.py). It cuts the ops launched K-fold (what a GPU waits on);
    on a CPU, where evaluation is bound by its matmuls' FLOPs, it is not faster (bench/README.md).
    Returns ([mean cross-entropy of each model], predictions (K, N), labels (N,))."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    models = [inference_weights(theta, precision) for theta in thetas]
    shared = {n: models[0][n] for n in FROZEN}
    stacked = {n: torch.stack([m[n] for m in models]) for n in models[0] if n not in FROZEN}    # (K, ...) each
    device_type = stacked["pooler.bias"].device.type

    def logits(params: Params, batch: Dict[str, torch.Tensor]) -> torch.Tensor:              # one model: (B, C)
        # The mask even where nothing is padded: without one, the last layer's [CLS] row takes a custom
        # autograd Function (attention.py), which vmap cannot map.
        return bert_forward({**shared, **params}, config, batch["input_ids"], token_type_ids=batch["token_type_ids"],
                            attention_mask=batch["attention_mask"], attention="none", fused=True,
                            kernels=kernels).logits

    losses, predictions, labels = [], [], []
    for batch in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = torch.func.vmap(logits, in_dims=(0, None))(stacked, batch)                 # (K, B, C)
        losses.append(torch.stack([F.cross_entropy(o.double(), batch["labels"], reduction="sum") for o in out]))
        predictions.append(out.argmax(-1))                                                  # (K, B)
        labels.append(batch["labels"])
    labels = torch.cat(labels)
    return (torch.stack(losses).sum(0) / len(labels)).tolist(), torch.cat(predictions, 1), labels


def scored(loss: float, predictions: torch.Tensor, labels: torch.Tensor, metric_names: Sequence[str]
           ) -> Dict[str, float]:
    """{"loss", **metrics} of one model's predictions; the metrics are NaN when the loss is (a diverged model)."""
    metrics = compute_metrics(metric_names, predictions, labels)
    if not math.isfinite(loss):
        metrics = {k: float("nan") for k in metrics}
    return {"loss": loss, **metrics}


def score(theta: Params, config: BertConfig, batches: Iterable[Dict[str, torch.Tensor]],
          metric_names: Sequence[str], precision: str = "fp32", kernels: str = "auto") -> Dict[str, float]:
    """{"loss", **metrics} of one model on `batches` (see `scored`)."""
    return scored(*predict(theta, config, batches, precision, kernels), metric_names)


def eval_batches(split: "taskdata.EncodedSplit", batch_size: int, device="cpu",
                 indices: Optional[torch.Tensor] = None, one_length: bool = False) -> List[Dict[str, torch.Tensor]]:
    """A split (or its rows `indices`) sorted by length and cut into batches, each exactly as wide as its
    longest row: on AG News test at 64 per batch 0.9 % of the tokens are padding, against 7.6 % when
    rounded up to 8 and 121 % in file order. Where a batch's rows are all of one length (most of them on a
    large split) `predict` also drops the mask. Same metrics; built once and reused for all N models.
    one_length: every batch holds rows of one length (at most `batch_size`), so no token is padding (on
    MRPC and SST-2 dev at 64 per batch, 7 % of the tokens are otherwise) and no batch needs a mask; more,
    smaller batches (56 on MRPC dev instead of 7), which a CPU's matmuls run as fast per row."""
    rows = torch.arange(len(split)) if indices is None else torch.as_tensor(indices)
    rows = rows[split.lengths[rows].argsort(stable=True)]
    groups = [rows]
    if one_length:                                                   # runs of equal length in the sorted rows
        groups = rows.split(torch.unique_consecutive(split.lengths[rows], return_counts=True)[1].tolist())
    return [taskdata.collate(split, chunk, device, width=int(split.lengths[chunk].max()))
            for group in groups for chunk in group.split(batch_size)]


def trained_model(pretrained: Params, config: BertConfig, distilled: DistilledData, seed: int,
                  kernels: str = "auto") -> Params:
    """θ_T of one evaluated model: θ_0 with the head drawn from `seed`, T SGD steps on D̃ (Eq. 2)."""
    theta0 = fresh_model(pretrained, config, distilled.config.num_classes, seed)
    return train_on_distilled(theta0, config, distilled, kernels=kernels)[0][-1]


def predict_each(thetas: Sequence[Params], config: BertConfig, make_batches, models_at_once: int,
                 precision: str = "fp32", kernels: str = "auto") -> List[tuple]:
    """[(mean loss, predictions, labels)] of K trained models: each alone (`predict`) when models_at_once
    is 1, else all K in one batched computation (`predict_models`)."""
    if models_at_once == 1:
        return [predict(theta, config, make_batches(), precision, kernels) for theta in thetas]
    losses, predictions, labels = predict_models(thetas, config, make_batches(), precision, kernels)
    return [(loss, p, labels) for loss, p in zip(losses, predictions)]


def evaluate_distilled(pretrained: Params, config: BertConfig, distilled: DistilledData,
                       make_batches, seeds: Sequence[int], metric_names: Sequence[str], progress=None,
                       precision: str = "fp32", models_at_once: int = 1, kernels: str = "auto"
                       ) -> List[Dict[str, float]]:
    """Train one model per seed on D̃ (T steps) and score it; `make_batches()` yields evaluation batches.
    models_at_once K > 1: the models are trained one after the other and scored K at a time, in one
    batched computation over a model axis (`predict_models`); 1 (the default, and validation's inside
    distill) scores each model alone, as `predict` always has. `kernels`: the kernel policy (kernels.py)."""
    runs = []
    for start in range(0, len(seeds), models_at_once):
        stop_if_signalled()
        chunk = seeds[start:start + models_at_once]
        thetas = [trained_model(pretrained, config, distilled, seed, kernels) for seed in chunk]
        results = predict_each(thetas, config, make_batches, models_at_once, precision, kernels)
        runs += [{"seed": seed, **scored(*result, metric_names)} for seed, result in zip(chunk, results)]
        if progress is not None:
            progress.update(len(chunk))
    return runs


def choose_models_at_once(setting: str, device: torch.device, theta: Params, config: BertConfig,
                          batches: Sequence[Dict[str, torch.Tensor]], n_models: int) -> int:
    """--models-at-once: a number as given; "auto": 1 on a CPU (its evaluation is bound by the matmuls'
    FLOPs, which batching over models does not cut: bench/README.md), on a GPU as many of the N models
    as half its free memory holds (each: a trained and a stacked copy of its parameters, and the widest
    batch's activations, `model_bytes`)."""
    if setting != "auto":
        return min(int(setting), n_models)
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(n_models, free // 2 // model_bytes(theta, config, batches)))


def check_models_at_once(setting: str) -> None:
    """--models-at-once is "auto" or a whole number ≥ 1."""
    if setting != "auto" and not (setting.isdigit() and int(setting) >= 1):
        raise UserError(f"--models-at-once must be auto or a whole number ≥ 1, not {setting!r}")


def model_bytes(theta: Params, config: BertConfig, batches: Sequence[Dict[str, torch.Tensor]]) -> int:
    """Memory one more model takes in `predict_models`, roughly: two copies of its trained parameters and,
    for its widest batch (B, S), the FFN's two (B, S, I) tensors and a few (B, S, D) ones."""
    parameters = sum(v.numel() * v.element_size() for n, v in theta.items() if n not in FROZEN)
    tokens = max(batch["input_ids"].numel() for batch in batches)
    return 2 * parameters + tokens * (2 * config.intermediate_size + 6 * config.hidden_size) * 4


# --- command line: python -m ddattn.evaluate RUN_DIR -------------------------------------------------
def load_run(run_dir: Path, which: str = "best"):
    """A run's settings and its distilled data (distilled_best or distilled_last), checked to belong
    together: same task, class count, shapes and checkpoint."""
    config_path, data_path = run_dir / "config.json", distilled_path(run_dir, which)
    for path in (config_path, data_path):
        if not path.is_file():
            raise UserError(f"{path} is missing: is {run_dir} a finished `python -m ddattn.distill` run?")
    settings = checks.read_json(config_path)
    checks.require_fields(settings, checks.RUN_FIELDS, config_path)
    distilled = load_distilled(data_path)
    num_classes = tasks.task_from_settings(settings).num_classes
    checks.check_distilled_for_run(read_distilled_metadata(data_path), settings, num_classes, data_path)
    return settings, distilled


def distilled_path(run_dir: Path, which: str) -> Path:
    return run_dir / f"distilled_{which}.safetensors"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m ddattn.evaluate",
                       description="Train N fresh models on a run's distilled data and score them (paper Sec. 3.1).",
                       epilog="One process at a time works on a run (its lock): an evaluation while another, or a "
                       "distillation, works on it is refused with one line. SIGTERM or SIGUSR1: one line, exit "
                       "status 143, no file half-written.")
    p.add_argument("run_dir", type=Path, help="runs/<task>/<name>/ of python -m ddattn.distill")
    p.add_argument("--n-models", type=int, default=100, help="N models, each with its own random head (paper: 100)")
    p.add_argument("--split", choices=["eval", "train"], default="eval",
                   help="eval: the task's evaluation split (GLUE dev, AG News test)")
    p.add_argument("--which", choices=["best", "last"], default="best", help="distilled_best or distilled_last")
    p.add_argument("--seed", type=int, default=0, help="run seed: model i gets head i of the evaluation stream (ddattn/seeds.py)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: inference matmuls in bfloat16, about 2x faster on CPUs with AVX512-BF16 or AMX, "
                   "approximate; refused where bf16 is slow (ddattn/options.py)")
    p.add_argument(ALLOW_SLOW_BF16, action="store_true", help="run --precision bf16 even where it is slower than fp32")
    p.add_argument("--models-at-once", default="auto", metavar="K|auto",
                   help="score K models in one batched computation over a model axis (same predictions); "
                        "auto: 1 on a CPU, where it is not faster, on a GPU as many as half its free memory holds")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--kernels", choices=KERNELS, default="auto",
                   help="cpu: cache-sized operators; gpu: few large ones; auto: gpu on CUDA, else cpu (kernels.py)")
    p.add_argument("--out", type=Path, help="default RUN_DIR/eval.json")
    args = p.parse_args(argv)
    if args.n_models < 1 or args.batch_size < 1:
        raise UserError("--n-models and --batch-size must be ≥ 1")
    check_models_at_once(args.models_at_once)
    checks.check_seed(args.seed)
    if args.precision == "bf16":
        check_bf16("--precision bf16", distributed.local_device(args.device), args.allow_slow_bf16)
    settings, distilled = load_run(args.run_dir, args.which)
    out = args.out or args.run_dir / "eval.json"
    checks.writable_file(out, "--out")          # now, not after N models of work
    device = distributed.local_device(args.device)
    distributed.setup(device)
    lock = claim(args.run_dir) if distributed.is_main() else None    # one process per run: no result replaces another's
    try:
        task = tasks.task_from_settings(settings)
        model_dir = resolve_checkpoint(settings["model"])
        config, pretrained = load_pretrained(model_dir, device=device)
        checks.check_distilled_for_model(distilled.config, config, distilled_path(args.run_dir, args.which), model_dir)
        distilled = DistilledData(distilled.config, {k: v.to(device) for k, v in distilled.tensors().items()})
        split = taskdata.load_split(task, args.split, model_dir / "tokenizer.json", settings["max_length"],
                                    settings.get("data_dir"))
        eval_set = eval_batches(split, args.batch_size, device, one_length=True)
        head_seeds = [seeds.stream_seed("evaluation-head", args.seed, i) for i in range(args.n_models)]
        head_seeds = head_seeds[distributed.rank()::distributed.world_size()]
        models_at_once = choose_models_at_once(args.models_at_once, device, pretrained, config, eval_set,
                                               max(1, len(head_seeds)))
        started = time.perf_counter()
        commit = code_version()          # the code that runs, read before HEAD can move
        with tqdm(total=len(head_seeds), desc=f"evaluate {task.name}", unit="model", disable=not distributed.is_main()) as bar:
            runs = evaluate_distilled(pretrained, config, distilled,
                                      lambda: eval_set,
                                      head_seeds, task.metrics, progress=bar, precision=args.precision,
                                      models_at_once=models_at_once, kernels=args.kernels)
        runs = sorted(distributed.gather(runs), key=lambda r: r["seed"])
        summary = mean_std(runs)
        if distributed.is_main():
            write_json_atomic(out, {
                "task": task.name, "split": args.split, "examples": len(split), "checkpoint": str(settings["model"]),
                "distilled": f"distilled_{args.which}.safetensors", "n_models": args.n_models,
                "precision": args.precision, "models_at_once": models_at_once,
                "settings": settings, "summary": summary, "runs": runs,
                "seconds": time.perf_counter() - started, "processes": distributed.world_size(), "device": str(device),
                "commit": commit})
            print(f"{task.name} {args.split} ({len(split)} examples), {args.n_models} models: {format_summary(summary)}")
            from .card import write_card   # imported here: card.py reads runs through this module
            print(f"card: {write_card(args.run_dir)}")
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()


if __name__ == "__main__":
    run_cli(main)
