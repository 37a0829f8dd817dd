"""Task data: a registry of tasks, file readers, tokenisation, cached encodings and padded batches.

Tasks (paper Table 1, plus RTE and your own CSV/TSV): each knows its files, its text fields, its labels
and its metrics. GLUE tasks are evaluated on their dev split (test labels are not public), AG News on
its test split. `python -m ddattn.data --task mrpc` (what `make data TASK=mrpc` runs) fills
`data/<task>/`, copying from `../shared/data/<task>/` when that exists, else downloading.
"""

import csv
import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from . import paths
from .download import download
from .errors import ArgumentParser, UserError, run_cli

GLUE = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
MRPC_DEV_IDS = ("https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
                "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc")
AG_NEWS = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"


@dataclass(frozen=True)
class Task:
    name: str
    files: Dict[str, str]                  # split ("train", "eval") → file name in data/<task>/
    text_columns: Tuple[str, ...]          # one (single sentence) or two (pair) header names
    label_column: str
    label_values: Tuple[str, ...]          # label as written in the file, in class-index order
    label_names: Tuple[str, ...]
    metrics: Tuple[str, ...] = ("accuracy",)
    format: str = "glue"                   # glue (TSV, no quoting) | ag_news (headerless CSV) | csv | tsv
    directory: Optional[Path] = None       # custom tasks: where the files are

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


def _glue(name, columns, label, values, names, metrics=("accuracy",)):
    return Task(name, {"train": "train.tsv", "eval": "dev.tsv"}, columns, label, values, names, metrics)


ENTAILMENT = (("entailment", "not_entailment"), ("entailment", "not_entailment"))
TASKS = {
    "mrpc": _glue("mrpc", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("not_equivalent", "equivalent"),
                  ("accuracy", "f1")),
    "sst2": _glue("sst2", ("sentence",), "label", ("0", "1"), ("negative", "positive")),
    "qnli": _glue("qnli", ("question", "sentence"), "label", *ENTAILMENT),
    "rte": _glue("rte", ("sentence1", "sentence2"), "label", *ENTAILMENT),
    "ag_news": Task("ag_news", {"train": "train.csv", "eval": "test.csv"}, ("text",), "label", ("1", "2", "3", "4"),
                    ("World", "Sports", "Business", "Sci/Tech"), format="ag_news"),
}
TASK_NAMES = sorted(TASKS) + ["custom"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)} "
                        "(custom: your own CSV/TSV, see --help)")
    return TASKS[name]


def custom_task(train_path: str, eval_path: str, text_columns: Sequence[str], label_column: str,
                label_values: Sequence[str], label_names: Optional[Sequence[str]] = None) -> Task:
    """Your own CSV or TSV files with a header row, named text column(s) and a label column."""
    train, evaluation = Path(train_path), Path(eval_path)
    if train.parent != evaluation.parent:
        raise UserError("custom task: put the train and eval files in one folder")
    return Task("custom", {"train": train.name, "eval": evaluation.name}, tuple(text_columns), label_column,
                tuple(label_values), tuple(label_names or label_values),
                format="tsv" if train.suffix == ".tsv" else "csv", directory=train.parent)


def task_from_settings(settings: dict) -> Task:
    """The task a run names: a registered one, or `custom` with its files and columns."""
    if settings["task"] != "custom":
        return get_task(settings["task"])
    needed = ["train_file", "eval_file", "text_columns", "label_column", "labels"]
    missing = [f"--{n.replace('_', '-')}" for n in needed if not settings.get(n)]
    if missing:
        raise UserError(f"--task custom needs {', '.join(missing)}")
    return custom_task(settings["train_file"], settings["eval_file"], settings["text_columns"].split(","),
                       settings["label_column"], settings["labels"].split(","))


# --- reading files ---------------------------------------------------------------------------------
class Example(NamedTuple):
    text_a: str
    text_b: Optional[str]
    label: int


def task_file(task: Task, split: str, data_dir: Optional[Path] = None) -> Path:
    folder = task.directory or Path(data_dir or paths.data_dir()) / task.name
    path = folder / task.files[split]
    if task.name == "ag_news" and split == "train" and not path.exists() and (folder / "train_subset.csv").exists():
        return folder / "train_subset.csv"     # the 5k-row subset in ../shared/data (text,label 0-3)
    if not path.is_file():
        hint = "check the path" if task.directory else f"run `make data TASK={task.name}`"
        raise UserError(f"{task.name} {split} file {path} is missing; {hint}")
    return path


def read_examples(task: Task, split: str, data_dir: Optional[Path] = None) -> List[Example]:
    path = task_file(task, split, data_dir)
    with open(path, encoding="utf-8-sig", newline="") as f:     # utf-8-sig: MRPC's header has a BOM
        if task.format == "ag_news":
            return _read_ag_news(path, csv.reader(f))
        delimiter = "," if task.format == "csv" else "\t"
        quoting = csv.QUOTE_NONE if task.format == "glue" else csv.QUOTE_MINIMAL   # GLUE has bare quotes
        return _read_with_header(task, path, csv.reader(f, delimiter=delimiter, quoting=quoting))


