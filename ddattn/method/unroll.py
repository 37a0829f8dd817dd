"""The inner loop and its hypergradient: T manual SGD steps on distilled data, differentiated through.

Inner step (paper Eq. 7), on the distilled samples of step t:
    θ_{t+1} = θ_t − η̃_t ∇_θ (L_task + λ L_attn)
    L_task = mean_i  −Σ_c ỹ_ic log softmax(f(x̃_i; θ_t))_c                    (Eq. 1, soft targets)
    L_attn = mean_(i, layer, head)  KL(ã ‖ a(θ_t))                             (Eq. 6, [CLS] query)
Outer loss (Eq. 3–4): cross-entropy of a real mini-batch at θ_T. Its gradient with respect to
D̃ = (x̃, ỹ, ã, η̃) is the hypergradient that Algorithm 1 (line 15) descends. It is taken in two parts:
g_T = ∂L_outer/∂θ_T from the real batch alone (`outer_gradient`), then a reverse sweep that carries g_T
back through the T steps to D̃. Only g_T depends on the real batch, so it may be summed over
micro-batches and, through the `all_reduce` callback, over processes.

Notation: θ_t the parameters after t inner steps (a dict, see bert.py), η̃_t the learned learning rate
of step t, D̃ the learnable distilled tensors, g a gradient ∇_θ, v = ∂L_outer/∂θ_t the cotangent
carried back by the reverse sweep; shapes as in bert.py (B, S, D, H, L = the paper's layers K, T steps).

θ is a plain dict of tensors (see bert.py), so a step is `{k: θ[k] − η g[k]}` and nothing is mutated.
The word-embedding matrix is left out of the unroll: distilled inputs bypass the lookup, so its gradient
is exactly zero and it stays θ_0's.

Two exact ways to get the hypergradient, equal to rounding, and one approximate:
- `graph`: keep autograd's graph across all T steps and call backward once (the paper's way; memory
  grows linearly in T, the paper's Limitation (i)).
- `recompute`: no graph across steps. A forward sweep without a graph keeps θ at every k-th step
  (k = ⌈√T⌉) and the θs of the last segment; the last step is taken with its graph into the outer loss
  and the gradient pulled back to v = ∂L_outer/∂θ_{T−1}; then a backward sweep, segment by segment
  (the segment's θs rebuilt from its first, bit for bit), rebuilds one step at a time with a graph and
  takes one vector–Jacobian product of θ_{t+1}(θ_t, D̃) with v. Activations are those of one step, and
  about 2√T parameter sets are held instead of T; the price is one extra forward+backward for each step
  but the last, and one more forward (without a graph) for most steps when T > 2.
- `finite-difference`: the reverse sweep of `recompute`, with each vector–Hessian product taken as a
  central difference of two first-order gradients (no double backward; approximate, error measured;
  it keeps all of θ_0..θ_T).
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import kernels as policy
from .bert import BertConfig, Params, bert_forward, classify
from .distilled import DistilledData

FROZEN = ("embeddings.word",)  # no gradient path from distilled inputs
MODES = ("graph", "recompute", "finite-difference")
FD_PERTURBATION = 1e-2  # ε = ‖r v‖ of the finite-difference mode
AllReduce = Callable[[List[torch.Tensor]], None]  # sums tensors in place across processes


def trainable_names(theta: Params) -> List[str]:
    """The parameters the inner SGD steps update: all but the word embeddings."""
    return [name for name in theta if name not in FROZEN]


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ of all entries, over the rows first, then along the last axis. A flat `x.sum()` of a large
    tensor splits the work by CPU thread and changes in the last bits with the thread count; this does
    not, so one process (2 threads) and torchrun ranks (1 each) agree to the bit."""
    return x.reshape(-1, x.shape[-1]).sum(0).sum()


def total(x: torch.Tensor, kernels: str) -> torch.Tensor:
    """Σ of all entries: `row_sum` under the cpu kernel policy, one plain sum under the gpu one."""
    return row_sum(x) if kernels == "cpu" else x.sum()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i −Σ_c y_ic log softmax(logits_i)_c; logits, targets: (B, C)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


