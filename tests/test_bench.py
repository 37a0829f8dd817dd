"""python -m ddattn.bench on a tiny random checkpoint: result fields, memory reading, tables, bad flags; the
default sweep, the memory slope fit, the run's one matmul peak, and the bf16 capability check."""

import dataclasses
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddattn import bench, bench_eval, evaluate, options, reference, settings
from ddattn.data import EvalBatch
from ddattn.errors import UserError
from ddattn.files import read_bert_config, write_bert_config
from ddattn.flops import count_flops
from ddattn.method.bert import param_shapes
from ddattn.method.evaluation import predict
from tests.helpers import REPO, TINY, one_error_line, tiny_theta

SST2_RUN = REPO / "results" / "runs" / "sst2" / "cpu-sl-al"  # distilled; its models' predictions vary
FAST = [
    "--seq-len",
    "8",
    "--real-batch",
    "2",
    "--real-len",
    "8",
    "--repeat",
    "1",
    "--matmul-size",
    "64",
    "--threads",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    g = torch.Generator().manual_seed(0)
    save_file(
        {k: torch.randn(s, generator=g) * 0.3 for k, s in param_shapes(TINY).items()}, str(path / "model.safetensors")
    )
    write_bert_config(TINY, path / "config.json")
    return path


def spec(tiny_dir, steps, mode):
    return dict(
        model=str(tiny_dir),
        model_shape=None,
        device="cpu",
        dtype="float32",
        shots=1,
        real_batch=2,
        real_len=8,
        micro_batch=1,
        repeat=2,
        seed=0,
        threads=1,
        matmul_size=64,
        seq_len=8,
        steps=steps,
        mode=mode,
        autocast="none",
        attn="cls",
    )


def test_worker_reports_sane_numbers(tiny_dir):
    results = {(T, mode): bench.worker(spec(tiny_dir, T, mode)) for T in (1, 2) for mode in bench.EXACT_MODES}
    for (T, mode), r in results.items():
        assert (r["steps"], r["mode"], r["seq_len"], r["attn"], r["num_samples"]) == (T, mode, 8, "cls", 2)
        assert len(r["times_s"]) == 2 and r["min_s"] == min(r["times_s"]) > 0
        assert r["median_s"] == statistics.median(r["times_s"])
        assert 0 <= r["peak_mb"] <= r["process_peak_mb"] and r["memory_method"]
        assert r["flops"] > 0 and r["gflops_per_s"] > 0 and "pct_of_matmul_peak" not in r  # the parent's job
        assert r["threads"] == 1 and r["torch"] == torch.__version__ and r["cpu"] and r["device_name"]
        assert set(r["cpu_capability"]) == {"isa", "amx", "avx512_bf16", "mkldnn_bf16", "fast_bf16"}
        assert torch.isfinite(torch.tensor(r["outer_loss"]))
    for T in (1, 2):  # recompute rebuilds each inner step: never less work than keeping the graph
        assert results[T, "recompute"]["flops"] >= results[T, "graph"]["flops"]
    for mode in bench.EXACT_MODES:
        assert results[2, mode]["flops"] > results[1, mode]["flops"]
    assert results[1, "graph"]["outer_loss"] == pytest.approx(results[1, "recompute"]["outer_loss"])


def test_approximate_rows_report_their_error(tiny_dir):
    """Each row that is not the exact recompute itself reports its error against it: the reference (the same
    hypergradient written plainly) to float32 rounding, finite differences and bf16 more."""
    exact = bench.worker(spec(tiny_dir, 2, "recompute"))
    reference = bench.worker(spec(tiny_dir, 2, bench.REFERENCE))
    finite = bench.worker(spec(tiny_dir, 2, "finite-difference"))
    bf16 = bench.worker({**spec(tiny_dir, 2, "recompute"), "autocast": "bf16"})
    assert exact["relative_error"] is None
    assert set(reference["relative_error"]) == {"x", "label_logits", "attn_logits", "lr_raw"}
    assert reference["max_relative_error"] < 1e-4
    assert set(finite["relative_error"]) == {"x", "label_logits", "attn_logits", "lr_raw"}
    assert 0 < finite["max_relative_error"] < 1e-2 < bf16["max_relative_error"] < 0.5


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--mode", "finite-difference", "--autocast", "bf16"], "finite-difference"),
        (["--device", "cpu", "--autocast", "fp16"], "bf16"),
    ],
)
def test_impossible_autocast_is_refused(tiny_dir, flags, expected):
    with pytest.raises(UserError, match=expected):
        bench.main(["--model", str(tiny_dir), *flags, *FAST])


