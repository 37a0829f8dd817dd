"""The error of the approximate hypergradient options as a function of T (and ε), on golden-layout fixtures.

    python bench/approximate_error.py --steps 1 2 3 4 --seeds 0 1 2 [--save-fixtures DIR]

For each T and seed it builds a fixture of the layout of ../shared/fixtures/minilm_golden.safetensors
(the same forward.* inputs and real batch, a fresh random D̃ of 2 samples × S = 16, one learning rate
shared by the T steps) whose hypergrad.* values come from ddattn's `graph` mode in float64 (which matches
the independent implementation to 1e-9 at T = 1; tests/test_golden.py). It then prints
‖g − g_exact‖ / ‖g_exact‖ per distilled tensor for `finite-difference` (ε = 1e-2 and 1e-3, float64 and
float32) and for `--autocast bf16` (float32), the numbers behind the T-dependent bounds in
tests/test_golden.py and bench/README.md. `--save-fixtures DIR` writes the fixtures, so that
`DDATTN_GOLDEN=DIR/minilm_T2_seed0.safetensors pytest tests/test_golden.py` runs the tests on them.
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddattn.files import load_pretrained
from ddattn.method.distilled import DistilledConfig, DistilledData
from ddattn.method.unroll import _hypergradient_finite_difference, hypergradient, outer_gradient
from ddattn.paths import weights_dir

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "minilm_golden.safetensors"
GRADS = {"x": "x_syn", "label_logits": "label_logits", "attn_logits": "attn_logits", "lr_raw": "lr_raw"}
OPTIONS = {
    "fd ε=1e-2 float64": (torch.float64, "fd", 1e-2),
    "fd ε=1e-3 float64": (torch.float64, "fd", 1e-3),
    "fd ε=1e-2 float32": (torch.float32, "fd", 1e-2),
    "fd ε=1e-3 float32": (torch.float32, "fd", 1e-3),
    "bf16 float32": (torch.float32, "bf16", None),
}


def distilled_of(tensors, config, T, dtype):
    """D̃ with its learning rate unfolded into T equal ones (its gradient is then their sum)."""
    dconfig = DistilledConfig(
        num_classes=2,
        seq_len=16,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        shots=1,
        steps=T,
        batch_size=2,
        label_type="soft",
        attention_type="cls",
        attn_weight=1.0,
    )
    values = {**tensors, "lr_raw": tensors["lr_raw"].expand(T)}
    return DistilledData(dconfig, {k: v.detach().to(dtype).clone().requires_grad_() for k, v in values.items()})


def hypergradient_of(theta, config, tensors, batch, T, dtype, kind="graph", eps=None):
    theta = {k: v.to(dtype) for k, v in theta.items()}
    distilled = distilled_of(tensors, config, T, dtype)
    if kind == "fd":
        result = _hypergradient_finite_difference(
            theta, config, distilled, lambda th: outer_gradient(th, config, [batch], 4), perturbation=eps
        )
    else:
        result = hypergradient(
            theta,
            config,
            distilled,
            batch,
            mode="graph" if kind == "graph" else "recompute",
            autocast=torch.bfloat16 if kind == "bf16" else None,
        )
    result.grads["lr_raw"] = result.grads["lr_raw"].sum().reshape(1)
    return result


def make_fixture(public, config, pretrained, T, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "x": torch.randn(2, 16, config.hidden_size, generator=g, dtype=torch.float64),
        "label_logits": 1.15 * torch.randn(2, 2, generator=g, dtype=torch.float64),
        "attn_logits": torch.randn(2, config.num_layers, config.num_heads, 16, generator=g, dtype=torch.float64),
        "lr_raw": public["hypergrad.lr_raw"].clone(),
    }
    theta = {
        **pretrained,
        "classifier.weight": public["forward.classifier_W"],
        "classifier.bias": public["forward.classifier_b"],
    }
    batch = {
        "input_ids": public["forward.input_ids"],
        "token_type_ids": public["forward.token_type_ids"],
        "attention_mask": public["forward.attention_mask"],
        "labels": public["hypergrad.y_real"],
    }
    exact = hypergradient_of(theta, config, tensors, batch, T, torch.float64)
    fixture = {k: v for k, v in public.items() if k.startswith("forward.") or k == "hypergrad.y_real"}
    fixture.update({f"hypergrad.{GRADS[k]}": v for k, v in tensors.items()})
    fixture.update({f"hypergrad.grad_{GRADS[k]}": v.detach() for k, v in exact.grads.items()})
    fixture.update({"hypergrad.loss_real": exact.loss.reshape(1), "hypergrad.inner_losses": exact.inner_losses})
    return fixture, theta, tensors, batch


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--save-fixtures", type=Path)
    args = p.parse_args()
    public = load_file(str(PUBLIC))
    config, pretrained = load_pretrained(weights_dir() / "minilm-l6", dtype=torch.float64)
    print("| T | seed | option | x | label_logits | attn_logits | lr_raw | largest |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for T in args.steps:
        for seed in args.seeds:
            fixture, theta, tensors, batch = make_fixture(public, config, pretrained, T, seed)
            if args.save_fixtures:
                args.save_fixtures.mkdir(parents=True, exist_ok=True)
                save_file(fixture, str(args.save_fixtures / f"minilm_T{T}_seed{seed}.safetensors"))
            for name, (dtype, kind, eps) in OPTIONS.items():
                result = hypergradient_of(theta, config, tensors, batch, T, dtype, kind, eps)
                errors = [
                    (
                        (result.grads[k].double() - fixture[f"hypergrad.grad_{v}"]).norm()
                        / fixture[f"hypergrad.grad_{v}"].norm()
                    ).item()
                    for k, v in GRADS.items()
                ]
                print(
                    f"| {T} | {seed} | {name} | " + " | ".join(f"{e:.2e}" for e in errors) + f" | {max(errors):.2e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