def _label_index(task: Task, value: str, where: str) -> int:
    if value not in task.label_values:
        raise UserError(f"{where}: unknown label {value!r} (expected one of {', '.join(task.label_values)})")
    return task.label_values.index(value)


def _read_with_header(task: Task, path: Path, rows) -> List[Example]:
    header = next(rows, None) or []
    missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
    if missing:
        raise UserError(f"{path}:1: header lacks column(s) {', '.join(missing)} (found {', '.join(header)})")
    text_at = [header.index(c) for c in task.text_columns]
    label_at = header.index(task.label_column)
    examples = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UserError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
        texts = [row[i] for i in text_at]
        examples.append(Example(texts[0], texts[1] if task.is_pair else None,
                                _label_index(task, row[label_at], f"{path}:{line}")))
    return examples


def _read_ag_news(path: Path, rows) -> List[Example]:
    """Original `class(1-4),title,description`, or the `text,label(0-3)` subset."""
    examples = []
    for line, row in enumerate(rows, start=1):
        if len(row) == 3:
            text, label = f"{row[1]} {row[2]}", _label_index(TASKS["ag_news"], row[0], f"{path}:{line}")
        elif len(row) == 2 and row[1] in ("0", "1", "2", "3"):
            text, label = row[0], int(row[1])
        else:
            raise UserError(f"{path}:{line}: expected 3 fields (class 1-4, title, description) "
                            f"or 2 (text, label 0-3), found {len(row)}: {row[:3]}")
        examples.append(Example(text, None, label))
    return examples


# --- tokenisation ----------------------------------------------------------------------------------
def load_tokenizer(path: Path, max_length: int = 128) -> Tokenizer:
    """The checkpoint's tokenizer.json, truncating pairs longest-first to `max_length`, no padding."""
    if not Path(path).is_file():
        raise UserError(f"tokenizer {path} is missing; run `make weights`")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


@dataclass
class EncodedSplit:
    """All sequences of a split, right-padded to the longest: ids, token types, lengths, labels."""
    input_ids: torch.Tensor         # (N, W) int32, pad id 0
    token_type_ids: torch.Tensor    # (N, W) int8
    lengths: torch.Tensor           # (N,) int32
    labels: torch.Tensor            # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def token_ids(self, i: int, length: int) -> torch.Tensor:
        """Example i's ids cut or padded (with [PAD] = 0) to exactly `length`: (length,) long."""
        ids = torch.zeros(length, dtype=torch.long)
        n = min(length, int(self.lengths[i]))
        ids[:n] = self.input_ids[i, :n].long()
        return ids


def encode(tokenizer: Tokenizer, examples: Sequence[Example]) -> EncodedSplit:
    inputs = [(e.text_a, e.text_b) if e.text_b is not None else e.text_a for e in examples]
    encodings = tokenizer.encode_batch(inputs)
    width = max((len(e.ids) for e in encodings), default=1)
    ids = torch.zeros(len(encodings), width, dtype=torch.int32)
    types = torch.zeros(len(encodings), width, dtype=torch.int8)
    for row, enc in enumerate(encodings):
        ids[row, :len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.int32)
        types[row, :len(enc.ids)] = torch.tensor(enc.type_ids, dtype=torch.int8)
    return EncodedSplit(ids, types, torch.tensor([len(e.ids) for e in encodings], dtype=torch.int32),
                        torch.tensor([e.label for e in examples], dtype=torch.long))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_split(task: Task, split: str, tokenizer_path: Path, max_length: int = 128,
               data_dir: Optional[Path] = None) -> EncodedSplit:
    """Read and tokenise a split, through a cache in data/<task>/cache/ keyed by the source file, the
    tokenizer and max_length (safetensors, written atomically)."""
    source = task_file(task, split, data_dir)
    cache = Path(data_dir or paths.data_dir()) / task.name / "cache" / f"{source.stem}-{_digest(source)}-tok{_digest(tokenizer_path)}-len{max_length}.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        return EncodedSplit(t["input_ids"], t["token_type_ids"], t["lengths"], t["labels"])
    split_data = encode(load_tokenizer(tokenizer_path, max_length), read_examples(task, split, data_dir))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{cache}.tmp")
    save_file({"input_ids": split_data.input_ids, "token_type_ids": split_data.token_type_ids,
               "lengths": split_data.lengths, "labels": split_data.labels}, str(tmp))
    os.replace(tmp, cache)
    return split_data


