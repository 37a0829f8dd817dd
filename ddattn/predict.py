"""`python -m ddattn.predict MODEL TEXT [TEXT ...]` or `--file in.csv --out out.csv`: classify your own text.

MODEL is a directory written by `python -m ddattn.train`, or a distillation run (the classifier is then
trained on the fly, as `python -m ddattn.train` would, in seconds). For a pair task (MRPC, QNLI, RTE) the
texts on the command line are read two by two as (first, second) pairs. Each input gets one line: its
most probable label, that label's probability and the input.

A file is a CSV with a header row and a `text` column (single-text tasks) or `text_a` and `text_b` (pair
tasks); --out gets its rows back with `label` and one `p_<label>` column per class added.
"""

import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tqdm import tqdm

from . import data as taskdata
from . import tasks
from .errors import ArgumentParser, UserError, run_cli
from .export import Classifier, is_exported, load_exported, refuse_existing
from .method.bert import classify
from .paths import atomic_path
from .train import train_classifier

PAIR_COLUMNS, SINGLE_COLUMNS = ("text_a", "text_b"), ("text",)


def load_classifier(path: Path, which: str, seed: int) -> Classifier:
    """An exported classifier, or the one a distillation run trains (head seed `seed`)."""
    if is_exported(path):
        return load_exported(path)
    if (path / f"distilled_{which}.safetensors").is_file():
        return train_classifier(path, which, seed)
    raise UserError(
        f"{path} is neither a classifier exported by `python -m ddattn.train` (config.json, "
        f"model.safetensors) nor a distillation run with distilled_{which}.safetensors"
    )


def examples_from_texts(classifier: Classifier, texts: Sequence[str]) -> List[tasks.Example]:
    """Command-line texts as inputs: one each, or two by two for a pair task. (Labels are unused: 0.)"""
    if not classifier.is_pair:
        return [tasks.Example(text, None, 0) for text in texts]
    if len(texts) % 2:
        raise UserError(f"{classifier.task} classifies sentence pairs: give the texts two by two, not {len(texts)}")
    return [tasks.Example(a, b, 0) for a, b in zip(texts[::2], texts[1::2])]


def read_rows(classifier: Classifier, path: Path) -> List[dict]:
    """The rows of a CSV file whose header has the text columns this classifier reads."""
    wanted, other = (PAIR_COLUMNS, SINGLE_COLUMNS) if classifier.is_pair else (SINGLE_COLUMNS, PAIR_COLUMNS)
    kind = "sentence pairs" if classifier.is_pair else "single texts"
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not set(wanted) <= set(header):
        found = (
            f"it has {', '.join(other)} instead" if set(other) <= set(header) else f"its header: {', '.join(header)}"
        )
        raise UserError(f"{classifier.task} classifies {kind}, so {path} needs column(s) {', '.join(wanted)}; {found}")
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    short = next((i for i, row in enumerate(rows) if any(row[c] is None for c in wanted)), None)
    if short is not None:
        raise UserError(f"{path}: data row {short + 1} has fewer fields than the header")
    return rows


def examples_from_rows(classifier: Classifier, rows: List[dict]) -> List[tasks.Example]:
    if classifier.is_pair:
        return [tasks.Example(row["text_a"], row["text_b"], 0) for row in rows]
    return [tasks.Example(row["text"], None, 0) for row in rows]


@torch.no_grad()
def probabilities(
    classifier: Classifier, examples: Sequence[tasks.Example], batch_size: int, progress: bool = False
) -> torch.Tensor:
    """softmax(logits), (N, C), in the order of `examples`; batches of similar lengths (less padding)."""
    tokenizer = taskdata.load_tokenizer(classifier.tokenizer_path, classifier.max_length)
    split = taskdata.encode(tokenizer, examples)
    probs = torch.empty(len(split), len(classifier.label_names))
    for rows in tqdm(split.lengths.argsort().split(batch_size), desc="predict", unit="batch", disable=not progress):
        batch = taskdata.collate(split, rows)
        logits = classify(classifier.theta, classifier.config, batch, batch["attention_mask"])
        probs[rows] = torch.softmax(logits, dim=-1)
    return probs


def write_csv(path: Path, rows: List[dict], label_names: Sequence[str], probs: torch.Tensor) -> None:
    """The input rows with `label` and `p_<label>` per class added (written atomically)."""
    columns = [*rows[0], "label", *(f"p_{name}" for name in label_names)]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row, p in zip(rows, probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            writer.writerow(
                {
                    **row,
                    "label": label_names[best],
                    **{f"p_{name}": f"{value:.6f}" for name, value in zip(label_names, p)},
                }
            )


def print_lines(examples: Sequence[tasks.Example], label_names: Sequence[str], probs: torch.Tensor) -> None:
    """`label  probability  "text"` (or `"text a" "text b"`) per input."""
    confidence, best = probs.max(dim=-1)
    for example, p, i in zip(examples, confidence.tolist(), best.tolist()):
        texts = [t for t in (example.text_a, example.text_b) if t is not None]
        print(f"{label_names[i]}  {p:.3f}  " + " ".join(json.dumps(t, ensure_ascii=False) for t in texts))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(
        prog="python -m ddattn.predict",
        description=__doc__.split("\n\n")[0],
        renamed={"--batch-size": "--eval-batch-size"},
    )
    p.add_argument("model", type=Path, help="a directory from python -m ddattn.train, or runs/<task>/<name>/")
    p.add_argument("texts", nargs="*", help="texts to classify (two by two for pair tasks)")
    p.add_argument("--file", type=Path, help="a CSV file with a header: text, or text_a and text_b")
    p.add_argument("--out", type=Path, help="with --file: write the predictions as CSV here (must not exist)")
    p.add_argument("--eval-batch-size", dest="batch_size", type=int, default=64, help="examples per batch")
    p.add_argument("--which", choices=["best", "last"], default="best", help="for a run: distilled_best or _last")
    p.add_argument("--seed", type=int, default=0, help="for a run: seed of the fresh classification head")
    args = p.parse_args(argv)
    if bool(args.texts) == bool(args.file):
        raise UserError("give either texts or --file")
    if args.out and not args.file:
        raise UserError("--out goes with --file")
    if args.batch_size < 1:
        raise UserError(f"--eval-batch-size must be ≥ 1, not {args.batch_size}")
    if args.out:
        refuse_existing(args.out)
    with contextlib.redirect_stdout(sys.stderr):  # convert's "reading ..." lines: stdout is for predictions
        classifier = load_classifier(args.model, args.which, args.seed)
    rows = read_rows(classifier, args.file) if args.file else None
    examples = examples_from_rows(classifier, rows) if rows else examples_from_texts(classifier, args.texts)
    probs = probabilities(classifier, examples, args.batch_size, progress=bool(args.file))
    if args.out:
        write_csv(args.out, rows, classifier.label_names, probs)
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        print_lines(examples, classifier.label_names, probs)


if __name__ == "__main__":
    run_cli(main)
