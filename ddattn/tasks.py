"""Tasks: a registry of what each task is, and readers for its files.

Tasks (paper Table 1, plus RTE, QNLI under a protocol of our own, and your own CSV/TSV): each knows its
files, its text fields, its labels and its metrics. GLUE tasks are evaluated on their dev split (test
labels are not public), AG News on its test split. `qnli_dev` takes both its splits from QNLI's dev file
(the only QNLI file offline), as two disjoint fixed parts (HashSplit). Every file is read back without
trusting it: a missing file, a wrong header, a bad row or an unknown label is one error line naming the
file and the row.
"""

import codecs
import contextlib
import csv
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from . import paths
from .errors import UserError


# --- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HashSplit:
    """A task's train and eval splits as two disjoint, fixed parts of one file.

    The rule: each row's key (its `key_column` value, unique per row) is hashed as the SHA-256 hex digest
    of the UTF-8 text `salt + key`; the `eval_rows` rows with the smallest digests are the eval part, all
    the others the train part, each in the file's order. It depends on the keys and the salt alone: not on
    the rows' order, the platform, or any random number generator. The cache key holds this record, so
    another salt or size never reuses a cached part; a change to the rule itself needs a new salt.
    """

    key_column: str
    salt: str
    eval_rows: int

    def describe(self) -> str:
        return (
            f"evaluation part: the {self.eval_rows:,} rows whose SHA-256 hex digest of {self.salt!r} + their "
            f"`{self.key_column}` value is smallest; training part: the others"
        )

    def rows(self, keys: Sequence[str], split: str, where: str) -> List[int]:
        """The positions in `keys` (one per row, in file order) of `split`'s part, ascending."""
        seen: Dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                raise UserError(
                    f"{where}: data rows {seen[key] + 1} and {i + 1} both have {self.key_column} {key!r}; "
                    "the rule needs a unique key per row"
                )
            seen[key] = i
        if len(keys) <= self.eval_rows:
            raise UserError(f"{where}: {len(keys)} rows, but its eval part alone takes {self.eval_rows}")
        digest = [hashlib.sha256((self.salt + key).encode("utf-8")).hexdigest() for key in keys]
        evaluation = set(sorted(range(len(keys)), key=lambda i: digest[i])[: self.eval_rows])
        return [i for i in range(len(keys)) if (i in evaluation) == (split == "eval")]


@dataclass(frozen=True)
class Task:
    """A classification task: where its files are, which columns hold the texts and the label, its metrics.

    `format` is `tsv` (header row, tab-separated, no quoting: GLUE), `csv` (header row, standard CSV
    quoting), `ag_news` (no header; the original `class,title,description` or the `text,label` subset),
    or None: each file's suffix decides (`.tsv` or else `csv`; custom tasks). `files_of`: another task
    whose folder (`data/<files_of>/`) holds the files; `split_rule`: train and eval are parts of one file;
    `protocol`: how the task departs from the paper's, for every table and card that shows it.
    """

    name: str
    files: Dict[str, str]  # split ("train", "eval") → file name in data/<task>/ (or a path)
    text_columns: Tuple[str, ...]  # one (single sentence) or two (sentence pair) header names
    label_column: str
    label_values: Tuple[str, ...]  # labels as written in the file, in class-index order
    label_names: Tuple[str, ...]
    metrics: Tuple[str, ...] = ("accuracy",)
    format: Optional[str] = "tsv"
    fallbacks: Dict[str, str] = field(default_factory=dict)  # split → file read when the main one is absent
    files_of: Optional[str] = None
    split_rule: Optional[HashSplit] = None
    protocol: Optional[str] = None

    @property
    def folder(self) -> str:
        """The folder under data/ that holds the task's files."""
        return self.files_of or self.name

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def label_index(self) -> Dict[str, int]:
        """Label value as written in the file → class index."""
        return {value: i for i, value in enumerate(self.label_values)}


def _glue(name: str, text_columns, label_column: str, label_names, label_values=("0", "1"), metrics=("accuracy",)):
    return Task(
        name, {"train": "train.tsv", "eval": "dev.tsv"}, text_columns, label_column, label_values, label_names, metrics
    )