# --- batches ---------------------------------------------------------------------------------------
def split_train_val(n: int, val_size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A held-out validation slice of the *training* split: (train indices, validation indices), sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def collate(split: EncodedSplit, rows: torch.Tensor, device="cpu") -> Dict[str, torch.Tensor]:
    """Rows of a split as a batch, padded to its longest sequence rounded up to a multiple of 8."""
    width = int(split.lengths[rows].max())
    width = min(-(-width // 8) * 8, split.input_ids.shape[1]) if width % 8 else width
    positions = torch.arange(width)
    return {"input_ids": split.input_ids[rows, :width].long().to(device),
            "token_type_ids": split.token_type_ids[rows, :width].long().to(device),
            "attention_mask": (positions[None, :] < split.lengths[rows, None]).long().to(device),
            "labels": split.labels[rows].to(device)}


def batches(split: EncodedSplit, batch_size: int, indices: Optional[torch.Tensor] = None, shuffle: bool = False,
            generator: Optional[torch.Generator] = None, device="cpu") -> Iterator[Dict[str, torch.Tensor]]:
    rows = torch.arange(len(split)) if indices is None else torch.as_tensor(indices)
    if shuffle:
        rows = rows[torch.randperm(len(rows), generator=generator)]
    for start in range(0, len(rows), batch_size):
        yield collate(split, rows[start:start + batch_size], device)


# --- fetching: `make data TASK=...` -------------------------------------------------------------------
def fetch(task: Task, data_dir: Path) -> List[str]:
    """Fill data_dir/<task>/ from the shared copy, a mirror (env DDATTN_DATA_URL) or the canonical source."""
    target = data_dir / task.name
    target.mkdir(parents=True, exist_ok=True)
    shared = paths.shared_data_dir() / task.name
    if shared.is_dir():
        copied = []
        for source in sorted(p for p in shared.iterdir() if p.is_file()):
            if not (target / source.name).exists():
                shutil.copyfile(source, target / source.name)
                copied.append(source.name)
        return [f"{name} (copied from {shared})" for name in copied]
    wanted = [f for f in task.files.values() if not (target / f).exists()]
    mirror = os.environ.get("DDATTN_DATA_URL")
    if mirror:
        for name in wanted:
            download(f"{mirror.rstrip('/')}/{task.name}/{name}", target / name)
    elif wanted:
        CANONICAL[task.name](target)
    return [f"{name} (downloaded)" for name in wanted]


def _from_glue_zip(zip_name: str, folder: str):
    def fetch_zip(target: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            archive = download(f"{GLUE}/{zip_name}", Path(tmp) / zip_name)
            with zipfile.ZipFile(archive) as z:
                for name in ("train.tsv", "dev.tsv"):
                    (target / name).write_bytes(z.read(f"{folder}/{name}"))
    return fetch_zip


def _fetch_mrpc(target: Path) -> None:
    """GLUE's own recipe: the MSR paraphrase train file, split into train/dev by GLUE's dev ids."""
    with tempfile.TemporaryDirectory() as tmp:
        train = download(f"{SENTEVAL}/msr_paraphrase_train.txt", Path(tmp) / "train.txt")
        dev_ids = {tuple(l.split("\t")) for l in download(MRPC_DEV_IDS, Path(tmp) / "ids.tsv").read_text().split("\n") if l}
        header, *lines = train.read_text(encoding="utf-8").split("\n")
        rows = [l.strip().split("\t") for l in lines if l.strip()]
        for name, keep in (("train.tsv", False), ("dev.tsv", True)):
            chosen = [r for r in rows if ((r[1], r[2]) in dev_ids) == keep]
            (target / name).write_text("\n".join([header] + ["\t".join(r) for r in chosen]) + "\n", encoding="utf-8")


def _fetch_ag_news(target: Path) -> None:
    for name in ("train.csv", "test.csv"):
        download(f"{AG_NEWS}/{name}", target / name)


CANONICAL = {"mrpc": _fetch_mrpc, "sst2": _from_glue_zip("SST-2.zip", "SST-2"),
             "qnli": _from_glue_zip("QNLIv2.zip", "QNLI"), "rte": _from_glue_zip("RTE.zip", "RTE"),
             "ag_news": _fetch_ag_news}


def main(argv=None) -> None:
    p = ArgumentParser(prog="python -m ddattn.data", description="Fill data/<task>/ with a task's files.")
    p.add_argument("--task", required=True, help=f"{', '.join(sorted(TASKS))} or all")
    p.add_argument("--data-dir", help="default data/ (env DDATTN_DATA_DIR)")
    args = p.parse_args(argv)
    data_dir = Path(args.data_dir or paths.data_dir())
    for task in (TASKS.values() if args.task == "all" else [get_task(args.task)]):
        done = fetch(task, data_dir)
        counts = []
        for split in task.files:
            try:
                counts.append(f"{split} {len(read_examples(task, split, data_dir))}")
            except UserError as e:
                counts.append(f"{split} missing ({e})")
        print(f"{task.name}: {', '.join(done) or 'already present'}; rows: {', '.join(counts)}")


if __name__ == "__main__":
    run_cli(main)
