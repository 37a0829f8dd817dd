"""Self-attention that can be differentiated twice: softmax(q kᵀ) v, three ways, one set of numbers.

The inner SGD step of the paper (Eq. 7) is itself differentiated (line 15 of Algorithm 1 takes the
gradient through line 11), so attention needs a gradient of its gradient. This module is engineering,
not the method: bert.py asks it for the attention context of one layer, with the kernel that
`choose_kernel` picks:

- "sdpa" — PyTorch's fused scaled_dot_product_attention: fastest, first-order gradients only
  (pytorch#116350), so only where nothing differentiates the step again (the outer loss, evaluation);
- "recomputed" — `RecomputedAttention` below: differentiable twice with a hand-written double backward,
  never keeping an (S, S) tensor alive; unpadded sequences only (the distilled data have no padding);
- "plain" — the textbook ops, which also give the full (Sq, S) scores (attention_type="all", padded batches
  inside a differentiated step, and the straightforward model of reference.py).

Queries arrive pre-scaled by 1/√d_h; Sq = S, or Sq = 1 when a layer computes the [CLS] row only.

Two kernel policies (kernels.py, `--kernels`) cut the same maths differently. Under "cpu", q is
(B, H, Sq, Dh) and k, v (B, H, S, Dh), and the recomputed kernel takes one head at a time, so that a
head's (B, 1, S, S) temporaries stay in cache (`_per_head`). Under "gpu", batch and heads share one axis —
q (B·H, Sq, Dh), k, v (B·H, S, Dh), scores (B·H, Sq, S) — so that every product over all heads is one
`torch.bmm` with no view in between (`_all_heads`), in chunks of rows only where kernels.ATTENTION_BUDGET
says the (rows, Sq, S) temporaries do not fit. Why both: counted with torch.profiler (MiniLM, 12 heads,
S = 512, T = 1, real batch 32 × 64), an outer step dispatches 42,894 aten ops under cpu, 7,858 under gpu,
10,388 in the straightforward reference (bench/README.md, "Ops per outer step by kernel policy"). On a
CPU an op costs little next to its arithmetic and the cache decides; on a GPU each op is launched by the
host, and the per-head step was 3.3× slower than the reference on an H200
(bench/results/cuda-h200-reference-profile.md).

The double backward, derived. With P = softmax(q kᵀ) and O = P v, the backward is
    dP = dO vᵀ,  Δ = rowsum(P ⊙ dP),  dS = P ⊙ (dP − Δ),  dq = dS k,  dk = dSᵀ q,  dv = Pᵀ dO.
Differentiating (dq, dk, dv) again against cotangents (gq, gk, gv), with W = gq kᵀ + q gkᵀ (the
cotangent of dS) and E = rowsum(W ⊙ P):
    ḡ_dP = P ⊙ (W − E)                        (dS through dP, Δ included)
    ḡ_P  = dO gvᵀ + W ⊙ (dP − Δ) − E ⊙ dP      (dv, and dS through P and Δ)
    ḡ_S  = P ⊙ (ḡ_P − rowsum(P ⊙ ḡ_P))          (the softmax)
    ḡ_q  = dS gk + ḡ_S k,      ḡ_k = dSᵀ gq + ḡ_Sᵀ q,
    ḡ_v  = ḡ_dPᵀ dO,           ḡ_dO = P gv + ḡ_dP v.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import kernels as policy


def choose_kernel(
    fused: bool, plain: bool, cls_only: bool, key_mask: Optional[torch.Tensor], attention_type: str
) -> str:
    """The kernel for one layer (see the module docstring)."""
    if plain or attention_type == "all":
        return "plain"
    # Not part of the method: SDPA's CPU kernel splits a one-row query by thread count (its last bits change
    # with the threads), so the [CLS] row, cheap anyway, takes the other paths (1 thread = 2 threads = 2 ranks).
    if fused and not cls_only:
        return "sdpa"
    return "recomputed" if key_mask is None else "plain"


def matmul(kernels: str):
    """The batched matmul of the policy's layout: torch.matmul over (B, H) (cpu), torch.bmm over B·H (gpu)."""
    return torch.matmul if kernels == "cpu" else torch.bmm


