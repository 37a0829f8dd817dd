"""The kernel policies (ddattn/kernels.py): cpu and gpu compute the same numbers, and gpu in fewer ops."""

import itertools
import json

import pytest
import torch

from ddattn import distill, reference
from ddattn.method import attention, kernels
from ddattn.method.attention import AttentionBackward, RecomputedAttention
from ddattn.method.bert import bert_forward
from ddattn.method.distilled import DistilledConfig, DistilledData
from ddattn.method.evaluation import predict
from ddattn.method.layers import LinearBackward, layer_norm, linear
from ddattn.method.unroll import hypergradient, sgd_step, train_on_distilled
from ddattn.opcount import count_ops
from tests.helpers import TINY, TINY_RUN, logged_steps, make_distilled, real_batch, resumed_at, tiny_inputs, tiny_theta

ATOL = 1e-10  # float64: the policies differ only in the order of additions


def assert_agree(cpu: dict, gpu: dict, what: str):
    assert set(cpu) == set(gpu), what
    for name in cpu:
        if cpu[name] is not None:
            assert cpu[name].abs().max() > 0, (what, name)
            torch.testing.assert_close(gpu[name], cpu[name], rtol=0, atol=ATOL, msg=f"{what}: {name}")


def test_auto_is_gpu_on_cuda_only():
    assert kernels.resolve("auto", "cpu") == "cpu" and kernels.resolve("auto", torch.device("cuda", 0)) == "gpu"
    assert kernels.resolve("gpu", "cpu") == "gpu" and kernels.resolve("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match="unknown kernel policy 'tpu'"):
        kernels.resolve("tpu", "cpu")


@pytest.mark.parametrize(
    "attention_type,fused,masked",
    [
        ("none", False, False),
        ("cls", False, False),
        ("cls", False, True),
        ("cls", True, True),
        ("all", False, False),
        ("all", False, True),
    ],
)
def test_forward_agrees(attention_type, fused, masked):
    theta = tiny_theta()
    ids, types, mask = tiny_inputs()
    out = {
        k: bert_forward(
            theta,
            TINY,
            ids,
            token_type_ids=types,
            attention_mask=mask if masked else None,
            attention_type=attention_type,
            fused=fused,
            kernels=k,
        )
        for k in ("cpu", "gpu")
    }
    fields = ("logits", "pooled", "cls_hidden", "cls_scores", "scores")  # padded keys: the dtype's minimum in both
    assert_agree(*({f: getattr(out[k], f) for f in fields} for k in ("cpu", "gpu")), "forward")


def update(stepped: dict, theta: dict) -> dict:
    """θ_1 − θ_0 = −η̃ ∇_θ L of every tensor of θ_1; None for the word embeddings, which no step trains."""
    return {n: None if n == "embeddings.word" else stepped[n] - theta[n] for n in stepped}


LABELS_ATTENTION = list(itertools.product(("hard", "soft", "unrestricted"), ("none", "cls", "all")))


@pytest.mark.parametrize("label_type,attention_type", LABELS_ATTENTION)
def test_inner_step_agrees(label_type, attention_type):
    """θ_1 = θ_0 − η̃ ∇_θ L (the inner step's gradient) and its losses, first-order and with a graph."""
    theta, distilled = tiny_theta(), make_distilled(1, 1, 0, label_type, attention_type)
    for create_graph in (False, True):
        steps = {
            k: sgd_step(
                {n: v.clone().requires_grad_(n != "embeddings.word") for n, v in theta.items()},
                TINY,
                distilled,
                0,
                create_graph,
                k,
            )
            for k in ("cpu", "gpu")
        }
        (cpu_theta, cpu_losses), (gpu_theta, gpu_losses) = steps["cpu"], steps["gpu"]
        assert_agree(update(cpu_theta, theta), update(gpu_theta, theta), f"inner step (create_graph={create_graph})")
        torch.testing.assert_close(gpu_losses, cpu_losses, rtol=0, atol=ATOL)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("mode", ["graph", "recompute"])
@pytest.mark.parametrize("label_type,attention_type", LABELS_ATTENTION)
def test_hypergradient_agrees(steps, mode, label_type, attention_type):
    distilled, theta, batch = make_distilled(steps, 1, 0, label_type, attention_type), tiny_theta(), real_batch()
    cpu, gpu = (hypergradient(theta, TINY, distilled, batch, mode=mode, kernels=k) for k in ("cpu", "gpu"))
    torch.testing.assert_close(gpu.loss, cpu.loss, rtol=0, atol=ATOL)
    torch.testing.assert_close(gpu.inner_losses, cpu.inner_losses, rtol=0, atol=ATOL)
    assert_agree(cpu.grads, gpu.grads, "hypergradient")


def test_gpu_policy_sums_micro_batches_to_the_whole_batch():
    """The gpu policy divides each micro-batch's loss by the batch size before its backward (unroll.py)."""
    distilled, theta, batch = make_distilled(2), tiny_theta(), real_batch()
    whole = hypergradient(theta, TINY, distilled, batch, kernels="cpu")
    parts = hypergradient(
        theta,
        TINY,
        distilled,
        [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}],
        kernels="gpu",
    )
    torch.testing.assert_close(parts.loss, whole.loss, rtol=0, atol=ATOL)
    assert_agree(whole.grads, parts.grads, "micro-batches")


