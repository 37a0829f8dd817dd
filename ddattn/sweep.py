"""`python -m ddattn.sweep --task T [distill flags]`: the paper's learning-rate grid, chosen on validation.

Sec. 3.1: Adam "with a learning rate α ∈ {1e-3, 1e-2, 1e-1}", the learnable learning rate "initialized
η̃ ∈ {1e-2, 1e-1}", and "we report the results for the best performing combination". The sweep runs one
`python -m ddattn.distill` per (α, η̃_0) cell, each under its own name and with every other flag passed
through; a cell that already finished is skipped and an interrupted one is resumed (`--resume`), so
re-running the same command continues the sweep. The cell with the lowest best *validation* loss (a
held-out slice of the training split, validation.jsonl) is chosen; the evaluation split is never looked
at to choose. runs/<task>/sweep-<config>.json records every cell and the choice, and only the chosen run
is evaluated (`python -m ddattn.evaluate`).
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from . import checks, evaluate
from . import settings as run_settings
from .errors import STOPPED, ArgumentParser, Terminated, UserError, run_cli
from .paths import runs_dir, write_json_atomic
from .report import best_validation_loss

GRID_FLAGS = ("--lr", "--eta-init", "--inner-lr", "--name", "--resume")  # set per cell by the sweep itself
IGNORED = {"resume", "device", "batch_size"}  # may differ from a saved config.json (batch_size is derived)


def parse_args(argv: Optional[Sequence[str]]):
    p = ArgumentParser(
        prog="python -m ddattn.sweep",
        allow_abbrev=False,
        renamed={"--inner-lrs": "--eta-inits"},
        description=__doc__.split("\n\n")[0] + " Other flags go to python -m ddattn.distill.",
    )
    p.add_argument("--task", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], help="α, distill --lr")
    p.add_argument("--eta-inits", type=float, nargs="+", default=[1e-2, 1e-1], help="η̃_0, distill --eta-init")
    p.add_argument("--name", help="prefix of the cells' run names (default: derived from the settings)")
    p.add_argument("--n-models", type=int, default=100, help="evaluation models for the chosen run (paper: 100)")
    p.add_argument("--device", help="cpu, cuda, ... for distillation and evaluation")
    args, passthrough = p.parse_known_args(argv)
    clash = [a for a in passthrough if a.split("=")[0] in GRID_FLAGS]
    if clash:
        raise UserError(f"{clash[0]} is set by the sweep; use --alphas / --eta-inits / --name")
    if args.n_models < 1:
        raise UserError(f"--n-models must be ≥ 1, not {args.n_models}")
    return args, passthrough


def plan(args, passthrough: List[str]) -> List[dict]:
    """One cell per (α, η̃_0): its distill arguments and the settings they resolve to (checked up front, so
    a bad flag fails here, before anything runs)."""
    base = ["--task", args.task, *passthrough, *(["--device", args.device] if args.device else [])]
    cells = []
    for alpha in args.alphas:
        for eta in args.eta_inits:
            argv = [*base, "--lr", repr(alpha), "--eta-init", repr(eta)]
            settings = run_settings.parse_args(argv)
            run_settings.check_settings(settings)
            prefix = args.name or run_settings.settings_name(settings)
            name = run_settings.run_name(prefix, alpha, eta)
            cells.append(
                {
                    "alpha": alpha,
                    "inner_lr": eta,
                    "name": name,
                    "config": prefix,
                    "argv": [*argv, "--name", name],
                    "settings": {**vars(settings), "name": name},
                }
            )
    return cells


# --- one cell ------------------------------------------------------------------------------------------
def state(run: Path) -> str:
    """new (nothing to resume), finished (distill logged `done:`), or unfinished (checkpoint.pt to resume)."""
    if not (run / "checkpoint.pt").is_file():
        return "new"
    log = run / "run.log"
    done = log.is_file() and any(line.startswith("done: ") for line in log.read_text().splitlines())
    return "finished" if done and (run / "distilled_best.safetensors").is_file() else "unfinished"


def check_same_settings(run: Path, planned: dict) -> None:
    """A cell's directory must hold the run this sweep would make, not another one under the same name."""
    path = run / "config.json"
    if not path.is_file():
        return
    saved = checks.read_json(path)
    differ = [k for k in planned if k not in IGNORED and k in saved and saved[k] != planned[k]]
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} there, {planned[k]!r} here" for k in differ[:3])
        raise UserError(f"{run} holds a run with other settings ({shown}); pass another --name")


