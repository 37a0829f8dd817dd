"""Linear and LayerNorm with hand-written double backwards, for the gpu kernel policy (kernels.py).

Not part of the method: the same numbers as F.linear and F.layer_norm, in fewer operators. The inner SGD
step is differentiated again (unroll.py), so the backward of every layer is differentiated too, and
autograd's generic formulas for it are long: PyTorch's double backward of native_layer_norm alone
dispatches about 180 aten ops per call (19 % of a recompute outer step's ops at T = 4, S = 64, before this
module), and F.linear's backward transposes its weight three times, with a graph node per transpose
(bench/README.md, "Ops per outer step by kernel policy"). Each class below is a Function whose backward
is another Function, whose backward (the double backward) is written out with ordinary ops, as
attention.py does for attention. Under torch.autocast, `linear` and `layer_norm` fall back to F.linear and
F.layer_norm: autocast casts the operands of built-in ops, and their backwards keep those casts; a
Function's backward would mix dtypes.

Linear, y = x Wᵀ + b for rows x (N, I), W (O, I):
    dx = dy W,    dW = dyᵀ x,    db = Σ_rows dy;
against cotangents (gx, gW, gb) of (dx, dW, db):
    ḡ_dy = gx Wᵀ + x gWᵀ + gb,    ḡ_x = dy gW,    ḡ_W = dyᵀ gx.

LayerNorm, y = x̂ ⊙ w + b over the last axis. With x̂ = (x − μ) r, r = (σ² + ε)^(−1/2), ĝ = dy ⊙ w and ⟨·⟩
the mean over the normalised axis, the backward (per row) is J ĝ with J a = r (a − ⟨a⟩ − x̂ ⟨a ⊙ x̂⟩), the
Jacobian of x̂ (symmetric):
    dx = J ĝ,    dw = Σ_rows dy ⊙ x̂,    db = Σ_rows dy;
against cotangents (gx, gw, gb), with u = J gx:
    ḡ_dy = gb + gw ⊙ x̂ + u ⊙ w,        ḡ_w = Σ_rows u ⊙ dy,
    ḡ_x  = J (gw ⊙ dy) − r ⟨gx ⊙ dx⟩ x̂ − r ⟨ĝ ⊙ x̂⟩ u − r ⟨gx ⊙ x̂⟩ dx
(the last three terms from δx̂ = J δx and δr = −r² ⟨x̂ ⊙ δx⟩).
"""

import torch
import torch.nn.functional as F


class Linear(torch.autograd.Function):
    """(x (N, I), W (O, I), b (O)) → x Wᵀ + b; its backward is `LinearBackward`. Unlike autograd's own nodes,
    it computes dW (and ḡ_W) even where no gradient of W is asked for — θ_0's weights in the last backward
    of a hypergradient — 8 % more FLOPs at T = 1, none at T = 4 (bench/README.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.transpose(0, 1))

    @staticmethod
    def backward(ctx, dy):
        return LinearBackward.apply(dy, *ctx.saved_tensors)


class LinearBackward(torch.autograd.Function):
    """(dy, x, W) → (dx, dW, db); its `backward` is the double backward of the module docstring."""

    @staticmethod
    def forward(ctx, dy, x, weight):
        ctx.save_for_backward(dy, x, weight)
        return dy.mm(weight), dy.transpose(0, 1).mm(x), dy.sum(0)

    @staticmethod
    def backward(ctx, gx, gw, gb):
        dy, x, weight = ctx.saved_tensors
        grad_dy = torch.addmm(gb, gx, weight.transpose(0, 1)).addmm_(x, gw.transpose(0, 1))
        return grad_dy, dy.mm(gw), dy.transpose(0, 1).mm(gx)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x Wᵀ + b for rows x (N, I) (see `Linear`; F.linear under autocast)."""
    if torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    return Linear.apply(x, weight, bias)


class LayerNorm(torch.autograd.Function):
    """(x (..., N), w (N), b (N), eps) → LN(x) ⊙ w + b over the last axis; its backward: `LayerNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        return (*LayerNormBackward.apply(dy, *ctx.saved_tensors), None)


class LayerNormBackward(torch.autograd.Function):
    """(dy, x, w, b, μ, r) → (dx, dw, db) by PyTorch's fused kernel; its `backward` is the double backward of
    the module docstring (μ and r are functions of x: their part of ḡ_x is in the formula)."""

    @staticmethod
    def forward(ctx, dy, x, weight, bias, mean, rstd):
        ctx.save_for_backward(dy, x, weight, mean, rstd)
        return torch.ops.aten.native_layer_norm_backward(
            dy, x, (x.shape[-1],), mean, rstd, weight, bias, (True, True, True)
        )

    @staticmethod
    def backward(ctx, gx, gw, gb):
        dy, x, weight, mean, rstd = ctx.saved_tensors
        normed = (x - mean) * rstd  # x̂
        rstd_n = rstd / x.shape[-1]  # r / N: means as sums

        def jacobian(a):  # J a
            return rstd * a - rstd_n * (a.sum(-1, keepdim=True) + normed * (a * normed).sum(-1, keepdim=True))

        grad_normed = dy * weight  # ĝ
        dx, u = jacobian(grad_normed), jacobian(gx)
        # J (gw ⊙ dy) − r ⟨ĝ ⊙ x̂⟩ u in one J (it is linear), then the other two terms
        grad_x = jacobian(gw * dy - rstd_n * (grad_normed * normed).sum(-1, keepdim=True) * gx) - rstd_n * (
            (gx * dx).sum(-1, keepdim=True) * normed + (gx * normed).sum(-1, keepdim=True) * dx
        )
        grad_dy = gb + gw * normed + u * weight
        grad_w = (u * dy).flatten(0, -2).sum(0)
        return grad_dy, grad_x, grad_w, None, None, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LN(x) ⊙ w + b over the last axis (see `LayerNorm`; F.layer_norm under autocast)."""
    if torch.is_autocast_enabled(x.device.type):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return LayerNorm.apply(x, weight, bias, eps)