def test_peak_memory_sees_an_allocation():
    memory = bench.PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(50 * 2**20 // 4)  # 50 MiB, every page touched
    del block
    peak, process_peak = memory.stop()
    assert 45 * 2**20 < peak < 80 * 2**20 and process_peak > peak


def test_cli_writes_json_markdown_and_plot(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cpu.json"
    bench.main(["--model", str(tiny_dir), "--steps", "1", "2", "--mode", "graph", "--json", str(out), *FAST])
    saved = json.loads(out.read_text())
    assert [(r["steps"], r["mode"]) for r in saved["results"]] == [(1, "graph"), (2, "graph")]
    assert all("error" not in r for r in saved["results"])
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] == 1 and env["cpu"]
    assert env["cpu_capability"] == options.cpu_capability()
    peak = env["matmul_peak"]  # two readings, before and after; every row uses their best
    assert len(peak["readings_gflops"]) == 2 and peak["gflops"] == max(peak["readings_gflops"]) > 0
    assert all(r["matmul_gflops"] == peak["gflops"] for r in saved["results"])
    table = (tmp_path / "cpu.md").read_text()
    assert "| S | T | mode | autocast | attn | median s |" in table and table.count("| 8 | ") == 2
    assert options.describe_capability(options.cpu_capability()) in table and "Matmul peak: 64² float32" in table
    assert re.search(r"- S = 8, attn = cls: graph -?[0-9.]+ MB/step", table)
    printed = capsys.readouterr().out
    assert "| 8 | 2 | graph | none | cls |" in printed
    assert "matmul peak before the sweep: " in printed and "matmul peak after the sweep: " in printed
    assert (tmp_path / "cpu.png").stat().st_size > 0


def test_profile_splits_the_step_into_matmuls_and_the_rest(tiny_dir, tmp_path):
    out = tmp_path / "cpu.json"
    bench.main(
        [
            "--model",
            str(tiny_dir),
            "--steps",
            "1",
            "--mode",
            "graph",
            "--reference",
            "--profile",
            "--no-plot",
            "--json",
            str(out),
            *FAST,
        ]
    )
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
    bench.main(["--model", str(broken), "--steps", "1", "--mode", "graph", "--no-plot", "--json", str(out), *FAST])
    (row,) = json.loads(out.read_text())["results"]
    assert "model.safetensors" in row["error"] and row["steps"] == 1
    assert "| 8 | 1 | graph | none | cls | — |" in (tmp_path / "cpu.md").read_text()
    assert not (tmp_path / "cpu.png").exists()


def test_default_is_the_documented_t_sweep():
    """No flags: S = DEFAULT_SEQ_LEN, T = 1, 2, 4, 8 in both exact modes, as bench/README.md's flag table says."""
    args = bench.parse_args([])
    configs = bench.configurations(bench.sweep_axes(args), args.reference)
    assert [(c["seq_len"], c["steps"], c["mode"], c["autocast"], c["attn"]) for c in configs] == [
        (bench.DEFAULT_SEQ_LEN, T, mode, "none", "cls") for T in (1, 2, 4, 8) for mode in ("graph", "recompute")
    ]
    assert args.model == bench.DEFAULT_MODEL and args.model_shape is None and args.repeat == 3
    doc = (Path(bench.__file__).parent.parent / "bench" / "README.md").read_text()
    assert f"| `--seq-len S …` | {bench.DEFAULT_SEQ_LEN} |" in doc
    assert "| `--steps T …` | 1 2 4 8 |" in doc and "| `--mode …` | graph recompute |" in doc
    assert f"python -m ddattn.bench                                 # S={bench.DEFAULT_SEQ_LEN}, T=1 2 4 8" in doc


def test_reference_runs_just_before_its_rows():
    configs = bench.configurations(
        {"seq_len": [64], "steps": [1, 4], "mode": ["graph"], "autocast": ["none"], "attn": ["cls"]}, reference=True
    )
    assert [(c["steps"], c["mode"]) for c in configs] == [
        (1, "reference"),
        (1, "graph"),
        (4, "reference"),
        (4, "graph"),
    ]


def test_fit_line_is_least_squares():
    assert bench.fit_line([1, 2, 4, 8], [3 + 2 * t for t in (1, 2, 4, 8)]) == pytest.approx((2, 3))
    slope, intercept = bench.fit_line([0, 1, 2], [0, 2, 1])  # normal equations by hand: slope 1/2, 1/2
    assert (slope, intercept) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError):
        bench.fit_line([4, 4], [1, 2])


