"""Baselines (`python -m ddattn.baselines`) and evaluation determinism (`python -m ddattn.evaluate`) on a
small copy of MRPC (helpers.small_mrpc): 200 training pairs and 32 dev pairs, so that scoring one model
takes a fraction of a second.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddattn import baselines, evaluate
from tests.helpers import DEV_ROWS, REPO, cli_error, env_for, heads, one_error_line, small_mrpc


@pytest.fixture
def base(tmp_path_factory, monkeypatch):
    """The session's shared base dir, with DDATTN_RUNS_DIR/DATA_DIR pointing into it (in-process runs)."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(root / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(small_mrpc(root)))
    return root


def dev_labels(data: Path):
    with open(data / "mrpc" / "dev.tsv", encoding="utf-8-sig") as f:
        return [int(row["Quality"]) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def read_eval(base: Path, name: str) -> dict:
    return json.loads((base / "runs" / "mrpc" / name / "eval.json").read_text())


LAYOUT = {"task", "split", "examples", "checkpoint", "n_models", "settings", "summary", "runs", "seconds"}
SMALL = ["--task", "mrpc", "--max-length", "32"]


# --- majority ------------------------------------------------------------------------------------------
def test_majority_is_the_hand_counted_majority_class(base):
    baselines.main(["majority", *SMALL])
    result = read_eval(base, "majority")
    assert LAYOUT <= set(result) and result["split"] == "eval" and result["examples"] == DEV_ROWS
    assert result["settings"]["baseline"] == "majority" and result["checkpoint"] == "minilm-l6"
    with open(small_mrpc(base) / "mrpc" / "train.tsv", encoding="utf-8-sig") as f:
        train = [int(row["Quality"]) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    winner = int(sum(train) * 2 > len(train))
    assert result["settings"]["majority_class"] == winner == 1  # MRPC is 68 % paraphrases
    labels = dev_labels(small_mrpc(base))
    positives = sum(labels)
    accuracy = positives / len(labels)  # always predicting 1
    f1 = 2 * positives / (len(labels) + positives)  # tp = positives, predicted = all
    summary = result["summary"]
    assert summary["accuracy"]["mean"] == pytest.approx(accuracy) and summary["f1"]["mean"] == pytest.approx(f1)
    assert summary["acc_f1"] == {"mean": pytest.approx((accuracy + f1) / 2), "std": 0.0}
    assert len(result["runs"]) == 1


# --- full-dataset fine-tuning ------------------------------------------------------------------------------
def test_full_grid_is_chosen_on_held_out_training_data(base):
    baselines.main(
        [
            "full",
            *SMALL,
            "--train-limit",
            "24",
            "--val-size",
            "8",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "2",
            "--lrs",
            "2e-5",
            "1e-3",
        ]
    )
    result = read_eval(base, "full")
    assert LAYOUT <= set(result) and result["settings"]["baseline"] == "full"
    candidates = result["candidates"]
    assert [(c["lr"], c["epochs"]) for c in candidates] == [(2e-5, 1), (2e-5, 2), (1e-3, 1), (1e-3, 2)]
    chosen = max(candidates, key=lambda c: (c["validation"]["acc_f1"], -c["validation"]["loss"]))
    assert (result["settings"]["lr"], result["settings"]["epochs"]) == (chosen["lr"], chosen["epochs"])
    assert result["summary"] == chosen["summary"] and "held-out training" in result["settings"]["selection"]
    assert result["settings"]["trained_on"] == 16  # the held-out slice is not trained on
    best = max(candidates, key=lambda c: c["summary"]["acc_f1"]["mean"])
    assert result["best_on_eval"]["summary"] == best["summary"] and "eval split" in result["best_on_eval"]["selection"]
    assert result["settings"]["weight_decay"] == 0.01 and len(result["commit"]) >= 7
    assert all(torch.isfinite(torch.tensor(c["summary"]["loss"]["mean"])) for c in candidates)


def test_an_interrupted_full_run_reuses_only_candidates_of_the_same_recipe(base, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path))
    argv = [
        "full",
        *SMALL,
        "--train-limit",
        "20",
        "--val-size",
        "8",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--lrs",
        "2e-5",
        "1e-3",
        "--group-by-length",
    ]
    baselines.main(argv)
    first = json.loads((tmp_path / "mrpc" / "full" / "eval.json").read_text())
    saved = json.loads((tmp_path / "mrpc" / "full" / "candidates.json").read_text())
    assert saved["candidates"] == first["candidates"] and saved["recipe"]["train_examples"] == 20

    def no_training(*_):
        raise AssertionError("a finished candidate was trained again")

    monkeypatch.setattr(baselines, "fine_tune_full", no_training)
    baselines.main(argv)  # every candidate finished: nothing is trained
    again = json.loads((tmp_path / "mrpc" / "full" / "eval.json").read_text())
    assert again["candidates"] == first["candidates"] and again["summary"] == first["summary"]
    assert capsys.readouterr().out.count("finished before") == 2
    with pytest.raises(AssertionError, match="trained again"):  # another recipe: the saved ones are not reused
        baselines.main(argv + ["--clip", "0.5"])
    assert "not reused" in capsys.readouterr().out


def test_length_grouped_batches_keep_the_examples_and_cut_the_padding():
    lengths = torch.randint(5, 120, (1000,), generator=torch.Generator().manual_seed(0))
    rows = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    grouped = baselines.length_grouped(rows, lengths, 32, torch.Generator().manual_seed(2), group=10)
    assert sorted(torch.cat(grouped).tolist()) == list(range(1000)) and max(map(len, grouped)) == 32
    width = sum(len(b) * int(lengths[b].max()) for b in grouped)
    plain = sum(len(b) * int(lengths[b].max()) for b in rows.split(32))
    real = int(lengths.sum())
    assert width - real < 0.2 * (plain - real)  # most of the padding of random batches is gone


def test_fine_tuning_trains_every_parameter_with_decoupled_decay(tiny):
    config, theta = tiny
    leaves = baselines.trainable(theta)
    assert all(v.is_leaf and v.requires_grad for v in leaves.values())  # word embeddings included
    optimizer = baselines.adamw(leaves, lr=1e-2, weight_decay=0.01)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(leaves)
    assert baselines.no_decay("layers.0.attention.norm.weight") and not baselines.no_decay("embeddings.word")
    batch = {
        "input_ids": torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]),
        "token_type_ids": torch.zeros(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([0, 1]),
    }
    trained = baselines.fit(leaves, config, [batch] * 3, optimizer)
    assert not trained["embeddings.word"].requires_grad
    assert not torch.equal(trained["embeddings.word"][5], theta["embeddings.word"][5])  # a used row moved
    unused = theta["embeddings.word"][30]  # zero gradient: only the decay
    assert torch.allclose(trained["embeddings.word"][30], unused * (1 - 1e-2 * 0.01) ** 3, rtol=1e-12, atol=0)


