"""What the test files share (their fixtures are in conftest.py): a tiny random BERT and distilled data for
it, the one contract for bad input, snapshots of folders, and the small MRPC copy with the runs made on it.
No test file imports another test file; they import this module."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddattn import checks
from ddattn.errors import run_cli
from ddattn.method import seeds
from ddattn.method.bert import BertConfig, init_classifier, param_shapes
from ddattn.method.distilled import DistilledConfig, DistilledData

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("DDATTN_GOLDEN", REPO.parent / "shared" / "fixtures" / "minilm_golden.safetensors"))


# --- a tiny random BERT, inputs and distilled data for it (float64: exact tests) --------------------------
TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=32)


def tiny_theta(config: BertConfig = TINY, num_classes: int = 2, seed: int = 0, dtype=torch.float64):
    """Random parameters for `config`: weights N(0, 0.3²) so every nonlinearity is exercised, LayerNorm ≈ 1."""
    g = torch.Generator().manual_seed(seed)
    theta = {}
    for name, shape in param_shapes(config).items():
        value = torch.randn(shape, generator=g, dtype=dtype) * 0.3
        theta[name] = value + 1.0 if name.endswith("norm.weight") else value
    theta.update(init_classifier(config, num_classes, g, dtype=dtype))
    theta["classifier.weight"] *= 10  # a head large enough that logits depend on the input
    return theta


def tiny_inputs(batch=3, length=8, seed=0):
    """(input ids, token types, attention mask) for TINY; rows 1 and 2 padded after 5 and 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return ids, torch.randint(0, 2, (batch, length), generator=g), mask