def row(T, mode, peak_mb, median_s=1.0, flops=1e9, **extra):
    return {
        "seq_len": 64,
        "steps": T,
        "mode": mode,
        "autocast": "none",
        "attn": "cls",
        "peak_mb": peak_mb,
        "median_s": median_s,
        "flops": flops,
        "gflops_per_s": flops / median_s / 1e9,
        **extra,
    }


def test_memory_slopes_per_mode_and_their_ratio():
    rows = [row(T, "graph", 400 + 100 * T) for T in (1, 2, 4, 8)] + [
        row(T, "recompute", 400 + 20 * T) for T in (1, 2, 4, 8)
    ]
    rows += [row(1, "finite-difference", 300), {**row(16, "graph", 0), "error": "out of memory"}]
    slopes = bench.memory_slopes(rows)  # the failed row is no point of the line; one T is no line
    assert slopes == pytest.approx({("graph", 64, "cls"): 100, ("recompute", 64, "cls"): 20})
    text = bench.slope_text(rows)
    assert text[1] == "- S = 64, attn = cls: graph 100.0 MB/step, recompute 20.0 MB/step; graph ÷ recompute = 5.0"
    assert bench.slope_text([row(1, "graph", 400)]) == []


def test_one_peak_for_every_row():
    """Rows of equal FLOPs: the faster one always shows the higher share of the run's one peak."""
    rows = [
        row(1, "graph", 0, median_s=2.0),
        row(1, "recompute", 0, median_s=3.0),
        row(2, "graph", 0, median_s=2.5),
        {**row(4, "graph", 0), "error": "out of memory"},
    ]
    peak = bench.peak_summary([151.0, 107.0])  # issue 28's two readings, minutes apart on one machine
    assert peak["gflops"] == 151.0 and peak["spread"] == pytest.approx(44 / 151) and peak["moved"]
    bench.apply_peak(rows, peak)
    assert [r.get("matmul_gflops") for r in rows] == [151.0, 151.0, 151.0, None]
    shares = [r["pct_of_matmul_peak"] for r in rows[:3]]
    assert shares == pytest.approx([100 * 0.5 / 151, 100 / 3 / 151, 100 * 0.4 / 151])
    order = sorted(rows[:3], key=lambda r: r["median_s"])
    assert [r["pct_of_matmul_peak"] for r in order] == sorted(shares, reverse=True)
    assert "pct_of_matmul_peak" not in rows[3]


