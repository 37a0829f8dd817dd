"""Metrics against hand-computed values, the table builder (`python -m ddattn.report`) on run directories
written by hand, and the sweep's bookkeeping (`python -m ddattn.sweep`) without running distillation."""

import json
from pathlib import Path

import pytest
import torch

from ddattn import report, sweep, tasks
from ddattn.method.evaluation import compute_metrics, f1_positive, headline_metric, mean_std
from tests.helpers import cli_error

T = torch.tensor


# --- metrics -------------------------------------------------------------------------------------------
def test_metrics_by_hand():
    predictions, labels = T([1, 1, 0, 0, 1]), T([1, 0, 0, 1, 1])
    # tp = 2, predicted positives = 3, actual positives = 3: F1 = 2·2 / (3 + 3)
    values = compute_metrics(("accuracy", "f1"), predictions, labels)
    assert values == pytest.approx({"accuracy": 3 / 5, "f1": 4 / 6, "acc_f1": (3 / 5 + 4 / 6) / 2})
    assert compute_metrics(("accuracy",), predictions, labels) == {"accuracy": pytest.approx(0.6)}


@pytest.mark.parametrize(
    "predictions, labels, f1",
    [
        ([0, 0, 0, 0], [1, 0, 1, 0], 0.0),  # no predicted positive
        ([1, 1, 0, 0], [0, 0, 0, 0], 0.0),  # no true positive (and no actual positive)
        ([0, 1, 1, 0], [1, 0, 0, 1], 0.0),  # positives predicted and present, none right
        ([1, 0, 1, 1], [1, 0, 1, 1], 1.0),  # all correct
        ([0, 0, 0], [0, 0, 0], 0.0),  # all correct but no positive at all: F1 of class 1 is 0 by convention
        ([1, 1, 1, 1], [1, 0, 0, 0], 0.4),  # tp 1, predicted 4, actual 1: 2 / 5
    ],
)
def test_f1_edge_cases(predictions, labels, f1):
    assert f1_positive(T(predictions), T(labels)) == pytest.approx(f1)


def test_mean_std_is_over_models_without_the_seed():
    summary = mean_std([{"seed": 0, "accuracy": 0.5, "loss": 1.0}, {"seed": 7, "accuracy": 1.0, "loss": 3.0}])
    assert summary == {"accuracy": {"mean": 0.75, "std": 0.25}, "loss": {"mean": 2.0, "std": 1.0}}  # population std
    assert headline_metric(compute_metrics(("accuracy", "f1"), T([1]), T([1]))) == "acc_f1"
    assert headline_metric({"accuracy": 1.0, "loss": 0.0}) == "accuracy"


# --- tables --------------------------------------------------------------------------------------------
def summary(value: float, std: float = 0.0, f1: bool = True) -> dict:
    out = {"loss": {"mean": 0.5, "std": 0.0}, "accuracy": {"mean": value, "std": std}}
    if f1:
        out["acc_f1"] = {"mean": value, "std": std}
        out["accuracy"] = {"mean": value - 0.05, "std": std}  # the table must show acc_f1, not accuracy
    return out


