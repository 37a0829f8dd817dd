"""The paper in 40 lines: Algorithm 1's hypergradient written the plainest way, against unroll.hypergradient.

Read this test first. `naive_hypergradient` is one outer step of Algorithm 1 as the paper states it: the
textbook BERT (every (S, S) attention map materialised, `plain=True`), the losses of Eq. 1 and Eq. 6 with
`F.kl_div`, T SGD steps (Eq. 7) kept in one autograd graph by `create_graph=True`, and one gradient of
the real batch's loss (Eq. 3–4) with respect to D̃ (line 15). No fused attention, no hand-written
backward, no recomputation, no micro-batches, no frozen word embeddings. ddattn's `hypergradient`, with
all of those, must give the same numbers in float64 for the tiny test BERT and for MiniLM, T ∈ {1, 3},
every label type and attention type.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from ddattn.method.bert import bert_forward
from ddattn.method.distilled import DistilledConfig, DistilledData
from ddattn.method.unroll import hypergradient
from tests.helpers import TINY, tiny_theta


def naive_hypergradient(theta0, config, distilled, batch):
    """(L(x_s, y_s, θ_T), ∇_D̃ of it by name) for θ_0 = theta0 and the real mini-batch `batch`."""
    theta = {n: p.detach().requires_grad_() for n, p in theta0.items()}
    attention_type = distilled.config.attention_type
    for t in range(distilled.config.steps):  # lines 5–12
        rows = distilled.step_indices(t)  # lines 6–7
        out = bert_forward(theta, config, inputs_embeds=distilled.x[rows], attention_type=attention_type, plain=True)
        loss = -(distilled.targets(t) * F.log_softmax(out.logits, -1)).sum(-1).mean()  # line 8, Eq. 1
        if attention_type != "none":  # line 9, Eq. 6
            model_attention = out.cls_scores if attention_type == "cls" else out.scores  # (b, L, H, [S,] S)
            kl = F.kl_div(
                F.log_softmax(model_attention, -1),
                F.log_softmax(distilled.attn_logits[rows], -1),
                reduction="none",
                log_target=True,
            ).sum(-1)  # KL(ã ‖ a(θ)) per map
            loss = loss + distilled.config.attn_weight * kl.mean()
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, materialize_grads=True)
        eta = distilled.inner_lr(t)
        theta = {n: p - eta * g for (n, p), g in zip(theta.items(), grads)}  # lines 10–11, Eq. 7
    logits = bert_forward(
        theta,
        config,
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        attention_type="none",
        plain=True,
    ).logits
    outer = F.cross_entropy(logits, batch["labels"])  # Eq. 3–4 at θ_T
    learnable = distilled.learnable()
    grads = torch.autograd.grad(outer, list(learnable.values()), materialize_grads=True)  # line 15
    return outer, dict(zip(learnable, grads))


def distilled_for(config, steps, label_type, attention_type):
    """Two classes, 1 sample per class per step (its own at each step when T > 1), S = 8, generic values."""
    shots = steps
    dc = DistilledConfig(
        num_classes=2,
        seq_len=8,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        shots=shots,
        steps=steps,
        batch_size=2 if steps > 1 else 0,
        label_type=label_type,
        attention_type=attention_type,
        inner_lr_init=0.1,
        attn_weight=0.7,
    )
    distilled = DistilledData.initial(dc, torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        distilled.x.mul_(0.5)
        distilled.label_logits.add_(
            torch.randn(distilled.label_logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        )
        distilled.lr_raw.add_(torch.linspace(-0.2, 0.2, steps, dtype=torch.float64))
    return distilled


def real_batch(vocab_low, vocab_high, batch=3, length=10):
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - 4 :] = 0  # one padded row
    return {
        "input_ids": torch.randint(vocab_low, vocab_high, (batch, length), generator=g),
        "token_type_ids": torch.randint(0, 2, (batch, length), generator=g),
        "attention_mask": mask,
        "labels": torch.tensor([0, 1, 1][:batch]),
    }


CASES = list(itertools.product((1, 3), ("hard", "soft", "unrestricted"), ("none", "cls", "all")))


def check(theta, config, distilled, batch):
    loss, grads = naive_hypergradient(theta, config, distilled, batch)
    for mode in ("recompute", "graph"):
        result = hypergradient(theta, config, distilled, batch, mode=mode)
        assert set(result.grads) == set(grads)
        torch.testing.assert_close(result.loss, loss.detach(), rtol=1e-12, atol=0)
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name  # every input matters
            torch.testing.assert_close(
                result.grads[name], grad, rtol=1e-9, atol=1e-12 * grad.abs().max().item(), msg=f"{mode}: {name}"
            )


@pytest.mark.parametrize("steps,label_type,attention_type", CASES)
def test_tiny_bert(steps, label_type, attention_type):
    check(tiny_theta(), TINY, distilled_for(TINY, steps, label_type, attention_type), real_batch(1, TINY.vocab_size))


@pytest.mark.parametrize("steps,label_type,attention_type", CASES)
def test_minilm(minilm, steps, label_type, attention_type):
    config, pretrained = minilm
    theta = {
        **pretrained,
        "classifier.weight": torch.randn(
            2, config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
        )
        * 0.02,
        "classifier.bias": torch.zeros(2, dtype=torch.float64),
    }
    check(theta, config, distilled_for(config, steps, label_type, attention_type), real_batch(1000, 20000))
