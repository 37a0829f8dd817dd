"""The card of a run, `runs/<task>/<name>/README.md`: what the distilled dataset is, what it scores, how
to use it. `python -m ddattn.card RUN_DIR` rewrites it.

Written at the end of `python -m ddattn.distill` and again by `python -m ddattn.evaluate`, from what is
on disk only: config.json (task and settings), metrics.jsonl, validation.jsonl and run.log (budget and
device), distilled_best.safetensors (each sample's nearest-token reading and label, the learned inner
learning rate η̃ and a heatmap of the attention labels ã, as `python -m ddattn.show` shows them), and
eval.json with the baselines' runs/<task>/{majority,random-real,full}/eval.json beside it. Every number in
the evaluation table is read from those eval.json files.
"""

import json
import re
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

from . import checks, tasks
from . import data as taskdata
from .errors import ArgumentParser, run_cli
from .files import load_pretrained
from .method.distilled import DistilledData
from .paths import atomic_path, resolve_checkpoint
from .plots import pyplot, save_png
from .report import BASELINE_ROWS
from .rundir import load_run
from .show import attention_labels, describe_sample, plot_attention_labels

HEATMAP = "attention_labels.png"
CURVES = "validation.png"
KEY_SETTINGS = {  # config.json field → what it is (paper section)
    "label_type": "class labels ỹ (Sec. 2.2)",
    "attention_type": "attention labels ã (Sec. 2.3)",
    "shots": "distilled samples per class",
    "steps": "T, inner SGD steps (Eq. 7)",
    "data_per_step": "same or different distilled data per inner step",
    "seq_len": "S, tokens per distilled sample",
    "attn_weight": "λ, weight of the attention loss (Eq. 7)",
    "inner_lr": "η̃_0, initial inner learning rate",
    "lr": "α, outer Adam learning rate",
    "epochs": "epochs over the real training split",
    "real_batch_size": "real examples per outer step",
    "max_length": "truncation of real examples",
    "init": "initialisation of x̃",
    "mode": "hypergradient",
    "seed": "seed",
    "train_limit": "training examples used (0: all)",
}
EXAMPLE_TEXTS = {True: '"The cat sat." "A cat was sitting."', False: '"The cat sat on the mat."'}


def read_json(path: Path) -> Optional[dict]:
    return checks.read_json(path) if path.is_file() else None


def read_jsonl(path: Path) -> List[dict]:
    return checks.read_jsonl(path) if path.is_file() else []