def fake_run(
    root: Path,
    task: str,
    name: str,
    value: float,
    std: float = 0.01,
    val_losses=None,
    n_models=100,
    split="eval",
    checkpoint="minilm-l6",
    **settings,
) -> Path:
    """A run directory as distill + evaluate (or baselines) leave it: config.json, validation.jsonl, eval.json."""
    run = root / task / name
    run.mkdir(parents=True)
    if "baseline" not in settings:
        settings = {
            "task": task,
            "model": checkpoint,
            "label_type": "soft",
            "attention_type": "cls",
            "shots": 1,
            "steps": 1,
            "data_per_step": "same",
            **settings,
        }
        (run / "config.json").write_text(json.dumps(settings))
        (run / "validation.jsonl").write_text(
            "".join(
                json.dumps(
                    {"step": 10 * (i + 1), "loss": {"mean": loss, "std": 0.1}, "accuracy": {"mean": 0.5, "std": 0}}
                )
                + "\n"
                for i, loss in enumerate(val_losses or [])
            )
        )
    n = 1 if "baseline" in settings and settings["baseline"] != "random-real" else n_models
    (run / "eval.json").write_text(
        json.dumps(
            {
                "task": task,
                "split": split,
                "examples": 408,
                "checkpoint": checkpoint,
                "n_models": n,
                "settings": settings,
                "summary": summary(value, std if n > 1 else 0.0, f1=task == "mrpc"),
                "runs": [{}] * n,
                "seconds": 1.0,
            }
        )
    )
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "mrpc", "majority", 0.748, baseline="majority")
    full = fake_run(root, "mrpc", "full", 0.886, baseline="full")
    record = json.loads((full / "eval.json").read_text())
    record["best_on_eval"] = {"summary": summary(0.901), "lr": 5e-5, "epochs": 3, "selection": "best on the eval split"}
    (full / "eval.json").write_text(json.dumps(record))
    fake_run(root, "mrpc", "random-real", 0.700, 0.02, n_models=50, baseline="random-real", shots=1, steps=1)
    # three SL + AL 1-shot 1-step configurations (an α sweep): the lowest validation loss (b) wins, not the
    # best eval score (c)
    fake_run(root, "mrpc", "sl-al-a", 0.750, val_losses=[0.70, 0.60, 0.65], lr=0.1)
    fake_run(root, "mrpc", "sl-al-b", 0.650, val_losses=[0.55, 0.50, 0.52], lr=0.01)
    fake_run(root, "mrpc", "sl-al-c", 0.800, val_losses=[float("nan"), 0.58, 0.59], lr=0.001)
    fake_run(root, "mrpc", "hl", 0.748, 0.0, val_losses=[0.6], label_type="hard", attention_type="none")
    fake_run(root, "mrpc", "sl-al-3shots", 0.793, 0.005, val_losses=[0.4], shots=3)  # Table 3 only
    fake_run(root, "mrpc", "diff-3-3", 0.803, 0.008, val_losses=[0.4], shots=3, steps=3, data_per_step="different")
    fake_run(root, "mrpc", "diff-2-2", 0.790, 0.008, val_losses=[0.4], shots=2, steps=2, data_per_step="different")
    fake_run(root, "sst2", "sl", 0.825, 0.016, val_losses=[0.3], label_type="soft", attention_type="none")
    fake_run(
        root, "sst2", "sl-on-train", 0.990, val_losses=[0.1], label_type="soft", attention_type="none", split="train"
    )  # not an eval split
    return root


def test_table2_cells_selection_and_percent_of_full(runs, tmp_path, capsys):
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    text = (tmp_path / "results" / "table2.md").read_text()
    lines = text.splitlines()
    assert "|  | SST-2 | MRPC |" in lines  # the paper's column order
    assert "| Majority | — | 74.8 |" in lines  # single run: no ± (as the paper)
    assert "| HL | — | = majority: 74.8 ± 0.0 |" in lines  # says so first
    assert "| SL | 82.5 ± 1.6 | — |" in lines  # the train-split eval.json is ignored
    assert "| HL + AL | — | — |" in lines
    assert "| SL + AL | — | 65.0 ± 1.0 |" in lines  # sl-al-b: lowest validation loss
    assert "| Full dataset | — | 88.6 |" in lines  # chosen on held-out training data
    assert "| Full dataset, best on eval split (paper) | — | 90.1 |" in lines  # the paper's pick, labelled
    assert "| Random real | — | 70.0 ± 2.0 |" in lines
    percent = text.split("% of the full-dataset score")[1]
    assert f"| SL + AL | — | {65.0 / 88.6 * 100:.1f} |" in percent and "| HL | — | 84.4 |" in percent
    assert "lowest mean best validation loss" in text and "never the one with the best evaluation score" in text
    assert "differ only in --seed are pooled" in text
    assert "Checkpoint: minilm-l6." in text and "Evaluation models per cell (distilled, random real): 50, 100" in text
    assert "mrpc/sl-al-b (best validation loss 0.5000; 3 evaluated configuration(s) in the cell)" in text
    tables = json.loads((tmp_path / "results" / "tables.json").read_text())
    cell = tables["table2"]["rows"]["SL + AL"]["mrpc"]
    assert (
        cell["run"] == "mrpc/sl-al-b" and cell["metric"] == "acc_f1" and cell["candidates"] == 3
    )  # relative: committable
    assert cell["val_loss"] == 0.5 and tables["table2"]["rows"]["SL"]["sst2"]["metric"] == "accuracy"
    assert tables["table2"]["percent_of_full"]["SL + AL"]["mrpc"] == pytest.approx(65.0 / 88.6 * 100)
    assert tables["table2"]["percent_of_full"]["SL"]["sst2"] is None
    gap = text.split("Share of the gap")[1]
    assert f"| SL + AL | — | {(65.0 - 74.8) / (88.6 - 74.8) * 100:.1f} |" in gap and "| HL | — | 0.0 |" in gap
    assert tables["table2"]["gap_closed"]["Random real"]["mrpc"] == pytest.approx((70.0 - 74.8) / (88.6 - 74.8) * 100)
    assert "| SL + AL | — | 65.0 ± 1.0 |" in capsys.readouterr().out


