"""The outer loop (paper Algorithm 1): learn D̃ and η̃ by Adam on the hypergradient of a real batch's loss.

    lines 1–2   D̃ = {(x̃_i, ỹ_i, ã_i)} and η̃ ← η̃_0        DistilledData.initial, `init_from_real`,
                                                         `init_attention_from_model`
    line 3      for outer step s = 1..S                   `algorithm_1`
    line 4      θ_0 ~ p(θ_0)                              fresh_model (bert.py): pretrained + new head
    lines 5–12  θ_T: T SGD steps on D̃ (Eq. 2, 7)        hypergradient (unroll.py), differentiated through
    line 13     (x_s, y_s) ~ D                            the caller's `real_batch(s)`
    lines 14–15 D̃ ← D̃ − α ∇_D̃ L(x_s, y_s, θ_T)         `outer_step`: Adam, linear warmup and decay,
                                                         gradient clipping at 1.0 (Appendix B)

Nothing here reads a file, logs, validates or checkpoints: the caller does (distill.py, `after_step`).
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import seeds
from .bert import BertConfig, Params, bert_forward, fresh_model
from .distilled import DistilledData
from .unroll import AllReduce, hypergradient, row_sum

Batch = Dict[str, torch.Tensor]


# --- lines 1–2: initialisation beyond random --------------------------------------------------------
def real_init_rows(labels: torch.Tensor, num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """(M,) for --init real: the row of one random training example of class i mod C for each sample i."""
    g = seeds.generator("real-init", seed)
    rows = []
    for i in range(num_samples):
        candidates = torch.nonzero(labels == i % num_classes).flatten()
        if len(candidates) == 0:
            raise ValueError(f"the training split has no example of class {i % num_classes}")
        rows.append(candidates[torch.randint(len(candidates), (1,), generator=g)])
    return torch.cat(rows)


def init_from_real(distilled: DistilledData, pretrained: Params, real: Batch) -> None:
    """x̃_i ← the input embeddings of real example i (`real`: M rows, S tokens wide): its word embeddings,
    plus, for the second text of a pair, the difference between the token-type embeddings 1 and 0 —
    distilled samples are read with token type 0, so this makes x̃_i enter BERT exactly as the real pair
    does."""
    word, token_type = pretrained["embeddings.word"], pretrained["embeddings.token_type"]
    with torch.no_grad():
        distilled.x.copy_(word[real["input_ids"]] + token_type[real["token_type_ids"]] - token_type[0])  # (M, S, D)


def init_attention_from_model(
    distilled: DistilledData, pretrained: Params, config: BertConfig, kernels: str = "auto"
) -> None:
    """ã_i ← the pretrained model's own attention on x̃_i: the logits are its attention scores, so
    softmax(ã) equals its attention and the attention loss (Eq. 6) starts at 0 instead of at a random
    target's KL. (The head does not matter: attention is computed before it.)"""
    attention_type = distilled.config.attention_type
    if attention_type == "none":
        return
    with torch.no_grad():
        out = bert_forward(
            pretrained, config, inputs_embeds=distilled.x, attention_type=attention_type, kernels=kernels
        )
        distilled.attn_logits.copy_(out.cls_scores if attention_type == "cls" else out.scores)  # (M, L, H, S[, S])


# --- the update of lines 14–15 (Appendix B) ---------------------------------------------------------
def make_optimizer(
    distilled: DistilledData, lr: float, group_lrs: Dict[str, float], kind: str = "adam", weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam (or AdamW) over D̃: one parameter group per learnable tensor, each with its own α where
    `group_lrs` gives one (x, label_logits, attn_logits, lr_raw), else `lr`."""
    groups = [
        {"params": [tensor], "lr": group_lrs.get(name) or lr, "name": name}
        for name, tensor in distilled.learnable().items()
    ]
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return optimizer_class(groups, weight_decay=weight_decay)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float):
    """Linear warmup over the first `warmup` fraction of steps, then linear decay to 0 (Appendix B)."""
    warmup_steps = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad_norm(parameters: List[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm, ε = 1e-6) with the norm summed by `row_sum`, which gives
    the same bits on any number of threads: one process and torchrun ranks clip alike."""
    norm = torch.stack([row_sum(p.grad * p.grad) for p in parameters]).sum().sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.mul_(scale)
    return norm


# --- one outer step, and the loop ------------------------------------------------------------------
@dataclass
class Outer:
    """What every outer step uses: the model, D̃, its optimiser and schedule, and how to differentiate."""

    pretrained: Params
    config: BertConfig
    num_classes: int
    distilled: DistilledData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seed: int  # --seed: θ_0 of step s is draw s of its "training-head" stream
    clip: float = 1.0
    mode: str = "recompute"  # unroll.py: "graph" or "recompute" (memory flat in T)
    real_batch_size: Optional[int] = None  # the whole real batch, where `real` is this rank's share of it
    autocast: Optional[torch.dtype] = None
    all_reduce: Optional[AllReduce] = None
    kernels: str = "auto"


@dataclass
class OuterStep:
    """What one outer step did, as device tensors (reading them waits for the device: the caller decides when)."""

    loss: torch.Tensor  # L(x_s, y_s, θ_T)
    inner_losses: torch.Tensor  # (T, 3) [L_task + λ L_attn, L_task, L_attn] at each θ_t
    grad_norm: torch.Tensor  # ‖∇_D̃ L‖ before clipping
    finite: torch.Tensor  # (2 + 2 G,) is each of: loss, inner losses, the G gradients, the G tensors after


def outer_step(outer: Outer, s: int, real: Sequence[Batch]) -> OuterStep:
    """Algorithm 1, lines 4–15, for outer step s (counted from 0) on the real batch `real` (micro-batches)."""
    theta0 = fresh_model(
        outer.pretrained,
        outer.config,
        outer.num_classes,  # line 4: θ_0 ~ p(θ_0)
        seed=seeds.stream_seed("training-head", outer.seed, s),
    )
    result = hypergradient(
        theta0,
        outer.config,
        outer.distilled,
        real,
        mode=outer.mode,  # lines 5–13, ∇ of 15
        real_batch_size=outer.real_batch_size,
        autocast=outer.autocast,
        all_reduce=outer.all_reduce,
        kernels=outer.kernels,
    )
    finite = [torch.isfinite(x).all() for x in (result.loss, result.inner_losses, *result.grads.values())]
    learnable = outer.distilled.learnable()
    for name, tensor in learnable.items():
        tensor.grad = result.grads[name]
    grad_norm = clip_grad_norm(list(learnable.values()), outer.clip)
    outer.optimizer.step()  # lines 14–15: D̃ ← D̃ − α ∇_D̃ L
    finite += [torch.isfinite(v).all() for v in learnable.values()]
    outer.scheduler.step()
    outer.optimizer.zero_grad(set_to_none=True)
    return OuterStep(result.loss, result.inner_losses, grad_norm, torch.stack(finite))


def algorithm_1(
    outer: Outer,
    steps: range,
    real_batch: Callable[[int], Sequence[Batch]],
    after_step: Callable[[int, OuterStep], bool],
) -> bool:
    """Algorithm 1, line 3 on (lines 1–2 made `outer.distilled`): the outer steps `steps`, each followed by
    the caller's `after_step(s, result)` (logging, validation, checkpoint), which returns False to stop
    early. True when every step ran."""
    for s in steps:  # line 3: for s = 1..S
        if not after_step(s, outer_step(outer, s, real_batch(s))):  # lines 4–15; line 13: real_batch
            return False
    return True