def masked_scores(
    q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor], kernels: str = "cpu", heads: int = 1
) -> torch.Tensor:
    """(B, H, Sq, S) pre-softmax scores q kᵀ, or (B·H, Sq, S) under gpu (`heads` = H); padded keys
    (key_mask (B, S) False) get the dtype's minimum, so that exp(min − max) is exactly 0 after the softmax."""
    scores = _scores(matmul(kernels), q, k)
    if key_mask is None:
        return scores
    fill = torch.finfo(scores.dtype).min
    if kernels == "cpu":
        return scores.masked_fill(~key_mask[:, None, None, :], fill)
    return scores.unflatten(0, (-1, heads)).masked_fill(~key_mask[:, None, None, :], fill).flatten(0, 1)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    kernel: str,
    kernels: str = "cpu",
    heads: int = 1,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(context softmax(q kᵀ) v, the scores for "plain", else None), in the layout of the policy
    `kernels` ("cpu": (B, H, Sq, Dh) and (B, H, Sq, S); "gpu": (B·H, Sq, Dh) and (B·H, Sq, S), `heads` = H)."""
    if kernel == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if kernels == "cpu":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0), None
        # the fused kernel takes (B, H, ·, Dh) (with rows (B·H, ·, Dh) it falls back to the unfused ops)
        q, k, v = (t.unflatten(0, (-1, heads)) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0).flatten(0, 1), None
    if kernel == "recomputed":
        assert key_mask is None, "RecomputedAttention is for unpadded sequences"
        return RecomputedAttention.apply(q, k, v, kernels), None
    scores = masked_scores(q, k, key_mask, kernels, heads)
    return matmul(kernels)(torch.softmax(scores, dim=-1), v), scores


class RecomputedAttention(torch.autograd.Function):
    """softmax(q kᵀ) v for unpadded sequences, saving only q, k, v (never the (S, S) probabilities).

    Its backward is `AttentionBackward`, itself a Function with a hand-written backward, so it can be
    differentiated again: the inner SGD step needs exactly that (a gradient of a gradient), which
    PyTorch's fused attention kernels do not offer (pytorch#116350). Neither level keeps an (S, S)
    tensor alive: each recomputes P = softmax(q kᵀ) from q, k, v when it runs.
    """

    @staticmethod
    def forward(ctx, q, k, v, kernels):  # (B, H, Sq or S, Dh), (B·H, ·, Dh) under gpu; q pre-scaled
        ctx.save_for_backward(q, k, v)
        ctx.kernels = kernels
        return _by_heads(kernels, _attention_probs_v, q, k, v)[0]  # like q

    @staticmethod
    def backward(ctx, grad_context):
        return (*AttentionBackward.apply(*ctx.saved_tensors, grad_context, ctx.kernels), None)


class AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) → (dq, dk, dv), the gradient of O = softmax(q kᵀ) v; its `backward` is the double
    backward derived in the module docstring, written with ordinary differentiable ops (so a third
    derivative would still be right)."""

    @staticmethod
    def forward(ctx, q, k, v, grad_context, kernels):
        ctx.save_for_backward(q, k, v, grad_context)
        ctx.kernels = kernels
        return _by_heads(kernels, _attention_backward, q, k, v, grad_context)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        return (*_by_heads(ctx.kernels, _attention_double_backward, *ctx.saved_tensors, gq, gk, gv), None)


def _by_heads(kernels: str, fn, *tensors):
    """`fn(matmul, q, k, ...)` over all heads, in the policy's layout and cut as it says."""
    return _per_head(fn, *tensors) if kernels == "cpu" else _all_heads(fn, *tensors)


