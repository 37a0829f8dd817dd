"""Task data as tensors: tokenisation, cached encodings, the held-out split and padded batches.

What a task is and how its files are read is tasks.py; filling `data/<task>/` (`make data`, copying or
downloading) is fetch.py.
"""

import dataclasses
import functools
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from . import paths
from .errors import UserError, first_line
from .tasks import Example, Task, read_examples, task_file

CACHE_VERSION = 1  # bump when the encoding changes, so old caches are not reused


# --- tokenisation ----------------------------------------------------------------------------------
def _tokenizer_file(path) -> Path:
    if not Path(path).is_file():
        raise UserError(f"tokenizer {path} is missing; run `make weights`")
    return Path(path)


def load_tokenizer(path, max_length: int = 128) -> Tokenizer:
    """A checkpoint's tokenizer.json with padding off and longest-first truncation to `max_length`.

    Both are set explicitly: the MiniLM file ships with truncation to 128 and fixed padding to 128.
    """
    path = _tokenizer_file(path)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for a malformed file
        raise UserError(f"cannot read tokenizer {path} ({first_line(e)}); re-run `make weights`") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


@dataclass
class EncodedSplit:
    """All sequences of a split, right-padded (id 0) to the longest: ids, token types, lengths, labels.

    Pairs are `[CLS] a [SEP] b [SEP]` with token type 0 up to the first [SEP] and 1 after it.
    """

    input_ids: torch.Tensor  # (N, W) int32
    token_type_ids: torch.Tensor  # (N, W) int8
    lengths: torch.Tensor  # (N,) int32
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def token_ids(self, i: int, length: int) -> torch.Tensor:
        """Example i's ids cut or padded (with [PAD] = 0) to exactly `length`: (length,) long."""
        return collate(self, torch.tensor([i]), width=length)["input_ids"][0]


def encode(tokenizer: Tokenizer, examples: Sequence[Example], max_length: Optional[int] = None) -> EncodedSplit:
    """Tokenise examples (pairs as pairs); `max_length` re-sets the tokenizer's truncation first."""
    if max_length is not None:
        tokenizer.enable_truncation(max_length, strategy="longest_first")
    encodings = tokenizer.encode_batch([e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples])
    width = max((len(e.ids) for e in encodings), default=1)
    ids = torch.zeros(len(encodings), width, dtype=torch.int32)
    types = torch.zeros(len(encodings), width, dtype=torch.int8)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.int32)
        types[row, : len(enc.ids)] = torch.tensor(enc.type_ids, dtype=torch.int8)
    return EncodedSplit(
        ids,
        types,
        torch.tensor([len(e.ids) for e in encodings], dtype=torch.int32),
        torch.tensor([e.label for e in examples], dtype=torch.long),
    )


def _cache_file(
    task: Task, split: str, source: Path, tokenizer_path: Path, max_length: int, data_dir: Optional[Path]
) -> Path:
    """`<data_dir>/<task>/cache/<split>-<file>-<key>.safetensors`, the key hashing everything that
    determines the encoding: source and tokenizer contents, max_length, columns and labels; where train and
    eval are parts of one file, also the split and the rule (its salt and size) that cut it."""
    identity = (CACHE_VERSION, max_length, task.format, task.text_columns, task.label_column, task.label_values)
    if task.split_rule is not None:
        identity += (split, task.split_rule)
    key = hashlib.sha256(repr(identity).encode())
    for path in (source, tokenizer_path):
        key.update(hashlib.sha256(Path(path).read_bytes()).digest())  # (hashlib.file_digest needs 3.11)
    folder = Path(data_dir or paths.data_dir()) / task.name / "cache"
    return folder / f"{split}-{source.stem}-{key.hexdigest()[:16]}.safetensors"


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