def duration(seconds: float) -> str:
    """'7 min 7 s', '1 h 2 min', '12.3 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


# --- sections --------------------------------------------------------------------------------------
def task_section(settings: dict, task: tasks.Task) -> List[str]:
    text = "sentence pairs" if task.is_pair else "single texts"
    labels = ", ".join(f"{i} {name}" for i, name in enumerate(task.label_names))
    return [
        "## Task",
        "",
        *table(
            ["", ""],
            [
                ["task", f"{task.name} ({text})"],
                ["labels", labels],
                ["checkpoint", f"`{settings['model']}`"],
                ["max length", f"{settings['max_length']} tokens"],
                *([["protocol", task.protocol]] if task.protocol else []),
            ],
        ),
    ]


def settings_section(settings: dict) -> List[str]:
    rows = [[f"`{key}`", f"{settings[key]}", meaning] for key, meaning in KEY_SETTINGS.items() if key in settings]
    return [
        "## Settings",
        "",
        *table(["setting", "value", "what it is"], rows),
        "",
        "<details><summary>every setting (config.json)</summary>",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
        "</details>",
    ]


def recorded_device(run_dir: Path) -> str:
    """'cpu × 1 process(es)', from the line distill writes first to run.log."""
    log = run_dir / "run.log"
    found = re.search(r"device (\S+) × (\d+)", log.read_text()) if log.is_file() else None
    return f"{found[1]} × {found[2]} process(es)" if found else "not recorded"


def budget_section(run_dir: Path) -> List[str]:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    rows = [
        ["outer steps", f"{len(metrics)}"],
        [
            "time in outer steps",
            f"{duration(sum(m['seconds'] for m in metrics))} (sum over metrics.jsonl; "
            "validation and checkpoints not included)",
        ],
    ]
    last = run_dir / "distilled_last.safetensors"
    if last.is_file():
        wall = last.stat().st_mtime - (run_dir / "config.json").stat().st_mtime
        rows.append(
            [
                "wall clock",
                f"{duration(wall)} (config.json to the last distilled_last write; includes "
                "validation, and any pause before a --resume)",
            ]
        )
    rows.append(["device", recorded_device(run_dir)])
    validations = read_jsonl(run_dir / "validation.jsonl")
    if validations:
        best = min(validations, key=lambda v: v["loss"]["mean"])
        loss, accuracy = best["loss"]["mean"], best["accuracy"]["mean"] * 100
        rows.append(
            [
                "best validation",
                f"loss {loss:.4f}, accuracy {accuracy:.1f} % at outer step {best['step']} "
                "(held-out *training* examples)",
            ]
        )
    lines = ["## Budget", "", *table(["", ""], rows)]
    if validations and plot_curves(metrics, validations, run_dir / CURVES):
        lines += [
            "",
            "Outer loss on the real mini-batches (thin: each step, thick: running mean over 20) and "
            "validation accuracy of fresh models on held-out training examples:",
            "",
            f"![curves]({CURVES})",
        ]
    return lines


def plot_curves(metrics: List[dict], validations: List[dict], path: Path) -> bool:
    """Two panels over outer steps: the outer loss (metrics.jsonl) and the validation accuracy ± std
    (validation.jsonl). False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps, losses = [m["step"] for m in metrics], [m["loss"] for m in metrics]
    window = [sum(losses[max(0, i - 19) : i + 1]) / len(losses[max(0, i - 19) : i + 1]) for i in range(len(losses))]
    left.plot(steps, losses, lw=0.5, alpha=0.4, color="C0")
    left.plot(steps, window, lw=1.5, color="C0")
    left.set(xlabel="outer step", ylabel="outer loss (real batch)", title="distillation")
    v_steps = [v["step"] for v in validations]
    mean = [v["accuracy"]["mean"] * 100 for v in validations]
    std = [v["accuracy"]["std"] * 100 for v in validations]
    right.errorbar(v_steps, mean, yerr=std, marker="o", color="C1", capsize=3)
    right.set(xlabel="outer step", ylabel="accuracy (%)", title="validation (held-out training data)")
    fig.tight_layout()
    save_png(fig, path)
    return True


def score_cells(summary: dict, metrics: Sequence[str]) -> List[str]:
    """'74.80 ± 0.00' per metric, in percent (mean ± population std over the models)."""
    return [f"{summary[m]['mean'] * 100:.2f} ± {summary[m]['std'] * 100:.2f}" if m in summary else "—" for m in metrics]


def evaluation_section(run_dir: Path, settings: dict) -> List[str]:
    result = read_json(run_dir / "eval.json")
    if result is None:
        return [
            "## Evaluation",
            "",
            "Not evaluated yet: `python -m ddattn.evaluate "
            f"{repo_path(run_dir, settings)} --n-models 100` writes eval.json and this section.",
        ]
    metrics = [m for m in result["summary"] if m != "loss"]
    this_run = f"this run ({result['distilled']}, {result['n_models']} models)"
    rows = [[this_run, *score_cells(result["summary"], metrics)]]
    for title, name in BASELINE_ROWS.items():
        baseline = read_json(run_dir.parent / name / "eval.json")
        if baseline is not None:
            rows.append([f"{title} ({name}/eval.json)", *score_cells(baseline["summary"], metrics)])
    return [
        "## Evaluation",
        "",
        f"{result['task']} {result['split']} split, {result['examples']} examples; each model is the checkpoint "
        "with a fresh head trained on the distilled data for its T steps (paper Sec. 3.1). Mean ± std in % "
        f"over the models, from eval.json ({duration(result['seconds'])}).",
        "",
        *table(["", *metrics], rows),
    ]