def _per_head(fn, *tensors):
    """`fn` one head at a time, outputs concatenated over heads (the cpu policy). The (B, 1, S, S)
    temporaries of one head (2 MB at B = 2, S = 512) stay in cache; all 12 heads at once (25 MB each)
    stream through memory. Measured per layer at that size on 2 CPU cores: forward 9.0 → 7.6 ms, backward
    26 → 20 ms, double backward 74 → 56 ms (`python bench/attention_heads.py`)."""
    per_head = [fn(torch.matmul, *(t[:, h : h + 1] for t in tensors)) for h in range(tensors[0].shape[1])]
    return tuple(torch.cat(parts, 1) for parts in zip(*per_head))


# (rows, Sq, S) tensors alive at once in the double backward, the most memory-hungry of the three passes
TEMPORARIES = 10


def _all_heads(fn, *tensors):
    """`fn` on all heads at once (the gpu policy): (B·H, ·, Dh) tensors, so every product is one
    `torch.bmm`; the rows in chunks where the (rows, Sq, S) temporaries would exceed
    kernels.ATTENTION_BUDGET bytes."""
    (rows, Sq), S = tensors[0].shape[:2], tensors[1].shape[1]
    chunk = max(1, policy.ATTENTION_BUDGET // (TEMPORARIES * Sq * S * tensors[0].element_size()))
    if chunk >= rows:
        return fn(torch.bmm, *tensors)
    chunks = [fn(torch.bmm, *parts) for parts in zip(*(t.split(chunk) for t in tensors))]
    return tuple(torch.cat(parts) for parts in zip(*chunks))


def _scores(mm, q, k):
    return mm(q, k.transpose(-1, -2))


def _attention_probs_v(mm, q, k, v):
    return (mm(torch.softmax(_scores(mm, q, k), dim=-1), v),)


def _attention_backward(mm, q, k, v, grad_context):
    probs, _, _, grad_scores = _attention_backward_parts(mm, q, k, v, grad_context)
    return mm(grad_scores, k), mm(grad_scores.transpose(-1, -2), q), mm(probs.transpose(-1, -2), grad_context)


def _attention_double_backward(mm, q, k, v, grad_context, gq, gk, gv):
    probs, grad_probs, delta, grad_scores = _attention_backward_parts(mm, q, k, v, grad_context)  # recomputed
    w = mm(torch.cat([gq, q], -1), torch.cat([k, gk], -1).transpose(-1, -2))  # (B, H, S, S) gq kᵀ + q gkᵀ
    e = (w * probs).sum(-1, keepdim=True)  # (B, H, S, 1)
    g_dp = probs * (w - e)  # (B, H, S, S)
    g_p = mm(grad_context, gv.transpose(-1, -2)) + w * (grad_probs - delta) - e * grad_probs
    g_s = probs * (g_p - (probs * g_p).sum(-1, keepdim=True))  # (B, H, S, S)
    return (
        mm(grad_scores, gk) + mm(g_s, k),
        mm(grad_scores.transpose(-1, -2), gq) + mm(g_s.transpose(-1, -2), q),
        mm(g_dp.transpose(-1, -2), grad_context),
        mm(probs, gv) + mm(g_dp, v),
    )


def _attention_backward_parts(mm, q, k, v, grad_context):
    """P, dP, Δ and dS of AttentionBackward: (B, H, S, S), (B, H, S, S), (B, H, S, 1), (B, H, S, S); `mm` the
    batched matmul (torch.matmul on one head's (B, 1, ·, ·) slices, torch.bmm on (B·H, ·, ·))."""
    probs = torch.softmax(_scores(mm, q, k), dim=-1)
    grad_probs = mm(grad_context, v.transpose(-1, -2))
    delta = (grad_probs * probs).sum(-1, keepdim=True)
    return probs, grad_probs, delta, probs * (grad_probs - delta)
