"""Task data: real shared files, tokenisation against the golden fixture, batches, cache, bad files, fetching."""

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from ddattn import data
from ddattn.errors import UserError
from ddattn.paths import shared_data_dir
from tests.conftest import GOLDEN, REPO

SHARED = shared_data_dir()
TOKENIZER = REPO / "weights" / "minilm-l6" / "tokenizer.json"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")


def count(task, split):
    return len(data.read_examples(data.get_task(task), split, SHARED))


@needs_shared
@pytest.mark.parametrize("task,split,rows", [("mrpc", "train", 3668), ("mrpc", "eval", 408), ("sst2", "train", 67349),
                                             ("sst2", "eval", 872), ("rte", "train", 2490), ("rte", "eval", 277),
                                             ("qnli", "eval", 5463), ("ag_news", "eval", 7600)])
def test_row_counts_of_the_shared_files(task, split, rows):
    assert count(task, split) == rows


@needs_shared
def test_labels_and_known_rows():
    ag = data.read_examples(data.get_task("ag_news"), "eval", SHARED)
    assert torch.bincount(torch.tensor([e.label for e in ag])).tolist() == [1900] * 4
    subset = data.read_examples(data.get_task("ag_news"), "train", SHARED)     # falls back to train_subset.csv
    assert len(subset) == 5000 and {e.label for e in subset} == {0, 1, 2, 3}
    mrpc = data.read_examples(data.get_task("mrpc"), "train", SHARED)
    assert mrpc[0].label == 1 and mrpc[0].text_a.startswith('Amrozi accused his brother , whom he called " the witness "')
    assert sum(e.label for e in mrpc) == 2474                                   # SOURCES.md: 2474 positives
    qnli = data.read_examples(data.get_task("qnli"), "eval", SHARED)
    assert qnli[0].text_a == "What came into force after the new constitution was herald?" and qnli[0].label == 0
    rte = data.read_examples(data.get_task("rte"), "eval", SHARED)
    assert {e.label for e in rte} == {0, 1} and rte[0].text_b is not None
    sst = data.read_examples(data.get_task("sst2"), "eval", SHARED)
    assert sst[0].text_b is None and sum(e.label for e in sst) == 444


def test_tokenizer_matches_the_golden_ids():
    golden = load_file(str(GOLDEN))
    texts = json.loads(GOLDEN.with_suffix(".json").read_text())["texts"]
    examples = [data.Example(a, b, 0) for a, b in texts]
    encoded = data.encode(data.load_tokenizer(TOKENIZER, max_length=24), examples)
    width = golden["forward.input_ids"].shape[1]
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    ids[:, :encoded.input_ids.shape[1]] = encoded.input_ids.long()
    types = torch.zeros_like(ids)
    types[:, :encoded.token_type_ids.shape[1]] = encoded.token_type_ids.long()
    assert torch.equal(ids, golden["forward.input_ids"])
    assert torch.equal(types, golden["forward.token_type_ids"])
    mask = (torch.arange(width)[None] < encoded.lengths[:, None]).long()
    assert torch.equal(mask, golden["forward.attention_mask"])


