"""Using a distilled dataset: `python -m ddattn.train` (export in the Hugging Face layout), `python -m
ddattn.predict`, and the run's README.md card (ddattn/card.py), on the tiny distillation run (the `tiny_run`
fixture)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddattn import baselines, card, convert, evaluate, predict, train
from ddattn import data as taskdata
from ddattn.export import load_exported
from ddattn.files import load_pretrained
from ddattn.method.bert import bert_forward
from ddattn.paths import weights_dir
from ddattn.settings import parse_args, saved_settings
from tests.helpers import REPO, cli_error, env_for, one_error_line, small_mrpc, snapshot

PAIR = ["The cat sat.", "A cat was sitting."]


def base_of(run: Path) -> Path:
    """The test session's base dir that holds <base>/runs/mrpc/tiny and the small MRPC data."""
    return run.parents[2]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "mrpc-tiny"
    train.main([str(tiny_run), "--out", str(out)])
    return out


def single_text_copy(exported: Path, target: Path) -> Path:
    """The exported classifier relabelled as reading single texts (the model itself does not care)."""
    shutil.copytree(exported, target)
    config = json.loads((target / "config.json").read_text())
    config["ddattn"].update(task="sst2", text="single")
    (target / "config.json").write_text(json.dumps(config))
    return target


# --- train: export and round trip --------------------------------------------------------------------------
def test_export_round_trips_through_convert_bit_for_bit(tiny_run, exported, tmp_path):
    trained = train.train_classifier(tiny_run)  # the same θ_T, trained again
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    convert.convert(exported, tmp_path / "back")  # the encoder, as convert reads any BERT
    config, encoder = load_pretrained(tmp_path / "back")
    assert config == trained.config
    assert all(torch.equal(encoder[k], trained.theta[k]) for k in encoder)
    again = load_exported(exported)  # and the whole classifier
    assert again.theta.keys() == trained.theta.keys()
    assert all(torch.equal(again.theta[k], trained.theta[k]) for k in trained.theta)
    assert not torch.equal(
        trained.theta["classifier.weight"],  # fine-tuned, not the fresh head
        train.fresh_model(encoder, config, 2, 0)["classifier.weight"],
    )
    assert (again.label_names, again.max_length, again.is_pair, again.task) == (
        ("not_equivalent", "equivalent"),
        32,
        True,
        "mrpc",
    )
    assert (exported / "tokenizer.json").read_bytes() == (weights_dir() / "minilm-l6" / "tokenizer.json").read_bytes()