def test_peak_readings_that_moved_are_flagged():
    steady = bench.peak_summary([150.0, 140.0])
    assert not steady["moved"] and steady["tolerance"] == bench.PEAK_TOLERANCE
    settings = {"matmul_size": 2048, "dtype": "float32"}
    assert "Warning" not in bench.peak_text(steady, settings) and "150.0 and 140.0 GFLOP/s" in bench.peak_text(
        steady, settings
    )
    assert "**Warning: the readings moved by more than 10 %" in bench.peak_text(
        bench.peak_summary([151.0, 107.0]), settings
    )


def test_matmul_peak_worker_uses_the_rows_threads(tiny_dir):
    reading = bench.matmul_peak_worker({**spec(tiny_dir, 1, "graph"), "measure": bench.MATMUL_PEAK})
    assert reading["matmul_gflops"] > 0 and reading["threads"] == 1


def test_model_shape_bert_base_is_the_published_config(monkeypatch, tiny_dir):
    base = bench.MODEL_SHAPES["bert-base"]
    assert (
        base.num_layers,
        base.hidden_size,
        base.num_heads,
        base.vocab_size,
        base.intermediate_size,
        base.max_positions,
    ) == (12, 768, 12, 30522, 3072, 512)
    theta = bench.random_weights(TINY, seed=0)
    assert {k: tuple(v.shape) for k, v in theta.items()} == param_shapes(TINY)
    assert torch.equal(theta["layers.0.ffn.norm.weight"], torch.ones(16)) and not theta["pooler.bias"].any()
    assert 0.015 < theta["embeddings.word"].std() < 0.025
    monkeypatch.setitem(bench.MODEL_SHAPES, "bert-base", TINY)  # the worker's path, at a tiny size
    r = bench.worker({**spec(tiny_dir, 1, "graph"), "model": None, "model_shape": "bert-base"})
    assert r["flops"] > 0 and torch.isfinite(torch.tensor(r["outer_loss"]))


def test_layers_cuts_the_shapes_depth(monkeypatch, tiny_dir):
    base = bench.MODEL_SHAPES["bert-base"]
    assert bench.shape_config("bert-base", 2) == dataclasses.replace(base, num_layers=2)
    assert bench.shape_config("bert-base") is base
    monkeypatch.setitem(bench.MODEL_SHAPES, "bert-base", TINY)  # 2 layers
    one = {**spec(tiny_dir, 1, "graph"), "model": None, "model_shape": "bert-base", "layers": 1}
    config, theta = bench.load_model(one, torch.float32, torch.device("cpu"))
    assert config.num_layers == 1 and "layers.0.ffn.norm.weight" in theta and "layers.1.ffn.norm.weight" not in theta
    assert bench.model_label(one) == "bert-base shape (1 of its 2 layers) with random weights"
    assert bench.worker(one)["flops"] < bench.worker({**one, "layers": None})["flops"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model-shape", "bert-base", "--model", "minilm-l6"], "one of them"),
        (["--model-shape", "bert-base", "--eval"], "--eval needs a real checkpoint"),
        (["--model-shape", "bert-large"], "invalid choice"),
        (["--layers", "1"], "--layers cuts a --model-shape's depth"),
    ],
)
def test_model_shape_conflicts_are_user_errors(flags, message):
    with pytest.raises(UserError, match=message):
        bench.parse_args(flags)


@pytest.mark.parametrize("layers", ["0", "13"])
def test_layers_beyond_the_shape_are_refused(layers):
    with pytest.raises(UserError, match="--layers must be between 1 and the shape's 12 layers"):
        bench.main(["--model-shape", "bert-base", "--layers", layers, "--device", "cpu"])


