"""Markdown table of pilot runs: the settings that differ between them and their validation curves.

    python results/sweeps/summarize.py runs/ag_news/pilot-*      (run from the repository root)

Validation = mean accuracy of fresh models on the held-out *training* slice (validation.jsonl); the
evaluation split is never read here.
"""
import json
import sys
from pathlib import Path

SHOWN = ["init", "attn_init", "attention_type", "label_type", "attn_weight", "inner_lr", "lr", "lr_inner", "lr_labels",
         "seq_len", "max_steps"]


def main(paths):
    runs = [Path(p) for p in paths if (Path(p) / "validation.jsonl").is_file()]
    configs = {r: json.loads((r / "config.json").read_text()) for r in runs}
    varied = [k for k in SHOWN if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    curves = {r: [json.loads(l) for l in (r / "validation.jsonl").read_text().splitlines() if l.strip()] for r in runs}
    steps = sorted({v["step"] for c in curves.values() for v in c})
    print("| run | " + " | ".join(varied) + " | " + " | ".join(f"acc @{s}" for s in steps) + " | best val. loss |")
    print("|---" * (2 + len(varied) + len(steps)) + "|")
    for r in runs:
        by_step = {v["step"]: v for v in curves[r]}
        cells = [f"{by_step[s]['accuracy']['mean'] * 100:.1f}" if s in by_step else "—" for s in steps]
        best = min(v["loss"]["mean"] for v in curves[r])
        print(f"| {r.name} | " + " | ".join(str(configs[r].get(k)) for k in varied) + " | " + " | ".join(cells)
              + f" | {best:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
