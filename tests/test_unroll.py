"""The hypergradient through the unrolled SGD steps: both modes agree, and agree with finite differences."""

import itertools

import pytest
import torch

from ddattn import reference
from ddattn.method.distilled import DistilledData
from ddattn.method.unroll import _hypergradient_finite_difference, attention_kl, hypergradient, outer_gradient, sgd_step
from tests.helpers import TINY, make_distilled, real_batch, tiny_theta

CASES = [
    (T, same, label, attn)
    for T, same, label, attn in itertools.product(
        (1, 3, 5), (True, False), ("hard", "soft", "unrestricted"), ("none", "cls", "all")
    )
]


@pytest.mark.parametrize("steps,same,label_type,attention_type", CASES)
def test_graph_equals_recompute(steps, same, label_type, attention_type):
    shots = 1 if same else steps  # different data: one sample per class at each step
    distilled = make_distilled(steps, shots, 0 if same else 2, label_type, attention_type)
    theta, batch = tiny_theta(), real_batch()
    graph = hypergradient(theta, TINY, distilled, batch, mode="graph")
    recompute = hypergradient(theta, TINY, distilled, batch, mode="recompute")
    assert set(graph.grads) == set(distilled.learnable())
    torch.testing.assert_close(recompute.loss, graph.loss, rtol=0, atol=1e-12)  # its forward sweep: fused attention
    for name in graph.grads:
        assert graph.grads[name].abs().max() > 0, name
        torch.testing.assert_close(recompute.grads[name], graph.grads[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    "steps,same,attention_type", [(1, True, "cls"), (3, False, "cls"), (2, True, "all"), (2, True, "none")]
)
def test_reference_equals_recompute(steps, same, attention_type):
    """The straightforward yardstick of `bench --reference` computes the same hypergradient."""
    distilled = make_distilled(steps, 1 if same else steps, 0 if same else 2, "soft", attention_type)
    theta, batch = tiny_theta(), real_batch()
    loss, grads = reference.hypergradient(theta, TINY, distilled, batch)
    fast = hypergradient(theta, TINY, distilled, batch, mode="recompute")
    torch.testing.assert_close(loss, fast.loss, rtol=0, atol=1e-12)
    for name in fast.grads:
        torch.testing.assert_close(grads[name], fast.grads[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("mode", ["graph", "recompute"])
def test_hypergradient_matches_finite_differences(mode):
    distilled = make_distilled(steps=2, shots=2, batch_size=2, label_type="soft", attention_type="cls")
    theta, batch = tiny_theta(), real_batch()
    exact = hypergradient(theta, TINY, distilled, batch, mode=mode)
    g = torch.Generator().manual_seed(3)
    directions = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in distilled.learnable().items()}

    def loss_at(eps):
        shifted = DistilledData(
            distilled.config, {k: v.detach() + eps * directions.get(k, 0) for k, v in distilled.tensors().items()}
        )
        for tensor in shifted.learnable().values():
            tensor.requires_grad_(True)
        return hypergradient(theta, TINY, shifted, batch, mode="recompute").loss

    eps = 1e-5
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum((exact.grads[k] * d).sum() for k, d in directions.items())
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic))


def test_finite_difference_converges_quadratically():
    """Central differences: ε → ε/10 cuts the error ~100× (float64, T = 2)."""
    distilled = make_distilled(steps=2, shots=2, batch_size=2)
    theta, batch = tiny_theta(), real_batch()
    exact = hypergradient(theta, TINY, distilled, batch, mode="recompute")

    def error(perturbation):
        outer = lambda theta_T: outer_gradient(theta_T, TINY, [batch], 3)  # noqa: E731
        approx = _hypergradient_finite_difference(theta, TINY, distilled, outer, perturbation=perturbation)
        torch.testing.assert_close(approx.loss, exact.loss, rtol=0, atol=1e-12)
        return max(((approx.grads[k] - g).norm() / g.norm()).item() for k, g in exact.grads.items())

    coarse, fine = error(1e-2), error(1e-3)
    assert 0 < fine < coarse / 50 and coarse < 1e-2


@pytest.mark.parametrize("mode", ["graph", "recompute"])
def test_micro_batches_give_the_whole_batch_gradient(mode):
    """The outer gradient summed over uneven micro-batches (2 + 1 rows) is the whole batch's mean gradient."""
    distilled = make_distilled(steps=2, shots=2, batch_size=2)
    theta, batch = tiny_theta(), real_batch()
    whole = hypergradient(theta, TINY, distilled, batch, mode=mode)
    parts = [{k: v[rows] for k, v in batch.items()} for rows in (slice(0, 2), slice(2, 3))]
    split = hypergradient(theta, TINY, distilled, parts, mode=mode)
    torch.testing.assert_close(split.loss, whole.loss, rtol=0, atol=1e-14)
    for name, grad in whole.grads.items():
        torch.testing.assert_close(split.grads[name], grad, rtol=0, atol=1e-13, msg=name)


