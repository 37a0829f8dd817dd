"""`python -m ddattn.publish RUN_DIR [RUN_DIR ...]`: copy the small files behind a reported number into
results/runs/<task>/<name>/, where they are committed (runs/ itself is not).

What is copied lets anyone check the number: the settings (config.json), the distilled data
(distilled_best.safetensors, a few hundred KB; re-evaluate with `python -m ddattn.evaluate`), the
evaluation summary (eval.json: settings, per-model metrics, seconds, commit), the validation and
training curves (validation.jsonl, metrics.jsonl), the log, the run's card (README.md, attention_labels.png,
validation.png) and its wall time and peak memory (resources.tsv, written by results/table3_queue.sh) where present.
A baseline directory (runs/<task>/majority, full, random-real) has only its eval.json.
"""

import shutil
from pathlib import Path
from typing import Optional, Sequence

from .errors import ArgumentParser, UserError, run_cli
from .paths import REPO_ROOT, atomic_path

FILES = (
    "config.json",
    "distilled_best.safetensors",
    "eval.json",
    "validation.jsonl",
    "metrics.jsonl",
    "run.log",
    "README.md",
    "attention_labels.png",
    "validation.png",
    "resources.tsv",
)


def publish(run_dir: Path, results: Path) -> Path:
    """Copy `run_dir`'s files (those present) to results/<task>/<name>/; eval.json is required."""
    if not (run_dir / "eval.json").is_file():
        raise UserError(f"{run_dir} has no eval.json: evaluate it first (python -m ddattn.evaluate {run_dir})")
    dest = results / run_dir.resolve().parent.name / run_dir.resolve().name
    for name in FILES:
        if (run_dir / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    return dest


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m ddattn.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="runs/<task>/<name>/ with an eval.json")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "runs", help="where to copy them")
    args = p.parse_args(argv)
    for run_dir in args.run_dirs:
        print(f"{run_dir} → {publish(run_dir, args.results)}")


if __name__ == "__main__":
    run_cli(main)
