"""torch.distributed data parallelism: two gloo processes give the single-process results."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddattn.method.unroll import hypergradient
from tests.helpers import (
    REPO,
    SMALL_RUN,
    TINY,
    heads,
    make_distilled,
    metrics,
    real_batch,
    resumed_at,
    run_distill,
    tiny_theta,
    use_data,
    wait_for_lines,
)

WORKER = r"""
import sys, torch
from ddattn import distributed
from ddattn.method.unroll import hypergradient
from tests.helpers import TINY, make_distilled, real_batch, tiny_theta

distributed.setup(torch.device("cpu"))
distilled, batch = make_distilled(steps=2, shots=2, batch_size=2), real_batch(batch=3)
micro_batches = distributed.shard([{k: v[[i]] for k, v in batch.items()} for i in range(3)])   # uneven: 1 + 2
result = hypergradient(tiny_theta(), TINY, distilled, micro_batches, mode="recompute", real_batch_size=3,
                       all_reduce=distributed.all_reduce_sum)
torch.save({**result.grads, "loss": result.loss}, sys.argv[1] + f".{distributed.rank()}")
distributed.teardown()
"""


def torchrun(*args, timeout=600, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process of `rank` (its child whose environment holds RANK=rank)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environment = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone, or not ours to read
        if parent == launcher.pid and f"RANK={rank}".encode() in environment:
            return int(stat.parent.name)
    raise AssertionError(f"no worker of rank {rank} under process {launcher.pid}")


def test_sharded_hypergradient_equals_single_process(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    done = torchrun(str(tmp_path / "worker.py"), str(tmp_path / "grads.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"grads.pt.{r}", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # every rank: the same bits
    single = hypergradient(tiny_theta(), TINY, make_distilled(steps=2, shots=2, batch_size=2), real_batch(batch=3))
    torch.testing.assert_close(ranks[0].pop("loss"), single.loss, rtol=0, atol=1e-12)
    for name, grad in single.grads.items():
        torch.testing.assert_close(ranks[0][name], grad, rtol=0, atol=1e-6, msg=name)


def test_two_process_distillation_and_evaluation_match_one(tmp_path, mrpc_data, monkeypatch):
    use_data(tmp_path, mrpc_data)
    # The same two micro-batches in one process and in two: the float32 sums are the same, bit for bit —
    # with the same number of BLAS threads per process (torchrun's workers get 1). With 2 threads the single
    # process's matrix products split their work differently and x̃ and ã differ in the last bits (3 shots).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    flags = [*SMALL_RUN, "--max-steps", "3", "--val-every", "3", "--val-models", "2", "--micro-batch-size", "8"]
    assert run_distill(tmp_path, *flags, "--name", "one").returncode == 0
    env_runs = {"DDATTN_RUNS_DIR": str(tmp_path / "runs"), "DDATTN_DATA_DIR": str(tmp_path / "data")}
    os.environ.update(env_runs)
    try:
        done = torchrun("-m", "ddattn.distill", *flags, "--name", "two")
        assert done.returncode == 0, done.stderr[-3000:]
        one, two = (load_file(tmp_path / "runs" / "mrpc" / n / "distilled_last.safetensors") for n in ("one", "two"))
        assert one.keys() == two.keys() and all(torch.equal(two[name], one[name]) for name in one)
        run = tmp_path / "runs" / "mrpc" / "one"
        single = subprocess.run(
            [
                sys.executable,
                "-m",
                "ddattn.evaluate",
                str(run),
                "--n-models",
                "3",
                "--out",
                str(tmp_path / "single.json"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert single.returncode == 0, single.stderr
        pair = torchrun("-m", "ddattn.evaluate", str(run), "--n-models", "3", "--out", str(tmp_path / "pair.json"))
        assert pair.returncode == 0, pair.stderr[-3000:]
    finally:
        for key in env_runs:
            os.environ.pop(key)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "pair"))
    assert [r["seed"] for r in b["runs"]] == heads(3) and b["processes"] == 2
    for ra, rb in zip(a["runs"], b["runs"]):
        assert ra["accuracy"] == rb["accuracy"] and ra["f1"] == rb["f1"]
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path, mrpc_data, monkeypatch):
    """SIGTERM to rank 1 only: both ranks agree to stop after the same step, rank 0 checkpoints it and says so
    in one line, and the resumed run ends bit-identical to one process's uninterrupted run."""
    use_data(tmp_path, mrpc_data)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in the test above: one thread, the same bits
    flags = [*SMALL_RUN, "--max-steps", "6", "--micro-batch-size", "8", "--checkpoint-every", "100", "--log-every", "1"]
    assert run_distill(tmp_path, *flags, "--name", "one").returncode == 0
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(tmp_path / "data"))
    run, one = (tmp_path / "runs" / "mrpc" / name for name in ("two", "one"))
    launcher = torchrun("-m", "ddattn.distill", *flags, "--name", "two", wait=False)
    try:
        wait_for_lines(launcher, run / "metrics.jsonl", 2)
        os.kill(worker(launcher, 1), signal.SIGTERM)
        out, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= step < 6 and len((run / "metrics.jsonl").read_text().splitlines()) == step, err[-3000:]
    assert [line for line in out.splitlines() if line.startswith("preempted")] == [
        f"preempted (a signal or the time limit in another process): checkpoint at outer step {step} in {run}; "
        f"resume with torchrun --nproc_per_node 2 -m ddattn.distill --resume {run}"
    ]
    resumed = torchrun("-m", "ddattn.distill", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed_at(run) == f"{step}/6" and metrics(run) == metrics(one)
    a, b = (load_file(r / "distilled_last.safetensors") for r in (one, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