# --- k random real examples --------------------------------------------------------------------------------
def test_draw_shots_takes_k_per_class_from_the_pool_in_distilled_order():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2])
    pool = torch.tensor([0, 1, 2, 3, 4, 8, 9, 10])
    rows = baselines.draw_shots(labels, pool, 2, 3, torch.Generator().manual_seed(0))
    assert len(rows) == 6 and set(rows.tolist()) <= set(pool.tolist()) and len(set(rows.tolist())) == 6
    assert labels[rows].tolist() == [0, 1, 2, 0, 1, 2]  # row i has class i mod C
    again = baselines.draw_shots(labels, pool, 2, 3, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again)
    with pytest.raises(Exception, match="fewer than --shots 3"):
        baselines.draw_shots(labels, pool, 3, 3, torch.Generator().manual_seed(0))


def test_random_real_picks_the_lr_on_held_out_training_data(base):
    baselines.main(
        [
            "random-real",
            *SMALL,
            "--train-limit",
            "64",
            "--val-size",
            "16",
            "--val-models",
            "1",
            "--n-models",
            "2",
            "--lr-grid",
            "1e-2",
            "1e4",
        ]
    )
    result = read_eval(base, "random-real")
    assert LAYOUT <= set(result) and result["n_models"] == 2 and [r["seed"] for r in result["runs"]] == heads(2)
    search = {c["lr"]: c["validation"]["loss"]["mean"] for c in result["lr_search"]}
    assert set(search) == {1e-2, 1e4}
    assert result["settings"]["lr"] == 1e-2 and "never the eval split" in result["settings"]["selection"]
    assert result["settings"]["shots"] == 1 and result["settings"]["steps"] == 1
    assert set(result["runs"][0]) == {"seed", "loss", "accuracy", "f1", "acc_f1"}
    a, b = (r["acc_f1"] for r in result["runs"])  # two models: mean and population std
    assert result["summary"]["acc_f1"] == pytest.approx({"mean": (a + b) / 2, "std": abs(a - b) / 2})


# --- evaluation --------------------------------------------------------------------------------------------
def test_evaluation_is_deterministic(base, tiny_run, tmp_path):
    """The same seeds give the same eval.json numbers, from the command line and in-process alike."""
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.evaluate", str(tiny_run), "--n-models", "2", "--out", str(tmp_path / "a.json")],
        cwd=REPO,
        env=env_for(base),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    evaluate.main([str(tiny_run), "--n-models", "2", "--out", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a["examples"] == DEV_ROWS and [r["seed"] for r in a["runs"]] == heads(2) and a["n_models"] == 2
    assert a["settings"]["label_type"] == "soft" and a["checkpoint"] == "minilm-l6"
    assert (a["summary"], a["runs"]) == (b["summary"], b["runs"])


# --- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope", "--task", "mrpc"], "invalid choice"),
        (["majority"], "--task"),
        (["majority", "--task", "imdb"], "invalid choice"),
        (["full", "--task", "mrpc", "--epochs", "0"], "--epochs must be ≥ 1"),
        (["random-real", "--task", "mrpc", "--lr-grid", "0.1", "-1"], "--lr-grid must be positive"),
        (["random-real", "--task", "mrpc", "--train-limit", "10", "--val-size", "16"], "cannot hold --val-size"),
    ],
)
def test_bad_input_is_one_error_line(base, capsys, argv, message):
    assert message in cli_error(baselines.main, argv, capsys)


def test_command_line_error_exits_2(base):
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.baselines", "full", "--task", "mrpc", "--shots", "0"],
        cwd=REPO,
        env=env_for(base),
        capture_output=True,
        text=True,
    )
    assert one_error_line(done) == done.stderr.strip() == "error: --shots must be ≥ 1, not 0"
