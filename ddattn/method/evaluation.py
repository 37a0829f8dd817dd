"""Evaluating a distilled dataset the way the paper does (Sec. 3.1 "Evaluation").

For each of N models: θ_0 = the pretrained encoder with a freshly initialised classification head
(seeded, never a head the distillation trained against: seeds.py), fine-tuned for the T inner steps on
D̃ exactly as during distillation (same η̃, same attention loss, Eq. 2), then scored on the task's
evaluation split. We report mean ± std over the N models.
"""

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .bert import BertConfig, Params, classify, fresh_model
from .distilled import DistilledData
from .unroll import FROZEN, train_on_distilled


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
    return {
        k: v.to(torch.bfloat16) if v.dim() == 2 and not k.startswith("embeddings.") else v for k, v in theta.items()
    }


@torch.inference_mode()
def predict(
    theta: Params,
    config: BertConfig,
    batches: Iterable[Dict[str, torch.Tensor]],
    precision: str = "fp32",
    kernels: str = "auto",
):
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
        # no mask where no row is padded; a batch says so from the host (data.EvalBatch), a plain dict
        # always applies its mask (to ask the mask itself would wait for the device, batch by batch)
        mask = batch["attention_mask"] if getattr(batch, "padded", True) else None
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = classify(theta, config, batch, mask, kernels)  # (B, C)
        losses.append(F.cross_entropy(logits.double(), batch["labels"], reduction="sum"))
        predictions.append(logits.argmax(-1))
        labels.append(batch["labels"])
    labels = torch.cat(labels)
    return (torch.stack(losses).sum() / len(labels)).item(), torch.cat(predictions), labels


@torch.inference_mode()
def predict_models(
    thetas: Sequence[Params],
    config: BertConfig,
    batches: Iterable[Dict[str, torch.Tensor]],
    precision: str = "fp32",
    kernels: str = "auto",
):
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
    stacked = {n: torch.stack([m[n] for m in models]) for n in models[0] if n not in FROZEN}  # (K, ...) each
    device_type = stacked["pooler.bias"].device.type

    def logits(params: Params, batch: Dict[str, torch.Tensor]) -> torch.Tensor:  # one model: (B, C)
        # The mask even where nothing is padded: without one, the last layer's [CLS] row takes a custom
        # autograd Function (attention.py), which vmap cannot map.
        return classify({**shared, **params}, config, batch, batch["attention_mask"], kernels)

    losses, predictions, labels = [], [], []
    for batch in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = torch.func.vmap(logits, in_dims=(0, None))(stacked, batch)  # (K, B, C)
        losses.append(torch.stack([F.cross_entropy(o.double(), batch["labels"], reduction="sum") for o in out]))
        predictions.append(out.argmax(-1))  # (K, B)
        labels.append(batch["labels"])
    labels = torch.cat(labels)
    return (torch.stack(losses).sum(0) / len(labels)).tolist(), torch.cat(predictions, 1), labels


def scored(
    loss: float, predictions: torch.Tensor, labels: torch.Tensor, metric_names: Sequence[str]
) -> Dict[str, float]:
    """{"loss", **metrics} of one model's predictions; the metrics are NaN when the loss is (a diverged model)."""
    metrics = compute_metrics(metric_names, predictions, labels)
    if not math.isfinite(loss):
        metrics = {k: float("nan") for k in metrics}
    return {"loss": loss, **metrics}


def score(
    theta: Params,
    config: BertConfig,
    batches: Iterable[Dict[str, torch.Tensor]],
    metric_names: Sequence[str],
    precision: str = "fp32",
    kernels: str = "auto",
) -> Dict[str, float]:
    """{"loss", **metrics} of one model on `batches` (see `scored`)."""
    return scored(*predict(theta, config, batches, precision, kernels), metric_names)


def trained_model(
    pretrained: Params, config: BertConfig, distilled: DistilledData, seed: int, kernels: str = "auto"
) -> Params:
    """θ_T of one evaluated model: θ_0 with the head drawn from `seed`, T SGD steps on D̃ (Eq. 2)."""
    theta0 = fresh_model(pretrained, config, distilled.config.num_classes, seed)
    return train_on_distilled(theta0, config, distilled, kernels=kernels)[0]


def predict_each(
    thetas: Sequence[Params],
    config: BertConfig,
    make_batches,
    models_at_once: int,
    precision: str = "fp32",
    kernels: str = "auto",
) -> List[tuple]:
    """[(mean loss, predictions, labels)] of K trained models: each alone (`predict`) when models_at_once
    is 1, else all K in one batched computation (`predict_models`)."""
    if models_at_once == 1:
        return [predict(theta, config, make_batches(), precision, kernels) for theta in thetas]
    losses, predictions, labels = predict_models(thetas, config, make_batches(), precision, kernels)
    return [(loss, p, labels) for loss, p in zip(losses, predictions)]


def evaluate_distilled(
    pretrained: Params,
    config: BertConfig,
    distilled: DistilledData,
    make_batches,
    seeds: Sequence[int],
    metric_names: Sequence[str],
    after_models: Optional[Callable[[List[Dict[str, float]]], None]] = None,
    precision: str = "fp32",
    models_at_once: int = 1,
    kernels: str = "auto",
) -> List[Dict[str, float]]:
    """Train one model per seed on D̃ (T steps) and score it; `make_batches()` yields evaluation batches.
    models_at_once K > 1: the models are trained one after the other and scored K at a time, in one
    batched computation over a model axis (`predict_models`); 1 (the default, and validation's inside
    distill) scores each model alone, as `predict` always has. `kernels`: the kernel policy (kernels.py).
    `after_models(runs)` is called with each chunk's results as soon as they are scored (a progress bar, a
    progress file, a stop signal's check)."""
    runs = []
    for start in range(0, len(seeds), models_at_once):
        chunk = seeds[start : start + models_at_once]
        thetas = [trained_model(pretrained, config, distilled, seed, kernels) for seed in chunk]
        results = predict_each(thetas, config, make_batches, models_at_once, precision, kernels)
        new = [{"seed": seed, **scored(*result, metric_names)} for seed, result in zip(chunk, results)]
        runs += new
        if after_models is not None:
            after_models(new)
    return runs


def choose_models_at_once(
    setting: str,
    device: torch.device,
    theta: Params,
    config: BertConfig,
    batches: Sequence[Dict[str, torch.Tensor]],
    n_models: int,
) -> int:
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


def model_bytes(theta: Params, config: BertConfig, batches: Sequence[Dict[str, torch.Tensor]]) -> int:
    """Memory one more model takes in `predict_models`, roughly: two copies of its trained parameters and,
    for its widest batch (B, S), the FFN's two (B, S, I) tensors and a few (B, S, D) ones."""
    parameters = sum(v.numel() * v.element_size() for n, v in theta.items() if n not in FROZEN)
    tokens = max(batch["input_ids"].numel() for batch in batches)
    return 2 * parameters + tokens * (2 * config.intermediate_size + 6 * config.hidden_size) * 4


# --- command line: python -m ddattn.evaluate RUN_DIR -------------------------------------------------