def test_in_process_measures_every_row_and_the_peak_without_a_subprocess(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "run_in_subprocess", lambda spec: pytest.fail("started a subprocess"))
    out = tmp_path / "cpu.json"
    flags = ["--model", str(tiny_dir), "--steps", "1", "2", "--mode", "graph", "--ops", "--no-plot", "--json", str(out)]
    bench.main([*flags, *FAST, "--in-process"])
    saved = json.loads(out.read_text())
    assert [(r["steps"], "error" in r) for r in saved["results"]] == [(1, False), (2, False)]
    assert all(r["flops"] > 0 and r["aten_ops"] > 0 and r["pct_of_matmul_peak"] > 0 for r in saved["results"])
    assert len(saved["environment"]["matmul_peak"]["readings_gflops"]) == 2


# --- bf16 only where the hardware has it (options.py) ------------------------------------------------------
AVX2 = {"isa": "AVX2", "amx": False, "avx512_bf16": False, "mkldnn_bf16": False, "fast_bf16": False}
AVX512_BF16 = {"isa": "AVX512", "amx": False, "avx512_bf16": True, "mkldnn_bf16": True, "fast_bf16": True}


@pytest.fixture(params=[AVX2, AVX512_BF16], ids=["no-bf16", "bf16"])
def fake_cpu(request, monkeypatch):
    monkeypatch.setattr(options, "cpu_capability", lambda: dict(request.param))
    return request.param


def test_capability_rule_and_description(monkeypatch):
    assert options.describe_capability(AVX2) == "AVX2, no AMX, bf16: no"
    assert options.describe_capability(AVX512_BF16) == "AVX512, AVX512-BF16, no AMX, bf16: yes"
    real = options.cpu_capability()
    assert real["fast_bf16"] == (real["mkldnn_bf16"] and (real["avx512_bf16"] or real["amx"]))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "compute capability 7.5" in options.slow_bf16_reason(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert options.slow_bf16_reason(torch.device("cuda")) is None


def test_bf16_options_need_the_hardware_or_the_flag(fake_cpu, tiny_dir, tmp_path, capsys):
    """bench --autocast bf16, distill --autocast bf16, evaluate --precision bf16: refused in one line naming
    --allow-slow-bf16 on a CPU without bf16, run after one notice with it; accepted silently with bf16."""
    cpu = torch.device("cpu")
    args = bench.parse_args(["--model", str(tiny_dir), "--autocast", "bf16", *FAST])
    config = read_bert_config(tiny_dir / "config.json")
    distill_args = settings.parse_args(["--task", "mrpc", "--autocast", "bf16", "--device", "cpu"])

    def bench_check(allow: bool):
        args.allow_slow_bf16 = allow
        bench.check_flags(args, bench.sweep_axes(args), config, cpu)

    for check in (bench_check, lambda allow: settings.check_options(distill_args, allow)):
        if fake_cpu["fast_bf16"]:
            check(False)
            assert capsys.readouterr().err == ""
        else:
            with pytest.raises(UserError, match="has no bf16 instructions.*--allow-slow-bf16 to run it anyway"):
                check(False)
            check(True)
            assert capsys.readouterr().err.count("notice: --autocast bf16 runs slower than fp32 here") == 1
    missing_run = [str(tmp_path / "no-run"), "--precision", "bf16", "--device", "cpu"]
    expected = "is missing" if fake_cpu["fast_bf16"] else "--precision bf16: this CPU .* --allow-slow-bf16"
    with pytest.raises(UserError, match=expected):  # refused before the run is even read
        evaluate.main(missing_run)
    with pytest.raises(UserError, match="is missing"):
        evaluate.main(missing_run + ["--allow-slow-bf16"])


def test_eval_bench_times_bf16_only_where_it_is_fast(fake_cpu, capsys):
    names, left_out = bench_eval.evaluator_names(allow_slow_bf16=False)
    if fake_cpu["fast_bf16"]:
        assert names == ("reference", "fp32", "bf16") and left_out is None and capsys.readouterr().out == ""
    else:
        assert names == ("reference", "fp32") and "no bf16 instructions" in left_out
        assert capsys.readouterr().out.startswith("notice: the bf16 evaluator is left out")
        assert bench_eval.evaluator_names(allow_slow_bf16=True) == (bench_eval.EVALUATORS, None)
        assert "notice: the bf16 evaluator runs slower than fp32" in capsys.readouterr().err


def test_lists_take_spaces_or_commas():
    assert bench._flat(["1,2", "4", "2"], int, "--steps") == [1, 2, 4]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--steps", "0"], "--steps must be ≥ 1"),
        (["--seq-len", "33"], "32 positions"),
        (["--mode", "graph", "unrolled"], "unknown --mode"),
        (["--attn", "some"], "unknown --attn"),
        (["--steps", "two"], "not a valid value"),
    ],
)
def test_bad_flags_are_user_errors(tiny_dir, flags, message):
    with pytest.raises(UserError, match=message):
        bench.main(["--model", str(tiny_dir), *FAST, *flags])