def test_seeds_of_one_configuration_are_pooled_and_identical_data_counts_once(runs, tmp_path):
    """Seeds hold out different training slices, so their validation losses must not pick one seed: the cell
    pools every model of every seed (mean and population std over the models), whatever the losses say.
    (A task outside the registry, so that the stand-in distilled files are not read as safetensors.)"""
    per_model = {"s0": [0.70, 0.72, 0.74], "s1": [0.76, 0.80], "s2": [0.90]}
    for seed, (name, values) in enumerate(per_model.items()):
        run = fake_run(runs, "toy", name, 0.0, val_losses=[0.9 - 0.2 * seed], seed=seed, label_type="hard")
        record = json.loads((run / "eval.json").read_text())
        models = [{"seed": i, "accuracy": v, "loss": 0.5} for i, v in enumerate(values)]
        (run / "distilled_best.safetensors").write_bytes(name.encode())
        record.update(
            runs=models, n_models=len(models), summary=mean_std(models), distilled="distilled_best.safetensors"
        )
        (run / "eval.json").write_text(json.dumps(record))
    copy = runs / "toy" / "s0-again"  # the same distilled file, evaluated again
    copy.mkdir()
    for f in (runs / "toy" / "s0").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    cell = json.loads((tmp_path / "results" / "tables.json").read_text())["table2"]["rows"]["HL + AL"]["toy"]
    pooled = mean_std([{"accuracy": v} for values in per_model.values() for v in values])["accuracy"]
    assert cell["mean"] == pytest.approx(pooled["mean"]) and cell["std"] == pytest.approx(pooled["std"])
    assert cell["n_models"] == 6 and cell["seeds"] == [0, 1, 2] and cell["candidates"] == 1
    assert cell["run"] == "toy/s0, toy/s1, toy/s2" and cell["val_loss"] == pytest.approx(0.7)


def test_table3_rows(runs, tmp_path):
    fake_run(runs, "mrpc", "steps-5", 0.748, 0.0, val_losses=[0.6], steps=5)  # every model: the majority
    fake_run(runs, "mrpc", "hl-al-3shots", 0.771, 0.004, val_losses=[0.5], shots=3, label_type="hard")
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    text = (tmp_path / "results" / "table3.md").read_text()
    lines = text[: text.index("## Table 3, extended")].splitlines()
    rows = [l for l in lines if l.startswith(("| SL", "| HL"))]
    assert rows == [
        "| SL + AL | 1 | 1 | single step | — | 65.0 ± 1.0 |",
        "| SL + AL | 1 | 3 | single step | — | 79.3 ± 0.5 |",
        "| SL + AL | 1 | 5 | single step | — | — |",
        "| SL + AL | 3 | 1 | same | — | — |",
        "| SL + AL | 5 | 1 | same | — | = majority: 74.8 ± 0.0 |",
        "| SL + AL | 2 | 2 | different | — | 79.0 ± 0.8 |",  # a row the paper lacks, in its group
        "| SL + AL | 3 | 3 | different | — | 80.3 ± 0.8 |",
        "| SL + AL | 5 | 5 | different | — | — |",
        "| HL + AL | 1 | 3 | single step | — | 77.1 ± 0.4 |",
    ]  # hard labels: only the rows that ran


