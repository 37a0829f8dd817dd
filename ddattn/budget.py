"""What more outer steps buy: one configuration distilled at several budgets (issue 27), for `make table`.

A *budget series* is a set of evaluated distilled runs whose settings differ only in how many outer steps
they run (--epochs, --max-steps, and --preset where the gpu preset is the cpu preset's choices with more
outer steps) and in what names a run (report.RUN_ONLY). For each run: its outer steps, its best
held-out loss and the step it came at (validation.jsonl: held-out *training* data), and its evaluation
score (fresh models, eval.json). results/budget.md tabulates them, results/budget.png plots the held-out
loss along every run and the score against outer steps, one colour per task.
"""

from pathlib import Path
from typing import Dict, List, Optional

from . import checks
from .plots import pyplot, save_png

BUDGET = frozenset({"epochs", "max_steps", "preset"})  # what a budget series varies


def validations(run: Path) -> List[dict]:
    path = run / "validation.jsonl"
    return checks.read_jsonl(path) if path.is_file() else []


def budget_point(result) -> Optional[dict]:
    """One run's place in its series: outer steps (its last validation, at its last step), best held-out
    loss and its step, and the evaluation cell; None for a run without validations."""
    records = validations(result.run)
    if not records:
        return None
    best = min(records, key=lambda r: r["loss"]["mean"])
    return {
        "run": result.name,
        "steps": records[-1]["step"],
        "best_step": best["step"],
        "val_loss": best["loss"]["mean"],
        "curve": [(r["step"], r["loss"]["mean"]) for r in records],
        "cell": result.cell(1),
    }


def budget_series(results) -> Dict[str, List[dict]]:
    """{task: points of each series with at least two budgets, series after series, fewest steps first}.
    `results`: report.Result objects; a series is one `configuration_but(BUDGET)`."""
    groups: Dict[str, list] = {}
    for r in results:
        if r.baseline is None:
            groups.setdefault(r.configuration_but(BUDGET), []).append(r)
    series: Dict[str, List[dict]] = {}
    for members in groups.values():
        points = sorted(filter(None, map(budget_point, members)), key=lambda p: (p["steps"], p["run"]))
        if len({p["steps"] for p in points}) > 1:
            first = points[0]["steps"]
            series.setdefault(members[0].task, []).extend({**p, "times": p["steps"] / first} for p in points)
    return series


def render_budget(series: Dict[str, List[dict]], titles: Dict[str, str]) -> str:
    lines = [
        "# What more outer steps buy",
        "",
        "One configuration distilled for several numbers of outer steps (a budget series: the runs' settings "
        "differ only in --epochs, --max-steps and --preset). Held-out loss: the best validation of the run "
        "(mean over its validation models, on a held-out slice of the *training* split), and the outer step it "
        "came at; the evaluated data are that best step's. Score: mean ± std in % over fresh models on the "
        "evaluation split (MRPC: mean of accuracy and F1).",
        "",
        "| task | run | outer steps | budget | best held-out loss (at step) | score |",
        "|---|---|---:|---:|---|---|",
    ]
    for task, points in series.items():
        for p in points:
            c = p["cell"]
            lines.append(
                f"| {titles.get(task, task)} | {p['run']} | {p['steps']} | {p['times']:.1f}× | "
                f"{p['val_loss']:.4f} ({p['best_step']}) | {c['mean'] * 100:.1f} ± {c['std'] * 100:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot_budget(series: Dict[str, List[dict]], path: Path, titles: Dict[str, str]) -> Optional[Path]:
    """results/budget.png: held-out loss along each run, and score against outer steps; None without
    matplotlib or series."""
    if not series:
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (task, points), colour in zip(series.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for p in points:
            ax_loss.plot(*zip(*p["curve"]), color=colour, alpha=0.4 + 0.6 * (p is points[-1]), linewidth=1)
        ax_score.errorbar(
            [p["steps"] for p in points],
            [p["cell"]["mean"] * 100 for p in points],
            yerr=[p["cell"]["std"] * 100 for p in points],
            color=colour,
            marker="o",
            capsize=3,
            label=titles.get(task, task),
        )
    for ax, ylabel in ((ax_loss, "held-out loss (training data)"), (ax_score, "score (%), fresh models")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(plt.LogLocator(subs=(1.0, 2.0, 5.0)))  # 100, 200, 500, 1000, ...
        ax.xaxis.set_major_formatter(plt.ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("outer steps")
        ax.set_ylabel(ylabel)
    ax_score.legend()
    fig.suptitle("The budget: the same settings for more outer steps")
    fig.tight_layout()
    return save_png(fig, path)