def run_cell(cell: dict, run: Path) -> str:
    """Skip, resume or start one cell; its status afterwards."""
    before = state(run)
    if before == "finished":
        print(f"sweep: {cell['name']} finished earlier, skipped")
        return "finished"
    argv = ["--resume", str(run)] if before == "unfinished" else cell["argv"]
    print(f"sweep: {'resuming' if before == 'unfinished' else 'starting'} {cell['name']}", flush=True)
    code = distill(argv)
    if code == 130:
        raise KeyboardInterrupt
    if code == STOPPED:  # stopped by a signal or its time limit, checkpointed: so is the sweep
        sys.exit(STOPPED)
    return "finished" if code == 0 and state(run) == "finished" else f"failed (exit {code})"


def distill(argv: List[str]) -> int:
    """`python -m ddattn.distill ARGV`'s exit status. A stop signal to the sweep is passed on to it, and the sweep
    waits while it checkpoints (then stops too: run the sweep again to resume)."""
    with subprocess.Popen([sys.executable, "-m", "ddattn.distill", *argv]) as child:
        try:
            return child.wait()
        except Terminated as stop:
            child.send_signal(stop.signum)  # leaving the block waits for it
            raise


# --- the sweep -------------------------------------------------------------------------------------------
def choose(cells: List[dict]) -> dict:
    """The finished cell with the lowest best validation loss (never an evaluation score)."""
    finished = [c for c in cells if c["status"] == "finished" and c["best_val_loss"] is not None]
    if not finished:
        raise UserError("no cell of the sweep finished; see each run's run.log")
    return min(finished, key=lambda c: c["best_val_loss"])


def evaluate_chosen(run: Path, n_models: int, device: Optional[str]) -> None:
    """`python -m ddattn.evaluate RUN --n-models N`, unless an eval.json of that N is newer than the data."""
    result, data = run / "eval.json", run / "distilled_best.safetensors"
    if (
        result.is_file()
        and result.stat().st_mtime >= data.stat().st_mtime
        and json.loads(result.read_text()).get("n_models") == n_models
    ):
        print(f"sweep: {result} is up to date")
        return
    evaluate.main([str(run), "--n-models", str(n_models), *(["--device", device] if device else [])])


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, passthrough = parse_args(argv)
    cells = plan(args, passthrough)
    task_dir = runs_dir() / args.task
    for cell in cells:
        check_same_settings(task_dir / cell["name"], cell["settings"])
    started = time.perf_counter()
    records = []
    for cell in cells:
        run = task_dir / cell["name"]
        status = run_cell(cell, run)
        loss = best_validation_loss(run) if status == "finished" else float("inf")
        records.append(
            {
                "alpha": cell["alpha"],
                "inner_lr": cell["inner_lr"],
                "run": str(run),
                "status": status,
                "best_val_loss": loss if loss != float("inf") else None,
            }
        )
    chosen = choose(records)
    summary_path = task_dir / f"sweep-{cells[0]['config']}.json"
    write_json_atomic(
        summary_path,
        {
            "task": args.task,
            "config": cells[0]["config"],
            "alphas": args.alphas,
            "inner_lrs": args.inner_lrs,
            "selection": "lowest best validation loss (validation.jsonl, a held-out slice of the training split); "
            "the evaluation split is not used to choose",
            "cells": records,
            "chosen": chosen,
            "distill_args": passthrough,
            "seconds": time.perf_counter() - started,
        },
    )
    print(
        f"sweep: chose α = {chosen['alpha']:g}, η̃_0 = {chosen['inner_lr']:g} "
        f"(validation loss {chosen['best_val_loss']:.4f}) → {summary_path}"
    )
    evaluate_chosen(Path(chosen["run"]), args.n_models, args.device)


if __name__ == "__main__":
    run_cli(main)