def test_table3_extended_shows_each_cells_cost_and_the_plot_follows_T(runs, tmp_path):
    # a resumed run: two distill invocations (wall times add, the peak is the larger), the first stopped by
    # SIGTERM (GNU time's note before its figures) and paused by SIGSTOP for 200.5 s (taken off), and one
    # evaluate, paused too (both ignored); the first invocation's CPU was not recorded, the second's was
    (runs / "mrpc" / "diff-3-3" / "resources.tsv").write_text(
        "paused distill 200.5\nCommand exited with non-zero status 143\ndistill 600.0 409600\n"
        "cpu Xeon (avx2 avx512f)\ndistill 500.5 512000\npaused evaluate 60\ncpu EPYC (avx2)\nevaluate 99.0 999999\n"
    )
    (runs / "mrpc" / "diff-2-2" / "resources.tsv").write_text("distill 120 307200\n")
    fake_run(runs, "mrpc", "diff-8-8", 0.81, 0.01, val_losses=[0.3], shots=8, steps=8, data_per_step="different")
    (runs / "mrpc" / "diff-8-8" / "resources.tsv").write_text("cpu EPYC (avx2)\ndistill 2400 614400\n")
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    text = (tmp_path / "results" / "table3.md").read_text()
    extended = text[text.index("## Table 3, extended") :].splitlines()
    row_3_3 = "| SL + AL | 3 | 3 | different | MRPC | 80.3 ± 0.8 | 15 min | 500 | Xeon (avx2 avx512f) + not recorded |"
    assert row_3_3 + " mrpc/diff-3-3 |" in extended
    assert (
        "| SL + AL | 8 | 8 | different | MRPC | 81.0 ± 1.0 | 40 min | 600 | EPYC (avx2) | mrpc/diff-8-8 |" in extended
    )
    assert "| SL + AL | 1 | 3 | single | MRPC | 79.3 ± 0.5 | — | — | — | mrpc/sl-al-3shots |" in extended  # no record
    series = report.steps_series(json.loads((tmp_path / "results" / "tables.json").read_text())["table3"])
    assert [(t, c["run"]) for t, c in series["mrpc"]] == [
        (1, "mrpc/sl-al-b"),
        (2, "mrpc/diff-2-2"),
        (3, "mrpc/diff-3-3"),
        (8, "mrpc/diff-8-8"),
    ]
    assert (tmp_path / "results" / "table3_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_fills_the_cost_of_a_run_that_predates_the_record_and_says_so(runs, tmp_path):
    (runs / "mrpc" / "sl-al-3shots" / "resources.tsv").write_text(
        "rerun abc1234 other\ncpu Xeon (avx2)\ndistill 300 204800\n"
    )
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    text = (tmp_path / "results" / "table3.md").read_text()
    cpu = "Xeon (avx2), a re-run at abc1234 (other data)"
    row = f"| SL + AL | 1 | 3 | single | MRPC | 79.3 ± 0.5 | 5 min | 200 | {cpu} | mrpc/sl-al-3shots |"
    assert row in text.splitlines()


@pytest.mark.parametrize(
    "bad", ["distill ten minutes", "paused 60", "distill 600.0 409600 extra", "cpu", "", "rerun abc1234 maybe"]
)
def test_a_malformed_resources_file_is_one_error_line(runs, tmp_path, capsys, bad):
    (runs / "mrpc" / "diff-3-3" / "resources.tsv").write_text(f"distill 1.0 1024\n{bad}\n")
    line = cli_error(report.main, ["--runs-dir", str(runs), "--out", str(tmp_path / "results")], capsys)
    assert "resources.tsv" in line and "WALL_SECONDS" in line and repr(bad) in line


def test_mixed_checkpoints_are_named_and_can_be_filtered(runs, tmp_path):
    fake_run(runs, "sst2", "bert", 0.90, val_losses=[0.2], checkpoint="bert-base-uncased", attention_type="none")
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "all")])
    assert (
        "Checkpoints: bert-base-uncased, minilm-l6 (cells mix checkpoints"
        in (tmp_path / "all" / "table2.md").read_text()
    )
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "one"), "--checkpoint", "bert-base-uncased"])
    text = (tmp_path / "one" / "table2.md").read_text()
    assert "|  | SST-2 |" in text and "| SL | 90.0 ± 1.0 |" in text and "Checkpoint: bert-base-uncased." in text


