"""results/rerun_cost.sh: it refuses flags that do not repeat the published run's settings before anything
runs, distils the settings again under GNU time, and adds the figures to the published run's resources.tsv
after a "rerun COMMIT same|other" line, which the report shows beside the CPU. The distillation is a
stand-in (a python that answers `-m ddattn.distill` by writing a finished run), so the test takes seconds."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from ddattn import report, settings
from ddattn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (Path("/usr/bin/time").exists() and shutil.which("taskset")), reason="needs GNU time and taskset"
)
# `.venv/bin/python` of the copy: the real interpreter, except that `-m ddattn.distill` writes a finished run
# (its run.log's "done:" line, its arguments, and distilled data made of its --seed) where --task and --name say
STAND_IN = f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m ddattn.distill" ]; then
  shift 2; seed=0; given="$*"
  while [ $# -gt 0 ]; do case $1 in --task) task=$2;; --name) name=$2;; --seed) seed=$2;; esac; shift; done
  mkdir -p "runs/$task/$name"; echo "done: stand-in" > "runs/$task/$name/run.log"
  echo "$given" > "runs/$task/$name/arguments"
  echo "data of seed $seed" > "runs/$task/$name/distilled_best.safetensors"; exit 0
fi
PYTHONPATH={ROOT} exec {sys.executable} "$@"
"""


def project(tmp_path: Path, published_data: str = "data of seed 0\n") -> Path:
    """A checkout holding the two scripts, the stand-in python, a git commit and a published MRPC run from
    before the settings in ADDED_LATER, whose distilled data are `published_data` (the stand-in's for
    --seed 0 by default)."""
    (tmp_path / "results").mkdir()
    for script in ("rerun_cost.sh", "timed.sh"):
        shutil.copy(ROOT / "results" / script, tmp_path / "results" / script)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    published = tmp_path / "results" / "runs" / "mrpc" / "hl-al"
    published.mkdir(parents=True)
    flags = settings.parse_flags(["--task", "mrpc", "--preset", "cpu", "--shots", "1", "--name", "hl-al"])
    saved = asdict(settings.from_flags(flags))
    old = settings.ADDED_LATER  # what a run without these keys had: left out where it had that
    saved = {k: v for k, v in saved.items() if k in settings.DEFAULTS and not (k in old and old[k] == v)}
    (published / "config.json").write_text(json.dumps(saved))
    (published / "distilled_best.safetensors").write_text(published_data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=tmp_path, env=env, check=True)
    return tmp_path


def rerun(root: Path, *specs: str) -> str:
    env = {**os.environ, "CPU": str(min(os.sched_getaffinity(0)))}  # a core this process may use
    done = subprocess.run(["bash", "results/rerun_cost.sh", *specs], cwd=root, capture_output=True, text=True, env=env)
    return done.stdout + done.stderr


def test_flags_that_do_not_repeat_the_settings_are_refused_before_anything_runs(tmp_path):
    root = project(tmp_path)
    said = rerun(root, "mrpc:hl-al:--shots 3")
    assert "the flags do not repeat" in said and "shots 3 (saved: 1)" in said
    assert not (root / "runs").exists() and not (root / "results/runs/mrpc/hl-al/resources.tsv").exists()
    said = rerun(root, "mrpc:hl-al-s9:--shots 1")
    assert said.strip() == "rerun: results/runs/mrpc/hl-al-s9/config.json is missing: TASK:NAME names no published run"


def test_a_rerun_adds_its_figures_once_and_says_whether_it_made_the_published_data(tmp_path):
    root = project(tmp_path)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    assert "same distilled data" in rerun(root, "mrpc:hl-al:--shots 1")
    assert "--shots 1" in (root / "runs" / "mrpc" / "hl-al-rerun" / "arguments").read_text()  # the flags ran
    published = root / "results" / "runs" / "mrpc" / "hl-al"
    lines = (published / "resources.tsv").read_text().splitlines()
    assert lines[0] == f"rerun {commit.stdout.strip()} same" and lines[1].startswith("cpu ")
    assert lines[2].startswith("distill ") and len(lines) == 3
    [cpu] = report.read_resources(published)["cpus"]
    assert cpu.endswith(f", a re-run at {commit.stdout.strip()} (same data)")
    assert "has its figures, skipped" in rerun(root, "mrpc:hl-al:--shots 1")  # never added twice
    assert len((published / "resources.tsv").read_text().splitlines()) == 3


def test_a_rerun_that_makes_other_data_says_so(tmp_path):
    root = project(tmp_path, published_data="bits of another CPU\n")
    assert "other distilled data" in rerun(root, "mrpc:hl-al:--shots 1")
    [cpu] = report.read_resources(root / "results" / "runs" / "mrpc" / "hl-al")["cpus"]
    assert cpu.endswith("(other data)")


def test_a_rerun_after_the_runs_own_figures_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resources.tsv").write_text("distill 10.0 1024\nrerun abc1234 other\ncpu Xeon\ndistill 20.0 2048\n")
    with pytest.raises(UserError, match="after the run's own figures"):
        report.read_resources(run)
