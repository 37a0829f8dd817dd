"""python -m ddattn.bench on a tiny random checkpoint: result fields, memory reading, tables, bad flags."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ddattn import bench
from ddattn.bert import BertConfig, param_shapes
from ddattn.errors import UserError
from tests.conftest import REPO

TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=32)
SST2_RUN = REPO / "results" / "runs" / "sst2" / "cpu-sl-al"   # distilled; its models' predictions vary
FAST = ["--seq-len", "8", "--real-batch", "2", "--real-len", "8", "--repeat", "1", "--matmul-size", "64",
        "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    g = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(s, generator=g) * 0.3 for k, s in param_shapes(TINY).items()},
              str(path / "model.safetensors"))
    TINY.to_json(path / "config.json")
    return path


def spec(tiny_dir, steps, mode):
    return dict(model=str(tiny_dir), device="cpu", dtype="float32", shots=1, real_batch=2, real_len=8, micro_batch=1, repeat=2,
                seed=0, threads=1, matmul_size=64, seq_len=8, steps=steps, mode=mode, autocast="none", attn="cls")


def test_worker_reports_sane_numbers(tiny_dir):
    results = {(T, mode): bench.worker(spec(tiny_dir, T, mode)) for T in (1, 2) for mode in bench.EXACT_MODES}
    for (T, mode), r in results.items():
        assert (r["steps"], r["mode"], r["seq_len"], r["attn"], r["num_samples"]) == (T, mode, 8, "cls", 2)
        assert len(r["times_s"]) == 2 and 0 < r["min_s"] <= r["median_s"]
        assert 0 <= r["peak_mb"] <= r["process_peak_mb"] and r["memory_method"]
        assert r["flops"] > 0 and r["gflops_per_s"] > 0 and r["matmul_gflops"] > 0 and r["pct_of_matmul_peak"] > 0
        assert r["threads"] == 1 and r["torch"] == torch.__version__ and r["cpu"] and r["device_name"]
        assert torch.isfinite(torch.tensor(r["outer_loss"]))
    for T in (1, 2):   # recompute rebuilds each inner step: never less work than keeping the graph
        assert results[T, "recompute"]["flops"] >= results[T, "graph"]["flops"]
    for mode in bench.EXACT_MODES:
        assert results[2, mode]["flops"] > results[1, mode]["flops"]
    assert results[1, "graph"]["outer_loss"] == pytest.approx(results[1, "recompute"]["outer_loss"])


def test_approximate_rows_report_their_error(tiny_dir):
    exact = bench.worker(spec(tiny_dir, 2, "recompute"))
    finite = bench.worker(spec(tiny_dir, 2, "finite-difference"))
    bf16 = bench.worker({**spec(tiny_dir, 2, "recompute"), "autocast": "bf16"})
    assert exact["relative_error"] is None and exact["max_relative_error"] == 0
    assert set(finite["relative_error"]) == {"x", "label_logits", "attn_logits", "lr_raw"}
    assert 0 < finite["max_relative_error"] < 1e-2 < bf16["max_relative_error"] < 0.5


@pytest.mark.parametrize("flags,expected", [(["--mode", "finite-difference", "--autocast", "bf16"], "finite-difference"),
                                            (["--device", "cpu", "--autocast", "fp16"], "bf16")])
def test_impossible_autocast_is_refused(tiny_dir, flags, expected):
    with pytest.raises(UserError, match=expected):
        bench.main(["--model", str(tiny_dir), *flags, *FAST])


def test_peak_memory_sees_an_allocation():
    memory = bench.PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(50 * 2 ** 20 // 4)       # 50 MiB, every page touched
    del block
    peak, process_peak = memory.stop()
    assert 45 * 2 ** 20 < peak < 80 * 2 ** 20 and process_peak > peak


def test_cli_writes_json_markdown_and_plot(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cpu.json"
    bench.main(["--model", str(tiny_dir), "--steps", "2", "--mode", "graph", "--json", str(out), *FAST])
    saved = json.loads(out.read_text())
    assert [(r["steps"], r["mode"]) for r in saved["results"]] == [(2, "graph")]
    assert all("error" not in r for r in saved["results"])
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] == 1 and env["cpu"]
    table = (tmp_path / "cpu.md").read_text()
    assert "| S | T | mode | autocast | attn | median s |" in table and table.count("| 8 | ") == 1
    assert "| 8 | 2 | graph | none | cls |" in capsys.readouterr().out
    assert (tmp_path / "cpu.png").stat().st_size > 0


def test_profile_splits_the_step_into_matmuls_and_the_rest(tiny_dir, tmp_path):
    out = tmp_path / "cpu.json"
    bench.main(["--model", str(tiny_dir), "--mode", "graph", "--reference", "--profile", "--no-plot", "--json", str(out), *FAST])
    reference, graph = json.loads(out.read_text())["results"]
    for r in (reference, graph):
        assert 0 < r["matmul_s"] < r["profiled_s"] == pytest.approx(sum(r["op_seconds"].values()))
        assert r["op_seconds"]["aten::mm"] > 0 and r["matmul_s"] >= r["op_seconds"]["aten::mm"]
    table = (tmp_path / "cpu.md").read_text()
    assert "Where the time goes" in table and "| 8 | 1 | reference |" in table
    row = next(line for line in table.splitlines() if line.startswith("| 8 | 1 | graph | ") and line.count("|") == 10)
    assert row.split("|")[-2].strip() == f"{graph['matmul_s'] / reference['median_s']:.2f}"


def test_failed_configuration_is_a_row_not_a_crash(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "cpu.json"
    bench.main(["--model", str(broken), "--mode", "graph", "--no-plot", "--json", str(out), *FAST])
    (row,) = json.loads(out.read_text())["results"]
    assert "model.safetensors" in row["error"] and row["steps"] == 1
    assert "| 8 | 1 | graph | none | cls | — |" in (tmp_path / "cpu.md").read_text()
    assert not (tmp_path / "cpu.png").exists()


def test_lists_take_spaces_or_commas():
    assert bench._flat(["1,2", "4", "2"], int, "--steps") == [1, 2, 4]


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps must be ≥ 1"),
    (["--seq-len", "33"], "32 positions"),
    (["--mode", "graph", "unrolled"], "unknown --mode"),
    (["--attn", "some"], "unknown --attn"),
    (["--steps", "two"], "not a valid value"),
])
def test_bad_flags_are_user_errors(tiny_dir, flags, message):
    with pytest.raises(UserError, match=message):
        bench.main(["--model", str(tiny_dir), *FAST, *flags])


def test_bad_flag_on_the_command_line_is_one_line_exit_2(tiny_dir):
    command = [sys.executable, "-m", "ddattn.bench", "--model", str(tiny_dir), "--seq-len", "8", "--steps", "0"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --steps must be ≥ 1, not [0]"]


@pytest.fixture(scope="module")
def sst2_data(tmp_path_factory):
    """A data directory with SST-2 (copied from ../shared/data)."""
    path = tmp_path_factory.mktemp("data")
    done = subprocess.run([sys.executable, "-m", "ddattn.fetch", "--task", "sst2", "--data-dir", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


def test_eval_throughput_reports_ratios_and_agreement(tmp_path, monkeypatch, sst2_data):
    """--eval on 24 SST-2 dev sentences with a distilled set whose models' predictions vary (a model that
    answers one class would agree with any evaluator): the fast fp32 path predicts what the reference
    evaluator predicts."""
    monkeypatch.setenv("DDATTN_DATA_DIR", str(sst2_data))
    out = tmp_path / "eval.json"
    bench.main(["--eval", "--run", str(SST2_RUN), "--n-models", "1",
                "--eval-limit", "24", "--threads", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["examples"] == 24 and set(saved["summary"]) == {"reference", "fp32", "bf16"}
    assert saved["models_at_once"] == 1
    assert saved["agreement"]["fp32 = reference"] == 1.0
    for s in saved["summary"].values():
        assert s["wall_s_per_model"] > 0 and s["metric"] == "accuracy" and 0 <= s["metric_mean"] <= 1
        assert s["fewest_classes_predicted"] == 2
    assert saved["summary"]["reference"]["speed_vs_reference_wall"] == 1.0
    assert "| fp32 |" in (tmp_path / "eval.md").read_text()


def test_eval_throughput_with_models_at_once(tmp_path, monkeypatch, sst2_data):
    """--models-at-once 2 on 3 models: chunks of 2 and 1, each model recorded, still the reference's predictions."""
    monkeypatch.setenv("DDATTN_DATA_DIR", str(sst2_data))
    out = tmp_path / "eval.json"
    bench.main(["--eval", "--run", str(SST2_RUN), "--n-models", "3",
                "--eval-limit", "16", "--threads", "1", "--models-at-once", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["models_at_once"] == 2
    assert [r["seed"] for r in saved["per_model"]["fp32"]] == [0, 1, 2]
    assert saved["agreement"]["fp32 = reference"] == 1.0
