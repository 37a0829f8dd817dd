"""The outer update of D̃ (Algorithm 1, lines 14–15; Appendix B: Adam, linear warmup then linear decay,
gradient clipping at 1.0) against computations by hand: the schedule's value at each step, the clipped
gradient and its reported norm, each Adam group's α and weight decay, and two whole outer steps of
`Distillation` whose hypergradient is replaced by known gradients. A wrong but deterministic update (an α
off by one step, a group with another group's α, clipping after Adam, the norm of the clipped gradient)
fails them; the end-to-end tests, which compare runs with runs, would not notice."""

import math

import pytest
import torch
from tqdm import tqdm

from ddattn import distill, settings
from ddattn.method import outer
from ddattn.method.unroll import Hypergradient
from ddattn.settings import load_or_start
from tests.helpers import TINY_RUN, make_distilled

F64 = torch.float64


# --- the schedule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "total,warmup,factors",
    [
        (10, 0.2, [1 / 3, 2 / 3, 8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]),  # 2 warmup steps
        (4, 0.5, [1 / 3, 2 / 3, 2 / 2, 1 / 2]),  # 2 warmup steps
        (5, 0.1, [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5]),  # int(0.5): none
    ],
)
def test_schedule_warms_up_then_decays_linearly_to_zero(total, warmup, factors):
    """Outer step s (from 0) updates with α · factor(s): (s + 1) / (w + 1) for the w = int(warmup · total)
    warmup steps, then (total − s) / (total − w); after the last step α is 0."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = outer.linear_schedule(optimizer, total, warmup)
    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])  # what optimizer.step() would use
        optimizer.step()
        schedule.step()
    assert used == pytest.approx([0.1 * f for f in factors], rel=1e-15, abs=0)
    assert optimizer.param_groups[0]["lr"] == 0


# --- clipping ----------------------------------------------------------------------------------------------
def with_grads(*grads):
    tensors = [torch.zeros(g.shape, dtype=F64) for g in grads]
    for tensor, grad in zip(tensors, grads):
        tensor.grad = grad.clone()
    return tensors


def test_clipping_scales_the_whole_gradient_to_the_bound_and_reports_the_norm_before():
    """One norm over all tensors: ‖(3, 4, 12)‖ = 13, so every entry is scaled by 1 / (13 + 1e-6)."""
    a, b = with_grads(torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([[12.0]], dtype=F64))
    norm = outer.clip_grad_norm([a, b], 1.0)
    assert norm.item() == 13.0
    scale = 1 / (13 + 1e-6)
    assert a.grad.tolist() == pytest.approx([3 * scale, 4 * scale], rel=1e-15)
    assert b.grad.item() == pytest.approx(12 * scale, rel=1e-15)


def test_a_gradient_within_the_bound_is_left_as_it_is():
    a, b = with_grads(torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([[12.0]], dtype=F64))
    assert outer.clip_grad_norm([a, b], 20.0).item() == 13.0
    assert a.grad.tolist() == [3.0, 4.0] and b.grad.tolist() == [[12.0]]


def test_clipping_is_torchs_clip_grad_norm():
    """As its docstring says: the same as torch.nn.utils.clip_grad_norm_ (the norm summed in another order)."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=g, dtype=F64) for shape in ((2, 8, 16), (2, 2), (2, 2, 2, 8), (3,))]
    ours, torchs = with_grads(*grads), with_grads(*grads)
    norm = outer.clip_grad_norm(ours, 1.0)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(torchs, 1.0), rtol=1e-14, atol=0)
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-14, atol=0)


# --- the Adam groups ---------------------------------------------------------------------------------------
GROUP_FLAGS = ["--task", "mrpc", "--preset", "paper", "--lr", "0.01", "--lr-labels", "0.03", "--lr-inner", "0.1"]


@pytest.mark.parametrize(
    "label_type,attention_type,expected",
    [
        ("soft", "cls", {"x": 0.01, "lr_raw": 0.1, "label_logits": 0.03, "attn_logits": 0.01}),
        ("hard", "none", {"x": 0.01, "lr_raw": 0.1}),  # fixed labels, no attention labels
    ],
)
def test_each_learned_tensor_is_one_adam_group_with_its_own_alpha(label_type, attention_type, expected):
    """--lr-x/-labels/-attn/-inner set one group's α (η̃'s own: --lr-inner); a group without one takes --lr."""
    distilled = make_distilled(steps=2, label_type=label_type, attention_type=attention_type)
    optimizer = distill.optimizer_for(distilled, settings.parse_args(GROUP_FLAGS))
    assert type(optimizer) is torch.optim.Adam
    assert {group["name"]: group["lr"] for group in optimizer.param_groups} == expected
    for group in optimizer.param_groups:
        assert len(group["params"]) == 1 and group["params"][0] is distilled.learnable()[group["name"]]
        assert group["weight_decay"] == 0.0 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8