class AttentionKL(torch.autograd.Function):
    """KL(ã ‖ a) per attention row, ã = softmax(label_logits), a = softmax(scores): (..., S) → (...).

    One fused op with the closed-form gradients, written with differentiable ops so that the inner
    step's create_graph backward can itself be differentiated (Eq. 6 sits inside Eq. 7):
        ∂KL/∂scores = a − ã,        ∂KL/∂label_logits = ã ⊙ (log ã − log a − KL)
    Everything comes from log_softmax, never log(p + ε): exact, and finite where attention underflows.
    Only the two (…, S) inputs are saved; the probabilities are recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, label_logits, scores):
        ctx.save_for_backward(label_logits, scores)
        log_target = F.log_softmax(label_logits, dim=-1)
        return (log_target.exp() * (log_target - F.log_softmax(scores, dim=-1))).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        label_logits, scores = ctx.saved_tensors
        log_target, log_model = F.log_softmax(label_logits, dim=-1), F.log_softmax(scores, dim=-1)
        target, gap = log_target.exp(), log_target - log_model
        kl = (target * gap).sum(-1, keepdim=True)
        grad = grad.unsqueeze(-1)
        return grad * target * (gap - kl), grad * (log_model.exp() - target)


def attention_kl(label_logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """KL(softmax(label_logits) ‖ softmax(scores)) over the last axis (see AttentionKL)."""
    return AttentionKL.apply(label_logits, scores)


def inner_objective(
    theta: Params, config: BertConfig, distilled: DistilledData, t: int, first_order: bool = False, kernels: str = "cpu"
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_task + λ L_attn, L_task, L_attn) of inner step t at parameters θ_t (Eq. 6–7). `first_order`:
    only first derivatives will be taken, so attention may use the fused kernel (not for full maps).
    `kernels`: the resolved kernel policy, "cpu" or "gpu" (kernels.py), as in every function below."""
    rows = distilled.step_indices(t)  # Algorithm 1, lines 6–7: the t-th mini-batch of D̃
    attention_type = distilled.config.attention_type
    out = bert_forward(
        theta,
        config,
        inputs_embeds=distilled.x[rows],
        attention_type=attention_type,
        fused=first_order and attention_type != "all",
        kernels=kernels,
    )
    task = soft_cross_entropy(out.logits, distilled.targets(t))  # line 8: L_task (Eq. 1)
    if attention_type == "none":
        attn = torch.zeros((), dtype=task.dtype, device=task.device)
    else:
        scores = out.cls_scores if attention_type == "cls" else out.scores  # (b, L, H, S) or (b, L, H, S, S)
        attn = attention_kl(distilled.attn_logits[rows], scores).mean()  # line 9: L_attn (Eq. 6), mean over
        # sample, layer, head(, query)
    return task + distilled.config.attn_weight * attn, task, attn


def sgd_step(
    theta: Params, config: BertConfig, distilled: DistilledData, t: int, create_graph: bool, kernels: str = "cpu"
) -> Tuple[Params, torch.Tensor]:
    """θ_{t+1} = θ_t − η̃_t ∇_θ (L_task + λ L_attn) (Eq. 7; Algorithm 1, lines 10–11). Returns θ_{t+1} and
    the three losses."""
    names = trainable_names(theta)
    losses = torch.stack(inner_objective(theta, config, distilled, t, first_order=not create_graph, kernels=kernels))
    grads = torch.autograd.grad(losses[0], [theta[n] for n in names], create_graph=create_graph)  # ∇_θ L
    eta = distilled.inner_lr(t)  # η̃_t
    with torch.set_grad_enabled(create_graph):  # a step that is not differentiated keeps no graph
        if kernels == "cpu":
            theta_next = {n: theta[n] - along_rows(eta, g) * g for n, g in zip(names, grads)}  # θ − η̃ g
        else:  # θ + (−η̃) g, the same numbers: the backward of + costs no op, that of − one per tensor
            minus_eta = -eta
            theta_next = {n: theta[n] + minus_eta * g for n, g in zip(names, grads)}
    return {**theta, **theta_next}, losses.detach()


