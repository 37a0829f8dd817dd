"""`python -m ddattn.distill` end to end on a few real MRPC batches: run directory, resume, guards."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ddattn.paths import shared_data_dir
from tests.helpers import (
    REPO,
    SMALL_RUN,
    fetch,
    logged_steps,
    metrics,
    one_error_line,
    resumed_at,
    run_distill,
    use_data,
    wait_for_lines,
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, mrpc_data):
    """The SMALL_RUN run, never interrupted."""
    base = tmp_path_factory.mktemp("straight")
    use_data(base, mrpc_data)
    assert run_distill(base, *SMALL_RUN, "--name", "straight").returncode == 0
    return base / "runs" / "mrpc" / "straight"


def assert_same_run(run, straight) -> None:
    """The same distilled data (last and best, bit for bit), metrics and validations as `straight`."""
    for name in ("distilled_last", "distilled_best"):
        a, b = (load_file(r / f"{name}.safetensors") for r in (straight, run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert metrics(run) == metrics(straight) and logged_steps(run) == list(range(1, 9))
    assert (run / "validation.jsonl").read_text() == (straight / "validation.jsonl").read_text()


def evaluate_in(tmp_path, run, n_models: int) -> None:
    """`python -m ddattn.evaluate RUN --n-models N` with tmp_path/data as the data, which must succeed."""
    evaluated = subprocess.run(
        [sys.executable, "-m", "ddattn.evaluate", str(run), "--n-models", str(n_models)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "DDATTN_DATA_DIR": str(tmp_path / "data")},
    )
    assert evaluated.returncode == 0, evaluated.stderr


def test_run_directory_is_complete(straight):
    run = straight
    for name in [
        "config.json",
        "checkpoint.pt",
        "distilled_best.safetensors",
        "distilled_last.safetensors",
        "metrics.jsonl",
        "validation.jsonl",
        "run.log",
    ]:
        assert (run / name).is_file(), name
    assert logged_steps(run) == list(range(1, 9))  # 2 epochs × 4 full batches of 16
    assert all(m["loss"] > 0 and m["grad_norm"] > 0 and len(m["inner_lr"]) == 1 for m in metrics(run))
    with safe_open(str(run / "distilled_best.safetensors"), "pt") as f:  # plain safetensors can read it
        info = json.loads(f.metadata()["ddattn_distilled"])
        assert info["task"] == "mrpc" and info["config"]["label_type"] == "hard"  # the cpu preset on MRPC:
        assert f.get_tensor("x").shape == (6, 8, 384) and f.get_tensor("attn_logits").shape == (
            6,
            6,
            12,
            8,
        )  # 3 shots × 2
    config = json.loads((run / "config.json").read_text())
    assert config["seq_len"] == 8 and config["attention_type"] == "cls"


@pytest.mark.parametrize("flags", [["--mode", "finite-difference"], ["--autocast", "bf16", "--allow-slow-bf16"]])
def test_approximate_options_run(tmp_path, mrpc_data, flags):
    use_data(tmp_path, mrpc_data)
    done = run_distill(tmp_path, *SMALL_RUN, "--max-steps", "2", "--name", "approx", *flags)
    assert done.returncode == 0, done.stderr
    records = metrics(tmp_path / "runs" / "mrpc" / "approx")
    assert len(records) == 2 and all(m["grad_norm"] > 0 for m in records)


def test_kill_and_resume_is_bit_identical(tmp_path, mrpc_data, straight):
    use_data(tmp_path, mrpc_data)
    run = tmp_path / "runs" / "mrpc" / "killed"
    process = run_distill(tmp_path, *SMALL_RUN, "--name", "killed", wait=False)
    wait_for_lines(process, run / "metrics.jsonl", 3)  # kill -9 once a few steps are checkpointed
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= step < 8  # step 3 began after step 2's checkpoint
    resumed = run_distill(tmp_path, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed_at(run) == f"{step}/8"
    assert_same_run(run, straight)


def test_sigterm_checkpoints_the_step_in_flight_and_resumes_there(tmp_path, mrpc_data, straight):
    use_data(tmp_path, mrpc_data)
    run = tmp_path / "runs" / "mrpc" / "stopped"  # checkpoints only at validations (3, 6, 8); a line per step
    process = run_distill(
        tmp_path, *SMALL_RUN, "--checkpoint-every", "100", "--log-every", "1", "--name", "stopped", wait=False
    )
    wait_for_lines(process, run / "metrics.jsonl", 4)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err, err
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 4 <= step < 8 and len((run / "metrics.jsonl").read_text().splitlines()) == step
    assert [l for l in out.splitlines() if l.startswith("preempted")] == [
        f"preempted (SIGTERM): checkpoint at outer step {step} in {run}; "
        f"resume with python -m ddattn.distill --resume {run}"
    ]
    resumed = run_distill(tmp_path, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed_at(run) == f"{step}/8"
    assert_same_run(run, straight)


def test_divergence_stops_with_one_line(tmp_path, mrpc_data):
    use_data(tmp_path, mrpc_data)
    done = run_distill(tmp_path, *SMALL_RUN, "--name", "diverge", "--eta-init", "1e38")
    line = one_error_line(done)
    assert "non-finite" in line and "outer step 1" in line


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--task", "nope"], "unknown task"),
        (["--shots", "0"], "--shots"),
        (["--steps", "0"], "--steps"),
        (["--seq-len", "513"], "--seq-len"),
        (["--label-type", "fuzzy"], "invalid choice"),
        (["--lr", "-1"], "--lr"),
        (["--micro-batch-size", "-1"], "--micro-batch-size"),
        (["--mode", "finite-difference", "--autocast", "bf16"], "--autocast"),
        (["--autocast", "fp16", "--device", "cpu"], "bf16"),
        (["--model", "no-such-model"], "make weights"),
    ],
)
def test_impossible_settings_are_refused(tmp_path, mrpc_data, flags, expected):
    use_data(tmp_path, mrpc_data)
    args = SMALL_RUN + flags
    assert expected in one_error_line(run_distill(tmp_path, *args))
    assert not (tmp_path / "runs" / "mrpc").exists() or not any((tmp_path / "runs" / "mrpc").iterdir())


def test_custom_task_distils_and_evaluates(tmp_path):
    rows = ["review,stars"] + [
        f"{w} movie number {i},{'good' if i % 2 else 'bad'}" for i, w in enumerate(["great", "awful"] * 20)
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "mine" / "test.csv").write_text("\n".join(rows[:9]) + "\n")
    custom = [
        "--task",
        "custom",
        "--train-file",
        str(tmp_path / "mine" / "train.csv"),
        "--eval-file",
        str(tmp_path / "mine" / "test.csv"),
        "--text-columns",
        "review",
        "--label-column",
        "stars",
        "--labels",
        "bad,good",
    ]
    done = run_distill(
        tmp_path,
        *custom,
        "--name",
        "mine",
        "--real-batch-size",
        "8",
        "--val-size",
        "8",
        "--seq-len",
        "8",
        "--epochs",
        "1",
        "--val-models",
        "1",
        "--max-length",
        "16",
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "custom" / "mine"
    evaluate_in(tmp_path, run, 2)
    result = json.loads((run / "eval.json").read_text())
    assert result["examples"] == 8 and len(result["runs"]) == 2
    bad = run_distill(tmp_path, "--task", "custom", "--train-file", "x.csv")
    assert "--task custom needs" in one_error_line(bad)


@pytest.mark.skipif(not (shared_data_dir() / "qnli").is_dir(), reason="no shared QNLI dev split")
def test_qnli_dev_distils_and_evaluates_on_its_own_parts(tmp_path):
    """`--task qnli_dev` through fetch, distill and evaluate unchanged: the held-out slice comes out of the
    3,463-pair training part of QNLI's dev split, the score is on its 2,000-pair evaluation part."""
    fetch("qnli_dev", tmp_path / "data")
    flags = ["--max-steps", "2", "--val-size", "32", "--real-batch-size", "16", "--seq-len", "8"]
    done = run_distill(
        tmp_path, "--task", "qnli_dev", "--preset", "cpu", *flags, "--max-length", "32", "--val-models", "1"
    )
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "runs" / "qnli_dev").iterdir()
    assert "qnli_dev, 3431 training / 32 validation examples" in (run / "run.log").read_text()
    evaluate_in(tmp_path, run, 1)
    result = json.loads((run / "eval.json").read_text())
    assert result["task"] == "qnli_dev" and result["examples"] == 2000
    assert "not the paper's protocol" in (run / "README.md").read_text()  # the card says so too
