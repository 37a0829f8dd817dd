"""The GPU check as it would run on a lent machine, rehearsed on the CPU (issue 25, part 6).

bench/gpu_stage.sh prepares what a device call can take (64 MiB in all): MiniLM in bfloat16, data/mrpc,
and a branch without results/. Then bench/gpu_check.sh --dry-run, in a copy of the checkout that has only
those bf16 weights, runs every step (the outer step against the reference with op counts, MiniLM and the
bert-base shape; the memory sweep in T; evaluation throughput; a short gpu-preset distillation) on the CPU
at tiny sizes and writes its report."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddattn.files import load_pretrained
from ddattn.paths import code_version, shared_data_dir, weights_dir
from tests.helpers import REPO


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A copy of the checkout's tracked files (results/ reduced to one file) as a repository of its own, the
    converted MiniLM linked in, after `bash bench/gpu_stage.sh`: (its folder, the script's output)."""
    copy = tmp_path_factory.mktemp("checkout") / "repo"
    for name in git(REPO, "ls-files", "-z").split("\0"):
        if name and not name.startswith("results/") and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    (copy / "results").mkdir()
    (copy / "results" / "table2.md").write_text("published runs\n")
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy")
    (copy / "weights" / "minilm-l6").symlink_to(weights_dir() / "minilm-l6")
    env = dict(os.environ, PYTHON=sys.executable, DDATTN_SHARED_DATA=str(shared_data_dir()))
    for variable in ("DDATTN_WEIGHTS_DIR", "DDATTN_DATA_DIR", "DDATTN_RUNS_DIR", "DDATTN_COMMIT"):
        env.pop(variable, None)
    no_identity = dict(env, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")  # as on a bare CI machine
    proc = subprocess.run(
        ["bash", "bench/gpu_stage.sh"], cwd=copy, env=no_identity, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return copy, proc.stdout, env


def test_gpu_stage_makes_what_a_device_call_can_carry(staged):
    copy, out, _ = staged
    assert "results/table2.md" in git(copy, "ls-tree", "-r", "--name-only", "HEAD")
    slim = git(copy, "ls-tree", "-r", "--name-only", "gpu-slim").split()  # the branch for the call
    assert "bench/gpu_check.sh" in slim and not [name for name in slim if name.startswith("results/")]
    assert git(copy, "rev-parse", "gpu-slim^") == git(copy, "rev-parse", "HEAD")
    assert git(copy, "status", "--porcelain", "--untracked-files=no") == ""  # working tree and branch untouched
    total = float(re.search(r"= ([0-9.]+) MiB \(limit 64 MiB\)", out).group(1))
    assert 40 < total < 64  # MiniLM in bf16 (43 MiB) and data/mrpc travel, results/ does not
    assert 'carry ["weights/minilm-l6-bf16", "data/mrpc"]' in out
    assert f"export DDATTN_COMMIT={git(copy, 'rev-parse', 'HEAD').strip()};" in out  # the code that runs there
    git(copy, "switch", "-q", "gpu-slim")  # step 1: results/ leaves the working tree ...
    assert not (copy / "results" / "table2.md").exists()
    git(copy, "switch", "-q", re.search(r"3\. git switch (\S+)", out).group(1))  # step 3: ... and comes back
    assert (copy / "results" / "table2.md").read_text() == "published runs\n"
    bf16 = load_file(copy / "weights" / "minilm-l6-bf16" / "model.safetensors")
    fp32 = load_file(weights_dir() / "minilm-l6" / "model.safetensors")
    assert bf16.keys() == fp32.keys() and all(t.dtype == torch.bfloat16 for t in bf16.values())
    config, theta = load_pretrained(copy / "weights" / "minilm-l6-bf16")  # read as float32, MiniLM rounded
    assert config.num_layers == 6 and all(t.dtype == torch.float32 for t in theta.values())
    assert torch.equal(theta["layers.0.ffn.up.weight"], fp32["layers.0.ffn.up.weight"].bfloat16().float())
    assert all((copy / "data" / "mrpc" / f"{split}.tsv").is_file() for split in ("train", "dev"))


def test_gpu_check_dry_run_from_the_staged_weights_runs_every_step(staged):
    copy, _, env = staged
    (copy / "weights" / "minilm-l6").unlink()  # as on the device: only the carried bf16 copy
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_path = Path(re.search(r"wrote (\S+report\.md)", proc.stdout).group(1))
    report = report_path.read_text()
    assert "carried in bfloat16 (bench/gpu_stage.sh) and are read as float32" in report
    for section in (
        "One outer step, MiniLM",
        "bert-base shape",
        "Memory in T",
        "Evaluation throughput",
        "2-step gpu-preset MRPC distillation",
    ):
        assert section in report, section
    assert "aten ops" in report and "done:" in report
    assert "bert-base shape (1 of its 12 layers)" in report
    for name in ("minilm", "bert-base", "sweep"):  # every row measured: a failed row would still make a table
        rows = json.loads((report_path.parent / f"{name}.json").read_text())["results"]
        assert rows and not [r["error"] for r in rows if "error" in r], name


def test_the_commit_is_named_where_the_copy_travels_without_git(monkeypatch):
    """code_version(): env DDATTN_COMMIT (gpu_stage.sh's command sets it) where there is no .git to ask."""
    monkeypatch.setenv("DDATTN_COMMIT", "0123abc")
    assert code_version() == "0123abc"
    monkeypatch.delenv("DDATTN_COMMIT")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", code_version())  # this checkout's own