def write_mrpc(folder, rows, header="\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_batches_pad_to_multiples_of_eight_and_mask(tmp_path):
    rows = [f"{i % 2}\t{i}\t{i + 1}\t{'word ' * (i + 1)}\t\"quoted\" {'x ' * i}" for i in range(10)]
    write_mrpc(tmp_path / "mrpc", rows)
    split = data.load_split(data.get_task("mrpc"), "train", TOKENIZER, 32, tmp_path)
    assert len(split) == 10
    seen = []
    for batch in data.batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 or width == split.input_ids.shape[1]
        lengths = batch["attention_mask"].sum(1)
        assert lengths.max() > width - 8
        assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)
        assert batch["token_type_ids"].max() == 1                    # pairs: second sentence has type 1
        seen += batch["labels"].tolist()
    assert sorted(seen) == sorted(split.labels.tolist())
    again = [b["labels"].tolist() for b in data.batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert sum(again, []) == seen                                    # same generator seed, same order


def test_cache_hits_and_invalidates(tmp_path):
    write_mrpc(tmp_path / "mrpc", ["1\t1\t2\tA first sentence .\tA second one ."])
    task = data.get_task("mrpc")
    first = data.load_split(task, "train", TOKENIZER, 16, tmp_path)
    cached = list((tmp_path / "mrpc" / "cache").iterdir())
    assert len(cached) == 1
    second = data.load_split(task, "train", TOKENIZER, 16, tmp_path)
    assert torch.equal(first.input_ids, second.input_ids) and len(list((tmp_path / "mrpc" / "cache").iterdir())) == 1
    data.load_split(task, "train", TOKENIZER, 8, tmp_path)            # another max_length: another cache file
    assert len(list((tmp_path / "mrpc" / "cache").iterdir())) == 2
    short = data.load_split(task, "train", TOKENIZER, 8, tmp_path)
    assert short.input_ids.shape[1] == 8


def test_split_train_val_is_disjoint_and_seeded():
    train, val = data.split_train_val(100, 20, seed=1)
    assert len(val) == 20 and len(train) == 80 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, data.split_train_val(100, 20, seed=1)[1])


@pytest.mark.parametrize("rows,message", [
    (["1\t1\t2\tonly three"], "train.tsv:2: expected 5 fields, found 4"),
    (["7\t1\t2\ta\tb"], "train.tsv:2: unknown label '7'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, rows, message):
    write_mrpc(tmp_path / "mrpc", rows)
    with pytest.raises(UserError, match=message):
        data.read_examples(data.get_task("mrpc"), "train", tmp_path)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(UserError, match=r"make data TASK=rte"):
        data.read_examples(data.get_task("rte"), "train", tmp_path)
    with pytest.raises(UserError, match="unknown task 'nope'.*mrpc"):
        data.get_task("nope")


def test_custom_task_reads_named_columns(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"a, quoted, text",pos\nplain,neg\n')
    (tmp_path / "eval.csv").write_text("text,label\nx,neg\n")
    task = data.custom_task(tmp_path / "train.csv", tmp_path / "eval.csv", ["text"], "label", ["neg", "pos"])
    assert data.read_examples(task, "train") == [data.Example("a, quoted, text", None, 1), data.Example("plain", None, 0)]
    assert task.num_classes == 2 and not task.is_pair


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ddattn.data", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def assert_one_error_line(done, fragment):
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr


def test_cli_errors_are_one_line(tmp_path):
    assert_one_error_line(cli("--task", "nope", "--data-dir", str(tmp_path)), "unknown task")
    assert_one_error_line(cli("--task", "rte", "--bogus"), "unrecognized arguments")


@needs_shared
def test_make_data_copies_from_shared(tmp_path):
    done = cli("--task", "mrpc", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "train 3668, eval 408" in done.stdout
    assert (tmp_path / "mrpc" / "train.tsv").read_bytes() == (SHARED / "mrpc" / "train.tsv").read_bytes()


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server serving a tiny RTE mirror (rte/train.tsv, rte/dev.tsv)."""
    root = tmp_path / "mirror"
    (root / "rte").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (root / "rte" / name).write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat .\tAn animal .\tentailment\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_from_a_mirror(tmp_path, mirror):
    env = {"DDATTN_SHARED_DATA": str(tmp_path / "no-shared"), "DDATTN_DATA_URL": mirror}
    done = cli("--task", "rte", "--data-dir", str(tmp_path / "data"), env=env)
    assert done.returncode == 0, done.stderr
    assert "train 1, eval 1" in done.stdout
    assert not list((tmp_path / "data" / "rte").glob("*.part"))


def test_offline_download_is_one_line(tmp_path):
    with socket.socket() as s:                 # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"DDATTN_SHARED_DATA": str(tmp_path / "no-shared"), "DDATTN_DATA_URL": f"http://127.0.0.1:{port}"}
    done = cli("--task", "rte", "--data-dir", str(tmp_path / "data"), env=env)
    assert_one_error_line(done, "cannot download")
    assert not (tmp_path / "data" / "rte" / "train.tsv").exists()
