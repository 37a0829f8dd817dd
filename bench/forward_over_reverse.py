"""Forward-over-reverse vector–Hessian products, measured against ddattn's reverse-over-reverse.

    python bench/forward_over_reverse.py [--seq-len 512] [--repeat 3]

One outer step at T = 1 (bench.py's setting: MiniLM, M = 2, real batch 32 × 64 in micro-batches of 16):
g_T = ∂L/∂θ_1 from the real batch, then the step's vector–Hessian product with g_T taken as
torch.func.jvp of torch.func.grad of the inner loss, i.e. (H_θθ g_T, H_D̃θ g_T) in one forward-mode
pass over the gradient (mixed partials are symmetric). torch.func cannot see through ddattn's custom
autograd Functions, so the inner loss here runs the plain attention ops (attention_type="all") and a plain KL.
Prints seconds per outer step, the peak RSS above the loaded model and the relative error against
`unroll.hypergradient(mode="recompute")`. Not part of the package: forward-over-reverse is not kept.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ddattn.bench import NUM_CLASSES, PeakMemory
from ddattn.files import load_pretrained
from ddattn.method.bert import bert_forward, fresh_model
from ddattn.method.distilled import DistilledConfig, DistilledData
from ddattn.method.unroll import hypergradient, outer_gradient, soft_cross_entropy, trainable_names
from ddattn.paths import resolve_checkpoint


def plain_inner_loss(trainable, frozen, config, x, label_logits, attn_logits, weight):
    """L_task + λ L_attn of the inner step (Eq. 6–7) with plain ops only."""
    out = bert_forward({**frozen, **trainable}, config, inputs_embeds=x, attention_type="all")
    task = soft_cross_entropy(out.logits, torch.softmax(label_logits, -1))
    log_target = F.log_softmax(attn_logits, -1)
    cls_scores = out.scores[..., 0, :]  # (b, L, H, S)
    kl = (log_target.exp() * (log_target - F.log_softmax(cls_scores, -1))).sum(-1)
    return task + weight * kl.mean()


def forward_over_reverse(theta0, config, distilled, micro_batches):
    names = trainable_names(theta0)
    trainable = {n: theta0[n] for n in names}
    frozen = {n: v for n, v in theta0.items() if n not in trainable}
    d = {k: v.detach() for k, v in distilled.tensors().items()}
    lr_raw = d["lr_raw"].clone().requires_grad_()
    eta = F.softplus(lr_raw[0])
    inputs = (trainable, d["x"], d["label_logits"], d["attn_logits"])

    def loss(*args):
        return plain_inner_loss(args[0], frozen, config, *args[1:], distilled.config.attn_weight)

    grad_theta = torch.func.grad(loss)(*inputs)  # ∇_θ L_in at θ_0
    theta1 = {**frozen, **{n: trainable[n] - eta.detach() * grad_theta[n] for n in names}}
    _, g_T = outer_gradient(theta1, config, micro_batches, 32)
    v = dict(zip(names, g_T))
    tangents = (v, *(torch.zeros_like(t) for t in inputs[1:]))
    _, hvp = torch.func.jvp(torch.func.grad(loss, argnums=(0, 1, 2, 3)), inputs, tangents)
    g_dot_v = sum((grad_theta[n] * v[n]).sum() for n in names)
    grads = {
        "x": -eta.detach() * hvp[1],
        "label_logits": -eta.detach() * hvp[2],
        "attn_logits": -eta.detach() * hvp[3],
        "lr_raw": torch.autograd.grad(eta, lr_raw, grad_outputs=-g_dot_v)[0],
    }
    return grads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    config, pretrained = load_pretrained(resolve_checkpoint("minilm-l6"))
    theta0 = fresh_model(pretrained, config, NUM_CLASSES, 0)
    dconfig = DistilledConfig(
        num_classes=NUM_CLASSES,
        seq_len=args.seq_len,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        shots=1,
        steps=1,
    )
    g = torch.Generator().manual_seed(0)
    distilled = DistilledData.initial(dconfig, g)
    batch = {
        "input_ids": torch.randint(1, config.vocab_size, (32, 64), generator=g),
        "token_type_ids": torch.zeros(32, 64, dtype=torch.long),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, NUM_CLASSES, (32,), generator=g),
    }
    micro_batches = [{k: v[rows] for k, v in batch.items()} for rows in torch.arange(32).split(16)]
    exact = hypergradient(theta0, config, distilled, micro_batches, mode="recompute").grads
    for name, fn in [
        ("reverse-over-reverse", lambda: hypergradient(theta0, config, distilled, micro_batches).grads),
        ("forward-over-reverse", lambda: forward_over_reverse(theta0, config, distilled, micro_batches)),
    ]:
        fn()  # warm-up
        memory = PeakMemory(torch.device("cpu"))
        memory.start()
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            grads = fn()
            times.append(time.perf_counter() - started)
        peak, process = memory.stop()
        error = max(((grads[k] - e).norm() / e.norm()).item() for k, e in exact.items())
        print(
            f"{name:>22}: {statistics.median(times):.2f} s (min {min(times):.2f}), peak {peak / 2**20:.0f} MB "
            f"above the model ({process / 2**20:.0f} MB process), max relative error vs recompute {error:.1e}"
        )


if __name__ == "__main__":
    main()