def along_rows(eta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """η̃ (a scalar) as a row along g's last axis: the same θ − η̃ g. Not part of the method: η̃'s gradient
    Σ v ⊙ g is then summed over rows first, whose bits do not depend on the thread count (see `row_sum`)."""
    return eta.expand(g.shape[-1])


def outer_loss(
    theta: Params, config: BertConfig, batch: Dict[str, torch.Tensor], reduction: str = "mean", kernels: str = "cpu"
) -> torch.Tensor:
    """Eq. 3–4: cross-entropy of a real mini-batch at θ_T = F(θ_0; D̃, η̃, T), the loss whose gradient
    Algorithm 1's line 15 descends. Only first-order gradients flow through this
    forward, so it may use the fused attention kernel."""
    logits = classify(theta, config, batch, batch["attention_mask"], kernels)  # (B, C)
    return F.cross_entropy(logits, batch["labels"], reduction=reduction)


def outer_gradient(
    theta: Params,
    config: BertConfig,
    micro_batches: Sequence[Dict[str, torch.Tensor]],
    batch_size: int,
    all_reduce: Optional[AllReduce] = None,
    kernels: str = "cpu",
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """L_outer(θ_T) of a real mini-batch of `batch_size` examples and g_T = ∂L_outer/∂θ_T (trainable
    parameters, in `trainable_names` order): the seed of the reverse sweep.

    The batch arrives as micro-batches (fewer activations alive at once), under torchrun spread over the
    processes. Each micro-batch adds the gradient of its *sum* of losses, in order; `all_reduce` (in place,
    a sum over processes; None: one process) adds the processes' sums; one division by `batch_size` makes
    the mean. So one process and two, given the same micro-batches, add the same numbers in the same
    order and agree to the last bit. The gpu policy divides each micro-batch's loss by `batch_size`
    instead, before its backward: one scalar op instead of one per parameter tensor.
    """
    leaves, names = _with_grad(theta), trainable_names(theta)
    mean_later = kernels == "cpu"
    loss_sum, grads = None, None
    for batch in micro_batches:
        loss = outer_loss(leaves, config, batch, reduction="sum", kernels=kernels)
        loss = loss if mean_later else loss / batch_size
        micro_grads = torch.autograd.grad(loss, [leaves[n] for n in names])
        if grads is None:
            loss_sum, grads = loss.detach(), list(micro_grads)
        else:
            loss_sum += loss.detach()
            for grad, micro_grad in zip(grads, micro_grads):
                grad.add_(micro_grad)
    if grads is None:
        raise ValueError("outer_gradient needs at least one micro-batch")
    if all_reduce is not None:
        all_reduce([loss_sum, *grads])
    if not mean_later:
        return loss_sum, grads
    return loss_sum / batch_size, [g / batch_size for g in grads]


@dataclass
class Hypergradient:
    loss: torch.Tensor  # outer loss at θ_T (scalar, detached)
    grads: Dict[str, torch.Tensor]  # ∂L_outer / ∂(learnable distilled tensor), by name
    inner_losses: torch.Tensor  # (T, 3): [L_task + λ L_attn, L_task, L_attn] at each θ_t


def _with_grad(theta: Params) -> Params:
    """Detached copies of θ whose trainable entries are leaves that require grad (so that the step's
    gradient ∇_θ L can be taken; θ_0's own gradient is never asked for)."""
    return {n: v.detach().requires_grad_(n not in FROZEN) for n, v in theta.items()}


def hypergradient(
    theta0: Params,
    config: BertConfig,
    distilled: DistilledData,
    real: Union[Dict[str, torch.Tensor], Sequence[Dict[str, torch.Tensor]]],
    mode: str = "recompute",
    real_batch_size: Optional[int] = None,
    autocast: Optional[torch.dtype] = None,
    all_reduce: Optional[AllReduce] = None,
    kernels: str = "auto",
) -> Hypergradient:
    """∂ L_outer(θ_T(D̃)) / ∂D̃ for one θ_0 and one real mini-batch: Algorithm 1, lines 5–12 (the inner
    loop, differentiated through) and the gradient of line 15.

    mode: `graph` and `recompute` are exact; `finite-difference` approximates the vector–Hessian products.
    `real` is the batch, or this process's micro-batches of it; `real_batch_size` is the whole batch's
    size across all processes (default: the examples given here), `all_reduce` their in-place sum (see
    `outer_gradient`). `autocast` (torch.bfloat16 or float16) runs matmuls in that precision
    (torch.autocast): faster where the hardware has it, approximate; bench/README.md reports its error.
    `kernels`: "cpu", "gpu" or "auto" (by θ_0's device), how the same maths is cut into operators (kernels.py)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    device_type = next(iter(theta0.values())).device.type
    kernels = policy.resolve(kernels, device_type)
    micro_batches = [real] if isinstance(real, dict) else list(real)
    batch_size = real_batch_size or sum(len(b["labels"]) for b in micro_batches)

    def outer(theta_T: Params):
        return outer_gradient(theta_T, config, micro_batches, batch_size, all_reduce, kernels)

    with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
        return _HYPERGRADIENTS[mode](theta0, config, distilled, outer, kernels)


def _hypergradient_graph(theta0, config, distilled, outer, kernels) -> Hypergradient:
    theta, losses = _with_grad(theta0), []
    for t in range(distilled.config.steps):  # Algorithm 1, lines 5–12, one graph
        theta, step_losses = sgd_step(theta, config, distilled, t, create_graph=True, kernels=kernels)
        losses.append(step_losses)
    loss, g_T = outer(theta)
    learnable = distilled.learnable()
    grads = torch.autograd.grad(
        [theta[n] for n in trainable_names(theta)], list(learnable.values()), grad_outputs=g_T, materialize_grads=True
    )
    return Hypergradient(loss, dict(zip(learnable, grads)), torch.stack(losses))


def sgd_steps(
    theta: Params, config: BertConfig, distilled: DistilledData, start: int, stop: int, kernels: str = "auto"
) -> Iterator[Tuple[Params, torch.Tensor]]:
    """θ_{start+1}, …, θ_stop from θ = θ_start, one SGD step on D̃ at a time and without any graph:
    yields each θ_{t+1} (detached) with its step's (3,) inner losses."""
    kernels = policy.resolve(kernels, next(iter(theta.values())).device)
    frozen_distilled = distilled.detached()
    theta = {n: v.detach() for n, v in theta.items()}
    for t in range(start, stop):
        theta, step_losses = sgd_step(
            _with_grad(theta), config, frozen_distilled, t, create_graph=False, kernels=kernels
        )
        yield theta, step_losses


def train_on_distilled(
    theta0: Params, config: BertConfig, distilled: DistilledData, steps: Optional[int] = None, kernels: str = "auto"
) -> Tuple[Params, torch.Tensor]:
    """θ_T = F(θ_0; D̃, η̃, T) (Eq. 2): T (or `steps`) SGD steps on D̃ without any graph, for evaluation.
    Returns θ_T (detached; one θ in memory at a time) and the (T, 3) inner losses."""
    theta, losses = {n: v.detach() for n, v in theta0.items()}, []
    for theta, step_losses in sgd_steps(
        theta0, config, distilled, 0, distilled.config.steps if steps is None else steps, kernels
    ):
        losses.append(step_losses)
    return theta, torch.stack(losses) if losses else torch.zeros(0, 3)


def segment_length(T: int) -> int:
    """k = ⌈√T⌉: `recompute` keeps θ at every k-th step and rebuilds the rest of a segment when it gets
    there, so it holds about 2√T parameter sets instead of T."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def _hypergradient_recompute(theta0, config, distilled, outer, kernels) -> Hypergradient:
    T = distilled.config.steps
    k = segment_length(T)
    learnable = distilled.learnable()
    names = trainable_names(theta0)

    def step_vjp(theta: Params, t: int, cotangent=None):
        """Rebuild step t from θ_t = `theta` with a graph and pull `cotangent` = ∂L/∂θ_{t+1} back to θ_t
        and D̃ (one vector–Jacobian product of θ_{t+1}(θ_t, D̃)). The last step (no cotangent yet) is
        built only once: its θ_T goes straight on into the outer loss, and g_T is the cotangent. Returns
        (∂L/∂θ_t, this step's ∂L/∂D̃ by name, outer loss or None, inner losses)."""
        theta_t = _with_grad(theta)
        theta_next, step_losses = sgd_step(theta_t, config, distilled, t, create_graph=True, kernels=kernels)
        loss = None
        if cotangent is None:
            loss, cotangent = outer(theta_next)  # Eq. 3 at θ_T, and g_T
        wrt_theta = names if t > 0 else []  # nothing needs ∂L/∂θ_0: skip that work
        grads = torch.autograd.grad(
            [theta_next[n] for n in names],
            [theta_t[n] for n in wrt_theta] + list(learnable.values()),
            grad_outputs=cotangent,
            materialize_grads=True,
        )
        return grads[: len(wrt_theta)], dict(zip(learnable, grads[len(wrt_theta) :])), loss, step_losses

    # forward sweep to θ_{T−1}, no graph: keep θ_0, θ_k, θ_2k, … and every θ of the last segment
    last_start = (T - 1) // k * k
    kept, losses = {0: {n: v.detach() for n, v in theta0.items()}}, []
    for t, (theta, step_losses) in enumerate(sgd_steps(theta0, config, distilled, 0, T - 1, kernels), start=1):
        losses.append(step_losses)
        if t % k == 0 or t >= last_start:
            kept[t] = theta
    v, totals, loss, last_losses = None, None, None, None
    for start in reversed(range(0, T, k)):  # reverse sweep, one segment at a time
        stop = min(start + k, T)
        segment = [kept.pop(start)]  # θ_start … θ_{stop−1}
        if start == last_start:
            segment += [kept.pop(t) for t in range(start + 1, stop)]
        else:  # rebuilt from θ_start: the same bits
            segment += [theta for theta, _ in sgd_steps(segment[0], config, distilled, start, stop - 1, kernels)]
        for t in reversed(range(start, stop)):
            v, step_grads, step_loss, step_losses = step_vjp(segment.pop(), t, v)
            if totals is None:  # the last step: g_T, the outer loss
                totals, loss, last_losses = step_grads, step_loss, step_losses
            else:
                for name, g in step_grads.items():
                    totals[name] += g
    inner = torch.stack(losses).to(last_losses) if losses else last_losses.new_zeros(0, 3)
    return Hypergradient(loss, totals, torch.cat([inner, last_losses[None]]))


def _hypergradient_finite_difference(
    theta0, config, distilled, outer, kernels: str = "cpu", perturbation: float = FD_PERTURBATION
) -> Hypergradient:
    """Approximate: the reverse sweep of `recompute` with each vector–Hessian product replaced by a central
    difference of two first-order gradients (as in DARTS), so no double backward and fused attention:
        θ_{t+1} = θ_t − η_t g_t,  g_t = ∇_θ L_in(θ_t, D̃),  v = ∂L/∂θ_{t+1}
        ∂L/∂θ_t = v − η_t H_θθ v,   ∂L/∂D̃ += −η_t H_D̃θ v − (∂η_t/∂D̃) ⟨g_t, v⟩
        (H_θθ v, H_D̃θ v) ≈ (∇_(θ,D̃) L_in(θ_t + r v) − ∇_(θ,D̃) L_in(θ_t − r v)) / 2r,   r = ε / ‖v‖
    and g_t ≈ the mean of the two gradients. Error O(r²) plus rounding / r; measured in bench/README.md."""
    T = distilled.config.steps
    steps = list(sgd_steps(theta0, config, distilled, 0, T, kernels))  # θ_1 … θ_T, no graph
    thetas = [{n: v.detach() for n, v in theta0.items()}] + [theta for theta, _ in steps]
    losses = torch.stack([step_losses for _, step_losses in steps])
    loss, g_T = outer(thetas[-1])
    learnable, names = distilled.learnable(), trainable_names(theta0)
    v = dict(zip(names, g_T))
    totals = {k: torch.zeros_like(x) for k, x in learnable.items()}
    for t in reversed(range(T)):
        r = perturbation / torch.sqrt(sum(total(x * x, kernels) for x in v.values()))
        (plus_theta, plus_d), (minus_theta, minus_d) = (
            _inner_gradients(
                {**thetas[t], **{n: thetas[t][n] + sign * r * v[n] for n in names}}, config, distilled, t, kernels
            )
            for sign in (1, -1)
        )
        lr = distilled.inner_lr(t)
        g_dot_v = sum(total((p + m) * v[n], kernels) for n, p, m in zip(names, plus_theta, minus_theta)) / 2
        totals["lr_raw"] += torch.autograd.grad(lr, learnable["lr_raw"], grad_outputs=-g_dot_v)[0]
        eta = lr.detach()
        for k in learnable:
            totals[k] -= eta * (plus_d[k] - minus_d[k]) / (2 * r)
        v = {n: v[n] - eta * (p - m) / (2 * r) for n, p, m in zip(names, plus_theta, minus_theta)}
    return Hypergradient(loss, totals, losses)


def _inner_gradients(theta: Params, config: BertConfig, distilled: DistilledData, t: int, kernels: str):
    """First-order ∇_θ L_in (list, trainable names) and ∇_D̃ L_in (by name) of inner step t at θ."""
    leaves, learnable = _with_grad(theta), distilled.learnable()
    names = trainable_names(leaves)
    loss = inner_objective(leaves, config, distilled, t, first_order=True, kernels=kernels)[0]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names] + list(learnable.values()), materialize_grads=True)
    return grads[: len(names)], dict(zip(learnable, grads[len(names) :]))


_HYPERGRADIENTS = {
    "graph": _hypergradient_graph,
    "recompute": _hypergradient_recompute,
    "finite-difference": _hypergradient_finite_difference,
}