def test_adamw_decays_every_group():
    distilled = make_distilled(steps=2)
    optimizer = distill.optimizer_for(
        distilled, settings.parse_args([*GROUP_FLAGS, "--optimizer", "adamw", "--weight-decay", "0.1"])
    )
    assert type(optimizer) is torch.optim.AdamW
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1] * 4


# --- two whole outer steps ---------------------------------------------------------------------------------
ALPHA = {"x": 0.01, "attn_logits": 0.01, "label_logits": 0.03, "lr_raw": 0.1}


def adam_by_hand(p0: dict, grads: list, factors: list, clip: float, optimizer: str, weight_decay: float):
    """D̃ after len(grads) outer steps, computed entry by entry: clip all gradients by their joint norm,
    then Adam (β = 0.9, 0.999; ε = 1e-8; bias-corrected) with α_group · factor(s), and for AdamW the
    decoupled decay p ← p (1 − α_s λ) first (for Adam, λ p would join the gradient; here λ = 0)."""
    p = {k: v.clone() for k, v in p0.items()}
    m = {k: torch.zeros_like(v) for k, v in p0.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p0.items()}
    norms = []
    for s, (g, factor) in enumerate(zip(grads, factors)):
        norm = math.sqrt(sum((x * x).sum().item() for x in g.values()))
        norms.append(norm)
        scale = min(1.0, clip / (norm + 1e-6))
        for k in p:
            lr, grad = ALPHA[k] * factor, g[k] * scale
            if optimizer == "adamw":
                p[k] = p[k] * (1 - lr * weight_decay)
            m[k] = 0.9 * m[k] + 0.1 * grad
            v2[k] = 0.999 * v2[k] + 0.001 * grad * grad
            m_hat, v_hat = m[k] / (1 - 0.9 ** (s + 1)), v2[k] / (1 - 0.999 ** (s + 1))
            p[k] = p[k] - lr * m_hat / (v_hat.sqrt() + 1e-8)
    return p, norms


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("adamw", 0.1)])
def test_two_outer_steps_update_the_distilled_data_as_computed_by_hand(env, monkeypatch, optimizer, weight_decay):
    """`outer_step` (method/outer.py) with its hypergradient replaced by known gradients (float64, 4 outer steps,
    warmup 0.5: factors 1/3, 2/3): a first gradient far above the clip bound, a second well below it."""
    args, run, checkpoint = load_or_start(
        [
            *TINY_RUN,
            "--max-steps",
            "4",
            "--warmup",
            "0.5",
            "--clip",
            "1.0",
            "--dtype",
            "float64",
            "--label-type",
            "soft",
            "--lr",
            "0.01",
            "--lr-labels",
            "0.03",
            "--lr-inner",
            "0.1",
            "--optimizer",
            optimizer,
            "--weight-decay",
            str(weight_decay),
            "--name",
            "by-hand",
        ]
    )
    try:
        loop = distill.Distillation(args, run, checkpoint)
        loop.progress = tqdm(disable=True)
        p0 = {k: v.detach().clone() for k, v in loop.distilled.learnable().items()}
        assert loop.total_steps == 4 and set(p0) == set(ALPHA)
        g = torch.Generator().manual_seed(0)
        grads = [
            {k: torch.randn(v.shape, generator=g, dtype=F64) * size for k, v in p0.items()} for size in (3.0, 1e-4)
        ]
        given = iter(grads)
        monkeypatch.setattr(
            outer,
            "hypergradient",
            lambda *args, **kwargs: Hypergradient(
                loss=torch.tensor(0.5, dtype=F64),
                grads={k: v.clone() for k, v in next(given).items()},
                inner_losses=torch.zeros(1, 3, dtype=F64),
            ),
        )
        records = [outer.outer_step(loop.outer, s, loop.real_batch(s)) for s in range(len(grads))]
    finally:
        run.release()
    expected, norms = adam_by_hand(p0, grads, [1 / 3, 2 / 3], 1.0, optimizer, weight_decay)
    assert norms[0] > 100 and norms[1] < 0.1  # clipped, then not
    assert [r.grad_norm.item() for r in records] == pytest.approx(norms, rel=1e-12)
    for name, tensor in loop.distilled.learnable().items():
        assert not torch.equal(tensor, p0[name]), name
        torch.testing.assert_close(tensor.detach(), expected[name], rtol=1e-12, atol=1e-15, msg=name)