def test_sgd_step_leaves_word_embeddings_and_input_untouched():
    distilled = make_distilled()
    theta = tiny_theta()
    before = {k: v.clone() for k, v in theta.items()}
    theta1, losses = sgd_step({k: v.requires_grad_() for k, v in theta.items()}, TINY, distilled, 0, create_graph=False)
    assert theta1["embeddings.word"] is theta["embeddings.word"]
    assert all(torch.equal(theta[k], before[k]) for k in theta)
    assert not torch.equal(theta1["pooler.weight"], theta["pooler.weight"])
    torch.testing.assert_close(losses[0], losses[1] + losses[2])


def test_attention_kl_is_kl_of_softmaxes():
    g = torch.Generator().manual_seed(0)
    labels, scores = (
        torch.randn(4, 7, generator=g, dtype=torch.float64),
        torch.randn(4, 7, generator=g, dtype=torch.float64),
    )
    p, q = labels.softmax(-1), scores.softmax(-1)
    torch.testing.assert_close(attention_kl(labels, scores), (p * (p.log() - q.log())).sum(-1))
    assert attention_kl(scores, scores).abs().max() < 1e-15


@pytest.mark.parametrize("attention_type", ["cls", "all"])
def test_attention_labels_initialised_from_the_model_start_with_zero_attention_loss(tiny, attention_type):
    from ddattn.method.outer import init_attention_from_model
    from ddattn.method.unroll import inner_objective

    config, theta = tiny
    distilled = make_distilled(attention_type=attention_type)
    assert inner_objective(theta, config, distilled, 0)[2] > 0.1  # a random target: KL > 0
    init_attention_from_model(distilled, theta, config)
    assert inner_objective(theta, config, distilled, 0)[2].abs() < 1e-12  # softmax(ã) = the model's attention


def test_real_init_of_a_pair_enters_bert_as_the_real_pair(tiny):
    """--init real: x̃ read with token type 0 sums to the real pair's word + token-type embeddings."""
    from ddattn.data import EncodedSplit, collate
    from ddattn.method.outer import init_from_real, real_init_rows

    config, theta = tiny
    ids = torch.tensor([[1, 5, 6, 2, 7, 8, 2], [1, 9, 2, 11, 12, 13, 2]], dtype=torch.int32)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.int8)
    split = EncodedSplit(ids, types, torch.tensor([7, 7], dtype=torch.int32), torch.tensor([0, 1]))
    distilled = make_distilled(seq_len=7)
    rows = real_init_rows(split.labels, num_samples=2, num_classes=2, seed=0)
    assert rows.tolist() == [0, 1]  # one example of each sample's class
    init_from_real(distilled, theta, collate(split, rows, width=7))
    word, token_type = theta["embeddings.word"], theta["embeddings.token_type"]
    for i in range(2):
        real = word[ids[i].long()] + token_type[types[i].long()]
        assert torch.allclose(distilled.x[i] + token_type[0], real, atol=1e-12)


def test_recompute_in_segments_gives_the_same_bits_as_keeping_every_step(monkeypatch):
    """T = 10 (segments of k = 4: θ_4 … rebuilt from θ_4): the same loss and gradients, bit for bit, as
    one segment holding every θ_t (k = T, the sweep before segments)."""
    from ddattn.method import unroll

    distilled = make_distilled(10, 10, 2, "soft", "cls")
    theta, batch = tiny_theta(), real_batch()
    assert unroll.segment_length(10) == 4
    segments = hypergradient(theta, TINY, distilled, batch, mode="recompute")
    monkeypatch.setattr(unroll, "segment_length", lambda T: T)
    every_step = hypergradient(theta, TINY, distilled, batch, mode="recompute")
    assert torch.equal(segments.loss, every_step.loss) and torch.equal(segments.inner_losses, every_step.inner_losses)
    for name in every_step.grads:
        assert torch.equal(segments.grads[name], every_step.grads[name]), name


@pytest.mark.parametrize("T", [1, 2, 9, 16])
def test_recompute_holds_about_two_sqrt_t_parameter_sets(monkeypatch, T):
    """The θ_t that `recompute` holds at once (tracked by one of each θ's tensors): at most 2⌈√T⌉, where
    keeping every step would hold T − 1."""
    import weakref

    from ddattn.method import unroll

    alive, most = [], [0]
    steps = unroll.sgd_steps

    def tracked(*args, **kwargs):
        for theta, losses in steps(*args, **kwargs):
            alive.append(weakref.ref(theta["pooler.bias"]))
            most[0] = max(most[0], sum(ref() is not None for ref in alive))
            yield theta, losses

    monkeypatch.setattr(unroll, "sgd_steps", tracked)
    distilled = make_distilled(T, T, 2, "soft", "cls")
    hypergradient(tiny_theta(), TINY, distilled, real_batch(), mode="recompute")
    assert most[0] <= 2 * unroll.segment_length(T)
    if T == 16:
        assert most[0] < T - 1 == 15
