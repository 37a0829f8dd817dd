"""`python -m ddattn.report`: the paper's Tables 2 and 3 from whatever runs exist (`make table`).

Reads every runs/<task>/<name>/eval.json (written by `python -m ddattn.evaluate` for distilled runs and by
`python -m ddattn.baselines` for the baselines) and writes results/table2.md, results/table3.md and
results/tables.json.

- Table 2 (1 shot per class, 1 inner step): Majority, HL, SL, HL + AL, SL + AL, Full dataset, one column
  per task. HL/SL = hard/soft class labels (Sec. 2.2), AL = attention labels on the [CLS] query (Sec. 2.3).
  Each distilled row also gets its share of the full-dataset score (the paper's "% performance of the
  full dataset", Sec. 3.2).
- Table 3 (SL + AL, and HL + AL where runs exist): rows (inner steps T, shots per class, same or different
  distilled data per step), and "Table 3, extended": every filled cell of it with its distillation's wall
  time and peak memory (resources.tsv, which results/table3_queue.sh writes with GNU time), so the rows
  beyond the paper's T ≤ 5 show what memory flat in T costs; results/table3_T.png plots accuracy and peak
  memory against T for different data per step, 1 shot per class per step.
- The budget (ddattn/budget.py): one configuration at several numbers of outer steps, results/budget.md
  and results/budget.png, where such runs exist.

Cells are mean ± std in % over the N evaluation models; MRPC's number is the mean of accuracy and F1 (the
GLUE convention the paper follows), every other task's is accuracy. Runs whose settings differ only in
--seed (or name) are one configuration: its cell pools the models of all of them, so a lucky seed is never
picked out (each seed also holds out its own slice of training data, so the seeds' validation losses are
not comparable). Where several configurations fall in one cell (a learning-rate sweep), the one with the
lowest mean best *validation* loss (held-out training data, validation.jsonl) is shown, never the one
with the best evaluation score. Runs with byte-identical distilled data count once.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import checks, tasks
from .budget import budget_series, plot_budget, render_budget
from .errors import ArgumentParser, UserError, run_cli
from .files import read_distilled_metadata
from .method.evaluation import headline_metric
from .paths import REPO_ROOT, atomic_path, file_sha256, runs_dir, write_json_atomic
from .plots import pyplot, save_png
from .settings import ADDED_LATER, with_added_later

PAPER_TASKS = ["ag_news", "sst2", "qnli", "mrpc"]  # the paper's column order; other tasks follow
TITLES = {
    "ag_news": "AGNews",
    "sst2": "SST-2",
    "qnli": "QNLI",
    "mrpc": "MRPC",
    "rte": "RTE",
    "qnli_dev": "QNLI (dev split)",
}
PROTOCOL_MARK = "†"  # on the title of a task whose protocol is not the paper's (tasks.Task.protocol)
DISTILLED_ROWS = {
    "HL": ("hard", "none"),
    "SL": ("soft", "none"),
    "HL + AL": ("hard", "cls"),
    "SL + AL": ("soft", "cls"),
}
FULL_ON_EVAL = "Full dataset, best on eval split (paper)"
BASELINE_ROWS = {"Majority": "majority", "Random real": "random-real", "Full dataset": "full"}
TABLE2_ROWS = ["Majority", "Random real", "HL", "SL", "HL + AL", "SL + AL", "Full dataset", FULL_ON_EVAL]
TABLE3_ROWS = [
    (1, 1, "single"),
    (1, 3, "single"),
    (1, 5, "single"),
    (3, 1, "same"),
    (5, 1, "same"),
    (3, 3, "different"),
    (5, 5, "different"),
]  # the paper's rows (steps, shots, mode)
SELECTION = (
    "Runs that differ only in --seed are pooled: the cell is the mean ± std over all their models "
    "(runs with byte-identical distilled data count once). Where several configurations fall in one cell, "
    'the one with the lowest mean best validation loss is shown (min of validation.jsonl "loss"."mean", '
    "measured on a held-out slice of the training split that depends on --seed; where the configurations share "
    "seeds, over those seeds only, so that each is compared on the same slices), never the one with the "
    "best evaluation score. Held-out losses are compared on one kind of slice only: runs held out on whole "
    "sentences (--held-out sentences) are compared with each other, and not chosen where a cell has runs held "
    "out on random training rows."
)
# Settings that name a run or say how it was carried out, not what it computes: runs differing only in
# these are repeats of one configuration.
RUN_ONLY = {"name", "seed", "resume", "device", "data_dir", "checkpoint_every", "micro_batch_size", "preset_reason"}
MISSING = "—"


@dataclass
class Result:
    """One eval.json and what the tables need from its run directory."""

    run: Path
    task: str
    split: str
    settings: dict
    summary: dict
    n_models: int
    checkpoint: str
    val_loss: float  # best validation loss of a distilled run; inf when it has none
    distilled_sha256: Optional[str] = None  # of the evaluated distilled file, when it is there
    best_on_eval: Optional[dict] = None  # full fine-tuning: the paper's pick, the best on the eval split
    resources: Optional[dict] = None  # the distillation's wall time and peak memory (resources.tsv)

    @property
    def baseline(self) -> Optional[str]:
        return self.settings.get("baseline")

    @property
    def metric(self) -> str:
        return headline_metric(self.summary)

    @property
    def name(self) -> str:
        return f"{self.run.parent.name}/{self.run.name}"

    @property
    def configuration(self) -> str:
        """What the run computes, as a key (an older run's settings are completed when read: read_result)."""
        return self.configuration_but(frozenset())

    def configuration_but(self, varied: frozenset) -> str:
        """`configuration` without the settings in `varied` (budget.py: the outer-step budget)."""
        return json.dumps({k: v for k, v in self.settings.items() if k not in RUN_ONLY | varied}, sort_keys=True)

    def cell(self, candidates: int) -> dict:
        return pooled_cell([self], candidates)


def pooled_cell(repeats: Sequence[Result], candidates: int) -> dict:
    """One configuration's cell: mean and population std over the models of all its repeats (from each
    run's mean and std: E[x²] = std² + mean²), and the mean of their best validation losses."""
    metric, n = repeats[0].metric, sum(r.n_models for r in repeats)
    stats = [(r.n_models, r.summary[metric]["mean"], r.summary[metric]["std"]) for r in repeats]
    if len(stats) == 1:
        _, mean, std = stats[0]  # one run: its own numbers, untouched
    else:
        mean = sum(k * m for k, m, _ in stats) / n
        std = math.sqrt(max(sum(k * (s * s + m * m) for k, m, s in stats) / n - mean * mean, 0.0))
    val_loss = sum(r.val_loss for r in repeats) / len(repeats)
    measured = [r.resources for r in repeats if r.resources]
    return {
        "mean": mean,
        "std": std,
        "metric": metric,
        "n_models": n,
        "run": ", ".join(r.name for r in repeats),
        "repeats": len(repeats),
        "seeds": sorted({r.settings.get("seed", 0) for r in repeats}),
        "checkpoint": repeats[0].checkpoint,
        "candidates": candidates,
        "val_loss": val_loss if math.isfinite(val_loss) else None,
        "distill_seconds": max((m["distill_seconds"] for m in measured), default=None),
        "peak_mb": max((m["peak_mb"] for m in measured), default=None),
        "cpus": sorted({cpu for m in measured for cpu in m["cpus"]}),
    }


# --- reading runs ----------------------------------------------------------------------------------
def best_validation_loss(run: Path) -> float:
    """min over validation.jsonl of "loss"."mean" (inf without validations)."""
    path = run / "validation.jsonl"
    if not path.is_file():
        return math.inf
    losses = [record["loss"]["mean"] for record in checks.read_jsonl(path)]
    return min((l for l in losses if not math.isnan(l)), default=math.inf)


CPU_NOT_RECORDED = "not recorded"
GNU_TIME_NOTES = ("Command exited with non-zero status", "Command terminated by signal")


def read_resources(run: Path) -> Optional[dict]:
    """The distillation's wall time (its invocations summed: a resumed run has several), peak resident
    memory (the largest) and the CPUs that ran it, from resources.tsv lines "distill WALL_SECONDS PEAK_KB";
    None without one. GNU time puts a line of its own before the figures of a command that failed or was
    stopped ("Command exited with non-zero status 143" after a SIGTERM that left a checkpoint): such lines
    are skipped. A line "paused distill SECONDS" (results/paused.sh) is time the distillation spent stopped
    by SIGSTOP while another job had the machine, inside an invocation's wall time: it is taken off. A line
    "cpu NAME (CAPABILITIES)" (results/table3_queue.sh, before each invocation) names the CPU of the
    invocations after it; those before any such line ran on a CPU that was not recorded. A line "rerun COMMIT
    same|other" (results/rerun_cost.sh) says that the invocations after it distilled the run's settings again at
    COMMIT, for a run that predates this record: its CPUs say so, and whether the re-run made the same
    distilled data (its figures are then the run's own) or other data (the configuration's, on that code and CPU)."""
    path = run / "resources.tsv"
    if not path.is_file():
        return None
    distill, paused = [], 0.0  # (wall seconds, peak KB) of each distill invocation; seconds stopped in them
    cpu, cpus = CPU_NOT_RECORDED, set()  # the CPU of the invocations that follow; those of the distillation
    rerun = ""  # after a "rerun" line: what the CPUs that follow add
    for line in path.read_text().splitlines():
        if line.startswith(GNU_TIME_NOTES):
            continue
        match line.split():  # an evaluation's lines are checked, not counted: they are not the distillation's
            case [("distill" | "evaluate") as what, wall, kb] if _is_number(wall) and kb.isdigit():
                if what == "distill":
                    distill.append((float(wall), int(kb)))
                    cpus.add(cpu + rerun)
            case ["paused", ("distill" | "evaluate") as what, seconds] if _is_number(seconds):
                if what == "distill":
                    paused += float(seconds)
            case ["cpu", _, *_]:
                cpu = line.split(maxsplit=1)[1]
            case ["rerun", commit, ("same" | "other") as data]:
                if distill or paused:  # figures of the run's own would be mixed with a re-run's
                    raise UserError(f"{path}: a 'rerun' line after the run's own figures; a re-run is for runs without")
                rerun = f", a re-run at {commit} ({data} data)"
            case _:
                raise UserError(
                    f"{path}: expected lines 'WHAT WALL_SECONDS PEAK_KB' (GNU time -f '%e %M'), "
                    f"'paused WHAT SECONDS', 'cpu NAME' or 'rerun COMMIT same|other', not {line!r}"
                )
    if not distill:
        return None
    return {
        "distill_seconds": sum(w for w, _ in distill) - paused,
        "peak_mb": max(kb for _, kb in distill) / 1024,
        "cpus": sorted(cpus),
    }


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_result(path: Path) -> Result:
    try:
        record = json.loads(path.read_text())
        check_belongs(record, path)
        check_distilled(record, path)
        settings = record["settings"]
        settings = settings if settings.get("baseline") else with_added_later(settings)  # what an older run ran
        return Result(
            path.parent,
            record["task"],
            record.get("split", "eval"),
            settings,
            record["summary"],
            record.get("n_models", len(record["runs"])),
            str(record["checkpoint"]),
            math.inf if "baseline" in settings else best_validation_loss(path.parent),
            file_sha256(path.parent / str(record.get("distilled", ""))),
            record.get("best_on_eval"),
            read_resources(path.parent),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not an eval.json of ddattn.evaluate or ddattn.baselines ({e!r})") from None


def check_belongs(record: dict, path: Path) -> None:
    """An eval.json lies in its task's folder, and evaluates the run (task, checkpoint) it names."""
    settings, folder = record["settings"], path.parent.parent.name
    if not record["task"] == settings.get("task", record["task"]) == folder:
        raise UserError(
            f"{path} evaluates task {record['task']!r} (its run: {settings.get('task')!r}) but lies under "
            f"{folder}/; re-run `python -m ddattn.evaluate` on that run"
        )
    if str(settings.get("model", record["checkpoint"])) != str(record["checkpoint"]):
        raise UserError(
            f"{path} evaluates checkpoint {record['checkpoint']!r} but its run used "
            f"{settings.get('model')!r}; re-run `python -m ddattn.evaluate` on that run"
        )


def check_distilled(record: dict, path: Path) -> None:
    """The distilled data an eval.json evaluated (when still there) belongs to its run: task, class count,
    shapes and checkpoint (registered tasks; a custom task's class count needs its files)."""
    settings, data_path = record["settings"], path.parent / str(record.get("distilled", ""))
    if "baseline" in settings or not data_path.is_file() or record["task"] not in tasks.TASKS:
        return
    checks.check_distilled_for_run(
        read_distilled_metadata(data_path), settings, tasks.TASKS[record["task"]].num_classes, data_path
    )


def load_results(root: Path, checkpoint: Optional[str] = None) -> List[Result]:
    """Every evaluation-split result under root/<task>/<name>/eval.json (optionally of one checkpoint)."""
    paths = sorted(root.glob("*/*/eval.json"))
    results = [r for r in map(read_result, paths) if r.split == "eval" and checkpoint in (None, r.checkpoint)]
    if not results:
        which = f" for checkpoint {checkpoint}" if checkpoint else ""
        raise UserError(
            f"no evaluated runs{which} under {root} (no <task>/<name>/eval.json); run "
            "`python -m ddattn.evaluate RUN_DIR` or `python -m ddattn.baselines` first"
        )
    return results


def task_columns(results: Sequence[Result]) -> List[str]:
    present = {r.task for r in results}
    return [t for t in PAPER_TASKS if t in present] + sorted(present - set(PAPER_TASKS))


# --- building the tables -------------------------------------------------------------------------------
def pick(candidates: List[Result]) -> Optional[dict]:
    """The cell of one configuration, all its seeds pooled: of several configurations, the one with the lowest
    mean best validation loss (ties: by path), never by eval score, among those held out on random training
    rows where there are any (losses on another kind of slice do not compare), the mean taken over the seeds
    they all ran where there are any (each seed holds out its own slice). Identical distilled data counts once."""
    configurations, seen = {}, set()
    for r in sorted(candidates, key=lambda r: str(r.run)):
        if r.distilled_sha256 in seen:
            continue
        configurations.setdefault(r.configuration, []).append(r)
        if r.distilled_sha256 is not None:
            seen.add(r.distilled_sha256)
    if not configurations:
        return None

    # held-out losses compare on one kind of slice only: random training rows, where a cell has any
    def held_out(runs: List[Result]) -> str:
        return runs[0].settings.get("held_out", ADDED_LATER["held_out"])  # baselines lack it

    slices = {held_out(runs) for runs in configurations.values()}
    kind = "random" if "random" in slices else slices.pop()
    comparable = [runs for runs in configurations.values() if held_out(runs) == kind]
    # the slice depends on --seed: compare on the seeds every configuration ran, where they share any
    shared = set.intersection(*({r.settings.get("seed") for r in runs} for runs in comparable))

    def held_out_loss(runs: List[Result]) -> float:
        on_shared = [r.val_loss for r in runs if r.settings.get("seed") in shared] or [r.val_loss for r in runs]
        return sum(on_shared) / len(on_shared)

    chosen = min(comparable, key=lambda runs: (held_out_loss(runs), str(runs[0].run)))
    return pooled_cell(chosen, len(configurations))


def is_distilled(r: Result, label_type: str, attention_type: str) -> bool:
    s = r.settings
    return r.baseline is None and s.get("label_type") == label_type and s.get("attention_type") == attention_type


def per_step_mode(settings: dict) -> str:
    """Table 3's grouping: a single step, or the same / different distilled data at every step."""
    return "single" if settings.get("steps") == 1 else settings.get("data_per_step", "same")


def row_members(results: Sequence[Result], row: str) -> List[Result]:
    """Table 2's candidates for one row (1-shot, 1-step runs and baselines)."""
    if row in BASELINE_ROWS:
        found = [r for r in results if r.baseline == BASELINE_ROWS[row]]
        if row == "Random real":
            found = [r for r in found if r.settings.get("shots") == 1 and r.settings.get("steps") == 1]
        return found
    return [
        r
        for r in results
        if is_distilled(r, *DISTILLED_ROWS[row]) and r.settings.get("shots") == 1 and r.settings.get("steps") == 1
    ]


def percent_of(cell: Optional[dict], full: Optional[dict]) -> Optional[float]:
    if cell is None or full is None or not full["mean"]:
        return None
    return cell["mean"] / full["mean"] * 100


def gap_closed(cell: Optional[dict], majority: Optional[dict], full: Optional[dict]) -> Optional[float]:
    """How much of the way from the majority class to full fine-tuning a row goes, in %: 0 is the
    majority, 100 the full score. Unlike "% of full" it does not flatter a task whose majority class
    already scores high (MRPC: 74.8 of ~81)."""
    if cell is None or majority is None or full is None or full["mean"] == majority["mean"]:
        return None
    return (cell["mean"] - majority["mean"]) / (full["mean"] - majority["mean"]) * 100


def full_on_eval_cell(results: Sequence[Result], task: str) -> Optional[dict]:
    """The paper's full-dataset number: the best of the grid on the eval split (from full's eval.json)."""
    found = [r for r in results if r.task == task and r.baseline == "full" and r.best_on_eval]
    if not found:
        return None
    cell = found[0].cell(len(found))
    return {**cell, "mean": found[0].best_on_eval["summary"][cell["metric"]]["mean"], "std": 0.0}


def build_table2(results: Sequence[Result], task_names: Sequence[str]) -> dict:
    rows = {
        row: {t: pick([r for r in row_members(results, row) if r.task == t]) for t in task_names}
        for row in TABLE2_ROWS
        if row != FULL_ON_EVAL
    }
    rows[FULL_ON_EVAL] = {t: full_on_eval_cell(results, t) for t in task_names}
    if not any(rows[FULL_ON_EVAL].values()):
        del rows[FULL_ON_EVAL]
    if not any(rows["Random real"].values()):
        del rows["Random real"]
    compared = [row for row in rows if row in DISTILLED_ROWS or row == "Random real"]
    full, majority = rows["Full dataset"], rows["Majority"]
    percent = {row: {t: percent_of(rows[row][t], full[t]) for t in task_names} for row in compared}
    gap = {row: {t: gap_closed(rows[row][t], majority[t], full[t]) for t in task_names} for row in compared}
    return {"tasks": list(task_names), "rows": rows, "percent_of_full": percent, "gap_closed": gap}


def build_table3(results: Sequence[Result], task_names: Sequence[str]) -> dict:
    """Rows (labels, T, shots, data per step): the paper's SL + AL rows always, HL + AL rows where runs exist
    (a preset may choose hard labels for a task, as the cpu preset does for MRPC)."""
    order = {"single": 0, "same": 1, "different": 2}

    def key(r: Result) -> tuple:
        return r.settings.get("steps"), r.settings.get("shots"), per_step_mode(r.settings)

    rows = []
    for labels in ("SL + AL", "HL + AL"):
        runs = [r for r in results if is_distilled(r, *DISTILLED_ROWS[labels])]
        keys = {key(r) for r in runs} | (set(TABLE3_ROWS) if labels == "SL + AL" else set())
        for steps, shots, mode in sorted(keys, key=lambda k: (order.get(k[2], 3), k[0], k[1])):
            members = [r for r in runs if key(r) == (steps, shots, mode)]
            rows.append(
                {
                    "labels": labels,
                    "steps": steps,
                    "shots": shots,
                    "data_per_step": mode,
                    "cells": {t: pick([r for r in members if r.task == t]) for t in task_names},
                }
            )
    majority = {t: pick([r for r in row_members(results, "Majority") if r.task == t]) for t in task_names}
    return {"tasks": list(task_names), "rows": rows, "majority": majority}


# --- rendering -------------------------------------------------------------------------------------------
def protocol(task: str) -> Optional[str]:
    """How a registered task departs from the paper's protocol (qnli_dev), or None."""
    return tasks.TASKS[task].protocol if task in tasks.TASKS else None


def title(task: str) -> str:
    """A task's column title, marked † when its protocol is not the paper's (see protocol_notes)."""
    return TITLES.get(task, task) + (PROTOCOL_MARK if protocol(task) else "")


def protocol_notes(task_names: Sequence[str]) -> str:
    """What goes under every table with a † column: one line per such task, each after a blank line (so
    that Markdown does not read it as a row of the table); "" without one."""
    return "".join(f"\n{PROTOCOL_MARK} {TITLES.get(t, t)}: {protocol(t)}.\n" for t in task_names if protocol(t))


def fmt(cell: Optional[dict]) -> str:
    """'78.8 ± 0.7' in %; a single run (majority, full dataset) shows its mean only, as the paper does."""
    if cell is None:
        return MISSING
    if math.isnan(cell["mean"]):
        return "diverged"
    return f"{cell['mean'] * 100:.1f}" + ("" if cell["n_models"] == 1 else f" ± {cell['std'] * 100:.1f}")


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def cells_of(table: dict) -> List[Tuple[str, str, dict]]:
    """(row label, task, cell) of every filled cell."""
    if "percent_of_full" in table:
        return [(row, t, c) for row, cells in table["rows"].items() for t, c in cells.items() if c]
    return [
        (f"{r['labels']}, T={r['steps']}, {r['shots']} shot(s), {r['data_per_step']}", t, c)
        for r in table["rows"]
        for t, c in r["cells"].items()
        if c
    ]


def notes(table: dict) -> List[str]:
    """What every table says under itself: metric, selection, checkpoints, N, and which run filled each cell."""
    cells = cells_of(table)
    checkpoints = sorted({c["checkpoint"] for _, _, c in cells})
    n_models = sorted({c["n_models"] for row, _, c in cells if row not in ("Majority", "Full dataset", FULL_ON_EVAL)})
    lines = [
        "Cells: mean ± std in % over the evaluation models; MRPC shows the mean of accuracy and F1 (GLUE), "
        f"the other tasks accuracy. {MISSING}: no evaluated run.",
        SELECTION,
        f"Checkpoint{'s' if len(checkpoints) > 1 else ''}: {', '.join(checkpoints) or MISSING}"
        + (" (cells mix checkpoints: pass --checkpoint to keep one)" if len(checkpoints) > 1 else "")
        + ".",
        f"Evaluation models per cell (distilled, random real): {', '.join(map(str, n_models)) or MISSING} "
        "(the paper: 100, each with a fresh random head).",
    ]
    lines.append(
        "Runs shown:"
        + "".join(
            f"\n  - {row} / {title(t)}: {c['run']}"
            + (
                f" (best validation loss {c['val_loss']:.4f}{' (mean)' if c['repeats'] > 1 else ''}; "
                f"{c['candidates']} evaluated configuration(s) in the cell)"
                if c["val_loss"] is not None
                else ""
            )
            for row, t, c in cells
        )
        if cells
        else "Runs shown: none."
    )
    return lines


def equals_majority(cell: Optional[dict], majority: Optional[dict]) -> bool:
    """A distilled row whose every model scores exactly the majority baseline (every model answers it)."""
    return bool(cell and majority) and abs(cell["mean"] - majority["mean"]) < 1e-9 and cell["std"] < 1e-9


def table2_markdown(table: dict) -> str:
    header = ["", *map(title, table["tasks"])]
    majority = table["rows"]["Majority"]

    def shown(row: str, task: str) -> str:
        cell = table["rows"][row][task]
        flagged = row not in ("Majority", "Random real") and equals_majority(cell, majority[task])
        return ("= majority: " if flagged else "") + fmt(cell)

    rows = [[row, *(shown(row, t) for t in table["tasks"])] for row in table["rows"]]
    return markdown(header, rows) + protocol_notes(table["tasks"])


def render_table2(table: dict) -> str:
    header = ["", *map(title, table["tasks"])]

    def numbers(values: dict) -> List[List[str]]:
        return [
            [row, *(MISSING if p is None else f"{p:.1f}" for p in by_task.values())] for row, by_task in values.items()
        ]

    text = [
        "# Table 2: 1 shot per class, 1 inner step",
        "",
        table2_markdown(table),
        "## % of the full-dataset score (mean / full × 100)",
        "",
        markdown(header, numbers(table["percent_of_full"])) + protocol_notes(table["tasks"]),
        "## Share of the gap from the majority class to full fine-tuning closed, in % "
        "((mean − majority) / (full − majority) × 100; below 0: worse than the majority class)",
        "",
        markdown(header, numbers(table["gap_closed"])) + protocol_notes(table["tasks"]),
    ]
    extra = []
    if any(table["rows"]["Full dataset"].values()):
        extra.append(
            "Full dataset: standard fine-tuning, the (lr, epochs) of its grid chosen on held-out training "
            'data, trained on the rest of the training split; "% of full" is relative to this row.'
        )
    if FULL_ON_EVAL in table["rows"]:
        extra.append(
            f"{FULL_ON_EVAL}: the same grid's best run on the eval split, as the paper picks it "
            "(Appendix B); an optimistic upper bound, shown for comparison only."
        )
    extra.append("Majority: the majority class of the training split.")
    if "Random real" in table["rows"]:
        extra.append(
            "Random real: 1 real training example per class with its hard label, 1 SGD step, the learning "
            "rate chosen on held-out training data (data selection; not in the paper)."
        )
    return "\n".join(text) + "\n" + "\n".join(f"- {line}" for line in notes(table) + extra) + "\n"


def render_table3(table: dict) -> str:
    task_names = table["tasks"]
    header = ["labels", "# steps", "# shots", "data per step", *map(title, task_names)]
    mode_names = {"single": "single step", "same": "same", "different": "different"}

    def shown(cell: Optional[dict], task: str) -> str:
        return ("= majority: " if equals_majority(cell, table["majority"][task]) else "") + fmt(cell)

    rows = [
        [
            r["labels"],
            str(r["steps"]),
            str(r["shots"]),
            mode_names.get(r["data_per_step"], r["data_per_step"]),
            *(shown(r["cells"][t], t) for t in task_names),
        ]
        for r in table["rows"]
    ]
    return (
        "# Table 3: attention labels with several shots and steps\n\n"
        + markdown(header, rows)
        + protocol_notes(task_names)
        + "\n"
        + "\n".join(f"- {line}" for line in notes(table))
        + "\n"
    )


def render_table3_extended(table: dict) -> str:
    """Every filled Table 3 cell, one line each, with its distillation's wall time and peak memory."""
    header = [
        "labels",
        "# steps",
        "# shots",
        "data per step",
        "task",
        "score",
        "distillation wall time",
        "peak memory (MB)",
        "CPU",
        "run",
    ]
    rows = []
    for r in table["rows"]:
        for task, cell in r["cells"].items():
            if cell:
                wall = cell["distill_seconds"]
                rows.append(
                    [
                        r["labels"],
                        str(r["steps"]),
                        str(r["shots"]),
                        r["data_per_step"],
                        title(task),
                        fmt(cell),
                        MISSING if wall is None else f"{wall / 60:.0f} min",
                        MISSING if cell["peak_mb"] is None else f"{cell['peak_mb']:.0f}",
                        " + ".join(cell["cpus"]) or MISSING,
                        cell["run"],
                    ]
                )
    shown = [t for t in table["tasks"] if any(r["cells"][t] for r in table["rows"])]
    return (
        "## Table 3, extended: cost beside accuracy, T beyond the paper's 5\n\n"
        + markdown(header, rows)
        + protocol_notes(shown)
        + "\n"
        "- Wall time: the distillation alone (outer steps and validation, not the evaluation), summed over its "
        "invocations; peak memory: the largest resident set of the distillation process (GNU time %M), model "
        "and data included; CPU: the processors its invocations ran on (machines of one kind differ: an AVX2 "
        "AMD EPYC and an Intel Xeon with AVX-512 and AMX run one core's outer step at different speeds, so "
        "wall times compare only on one CPU). All from the run's resources.tsv (results/table3_queue.sh: one "
        f"CPU core, one thread, unless a note says otherwise); {MISSING}: the run predates that record. "
        '"A re-run": the run predates the record, and its settings were distilled again under it '
        '(results/rerun_cost.sh): "same data" when the re-run made the published distilled data byte for byte, '
        '"other data" when the code or the CPU (whose matmul kernels round differently) changed the run\'s numbers '
        "since, and the cost is the configuration's (the same outer steps and shapes).\n"
    )


def steps_series(table: dict) -> dict:
    """{task: [(T, cell)]} of SL + AL with 1 shot per class per step: T = 1, and different data per step."""
    series = {}
    for r in table["rows"]:
        if r["labels"] == "SL + AL" and r["shots"] == r["steps"] and r["data_per_step"] in ("single", "different"):
            for task, cell in r["cells"].items():
                if cell:
                    series.setdefault(task, []).append((r["steps"], cell))
    return {task: sorted(points, key=lambda p: p[0]) for task, points in series.items()}


MemoryInT = Dict[Tuple[str, str], List[Tuple[int, float]]]  # {(task, which code): [(T, peak MB)]}


def memory_column(task: str, code: str) -> str:
    """A column of memory_T.tsv as table3.md and table3_T.png name it: "<task title>, <which code>"."""
    return f"{title(task)}, {code}"


def read_memory_in_t(path: Path) -> MemoryInT:
    """results/memory_T.tsv (results/memory_T.sh), one column per task and version of the code; empty
    without the file."""
    memory: MemoryInT = {}
    if not path.is_file():
        return memory
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        try:
            task, steps, peak, code = line.split("\t")
            memory.setdefault((task, code), []).append((int(steps), float(peak)))
        except ValueError:
            raise UserError(f"{path}, line {number}: not 'task<tab>T<tab>peak_mb<tab>code' ({line!r})") from None
    return memory


def render_memory_in_t(memory: MemoryInT) -> str:
    """The section of table3.md on peak memory against T (issue target: T = 16 within 1.5× of T = 1)."""
    if not memory:
        return ""
    steps = sorted({t for points in memory.values() for t, _ in points})
    lines = [
        "## Peak memory of a distillation against T",
        "",
        "The cpu preset, different distilled data at each step (one sample per class per step), recompute "
        "mode: two outer steps and one validation per T (`results/memory_T.sh`; peak resident set, GNU time "
        "%M, model and data included; memory only, no times). Each column is one task and one version of the "
        "code; the ratio is to its own T = 1. Every T sees the same real batches; a full run peaks higher, at "
        "its widest real batch (the extended table above has the runs' own peaks).",
        "",
        "| T | " + " | ".join(memory_column(*key) for key in memory) + " |",
        "|---:|" + "---:|" * len(memory),
    ]
    for t in steps:
        cells = []
        for points in memory.values():
            peak, first = dict(points).get(t), dict(points).get(1)
            cells.append(MISSING if peak is None else f"{peak:.0f} MB" + (f" ({peak / first:.2f}×)" if first else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_steps(table: dict, path: Path, memory: MemoryInT) -> Optional[Path]:
    """results/table3_T.png: score against T, one line per task, and peak memory against T (memory_T.tsv,
    one line per task and version of the code; else the runs' own peaks). None without matplotlib or such runs."""
    series = steps_series(table)
    if not series:
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, (ax_score, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8))
    colour = {}  # a task's colour, its score line's, for its memory lines too
    for task, points in series.items():
        label = title(task)
        bars = ax_score.errorbar(
            [t for t, _ in points],
            [c["mean"] * 100 for _, c in points],
            yerr=[c["std"] * 100 for _, c in points],
            marker="o",
            capsize=3,
            label=label,
        )
        colour[label] = bars[0].get_color()
        if not memory:
            measured = [(t, c["peak_mb"]) for t, c in points if c["peak_mb"] is not None]
            ax_mem.plot([t for t, _ in measured], [m for _, m in measured], marker="o", label=label, c=colour[label])
    newest = {task: code for task, code in memory}  # per task, its last version of the code
    for (task, code), points in memory.items():
        style = "-" if newest[task] == code else "--"
        ax_mem.plot(
            [t for t, _ in points],
            [m for _, m in points],
            style,
            marker="o",
            label=memory_column(task, code),
            c=colour.get(title(task)),
        )
    for ax, ylabel in ((ax_score, "score (%), fresh models"), (ax_mem, "peak memory of the distillation (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inner steps T (1 shot per class per step, different data per step)")
        ax.set_ylabel(ylabel)
        ax.legend()
    ax_mem.set_ylim(bottom=0)
    fig.suptitle("SL + AL: what more inner steps buy, and what they cost in memory (recompute mode)")
    fig.tight_layout()
    return save_png(fig, path)


# --- command line ---------------------------------------------------------------------------------------
def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (results/ is committed), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m ddattn.report", description="Write the paper's Tables 2 and 3 from runs/.")
    p.add_argument("--runs-dir", type=Path, help="default runs/ (env DDATTN_RUNS_DIR)")
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "results", help="folder for table2.md, table3.md, tables.json"
    )
    p.add_argument("--checkpoint", help="only runs evaluated with this checkpoint (as named in eval.json)")
    args = p.parse_args(argv)
    root = args.runs_dir or runs_dir()
    if not root.is_dir():
        raise UserError(f"runs directory {root} does not exist; distil and evaluate first")
    results = load_results(root, args.checkpoint)
    task_names = task_columns(results)
    tables = {
        "table2": build_table2(results, task_names),
        "table3": build_table3(results, task_names),
        "selection": SELECTION,
        "protocols": {t: protocol(t) for t in task_names if protocol(t)},
        "runs_dir": _shown(root),
    }
    checks.writable_dir(args.out, "--out")
    memory = read_memory_in_t(args.out / "memory_T.tsv")
    table3 = render_table3(tables["table3"]) + "\n" + render_table3_extended(tables["table3"])
    table3 += ("\n" + render_memory_in_t(memory)) if memory else ""
    budget = budget_series(results)
    tables["budget"] = {task: [{k: v for k, v in p.items() if k != "curve"} for p in ps] for task, ps in budget.items()}
    written = {"table2.md": render_table2(tables["table2"]), "table3.md": table3}
    titles = {t: title(t) for t in budget}
    if budget:
        written["budget.md"] = render_budget(budget, titles) + protocol_notes(list(budget))
    for name, text in written.items():
        with atomic_path(args.out / name) as tmp:
            tmp.write_text(text)
    write_json_atomic(args.out / "tables.json", tables)
    plots = [
        plot_steps(tables["table3"], args.out / "table3_T.png", memory),
        plot_budget(budget, args.out / "budget.png", titles),
    ]
    print(table2_markdown(tables["table2"]))
    print(
        f"{len(results)} evaluated runs → {args.out}/"
        + ", ".join([*written, "tables.json", *(p.name for p in plots if p)])
    )


if __name__ == "__main__":
    run_cli(main)
