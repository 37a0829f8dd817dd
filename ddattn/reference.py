"""The yardsticks: one outer step and one evaluation written the straightforward way.

`python -m ddattn.bench --reference` and `--eval` time these in the same run as ddattn's own code and
print the ratio, so every speed claim is measured against a reference on the same machine and settings.
They are the same maths as `unroll.hypergradient` and `evaluation.evaluate_distilled` (tests/test_unroll.py
checks that they agree), done the way a first implementation would, close to the authors' code (Hugging
Face BERT, `torch.autograd.grad(create_graph=True)`, eager attention):

- ddattn's BERT with `plain=True`: every layer computes every row and attention materialises its
  (S, S) probabilities; autograd differentiates the ops as written (no hand-written backward, no fused
  kernel, no recomputation);
- the attention loss as a KL of two log_softmax, the whole unroll kept in one graph, the outer loss on
  the whole real batch and one `torch.autograd.grad` to D̃;
- evaluation in file order, in batches of 128, each padded to its longest row (rounded up
  to a multiple of 8, as `data.collate` does).
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from . import data as taskdata
from .method.bert import BertConfig, Params, bert_forward
from .method.distilled import DistilledData
from .method.unroll import FROZEN, soft_cross_entropy, trainable_names

EVAL_BATCH_SIZE = 128


def inner_loss(theta: Params, config: BertConfig, distilled: DistilledData, t: int) -> torch.Tensor:
    """L_task + λ L_attn of inner step t (Eq. 6–7), textbook ops."""
    rows = distilled.step_indices(t)
    attention_type = distilled.config.attention_type
    out = bert_forward(theta, config, inputs_embeds=distilled.x[rows], attention_type=attention_type, plain=True)
    loss = soft_cross_entropy(out.logits, distilled.targets(t))
    if attention_type == "none":
        return loss
    scores = out.cls_scores if attention_type == "cls" else out.scores  # (b, L, H, S) or (b, L, H, S, S)
    log_label = F.log_softmax(distilled.attn_logits[rows], dim=-1)
    kl = (log_label.exp() * (log_label - F.log_softmax(scores, dim=-1))).sum(-1)
    return loss + distilled.config.attn_weight * kl.mean()


def train(theta0: Params, config: BertConfig, distilled: DistilledData, create_graph: bool) -> Params:
    """θ_T after T SGD steps on D̃ (Eq. 7); with `create_graph`, θ_T stays a function of D̃."""
    names = trainable_names(theta0)
    theta = {n: v.detach().requires_grad_(n not in FROZEN) for n, v in theta0.items()}
    for t in range(distilled.config.steps):
        grads = torch.autograd.grad(
            inner_loss(theta, config, distilled, t), [theta[n] for n in names], create_graph=create_graph
        )
        lr = distilled.inner_lr(t)
        theta = {**theta, **{n: theta[n] - lr * g for n, g in zip(names, grads)}}
    return theta


def logits(theta: Params, config: BertConfig, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, C) logits of a real batch, textbook ops."""
    return bert_forward(
        theta,
        config,
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        attention_type="none",
        plain=True,
    ).logits


def hypergradient(
    theta0: Params, config: BertConfig, distilled: DistilledData, batch: Dict[str, torch.Tensor]
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(L_outer at θ_T, ∂ L_outer(θ_T(D̃)) / ∂D̃ by name): one graph over the whole unroll, one backward."""
    theta = train(theta0, config, distilled, create_graph=True)
    loss = F.cross_entropy(logits(theta, config, batch), batch["labels"])
    learnable = distilled.learnable()
    grads = torch.autograd.grad(loss, list(learnable.values()), materialize_grads=True)
    return loss.detach(), dict(zip(learnable, grads))


def predictions(
    theta0: Params, config: BertConfig, distilled: DistilledData, split: "taskdata.EncodedSplit", rows: torch.Tensor
) -> torch.Tensor:
    """One evaluated model: θ_0 trained on D̃, then the predicted class of the split's `rows`, in that order."""
    theta = {n: v.detach() for n, v in train(theta0, config, distilled, create_graph=False).items()}
    with torch.no_grad():
        return torch.cat(
            [
                logits(theta, config, batch).argmax(-1)
                for batch in taskdata.batches(split, EVAL_BATCH_SIZE, indices=rows)
            ]
        )