def test_bad_flag_on_the_command_line_is_one_line_exit_2(tiny_dir):
    command = [sys.executable, "-m", "ddattn.bench", "--model", str(tiny_dir), "--seq-len", "8", "--steps", "0"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert one_error_line(proc) == proc.stderr.strip() == "error: --steps must be ≥ 1, not [0]"


def eval_bench(tmp_path, monkeypatch, sst2_data, *flags: str) -> dict:
    """`bench --eval` on SST2_RUN's models over the first SST-2 dev rows, one thread, a small peak matmul,
    with `flags`; its saved JSON (the table beside it, eval.md)."""
    monkeypatch.setenv("DDATTN_DATA_DIR", str(sst2_data))
    out = tmp_path / "eval.json"
    bench.main(["--eval", "--run", str(SST2_RUN), "--threads", "1", "--matmul-size", "256", *flags, "--json", str(out)])
    return json.loads(out.read_text())


def test_eval_throughput_reports_ratios_and_agreement(tmp_path, monkeypatch, sst2_data):
    """--eval on 24 SST-2 dev sentences with a distilled set whose models' predictions vary (a model that
    answers one class would agree with any evaluator): every evaluator's model predicts both classes, and
    the fast fp32 path predicts what the reference evaluator predicts, all 24."""
    saved = eval_bench(tmp_path, monkeypatch, sst2_data, "--n-models", "1", "--eval-limit", "24", "--allow-slow-bf16")
    summary, per_model = saved["summary"], saved["per_model"]
    assert saved["examples"] == 24 and set(summary) == {"reference", "fp32", "bf16"} and saved["models_at_once"] == 1
    assert [s["fewest_classes_predicted"] for s in summary.values()] == [2, 2, 2]  # the predictions vary
    assert saved["agreement"]["fp32 = reference"] == 1.0  # and agree
    assert [r["accuracy"] for r in per_model["fp32"]] == [r["accuracy"] for r in per_model["reference"]]
    for name, s in summary.items():
        assert s["metric"] == "accuracy" and s["metric_mean"] == statistics.mean(r["accuracy"] for r in per_model[name])
    for name in ("fp32", "bf16"):  # how much faster
        reference_wall, wall = summary["reference"]["wall_s_per_model"], summary[name]["wall_s_per_model"]
        assert wall > 0 and summary[name]["speed_vs_reference_wall"] == pytest.approx(reference_wall / wall)
    assert summary["fp32"]["scoring_gflop_per_model"] == summary["bf16"]["scoring_gflop_per_model"]
    assert summary["reference"]["scoring_gflop_per_model"] > summary["fp32"]["scoring_gflop_per_model"] > 0
    ceiling, peak = saved["fp32_ceiling"], saved["fp32_ceiling"]["peak"]  # fp32's scoring at the best reading
    assert len(peak["readings_gflops"]) == 2 and peak["gflops"] == max(peak["readings_gflops"])
    fastest = summary["fp32"]["scoring_gflop_per_model"] / peak["gflops"]
    assert ceiling["fastest_s_per_model"] == pytest.approx(fastest)
    reference_wall = summary["reference"]["wall_s_per_model"]
    assert ceiling["highest_speed_vs_reference_wall"] == pytest.approx(reference_wall / fastest)
    table = (tmp_path / "eval.md").read_text()
    assert "| fp32 |" in table and "fp32 matmul peak, this run:" in table


def test_the_ceiling_says_when_the_peak_reading_cannot_bound_fp32():
    """At a 1 GFLOP/s peak, 2 GFLOP of scoring take at least 2 s: against a reference of 10 s, at most 5×. An
    fp32 evaluator that took 1 s ran faster than the peak allows: the reading is flagged as too low."""
    bound = bench_eval.ceiling(10.0, 3.0, 2 * 10**9, [0.5, 1.0])
    assert bound["fastest_s_per_model"] == 2.0 and bound["highest_speed_vs_reference_wall"] == 5.0
    assert bound["peak"]["gflops"] == 1.0 and not bound["peak_too_low"]
    assert bench_eval.ceiling(10.0, 1.0, 2 * 10**9, [0.5, 1.0])["peak_too_low"]


def test_scoring_flops_count_what_each_evaluator_dispatches():
    """bench_eval.scoring_flops against torch's FLOP counter over the same batches: ddattn's predict (the
    [CLS]-only last layer) under both kernel policies, on unpadded batches as the bench times them (no
    mask) and on a plain dict (masked), and the reference's logits (every layer on every row): all exact
    once the pooler's and classifier's matmuls, which scoring_flops leaves out, are added. An FFN width
    other than 2·D, so that no term of the count can stand in for another."""
    config = dataclasses.replace(TINY, intermediate_size=48)
    theta = {n: v.float() for n, v in tiny_theta(config, num_classes=3).items()}
    g = torch.Generator().manual_seed(0)

    def batch(B: int, S: int, padded: bool) -> dict:
        ones = torch.ones(B, S, dtype=torch.long)
        tensors = {
            "input_ids": torch.randint(1, config.vocab_size, (B, S), generator=g),
            "token_type_ids": 0 * ones,
            "attention_mask": ones,
            "labels": torch.zeros(B, dtype=torch.long),
        }
        if padded:
            return tensors
        unpadded = EvalBatch(tensors)
        unpadded.padded = False
        return unpadded

    batches = [batch(3, 7, padded=False), batch(2, 12, padded=False), batch(2, 5, padded=True)]
    D, rows = config.hidden_size, sum(len(b["labels"]) for b in batches)
    head = 2 * rows * (D * D + D * 3)  # pooler (D × D) and classifier (D × 3) on each [CLS]
    with torch.no_grad():
        for kernels in ("cpu", "gpu"):
            fast = count_flops(lambda: predict(theta, config, batches, kernels=kernels))
            assert fast == bench_eval.scoring_flops(config, batches, cls_only_last=True, kernels=kernels) + head
        slow = count_flops(lambda: [reference.logits(theta, config, b) for b in batches])
    assert slow == bench_eval.scoring_flops(config, batches, cls_only_last=False) + head
    assert slow > fast


def test_eval_throughput_with_models_at_once(tmp_path, monkeypatch, sst2_data):
    """--models-at-once 2 on 3 models: chunks of 2 and 1, each model recorded, still the reference's predictions."""
    saved = eval_bench(
        tmp_path, monkeypatch, sst2_data, "--n-models", "3", "--eval-limit", "16", "--models-at-once", "2"
    )
    assert saved["models_at_once"] == 2
    assert [r["seed"] for r in saved["per_model"]["fp32"]] == [0, 1, 2]
    assert saved["summary"]["fp32"]["fewest_classes_predicted"] == 2  # the predictions vary
    assert saved["agreement"]["fp32 = reference"] == 1.0  # and agree