def test_qnli_dev_is_its_own_column_marked_not_the_papers_protocol(runs, tmp_path, capsys):
    """qnli_dev (QNLI's dev split cut into training and evaluation parts): its own column after the paper's
    tasks, titled so that nobody takes it for the paper's QNLI, and its protocol under every table it is in."""
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "without")])
    assert "†" not in (tmp_path / "without" / "table2.md").read_text()  # only a task with a protocol has one
    fake_run(runs, "qnli_dev", "majority", 0.501, baseline="majority")
    fake_run(runs, "qnli_dev", "cpu-sl-al", 0.60, val_losses=[0.6])
    fake_run(runs, "qnli_dev", "cpu-sl-al-3x", 0.61, val_losses=[0.7, 0.65], epochs=9)  # a budget series
    fake_run(runs, "rte", "majority", 0.527, baseline="majority")
    capsys.readouterr()
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    footnote = (
        "† QNLI (dev split): not the paper's protocol (QNLI train 104,743 / dev 5,463): GLUE QNLI's dev split "
        "alone (5,463 pairs), cut into 3,463 training and 2,000 evaluation pairs; evaluation part: the 2,000 rows"
    )
    # Table 2 and its two derived tables; Table 3 and its extended table; the budget table
    for name, tables in (("table2.md", 3), ("table3.md", 2), ("budget.md", 1)):
        blocks = (tmp_path / "results" / name).read_text().split("\n\n")  # paragraphs: a table, then its note
        marked = [i for i, block in enumerate(blocks) if block.startswith("|") and "QNLI (dev split)†" in block]
        assert len(marked) == tables and all(blocks[i + 1].startswith(footnote) for i in marked), name
    table2 = (tmp_path / "results" / "table2.md").read_text()
    assert "|  | SST-2 | MRPC | QNLI (dev split)† | RTE |" in table2.splitlines()
    assert "| SL + AL | — | 65.0 ± 1.0 | 60.0 ± 1.0 | — |" in table2.splitlines()
    assert "SL + AL / QNLI (dev split)†: qnli_dev/cpu-sl-al" in table2
    assert footnote in capsys.readouterr().out  # the table printed to the terminal carries it too
    protocols = json.loads((tmp_path / "results" / "tables.json").read_text())["protocols"]
    assert protocols == {"qnli_dev": tasks.get_task("qnli_dev").protocol}


def test_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no evaluated runs" in cli_error(report.main, ["--runs-dir", str(tmp_path / "empty")], capsys)
    assert "does not exist" in cli_error(report.main, ["--runs-dir", str(tmp_path / "nowhere")], capsys)
    broken = tmp_path / "broken" / "mrpc" / "x"
    broken.mkdir(parents=True)
    (broken / "eval.json").write_text("{not json")
    assert "is not an eval.json" in cli_error(report.main, ["--runs-dir", str(tmp_path / "broken")], capsys)


# --- sweep bookkeeping -------------------------------------------------------------------------------------
def test_sweep_plans_one_named_cell_per_grid_point(monkeypatch, tmp_path):
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path))
    args, passthrough = sweep.parse_args(["--task", "mrpc", "--preset", "quick", "--shots", "3"])
    cells = sweep.plan(args, passthrough)
    assert [(c["alpha"], c["inner_lr"]) for c in cells] == [(a, e) for a in (1e-3, 1e-2, 1e-1) for e in (1e-2, 1e-1)]
    assert len({c["name"] for c in cells}) == 6
    assert cells[0]["name"] == "soft-cls-s3-t1-same-S64-seed0-lr0.001-eta0.01"
    assert cells[0]["argv"][-6:] == ["--lr", "0.001", "--eta-init", "0.01", "--name", cells[0]["name"]]
    assert cells[0]["settings"]["epochs"] == 3 and cells[0]["settings"]["shots"] == 3  # preset passed through


