"""Attention passes one head at a time (the cpu kernel policy) vs all heads at once (gpu), at the benchmark's size.

    python bench/attention_heads.py [--seq-len 512] [--batch 2] [--heads 12] [--head-dim 32]

Prints the best of 7 runs, in ms, for the forward, backward and double backward of one layer's attention.
"""

import argparse
import time

import torch

from ddattn.method.attention import _attention_backward, _attention_double_backward, _attention_probs_v, _by_heads


def best_ms(fn, *args, repeat: int = 7) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=32)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    q, k, v, grad_context, gq, gk, gv = (
        0.3 * torch.randn(args.batch, args.heads, args.seq_len, args.head_dim, generator=g) for _ in range(7)
    )
    print(f"{torch.get_num_threads()} threads, B={args.batch} H={args.heads} S={args.seq_len} Dh={args.head_dim}")
    for name, fn, inputs in [
        ("forward", _attention_probs_v, (q, k, v)),
        ("backward", _attention_backward, (q, k, v, grad_context)),
        ("double backward", _attention_double_backward, (q, k, v, grad_context, gq, gk, gv)),
    ]:
        rows = [t.flatten(0, 1) for t in inputs]  # the gpu policy's (B·H, S, Dh)
        together, per_head = best_ms(_by_heads, "gpu", fn, *rows), best_ms(_by_heads, "cpu", fn, *inputs)
        print(f"{name:>16}: all heads {together:6.1f} ms, one head at a time {per_head:6.1f} ms")


if __name__ == "__main__":
    main()