def load_split(
    task: Task, split: str, tokenizer_path, max_length: int = 128, data_dir: Optional[Path] = None
) -> EncodedSplit:
    """Read and tokenise a split, through the cache (safetensors, written atomically). Reading a fallback
    file (AG News's train_subset.csv) is said once on stderr."""
    source = task_file(task, split, data_dir)
    if source.name != Path(task.files[split]).name:
        _say_once(f"note: {task.name} {split}: {task.files[split]} is absent, using {source} instead")
    cache = _cache_file(task, split, source, _tokenizer_file(tokenizer_path), max_length, data_dir)
    cached = _read_cache(cache) if cache.is_file() else None
    if cached is not None:
        return cached
    encoded = encode(load_tokenizer(tokenizer_path, max_length), read_examples(task, split, data_dir))
    with paths.atomic_path(cache) as tmp:
        save_file(vars(encoded), str(tmp))
    return encoded


def _read_cache(path: Path) -> Optional[EncodedSplit]:
    """A cached encoding, or None (with a note) when the file is damaged: it is then rebuilt."""
    try:
        tensors = load_file(str(path))
    except Exception:  # safetensors' own error types for a truncated or garbled file
        tensors = {}
    names = {f.name for f in dataclasses.fields(EncodedSplit)}
    if set(tensors) == names:
        ids, types, lengths, labels = (tensors[n] for n in ("input_ids", "token_type_ids", "lengths", "labels"))
        if ids.dim() == 2 and ids.shape == types.shape and ids.shape[0] == len(lengths) == len(labels):
            return EncodedSplit(**tensors)
    print(f"note: the data cache {path} is damaged; rebuilding it", file=sys.stderr)
    return None


# --- batches ---------------------------------------------------------------------------------------
def round_up(n: int, multiple: int = 8) -> int:
    """`n` rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple


def split_train_val(n: int, val_size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A seeded held-out slice of the *training* split: (train indices, validation indices), each sorted."""
    if not 0 <= val_size < n:
        raise UserError(f"validation size {val_size} (--val-size) must be at least 0 and below the {n} training rows")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def spaced(text: str) -> str:
    """`text`'s words with one space between them (SST-2's rows end in a space; its phrases do not)."""
    return " ".join(text.split())


def word_runs(text: str) -> Iterator[str]:
    """Every run of consecutive whole words of `text` (spaced), the whole text excepted."""
    words = text.split()
    for start in range(len(words)):
        for stop in range(start + 1, len(words) + 1):
            if stop - start < len(words):
                yield " ".join(words[start:stop])


def parts_of(texts: Sequence[str], among: Sequence[str]) -> set:
    """Those of `texts` (spaced) that are a run of whole words of some text in `among`, not all of it."""
    candidates = {spaced(t) for t in texts}
    return {run for text in among for run in word_runs(text) if run in candidates}


def whole_rows(texts: Sequence[str]) -> torch.Tensor:
    """The rows whose text no other row contains as a run of whole words: on SST-2's training split its
    6,885 sentences, not the phrases cut from them (its dev split holds whole sentences only)."""
    parts = parts_of(texts, texts)
    return torch.tensor([i for i, t in enumerate(texts) if spaced(t) not in parts], dtype=torch.long)


def split_sentences_val(
    texts: Sequence[str], whole: torch.Tensor, val_size: int, seed: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A seeded held-out slice of the whole sentences `whole` (`whole_rows(texts)`) only, and the training
    rows less every row that is one of them or a part of one: (train indices, validation indices), each
    sorted. Without the second half a held-out sentence's own phrases, with their labels, would be trained on."""
    if not 0 < val_size < len(whole):
        raise UserError(f"--val-size {val_size} must be at least 1 and below the {len(whole)} whole sentences")
    val = whole[torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed))[:val_size]].sort().values
    held = [spaced(texts[i]) for i in val.tolist()]
    left_out = parts_of(texts, held) | set(held)
    train = [i for i, t in enumerate(texts) if spaced(t) not in left_out]
    return torch.tensor(train, dtype=torch.long), val