def test_sweep_states_and_choice_by_validation_loss(tmp_path):
    new, unfinished, finished = (tmp_path / n for n in ("new", "unfinished", "finished"))
    for run in (unfinished, finished):
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(b"x")
        (run / "run.log").write_text("run ...\nstep 3: validation loss 0.6\n")
    (finished / "distilled_best.safetensors").write_bytes(b"x")
    with open(finished / "run.log", "a") as f:
        f.write("done: somewhere (validation loss 0.6)\n")
    assert [sweep.state(r) for r in (new, unfinished, finished)] == ["new", "unfinished", "finished"]
    cells = [
        {"alpha": 0.1, "status": "finished", "best_val_loss": 0.7},
        {"alpha": 0.01, "status": "finished", "best_val_loss": 0.5},
        {"alpha": 1.0, "status": "failed (exit 2)", "best_val_loss": None},
    ]
    assert sweep.choose(cells)["alpha"] == 0.01
    with pytest.raises(Exception, match="no cell"):
        sweep.choose(cells[2:])


def test_sweep_refuses_a_directory_with_other_settings(tmp_path):
    run = tmp_path / "cell"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 3, "lr": 0.01, "batch_size": 2, "device": "cuda"}))
    sweep.check_same_settings(run, {"epochs": 3, "lr": 0.01, "batch_size": 0, "device": None})  # derived/ignored keys
    with pytest.raises(Exception, match="epochs 3 there, 30 here"):
        sweep.check_same_settings(run, {"epochs": 30, "lr": 0.01})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "mrpc", "--lr", "0.1"], "--lr is set by the sweep"),
        (["--task", "mrpc", "--inner-lr", "0.1"], "--inner-lr is set by the sweep"),
        (["--task", "mrpc", "--eta-init", "0.1"], "--eta-init is set by the sweep"),
        (["--task", "mrpc", "--bogus"], "unrecognized arguments: --bogus"),
        (["--task", "mrpc", "--epochs", "0"], "--epochs must be ≥ 1"),
        (["--alphas", "0.1"], "--task"),
    ],
)
def test_sweep_bad_input_is_one_error_line(monkeypatch, tmp_path, capsys, argv, message):
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path))
    assert message in cli_error(sweep.main, argv, capsys)
    assert not any(tmp_path.iterdir())  # nothing was started


def test_memory_in_t_is_read_and_shown_with_its_ratio_to_t1(tmp_path):
    from ddattn.errors import UserError

    path = tmp_path / "memory_T.tsv"
    path.write_text(
        "task\tT\tpeak_mb\tcode\nsst2\t1\t500\told\nsst2\t16\t1000\told\nsst2\t1\t400\tnew\nsst2\t16\t560\tnew\n"
        "ag_news\t1\t600\tnew\nag_news\t16\t660\tnew\n"
    )
    memory = report.read_memory_in_t(path)
    assert memory == {
        ("sst2", "old"): [(1, 500.0), (16, 1000.0)],
        ("sst2", "new"): [(1, 400.0), (16, 560.0)],
        ("ag_news", "new"): [(1, 600.0), (16, 660.0)],
    }
    text = report.render_memory_in_t(memory)
    assert "| 16 | 1000 MB (2.00×) | 560 MB (1.40×) | 660 MB (1.10×) |" in text
    assert "| T | SST-2, old | SST-2, new | AGNews, new |" in text
    assert report.read_memory_in_t(tmp_path / "absent.tsv") == {} and report.render_memory_in_t({}) == ""
    path.write_text("task\tT\tpeak_mb\tcode\nsst2\t1\tmany\told\n")
    with pytest.raises(UserError, match="line 2"):
        report.read_memory_in_t(path)
    path.write_text("T\tpeak_mb\tcode\n1\t500\told\n")  # the file before it had a task column
    with pytest.raises(UserError, match="task<tab>T"):
        report.read_memory_in_t(path)


