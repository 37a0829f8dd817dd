"""Markdown table of pilot runs: the settings that differ between them and their validation curves.

    python results/sweeps/summarize.py runs/ag_news/pilot-*      (run from the repository root)
    python results/sweeps/summarize.py --eval results/sweeps/runs/sst2-gpu/*

Validation = mean accuracy of fresh models on the held-out *training* slice (validation.jsonl): what the
sweeps choose by. With --eval, a last column adds the run's eval.json (mean ± std over its fresh models on
the task's evaluation split), shown only to see how far the held-out choice carries, never to choose.
"""

import json
import sys
from pathlib import Path

SHOWN = [
    "init",
    "attn_init",
    "attention_type",
    "label_type",
    "attn_weight",
    "inner_lr",
    "lr",
    "lr_inner",
    "lr_labels",
    "lr_attn",
    "seq_len",
    "shots",
    "real_batch_size",
    "max_steps",
    "seed",
]


def eval_cell(run: Path) -> str:
    """Accuracy on the evaluation split from eval.json, or — when the run was not evaluated."""
    if not (run / "eval.json").is_file():
        return "—"
    accuracy = json.loads((run / "eval.json").read_text())["summary"]["accuracy"]
    return f"{accuracy['mean'] * 100:.1f} ± {accuracy['std'] * 100:.1f}"


def main(paths, with_eval=False):
    runs = [Path(p) for p in paths if (Path(p) / "validation.jsonl").is_file()]
    configs = {r: json.loads((r / "config.json").read_text()) for r in runs}
    varied = [k for k in SHOWN if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    curves = {r: [json.loads(l) for l in (r / "validation.jsonl").read_text().splitlines() if l.strip()] for r in runs}
    steps = sorted({v["step"] for c in curves.values() for v in c})
    print(
        "| run | "
        + " | ".join(varied)
        + " | "
        + " | ".join(f"acc @{s}" for s in steps)
        + " | best val. loss |"
        + (" eval split (not used to choose) |" if with_eval else "")
    )
    print("|---" * (2 + len(varied) + len(steps) + with_eval) + "|")
    for r in runs:
        by_step = {v["step"]: v for v in curves[r]}
        cells = [f"{by_step[s]['accuracy']['mean'] * 100:.1f}" if s in by_step else "—" for s in steps]
        best = min(v["loss"]["mean"] for v in curves[r])
        print(
            f"| {r.name} | "
            + " | ".join(str(configs[r].get(k)) for k in varied)
            + " | "
            + " | ".join(cells)
            + f" | {best:.4f} |"
            + (f" {eval_cell(r)} |" if with_eval else "")
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--eval"], with_eval="--eval" in args)