def test_hypergradient_agrees_on_minilm_with_different_data_per_step(minilm):
    """MiniLM in float64 (12 heads), T = 3 with its own distilled samples at each step, full attention maps."""
    config, pretrained = minilm
    from ddattn.method.bert import fresh_model

    theta = fresh_model(pretrained, config, 2, seed=0)
    dconfig = DistilledConfig(
        num_classes=2,
        seq_len=8,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        shots=3,
        steps=3,
        batch_size=2,
        label_type="soft",
        attention_type="all",
        inner_lr_init=0.05,
    )
    distilled = DistilledData.initial(dconfig, torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1, config.vocab_size, (4, 8), generator=g),
        "token_type_ids": torch.zeros(4, 8, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 8, [1] * 6 + [0] * 2]),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    cpu, gpu = (hypergradient(theta, config, distilled, batch, mode="recompute", kernels=k) for k in ("cpu", "gpu"))
    torch.testing.assert_close(gpu.loss, cpu.loss, rtol=0, atol=ATOL)
    assert_agree(cpu.grads, gpu.grads, "MiniLM hypergradient")


# --- the gpu policy's Functions: right derivatives (to third order), and chunks that change nothing -------------
def rows(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_gpu_attention_gradgradcheck():
    q, k, v, grad_context = rows((4, 5, 3), (4, 5, 3), (4, 5, 3), (4, 5, 3))  # (B·H, S, Dh)
    attend = lambda q, k, v: RecomputedAttention.apply(q, k, v, "gpu")  # noqa: E731
    backward = lambda *tensors: AttentionBackward.apply(*tensors, "gpu")  # noqa: E731
    assert torch.autograd.gradcheck(attend, (q, k, v)) and torch.autograd.gradgradcheck(attend, (q, k, v))
    assert torch.autograd.gradcheck(backward, (q, k, v, grad_context))
    assert torch.autograd.gradgradcheck(backward, (q, k, v, grad_context))


def test_gpu_attention_in_chunks_is_the_same(monkeypatch):
    """A budget too small for all rows at once splits them (here into 3 chunks of 2 rows)."""
    q, k, v, grad_context, gq, gk, gv = rows(*[(6, 4, 3)] * 7)
    everything = [
        attention._all_heads(fn, *tensors)
        for fn, tensors in [
            (attention._attention_probs_v, (q, k, v)),
            (attention._attention_backward, (q, k, v, grad_context)),
            (attention._attention_double_backward, (q, k, v, grad_context, gq, gk, gv)),
        ]
    ]
    monkeypatch.setattr(kernels, "ATTENTION_BUDGET", 2 * attention.TEMPORARIES * 4 * 4 * 8)
    chunked = [
        attention._all_heads(fn, *tensors)
        for fn, tensors in [
            (attention._attention_probs_v, (q, k, v)),
            (attention._attention_backward, (q, k, v, grad_context)),
            (attention._attention_double_backward, (q, k, v, grad_context, gq, gk, gv)),
        ]
    ]
    for whole, parts in zip(everything, chunked):
        for a, b in zip(whole, parts):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-14)