def balanced_order(
    rows: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int, batches: int, generator
) -> torch.Tensor:
    """An epoch of `batches` class-balanced batches of `rows`, batch b = entries [b·B, (b+1)·B): each holds
    B // C rows of every class (the first B mod C classes one more). Each class's rows come in shuffled
    passes, reshuffled at every pass, so a minority class repeats within an epoch and is never short."""
    per_class = [batch_size // num_classes + (c < batch_size % num_classes) for c in range(num_classes)]
    columns = []
    for c, k in enumerate(per_class):
        own = rows[labels[rows] == c]
        passes = -(-k * batches // len(own))
        order = torch.cat([own[torch.randperm(len(own), generator=generator)] for _ in range(passes)])
        columns.append(order[: k * batches].view(batches, k))
    return torch.cat(columns, dim=1).reshape(-1)  # (batches · B,)


def collate(split: EncodedSplit, rows, device="cpu", width: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Rows of a split as a batch of long tensors: input_ids, token_type_ids, attention_mask (B, width)
    and labels (B,). `width` defaults to the batch's longest sequence rounded up to a multiple of 8 (at
    most max_length rounded up, so within the model's positions); a smaller `width` cuts longer rows."""
    rows = torch.as_tensor(rows)
    lengths = split.lengths[rows].long()
    width = width or round_up(int(lengths.numpy().max()))  # numpy: no aten scalar read (host memory anyway)
    kept = min(width, split.input_ids.shape[1])

    def padded(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(rows), width, dtype=torch.long)
        out[:, :kept] = values[rows, :kept]
        return out.to(device)

    return {
        "input_ids": padded(split.input_ids),
        "token_type_ids": padded(split.token_type_ids),
        "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long().to(device),
        "labels": split.labels[rows].to(device),
    }


def batches(
    split: EncodedSplit,
    batch_size: int,
    indices=None,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
    device="cpu",
) -> Iterator[Dict[str, torch.Tensor]]:
    """Batches of `split` (or of its rows `indices`), in order or shuffled by `generator` (deterministic)."""
    rows = torch.arange(len(split)) if indices is None else torch.as_tensor(indices)
    if shuffle:
        rows = rows[torch.randperm(len(rows), generator=generator)]
    for start in range(0, len(rows), batch_size):
        yield collate(split, rows[start : start + batch_size], device)


class EvalBatch(dict):
    """A batch of tensors (as `collate` gives) that also says, from the host, whether any row is padded:
    an unpadded batch needs no mask, and asking the tensor (`mask.all()`) would wait for the device."""

    padded: bool = True


def eval_batches(
    split: EncodedSplit,
    batch_size: int,
    device="cpu",
    indices: Optional[torch.Tensor] = None,
    one_length: bool = False,
) -> List[EvalBatch]:
    """A split (or its rows `indices`) sorted by length and cut into batches, each exactly as wide as its
    longest row: on AG News test at 64 per batch 0.9 % of the tokens are padding, against 7.6 % when
    rounded up to 8 and 121 % in file order. Where a batch's rows are all of one length (most of them on a
    large split) `predict` also drops the mask. Same metrics; built once and reused for all N models.
    one_length: every batch holds rows of one length (at most `batch_size`), so no token is padding (on
    MRPC and SST-2 dev at 64 per batch, 7 % of the tokens are otherwise) and no batch needs a mask; more,
    smaller batches (56 on MRPC dev instead of 7), which a CPU's matmuls run as fast per row."""
    rows = torch.arange(len(split)) if indices is None else torch.as_tensor(indices)
    rows = rows[split.lengths[rows].argsort(stable=True)]
    groups = [rows]
    if one_length:  # runs of equal length in the sorted rows
        groups = rows.split(torch.unique_consecutive(split.lengths[rows], return_counts=True)[1].tolist())
    batches = []
    for chunk in (chunk for group in groups for chunk in group.split(batch_size)):
        lengths = split.lengths[chunk]  # on the host
        batch = EvalBatch(collate(split, chunk, device, width=int(lengths.max())))
        batch.padded = bool(lengths.min() < lengths.max())
        batches.append(batch)
    return batches