def make_distilled(steps=1, shots=1, batch_size=0, label_type="soft", attention_type="cls", seq_len=8, seed=1):
    """D̃ for TINY in float64 (2 classes, η̃_0 = 0.3), with generic values (see below)."""
    config = DistilledConfig(
        num_classes=2,
        seq_len=seq_len,
        hidden_size=TINY.hidden_size,
        num_layers=TINY.num_layers,
        num_heads=TINY.num_heads,
        shots=shots,
        steps=steps,
        batch_size=batch_size,
        label_type=label_type,
        attention_type=attention_type,
        inner_lr_init=0.3,
    )
    checks.check_distilled_config(config, TINY.max_positions)
    distilled = DistilledData.initial(config, torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():  # move labels off one-hot and learning rates apart, so every gradient is generic
        distilled.label_logits.add_(
            torch.randn(
                distilled.label_logits.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
        )
        distilled.lr_raw.add_(torch.linspace(-0.2, 0.2, steps, dtype=torch.float64))
    return distilled


def real_batch(seed=2, batch=3, length=8):
    """A real mini-batch for TINY: random ids and token types, the first row padded, labels 0, 1, 1."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - 3 :] = 0  # one padded sequence
    return {
        "input_ids": torch.randint(1, TINY.vocab_size, (batch, length), generator=g),
        "token_type_ids": torch.randint(0, 2, (batch, length), generator=g),
        "attention_mask": mask,
        "labels": torch.tensor([0, 1, 1][:batch]),
    }


# --- bad input: one line, exit status 2, nothing changed ----------------------------------------------------
def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The contract for bad input, the same for every command: exit status 2, no traceback, and exactly one
    line of stderr that mentions `error:`, the last one, starting with `error: `. Lines above it may be a
    progress bar or a notice, never a second error. Returns that line."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors == lines[-1:] and errors[0].startswith("error: "), done.stderr
    return errors[0]


def run_in_process(main, argv, capsys) -> subprocess.CompletedProcess:
    """`main(argv)` run as its command line runs it (run_cli), in this process: (exit status, stdout, stderr)."""
    try:
        run_cli(main, list(argv))
        status = 0
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def cli_error(main, argv, capsys) -> str:
    """The one error line of `main(argv)` run in this process (see one_error_line)."""
    return one_error_line(run_in_process(main, argv, capsys))


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too), by path relative to it: its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- task data, the small MRPC copy and the runs made on it --------------------------------------------------
def fetch(task: str, data_dir: Path) -> None:
    """`python -m ddattn.fetch --task TASK --data-dir DATA_DIR` (copies from ../shared/data)."""
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.fetch", "--task", task, "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


TRAIN_ROWS, DEV_ROWS = 200, 32


def small_mrpc(base: Path) -> Path:
    """A data dir filled by `python -m ddattn.fetch --task mrpc`, then cut to the first 200 train / 32 dev
    pairs, so that scoring one model takes a fraction of a second. Made once per test session (under
    pytest's base temp dir)."""
    root = base / "small-data"
    if not (root / "mrpc" / "dev.tsv").is_file():
        fetch("mrpc", root)
        for name, rows in (("train.tsv", TRAIN_ROWS), ("dev.tsv", DEV_ROWS)):
            path = root / "mrpc" / name
            path.write_text(
                "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]), encoding="utf-8"
            )
    return root


def env_for(base: Path) -> dict:
    return {**os.environ, "DDATTN_RUNS_DIR": str(base / "runs"), "DDATTN_DATA_DIR": str(small_mrpc(base))}


TINY_DISTILL = [
    "--task",
    "mrpc",
    "--train-limit",
    "64",
    "--val-size",
    "16",
    "--real-batch-size",
    "16",
    "--seq-len",
    "8",
    "--max-length",
    "32",
    "--epochs",
    "1",
    "--val-models",
    "1",
    "--name",
    "tiny",
    "--label-type",
    "soft",
    "--shots",
    "1",
]  # the paper's soft labels, 1 shot (the cpu preset: hard, 3 on MRPC)


def make_tiny_run(base: Path) -> Path:
    """runs/mrpc/tiny: the brief's tiny `python -m ddattn.distill` run (2 samples of 8 tokens), made once."""
    run = base / "runs" / "mrpc" / "tiny"
    if not (run / "distilled_best.safetensors").is_file():
        done = subprocess.run(
            [sys.executable, "-m", "ddattn.distill", *TINY_DISTILL],
            cwd=REPO,
            env=env_for(base),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    return run


def heads(n: int, seed: int = 0) -> list:
    """The head seeds of the first n evaluation models of a run with --seed `seed`."""
    return [seeds.stream_seed("evaluation-head", seed, i) for i in range(n)]


# In-process runs on the small MRPC copy (the `env` fixture): 2 outer steps, D̃ of (2, 8, 384).
TINY_RUN = [
    "--task",
    "mrpc",
    "--max-steps",
    "2",
    "--seq-len",
    "8",
    "--train-limit",
    "64",
    "--val-size",
    "16",
    "--real-batch-size",
    "8",
    "--max-length",
    "16",
    "--val-models",
    "1",
    "--shots",
    "1",
]

# A few seconds per run on the whole MRPC (the `mrpc_data` fixture): 96 training pairs, batches of 16, 8
# outer steps, 8-token distilled samples, a checkpoint at every step.
SMALL_RUN = [
    "--task",
    "mrpc",
    "--train-limit",
    "96",
    "--val-size",
    "32",
    "--real-batch-size",
    "16",
    "--seq-len",
    "8",
    "--max-length",
    "32",
    "--epochs",
    "2",
    "--val-models",
    "1",
    "--val-every",
    "3",
    "--checkpoint-every",
    "1",
    "--lr",
    "0.05",
    "--seed",
    "3",
]


def use_data(tmp_path: Path, data_root: Path) -> None:
    """tmp_path/data: the data of `mrpc_data`."""
    (tmp_path / "data").symlink_to(data_root / "data")


def run_distill(tmp_path: Path, *args, timeout=300, wait=True):
    """`python -m ddattn.distill ARGS` in a subprocess, runs under tmp_path/runs, data from tmp_path/data;
    with wait=False the running Popen."""
    env = {**os.environ, "DDATTN_RUNS_DIR": str(tmp_path / "runs"), "DDATTN_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "ddattn.distill", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_lines(process, path: Path, lines: int, timeout=240) -> None:
    """Wait until `path` has `lines` lines; the process must still be running."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be stopped"


def metrics(run: Path) -> list:
    """metrics.jsonl without the timings."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def logged_steps(run: Path) -> list:
    """The outer steps that metrics.jsonl has a line for, in order."""
    return [record["step"] for record in metrics(run)]


def resumed_at(run: Path) -> str:
    """Where the last resume of `run` started, as its run.log says ("3/8": outer step 3 of 8)."""
    lines = [line for line in (run / "run.log").read_text().splitlines() if line.startswith(f"resumed {run} at")]
    assert lines, f"{run / 'run.log'} says no resume"
    return lines[-1].split(" at outer step ")[1]