def test_linear_and_layer_norm_gradgradcheck():
    x, weight, bias, dy = rows((4, 3), (5, 3), (5,), (4, 5))
    assert torch.autograd.gradcheck(linear, (x, weight, bias))
    assert torch.autograd.gradgradcheck(linear, (x, weight, bias))
    assert torch.autograd.gradgradcheck(LinearBackward.apply, (dy, x, weight))  # third order
    x, gamma, beta = rows((2, 3, 5), (5,), (5,))
    with torch.no_grad():
        gamma += 1
    norm = lambda x, w, b: layer_norm(x, w, b, 1e-5)  # noqa: E731
    torch.testing.assert_close(norm(x, gamma, beta), torch.nn.functional.layer_norm(x, (5,), gamma, beta, 1e-5))
    assert torch.autograd.gradcheck(norm, (x, gamma, beta)) and torch.autograd.gradgradcheck(norm, (x, gamma, beta))


# --- why: the gpu policy dispatches fewer ops, and no step waits for the device -------------------------------
@pytest.mark.parametrize("steps,mode", [(1, "graph"), (3, "recompute")])
def test_gpu_policy_dispatches_fewer_ops_than_cpu_and_the_reference(steps, mode):
    """On the tiny BERT (2 heads, so the per-head loop costs least here): counted 5.9k / 3.0k / 4.0k ops
    (cpu / gpu / reference) at T = 1, 16–19k / 7.8–9.6k / 10.8k at T = 3."""
    theta, distilled, batch = tiny_theta(), make_distilled(steps), real_batch()
    cpu, gpu = (
        count_ops(lambda: hypergradient(theta, TINY, distilled, batch, mode=mode, kernels=k)) for k in ("cpu", "gpu")
    )
    ref = count_ops(lambda: reference.hypergradient(theta, TINY, distilled, batch))
    assert gpu["aten_ops"] < 0.7 * cpu["aten_ops"] and gpu["aten_ops"] <= ref["aten_ops"], (cpu, gpu, ref)
    assert cpu["host_syncs"] == gpu["host_syncs"] == 0


def test_count_ops_sees_host_syncs():
    x = torch.ones(3)
    counts = count_ops(lambda: [(x * 2).sum().item(), bool(x[0] > 0)])
    assert counts["host_syncs"] == 2 and counts["aten_ops"] > 4


def test_evaluation_agrees_under_both_policies(tiny):
    """train_on_distilled and `evaluation.predict` (fused attention, a padded batch), in float64 and bf16."""
    config, theta = tiny
    distilled = make_distilled(2, 1, 0, "soft", "cls")
    ids, types, mask = tiny_inputs()
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    theta_T = {k: train_on_distilled(theta, config, distilled, kernels=k)[0] for k in ("cpu", "gpu")}
    assert_agree(theta_T["cpu"] | {"embeddings.word": None}, theta_T["gpu"] | {"embeddings.word": None}, "θ_T")
    for precision, dtype, atol in (("fp32", torch.float64, ATOL), ("bf16", torch.float32, 0.05)):  # bf16: autocast
        losses = [
            predict({n: v.to(dtype) for n, v in theta_T[k].items()}, config, [batch], precision, kernels=k)[0]
            for k in ("cpu", "gpu")
        ]
        assert losses[1] == pytest.approx(losses[0], abs=atol), precision


# --- the setting: saved with a run; a run from before it resumes as "auto" -------------------------------------
def test_kernels_is_saved_and_an_older_run_resumes_as_auto(env):
    distill.main([*TINY_RUN, "--name", "k", "--kernels", "gpu"])
    run = env / "runs" / "mrpc" / "k"
    config = json.loads((run / "config.json").read_text())
    assert config["kernels"] == "gpu"
    del config["kernels"]  # as written before --kernels existed
    (run / "config.json").write_text(json.dumps(config))
    distill.main(["--resume", str(run), "--max-steps", "3"])
    assert json.loads((run / "config.json").read_text())["kernels"] == "auto"
    assert resumed_at(run) == "2/3" and logged_steps(run) == [1, 2, 3]