ENTAILMENT = ("entailment", "not_entailment")
QNLI_DEV_SPLIT = HashSplit("index", salt="ddattn qnli_dev v1:", eval_rows=2000)
TASKS = {
    "ag_news": Task(
        "ag_news",
        {"train": "train.csv", "eval": "test.csv"},
        ("text",),
        "class",
        ("1", "2", "3", "4"),
        ("World", "Sports", "Business", "Sci/Tech"),
        format="ag_news",
        fallbacks={"train": "train_subset.csv"},
    ),
    "mrpc": _glue(
        "mrpc", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), metrics=("accuracy", "f1")
    ),
    "qnli": _glue("qnli", ("question", "sentence"), "label", ENTAILMENT, ENTAILMENT),
    "qnli_dev": Task(
        "qnli_dev",
        {"train": "dev.tsv", "eval": "dev.tsv"},
        ("question", "sentence"),
        "label",
        ENTAILMENT,
        ENTAILMENT,
        files_of="qnli",
        split_rule=QNLI_DEV_SPLIT,
        protocol="not the paper's protocol (QNLI train 104,743 / dev 5,463): GLUE QNLI's dev split alone "
        f"(5,463 pairs), cut into 3,463 training and 2,000 evaluation pairs; {QNLI_DEV_SPLIT.describe()}",
    ),
    "rte": _glue("rte", ("sentence1", "sentence2"), "label", ENTAILMENT, ENTAILMENT),
    "sst2": _glue("sst2", ("sentence",), "label", ("negative", "positive")),
}
TASK_NAMES = sorted(TASKS) + ["custom"]


def get_task(name: str) -> Task:
    """A registered task by name; `custom` tasks come from `custom_task` instead."""
    if name == "custom":
        raise UserError(
            "the custom task is built from your own files: give --train-file, --eval-file, "
            "--text-columns and --label-column"
        )
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    return TASKS[name]


def custom_task(
    train_path, eval_path, text_columns: Sequence[str], label_column: str, label_names: Optional[Sequence[str]] = None
) -> Task:
    """Your own CSV or TSV files (`.tsv`: tab-separated, no quoting; anything else: CSV) with a header row.

    `text_columns`: one or two column names (a list, or one comma-separated string). `label_names`: the
    label values as written in the file, in class order; by default every value in the train file, sorted
    (numerically when all are integers).
    """
    train, evaluation = Path(train_path).resolve(), Path(eval_path).resolve()
    columns = tuple(text_columns.split(",") if isinstance(text_columns, str) else text_columns)
    if len(columns) not in (1, 2):
        raise UserError(f"a custom task needs one or two text columns, not {len(columns)}: {', '.join(columns)}")
    task = Task("custom", {"train": str(train), "eval": str(evaluation)}, columns, label_column, (), (), format=None)
    present = _label_values_in(task)
    values = tuple(label_names or present)
    twice = [v for v in values if values.count(v) > 1]
    if twice:
        raise UserError(f"--labels names {twice[0]!r} twice; give each label value once, in class order")
    if len(values) < 2:
        raise UserError(f"{train}: a task needs at least 2 labels in column {label_column!r}, found {list(values)}")
    empty = [v for v in values if v not in present]
    if empty:
        raise UserError(
            f"{train}: no row has label {empty[0]!r} (--labels {','.join(values)}); every class needs "
            "at least one training example"
        )
    return Task(task.name, task.files, columns, label_column, values, values, format=None)


def task_from_settings(settings: dict) -> Task:
    """The task a run names: a registered one, or `custom` with its files, columns and (optional) labels."""
    if settings["task"] != "custom":
        return get_task(settings["task"])
    needed = ["train_file", "eval_file", "text_columns", "label_column"]
    missing = [f"--{n.replace('_', '-')}" for n in needed if not settings.get(n)]
    if missing:
        raise UserError(f"--task custom needs {', '.join(missing)}")
    labels = settings.get("labels")
    return custom_task(
        settings["train_file"],
        settings["eval_file"],
        settings["text_columns"],
        settings["label_column"],
        labels.split(",") if labels else None,
    )


# --- reading files ---------------------------------------------------------------------------------
class Example(NamedTuple):
    text_a: str
    text_b: Optional[str]  # None for single-sentence tasks
    label: int  # class index


class MissingFileError(UserError):
    """A task file is not where it should be."""


def task_file(task: Task, split: str, data_dir: Optional[Path] = None) -> Path:
    """The file holding `split` in `<data_dir>/<task.folder>/`, or the task's fallback file when that is absent."""
    folder = Path(data_dir or paths.data_dir()) / task.folder
    path = folder / task.files[split]  # custom tasks: an absolute path, used as is
    fallback = task.fallbacks.get(split)
    if path.is_file():
        return path
    if fallback and (folder / fallback).is_file():
        return folder / fallback
    if task.name not in TASKS:
        raise MissingFileError(f"{task.name} {split} file {path} not found")
    alternative = f" (or {fallback})" if fallback else ""
    raise MissingFileError(
        f"{task.name} {split} file {path.name}{alternative} not found in {folder}; "
        f"run `make data TASK={task.name}` to fetch it"
    )


class _Layout(NamedTuple):
    """Where a row's fields are: texts, label, and the label value → class index map."""

    fields: int
    text_a: Tuple[int, ...]  # columns joined by a space into the first text
    text_b: Optional[int]
    label_at: int
    labels: Dict[str, int]


@contextlib.contextmanager
def _table(path: Path, fmt: Optional[str]) -> Iterator[Iterator[Tuple[int, List[str]]]]:
    """The non-blank rows of a CSV/TSV file, each with the line it starts on."""
    tsv = fmt == "tsv" or (fmt is None and path.suffix.lower() == ".tsv")
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC's header has a BOM
        reader = (
            csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if tsv  # GLUE has bare quotes
            else csv.reader(f)
        )
        yield _numbered_rows(reader, path)