def test_export_has_hugging_face_names_and_config(exported):
    tensors = load_file(str(exported / "model.safetensors"))
    assert "bert.encoder.layer.5.attention.self.value.weight" in tensors and tensors["classifier.weight"].shape == (
        2,
        384,
    )
    assert all(k.startswith(("bert.embeddings.", "bert.encoder.", "bert.pooler.", "classifier.")) for k in tensors)
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert config["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    assert config["num_hidden_layers"] == 6 and config["hidden_act"] == "gelu"
    assert config["ddattn"]["text"] == "pair" and config["ddattn"]["max_length"] == 32


def test_transformers_loads_the_export_and_agrees(exported):
    """Its tokenizer and BertForSequenceClassification read the export as ours does. Skipped where transformers
    is not installed (it is no dependency of ddattn); CI runs it in a throwaway environment (.ci/transformers)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForSequenceClassification.from_pretrained(str(exported)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    ours = load_exported(exported)
    examples = predict.examples_from_texts(ours, [*PAIR, "Stocks fell sharply on Monday.", "Shares dropped."])
    batch = taskdata.collate(taskdata.encode(taskdata.load_tokenizer(ours.tokenizer_path, 32), examples), [0, 1])
    theirs_ids = tokenizer(
        [e.text_a for e in examples],
        [e.text_b for e in examples],
        padding="max_length",
        max_length=batch["input_ids"].shape[1],
        return_tensors="pt",
    )
    assert torch.equal(theirs_ids["input_ids"], batch["input_ids"])
    with torch.no_grad():
        theirs = model(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]
        ).logits
    mine = bert_forward(
        ours.theta,
        ours.config,
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        attention_type="none",
    ).logits
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    assert torch.allclose(theirs, mine, atol=1e-5)


def test_train_and_predict_from_the_command_line(tiny_run, tmp_path):
    """The acceptance chain: train → exported dir → predict prints a label and its probability."""
    env = env_for(base_of(tiny_run))
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.train", str(tiny_run), "--out", str(tmp_path / "m")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.predict", str(tmp_path / "m"), *PAIR],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r'(not_equivalent|equivalent)  (0\.\d{3}|1\.000)  "The cat sat\." "A cat was sitting\."\n', done.stdout
    ), done.stdout


# --- predict -----------------------------------------------------------------------------------------------
def test_predict_batches_in_any_order_give_each_input_its_own_probabilities(exported):
    classifier = load_exported(exported)
    texts = [*PAIR, "Stocks fell sharply on Monday after the report.", "Shares dropped.", "Hi.", "Hello there, friend."]
    examples = predict.examples_from_texts(classifier, texts)
    together = predict.probabilities(classifier, examples, batch_size=2)
    alone = torch.cat([predict.probabilities(classifier, [e], batch_size=1) for e in examples])
    assert together.shape == (3, 2) and torch.allclose(together.sum(-1), torch.ones(3))
    assert torch.allclose(together, alone, atol=1e-6)


def test_predict_a_run_trains_the_same_model_as_train(tiny_run, exported, capsys):
    predict.main([str(exported), *PAIR])
    from_export = capsys.readouterr().out
    predict.main([str(tiny_run), *PAIR])
    assert capsys.readouterr().out == from_export and from_export.count("\n") == 1


def test_predict_single_texts_one_line_each(exported, tmp_path, capsys):
    single = single_text_copy(exported, tmp_path / "single")
    predict.main([str(single), "one text", "another text"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith('  "one text"') and lines[1].endswith('  "another text"')


def test_predict_file_writes_labels_and_probabilities(exported, tmp_path, capsys):
    rows = [
        {"id": str(i), "text_a": f"Sentence number {i} is here.", "text_b": "A sentence." * (i + 1)} for i in range(5)
    ]
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "text_a", "text_b"])
        writer.writeheader()
        writer.writerows(rows)
    predict.main(
        [str(exported), "--file", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv"), "--batch-size", "2"]
    )
    assert "predict" in capsys.readouterr().err  # the progress bar
    with open(tmp_path / "out.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert list(out[0]) == ["id", "text_a", "text_b", "label", "p_not_equivalent", "p_equivalent"]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    for r in out:
        p = {name: float(r[f"p_{name}"]) for name in ("not_equivalent", "equivalent")}
        assert abs(sum(p.values()) - 1) < 1e-5 and r["label"] == max(p, key=p.get)


# --- the card ----------------------------------------------------------------------------------------------
def table_row(text: str, starts: str) -> list:
    line = next(l for l in text.splitlines() if l.startswith(starts))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_card_after_distill_and_its_numbers_are_eval_json(tiny_run, tmp_path, monkeypatch):
    assert "## The distilled data" in (tiny_run / "README.md").read_text()  # written by distill
    copy = shutil.copytree(tiny_run, tmp_path / "runs" / "mrpc" / "tiny")  # evaluated apart from the shared run
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(small_mrpc(base_of(tiny_run))))
    baselines.main(["majority", "--task", "mrpc"])
    evaluate.main([str(copy), "--n-models", "2"])  # rewrites the card
    text = (copy / "README.md").read_text()
    assert "|  | accuracy | f1 | acc_f1 |" in text
    for result, starts in ((copy / "eval.json", "| this run"), (copy.parent / "majority" / "eval.json", "| Majority")):
        summary = json.loads(result.read_text())["summary"]
        assert table_row(text, starts)[1:] == [
            f"{summary[m]['mean'] * 100:.2f} ± {summary[m]['std'] * 100:.2f}" for m in ("accuracy", "f1", "acc_f1")
        ]
    for part in (
        "## Task",
        "## Evaluation",
        "## Settings",
        "## Budget",
        "## Commands",
        "0 not_equivalent, 1 equivalent",
        "nearest tokens (mean cosine",
        "η̃_t = softplus(lr_raw_t): step 1:",
        "![attention labels](attention_labels.png)",
        "python -m ddattn.train runs/mrpc/tiny --out exported/mrpc-tiny",
        '"The cat sat." "A cat was sitting."',
        "| outer steps | 3 |",
        "cpu × 1",
    ):
        assert part in text, part
    assert (copy / "attention_labels.png").is_file()


def test_card_without_matplotlib_says_so(tiny_run, tmp_path, monkeypatch):
    copy = shutil.copytree(tiny_run, tmp_path / "tiny", ignore=shutil.ignore_patterns("*.png", "checkpoint.pt"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = card.write_card(copy).read_text()
    assert "matplotlib is not installed" in text and "![attention labels]" not in text
    assert not (copy / "attention_labels.png").exists()


def test_card_reproduce_command_parses_back_to_the_settings(tiny_run):
    settings = json.loads((tiny_run / "config.json").read_text())
    command = card.distill_command(settings).replace("\\\n", " ").split()[3:]
    assert saved_settings(parse_args(command)) == settings


# --- bad input: one line, exit 2, nothing overwritten ------------------------------------------------------
def test_train_refuses_a_run_without_distilled_data(tiny_run, tmp_path, capsys):
    shutil.copy(tiny_run / "config.json", tmp_path / "config.json")
    assert "distilled_best.safetensors is missing" in cli_error(
        train.main, [str(tmp_path), "--out", str(tmp_path / "m")], capsys
    )
    assert not (tmp_path / "m").exists()


def test_train_refuses_an_existing_export_dir_and_leaves_it_byte_identical(tiny_run, exported, capsys):
    before = snapshot(exported)
    assert "already exists" in cli_error(train.main, [str(tiny_run), "--out", str(exported), "--seed", "7"], capsys)
    assert snapshot(exported) == before


def test_train_refuses_an_existing_export_dir_from_the_command_line(tiny_run, exported):
    before = snapshot(exported)
    done = subprocess.run(
        [sys.executable, "-m", "ddattn.train", str(tiny_run), "--out", str(exported)],
        cwd=REPO,
        env=env_for(base_of(tiny_run)),
        capture_output=True,
        text=True,
    )
    assert "already exists" in one_error_line(done)
    assert snapshot(exported) == before


def write_pairs_csv(path: Path) -> Path:
    path.write_text("text_a,text_b\nThe cat sat.,A cat was sitting.\n")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("pairs for a single-text task", "classifies single texts, so"),
        ("odd number of texts for a pair task", "classifies sentence pairs: give the texts two by two"),
        ("neither export nor run", "is neither a classifier exported"),
        ("texts and --file", "give either texts or --file"),
        ("existing --out", "already exists"),
    ],
)
def test_predict_bad_input_is_one_error_line_and_writes_nothing(exported, tmp_path, capsys, case, message):
    pairs = write_pairs_csv(tmp_path / "pairs.csv")
    (tmp_path / "taken.csv").write_text("keep me\n")
    argv = {
        "pairs for a single-text task": [
            str(single_text_copy(exported, tmp_path / "single")),
            "--file",
            str(pairs),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        "odd number of texts for a pair task": [str(exported), "one", "two", "three"],
        "neither export nor run": [str(tmp_path), "text"],
        "texts and --file": [str(exported), "text", "--file", str(pairs)],
        "existing --out": [str(exported), "--file", str(pairs), "--out", str(tmp_path / "taken.csv")],
    }[case]
    assert message in cli_error(predict.main, argv, capsys)
    assert not (tmp_path / "out.csv").exists() and (tmp_path / "taken.csv").read_text() == "keep me\n"


def test_a_reproduce_command_gives_a_switch_only_where_it_is_on():
    settings = {"task": "mrpc", "balance_classes": True, "max_steps": 0, "seed": 0, "lr": 0.01, "held_out": "random"}
    command = card.distill_command(settings)
    assert "--balance-classes --max-steps 0 --seed 0" in command
    assert "--balance-classes" not in card.distill_command({**settings, "balance_classes": False})
