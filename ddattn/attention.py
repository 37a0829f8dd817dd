"""Self-attention that can be differentiated twice: softmax(q kᵀ) v, three ways, one set of numbers.

The inner SGD step of the paper (Eq. 7) is itself differentiated (line 15 of Algorithm 1 takes the
gradient through line 11), so attention needs a gradient of its gradient. This module is engineering,
not the method: bert.py asks it for the attention context of one layer, with the kernel that
`choose_kernel` picks:

- "sdpa" — PyTorch's fused scaled_dot_product_attention: fastest, first-order gradients only
  (pytorch#116350), so only where nothing differentiates the step again (the outer loss, evaluation);
- "recomputed" — `RecomputedAttention` below: differentiable twice with a hand-written double backward,
  never keeping an (S, S) tensor alive; unpadded sequences only (the distilled data have no padding);
- "plain" — the textbook ops, which also give the full (Sq, S) scores (attention="all", padded batches
  inside a differentiated step, and the straightforward model of reference.py).

Queries arrive pre-scaled by 1/√d_h; shapes (B, H, Sq, Dh) for q and (B, H, S, Dh) for k, v, where
Sq = S, or Sq = 1 when a layer computes the [CLS] row only.

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


def choose_kernel(fused: bool, plain: bool, cls_only: bool, key_mask: Optional[torch.Tensor], want: str) -> str:
    """The kernel for one layer (see the module docstring)."""
    if plain or want == "all":
        return "plain"
    # Not part of the method: SDPA's CPU kernel splits a one-row query by thread count (its last bits change
    # with the threads), so the [CLS] row, cheap anyway, takes the other paths (1 thread = 2 threads = 2 ranks).
    if fused and not cls_only:
        return "sdpa"
    return "recomputed" if key_mask is None else "plain"


def masked_scores(q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, H, Sq, S) pre-softmax scores q kᵀ; padded keys (key_mask False) get the dtype's minimum, so
    that exp(min − max) is exactly 0 after the softmax."""
    scores = q @ k.transpose(-1, -2)                                                 # (B, H, Sq, S)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor], kernel: str
           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(context softmax(q kᵀ) v (B, H, Sq, Dh), the (B, H, Sq, S) scores for "plain", else None)."""
    if kernel == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0), None
    if kernel == "recomputed":
        assert key_mask is None, "RecomputedAttention is for unpadded sequences"
        return RecomputedAttention.apply(q, k, v), None
    scores = masked_scores(q, k, key_mask)                                           # (B, H, Sq, S)
    return torch.softmax(scores, dim=-1) @ v, scores


class RecomputedAttention(torch.autograd.Function):
    """softmax(q kᵀ) v for unpadded sequences, saving only q, k, v (never the (S, S) probabilities).

    Its backward is `AttentionBackward`, itself a Function with a hand-written backward, so it can be
    differentiated again: the inner SGD step needs exactly that (a gradient of a gradient), which
    PyTorch's fused attention kernels do not offer (pytorch#116350). Neither level keeps an (S, S)
    tensor alive: each recomputes P = softmax(q kᵀ) from q, k, v when it runs.
    """

    @staticmethod
    def forward(ctx, q, k, v):                                   # (B, H, S, Dh) each, q pre-scaled
        ctx.save_for_backward(q, k, v)
        return _per_head(_attention_probs_v, q, k, v)[0]                # (B, H, S, Dh)

    @staticmethod
    def backward(ctx, grad_context):
        return AttentionBackward.apply(*ctx.saved_tensors, grad_context)


class AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) → (dq, dk, dv), the gradient of O = softmax(q kᵀ) v; its `backward` is the double
    backward derived in the module docstring, written with ordinary differentiable ops (so a third
    derivative would still be right)."""

    @staticmethod
    def forward(ctx, q, k, v, grad_context):
        ctx.save_for_backward(q, k, v, grad_context)
        return _per_head(_attention_backward, q, k, v, grad_context)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        return _per_head(_attention_double_backward, *ctx.saved_tensors, gq, gk, gv)


def _per_head(fn, *tensors):
    """`fn` one head at a time, outputs concatenated over heads. The (B, 1, S, S) temporaries of one head
    (2 MB at B = 2, S = 512) stay in cache; all 12 heads at once (25 MB each) stream through memory.
    Measured per layer at that size on 2 CPU cores: forward 9.0 → 7.6 ms, backward 26 → 20 ms, double
    backward 74 → 56 ms (`python bench/attention_heads.py`)."""
    per_head = [fn(*(t[:, h:h + 1] for t in tensors)) for h in range(tensors[0].shape[1])]
    return tuple(torch.cat(parts, 1) for parts in zip(*per_head))


def _attention_probs_v(q, k, v):
    return (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v,)


def _attention_backward(q, k, v, grad_context):
    probs, _, _, grad_scores = _attention_backward_parts(q, k, v, grad_context)
    return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, probs.transpose(-1, -2) @ grad_context


def _attention_double_backward(q, k, v, grad_context, gq, gk, gv):
    probs, grad_probs, delta, grad_scores = _attention_backward_parts(q, k, v, grad_context)  # recomputed
    w = torch.cat([gq, q], -1) @ torch.cat([k, gk], -1).transpose(-1, -2)   # (B, H, S, S) gq kᵀ + q gkᵀ
    e = (w * probs).sum(-1, keepdim=True)                                     # (B, H, S, 1)
    g_dp = probs * (w - e)                                                    # (B, H, S, S)
    g_p = grad_context @ gv.transpose(-1, -2) + w * (grad_probs - delta) - e * grad_probs
    g_s = probs * (g_p - (probs * g_p).sum(-1, keepdim=True))                 # (B, H, S, S)
    return (grad_scores @ gk + g_s @ k,
            grad_scores.transpose(-1, -2) @ gq + g_s.transpose(-1, -2) @ q,
            g_dp.transpose(-1, -2) @ grad_context,
            probs @ gv + g_dp @ v)


def _attention_backward_parts(q, k, v, grad_context):
    """P, dP, Δ and dS of AttentionBackward: (B, H, S, S), (B, H, S, S), (B, H, S, 1), (B, H, S, S)."""
    probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    grad_probs = grad_context @ v.transpose(-1, -2)
    delta = (grad_probs * probs).sum(-1, keepdim=True)
    return probs, grad_probs, delta, probs * (grad_probs - delta)
