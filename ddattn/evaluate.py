"""Evaluating a distilled dataset the way the paper does (Sec. 3.1 "Evaluation").

For each of N models: θ_0 = the pretrained encoder with a freshly initialised classification head
(seeded), fine-tuned for the T inner steps on D̃ exactly as during distillation (same η̃, same attention
loss), then scored on the task's evaluation split. We report mean ± std over the N models.
"""

import math
from typing import Dict, Iterable, List, Sequence

import torch
import torch.nn.functional as F

from .bert import BertConfig, Params, bert_forward, init_classifier
from .distilled import DistilledData
from .unroll import train_on_distilled


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


# --- models ----------------------------------------------------------------------------------------
@torch.no_grad()
def predict(theta: Params, config: BertConfig, batches: Iterable[Dict[str, torch.Tensor]]):
    """Mean cross-entropy, predictions and labels of `theta` over batches (fused attention, no autograd)."""
    losses, predictions, labels = [], [], []
    for batch in batches:
        logits = bert_forward(theta, config, batch["input_ids"], token_type_ids=batch["token_type_ids"],
                              attention_mask=batch["attention_mask"], attention="none", fused=True).logits
        losses.append(F.cross_entropy(logits.double(), batch["labels"], reduction="sum"))
        predictions.append(logits.argmax(-1))
        labels.append(batch["labels"])
    labels = torch.cat(labels)
    return (torch.stack(losses).sum() / len(labels)).item(), torch.cat(predictions), labels


def fresh_model(pretrained: Params, config: BertConfig, num_classes: int, seed: int) -> Params:
    """θ_0 ~ p(θ_0): the pretrained encoder and pooler with a new head drawn from `seed`."""
    like = pretrained["pooler.weight"]
    head = init_classifier(config, num_classes, torch.Generator().manual_seed(seed), dtype=like.dtype, device=like.device)
    return {**pretrained, **head}


def evaluate_distilled(pretrained: Params, config: BertConfig, distilled: DistilledData,
                       make_batches, seeds: Sequence[int], metric_names: Sequence[str], progress=None
                       ) -> List[Dict[str, float]]:
    """Train one model per seed on D̃ (T steps) and score it; `make_batches()` yields evaluation batches."""
    runs = []
    for seed in seeds:
        theta0 = fresh_model(pretrained, config, distilled.config.num_classes, seed)
        thetas, _ = train_on_distilled(theta0, config, distilled)
        loss, predictions, labels = predict(thetas[-1], config, make_batches())
        metrics = compute_metrics(metric_names, predictions, labels)
        if not math.isfinite(loss):
            metrics = {k: float("nan") for k in metrics}
        runs.append({"seed": seed, "loss": loss, **metrics})
        if progress is not None:
            progress.update(1)
    return runs