def samples_section(run_dir: Path, settings: dict, task: tasks.Task, distilled: DistilledData, which: str) -> List[str]:
    """Each sample's label and nearest-token reading, η̃, and the heatmap of sample 0's attention labels."""
    model_dir = resolve_checkpoint(settings["model"])
    _, theta = load_pretrained(model_dir)
    tokenizer = taskdata.load_tokenizer(model_dir / "tokenizer.json")
    reading = [
        line
        for i in range(distilled.config.num_samples)
        for line in describe_sample(distilled, i, task.label_names, theta["embeddings.word"], tokenizer, top=1)
    ]
    lines = [
        f"## The distilled data (distilled_{which})",
        "",
        "The inputs x̃ are free embeddings (Sec. 2.1); the nearest vocabulary token at each position is only "
        "their closest reading.",
        "",
        "```text",
        *reading,
        "```",
        "",
        "Learned inner learning rate η̃_t = softplus(lr_raw_t): "
        + ", ".join(f"step {t + 1}: {distilled.inner_lr(t).item():.5g}" for t in range(distilled.config.steps))
        + f" (η̃_0 = {distilled.config.inner_lr_init:g}).",
        "",
    ]
    probs = attention_labels(distilled, 0)
    if probs is None:
        return lines + ["No attention labels (attention type none)."]
    title = f"attention labels of sample 0 ({task.label_names[0]}), [CLS] query"
    if plot_attention_labels(probs, run_dir / HEATMAP, title):
        return lines + [
            f"Attention labels ã of sample 0 (Eq. 6), layers × heads, each over the {probs.shape[-1]} key positions:",
            "",
            f"![attention labels]({HEATMAP})",
        ]
    return lines + [
        "No heatmap of the attention labels: matplotlib is not installed (`pip install matplotlib`, "
        f"then `python -m ddattn.card {repo_path(run_dir, settings)}`)."
    ]


def repo_path(run_dir: Path, settings: dict) -> str:
    """Where the run lives in a clone: runs/<task>/<name>."""
    return f"runs/{settings['task']}/{run_dir.name}"


def distill_command(settings: dict) -> str:
    """`python -m ddattn.distill` with every setting of config.json, one flag per setting (a switch, such as
    --balance-classes, where it is on; off is its default)."""
    flags = [
        f"--{key.replace('_', '-')}" + ("" if value is True else f" {shlex.quote(str(value))}")
        for key, value in settings.items()
        if value is not None and value is not False and key != "resume"
    ]
    lines, line = [], "python -m ddattn.distill"
    for flag in flags:
        if len(line) + len(flag) > 100:
            lines.append(line + " \\")
            line = "    "
        line += " " + flag if line.strip() else flag
    return "\n".join(lines + [line])


def commands_section(run_dir: Path, settings: dict, task: tasks.Task) -> List[str]:
    run, exported = repo_path(run_dir, settings), f"exported/{settings['task']}-{run_dir.name}"
    return [
        "## Commands",
        "",
        "```bash",
        "# reproduce this run (every setting of config.json)",
        distill_command(settings),
        f"python -m ddattn.evaluate {run} --n-models 100        # eval.json, and this card again",
        f"python -m ddattn.train {run} --out {exported}    # the classifier it trains, Hugging Face layout",
        f"python -m ddattn.predict {exported} {EXAMPLE_TEXTS[task.is_pair]}",
        "```",
    ]


def write_card(run_dir: Path) -> Path:
    """Build the card from the run's files and write RUN_DIR/README.md atomically."""
    which = "best" if (run_dir / "distilled_best.safetensors").is_file() else "last"
    settings, distilled = load_run(run_dir, which)
    task = tasks.task_from_settings(settings)
    intro = (
        f"A distilled dataset for **{task.name}** made by `python -m ddattn.distill` (ddattn, after Maekawa et "
        "al., *Dataset Distillation with Attention Labels for Fine-tuning BERT*, ACL 2023): "
        f"{settings['shots']} synthetic sample(s) per class of {settings['seq_len']} input embeddings, with "
        f"{settings['label_type']} labels, attention labels `{settings['attention_type']}` and a learned "
        f"learning rate. `{settings['model']}` with a fresh head, fine-tuned on them for T = {settings['steps']} "
        "SGD step(s), is the classifier scored below."
    )
    sections = [
        [f"# {task.name} · {run_dir.name}", "", intro],
        task_section(settings, task),
        evaluation_section(run_dir, settings),
        samples_section(run_dir, settings, task, distilled, which),
        settings_section(settings),
        budget_section(run_dir),
        commands_section(run_dir, settings, task),
    ]
    card = run_dir / "README.md"
    with atomic_path(card) as tmp:
        tmp.write_text("\n\n".join("\n".join(section) for section in sections) + "\n", encoding="utf-8")
    return card


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m ddattn.card", description="Rewrite a run's README.md card from its files.")
    p.add_argument("run_dir", type=Path, help="runs/<task>/<name>/ of python -m ddattn.distill")
    args = p.parse_args(argv)
    print(f"wrote {write_card(args.run_dir)}")


if __name__ == "__main__":
    run_cli(main)