def _numbered_rows(reader, path: Path) -> Iterator[Tuple[int, List[str]]]:
    """(first line, row) of every non-blank row; text that is not UTF-8, or that the csv module refuses (a
    field over its 128 KiB limit), is a UserError naming the file and line."""
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            hint = " (a quote opened there and never closed?)" if "field larger" in str(e) else ""
            raise UserError(f"{path}:{start}: {e}{hint}") from None
        except UnicodeDecodeError:
            raise UserError(_not_utf8(path)) from None
        if row:
            yield start, row
        start = reader.line_num + 1


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8, and what it probably is instead."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return f"{path}:1: the file is UTF-16; ddattn reads UTF-8: save it as UTF-8"
    try:
        data.decode("utf-8")
        return f"{path}: not UTF-8 text; save it as UTF-8"
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return (
            f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8 (Latin-1 or Windows-1252 text?); "
            "ddattn reads UTF-8: save the file as UTF-8"
        )


def _header_layout(task: Task, header: List[str], where: str) -> _Layout:
    missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
    if missing:
        raise UserError(f"{where}: header lacks column(s) {', '.join(missing)} (found {', '.join(header)})")
    twice = [c for c in (*task.text_columns, task.label_column) if header.count(c) > 1]
    if twice:
        raise UserError(
            f"{where}: the header has column {twice[0]!r} {header.count(twice[0])} times; "
            "rename the copies so that each column name is unique"
        )
    text_at = [header.index(c) for c in task.text_columns]
    return _Layout(
        len(header),
        (text_at[0],),
        text_at[1] if task.is_pair else None,
        header.index(task.label_column),
        task.label_index,
    )


def _ag_news_layout(task: Task, first_row: List[str], where: str) -> _Layout:
    """The original `class(1-4),title,description` (text = title + " " + description), or `text,label(0-3)`."""
    if len(first_row) == 3:
        return _Layout(3, (1, 2), None, 0, task.label_index)
    if len(first_row) == 2:
        return _Layout(2, (0,), None, 1, {str(i): i for i in range(task.num_classes)})
    raise UserError(
        f"{where}: expected 3 fields (class 1-4, title, description) or 2 (text, label 0-3), found {len(first_row)}"
    )


def _example(layout: _Layout, row: List[str], where: str) -> Example:
    if len(row) != layout.fields:
        hint = " (a quote opened on this line and never closed?)" if any("\n" in field for field in row) else ""
        raise UserError(f"{where}: expected {layout.fields} fields, found {len(row)}{hint}")
    value = row[layout.label_at]
    if value not in layout.labels:
        raise UserError(f"{where}: unknown label {value!r} (expected {', '.join(layout.labels)})")
    text_b = None if layout.text_b is None else row[layout.text_b]
    return Example(" ".join(row[i] for i in layout.text_a), text_b, layout.labels[value])


def read_examples(task: Task, split: str, data_dir: Optional[Path] = None) -> List[Example]:
    """Every row of a split as an Example (of a split_rule task, every row of its part, the whole file
    checked); a malformed row or unknown label is a UserError naming file:line."""
    path = task_file(task, split, data_dir)
    with _table(path, task.format) as rows:
        first = next(rows, None)
        if first is None:
            raise UserError(f"{path}: the file is empty")
        line, header = first
        if task.format == "ag_news":  # no header: the first row is data
            layout = _ag_news_layout(task, header, f"{path}:{line}")
            rows = itertools.chain([first], rows)
        else:
            layout = _header_layout(task, header, f"{path}:{line}")
        if task.split_rule is None:
            return [_example(layout, row, f"{path}:{line}") for line, row in rows]
        key_at = _key_column(task.split_rule, header, f"{path}:{line}")
        rows = list(rows)
        examples = [_example(layout, row, f"{path}:{line}") for line, row in rows]
    part = task.split_rule.rows([row[key_at] for _, row in rows], split, str(path))
    return [examples[i] for i in part]


def _key_column(rule: HashSplit, header: List[str], where: str) -> int:
    if header.count(rule.key_column) != 1:
        raise UserError(f"{where}: the header needs one column {rule.key_column!r} to split the file by")
    return header.index(rule.key_column)


def _label_values_in(task: Task) -> List[str]:
    """The distinct values of a custom task's label column in its train file, sorted."""
    path = task_file(task, "train")
    with _table(path, task.format) as rows:
        line, header = next(rows, (1, []))
        layout = _header_layout(task, header, f"{path}:{line}")
        values = {row[layout.label_at] for _, row in rows if len(row) == layout.fields}
    numeric = all(v.lstrip("-").isdigit() for v in values)
    return sorted(values, key=int if numeric else None)
