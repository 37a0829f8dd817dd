"""Per-model metric difference bf16 − fp32 between two eval.json of one run (same head seeds):
`python bench/bf16_difference.py RUN/eval.json RUN/eval-bf16.json`."""

import json
import sys

from ddattn.method.evaluation import headline_metric

fp32, bf16 = (json.load(open(p)) for p in sys.argv[1:3])
metric = headline_metric(fp32["summary"])
a = {r["seed"]: r[metric] for r in fp32["runs"]}
b = {r["seed"]: r[metric] for r in bf16["runs"]}
common = [s for s in b if s in a]
d = [(b[s] - a[s]) * 100 for s in common]
print(
    f"{sys.argv[1]}: {metric}, {len(common)} models; fp32 mean {sum(a[s] for s in common) / len(common) * 100:.2f}, "
    f"bf16 mean {sum(b[s] for s in common) / len(common) * 100:.2f}; difference mean {sum(d) / len(d):+.3f}, "
    f"largest |diff| {max(map(abs, d)):.3f} points; equal on {sum(x == 0 for x in d)} of {len(d)} models; "
    f"fp32 {fp32.get('seconds', 0) / len(fp32['runs']):.1f} s/model, "
    f"bf16 {bf16.get('seconds', 0) / len(bf16['runs']):.1f} s/model"
)