def test_the_budget_series_are_the_runs_that_differ_only_in_outer_steps(runs, tmp_path):
    """budget.md: sl-al-b (its validations at steps 10..30) again for 3× and 10× the outer steps, the 10× run
    under the gpu preset and written after settings were added (their values then the old behaviour's); a run
    with another α is not in the series, nor is any run without such a twin."""
    fake_run(runs, "mrpc", "sl-al-b-3x", 0.66, val_losses=[0.6] * 8 + [0.45], lr=0.01, epochs=9)
    added_later = {"kernels": "auto", "held_out": "random", "real_rows": "all", "balance_classes": False}
    fake_run(
        runs,
        "mrpc",
        "sl-al-b-10x",
        0.67,
        val_losses=[0.49] * 29 + [0.47],
        lr=0.01,
        epochs=30,
        preset="gpu",
        **added_later,
    )
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    lines = (tmp_path / "results" / "budget.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| MRPC")]
    assert rows == [
        "| MRPC | mrpc/sl-al-b | 30 | 1.0× | 0.5000 (20) | 65.0 ± 1.0 |",
        "| MRPC | mrpc/sl-al-b-3x | 90 | 3.0× | 0.4500 (90) | 66.0 ± 1.0 |",
        "| MRPC | mrpc/sl-al-b-10x | 300 | 10.0× | 0.4700 (300) | 67.0 ± 1.0 |",
    ]
    budget = json.loads((tmp_path / "results" / "tables.json").read_text())["budget"]
    assert list(budget) == ["mrpc"] and "curve" not in budget["mrpc"][0]
    assert (tmp_path / "results" / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_out_losses_on_whole_sentences_do_not_compete_with_random_slices(runs, tmp_path):
    """sst2/sl (random slice, loss 0.3) stays the SL cell against a lower loss measured on whole sentences;
    with only whole-sentence runs in a cell, they are compared with each other."""
    fake_run(runs, "sst2", "sl-sentences", 0.70, val_losses=[0.2], attention_type="none", held_out="sentences")
    fake_run(runs, "sst2", "sl-al-sentences-a", 0.71, val_losses=[0.5], held_out="sentences")
    fake_run(runs, "sst2", "sl-al-sentences-b", 0.72, val_losses=[0.4], held_out="sentences", real_rows="sentences")
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    cells = json.loads((tmp_path / "results" / "tables.json").read_text())["table2"]["rows"]
    assert cells["SL"]["sst2"]["run"] == "sst2/sl" and cells["SL"]["sst2"]["candidates"] == 2
    assert cells["SL + AL"]["sst2"]["run"] == "sst2/sl-al-sentences-b"


def test_configurations_are_compared_on_the_seeds_they_share(runs, tmp_path):
    """Each seed holds out its own slice: a configuration run with seeds 0 and 1 is compared with one run with
    seed 0 alone on seed 0's slice (0.53 against 0.54), not by its mean over both (0.545), and the cell
    then pools both of its seeds."""
    budget = dict(shots=3, label_type="hard")
    fake_run(runs, "mrpc", "3x", 0.785, val_losses=[0.53], seed=0, epochs=9, **budget)
    fake_run(runs, "mrpc", "3x-s1", 0.781, val_losses=[0.56], seed=1, epochs=9, **budget)
    fake_run(runs, "mrpc", "10x", 0.775, val_losses=[0.54], seed=0, epochs=30, **budget)
    report.main(["--runs-dir", str(runs), "--out", str(tmp_path / "results")])
    rows = json.loads((tmp_path / "results" / "tables.json").read_text())["table3"]["rows"]
    cell = next(r["cells"]["mrpc"] for r in rows if (r["labels"], r["steps"], r["shots"]) == ("HL + AL", 1, 3))
    assert cell["run"] == "mrpc/3x, mrpc/3x-s1" and cell["seeds"] == [0, 1] and cell["candidates"] == 2
    assert cell["mean"] == pytest.approx(0.783)
