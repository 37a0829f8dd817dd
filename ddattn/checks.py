"""Reading files back without trusting them: every problem is one line naming the file and what is wrong.

A run directory is written by this package, but it may since have been cut short (kill -9, full disk),
edited, or mixed with another run's files. So everything read back is checked before it is used:
JSON files parse and hold the fields expected, JSONL logs are whole records (a half-written last line is
dropped with a note), checkpoint tensors have exactly the expected names, shapes and dtypes, and a
distilled dataset belongs to the run (task, class count, shapes, checkpoint) it is evaluated under.
Settings are checked the same way before anything runs (`check_seed`, `check_distilled_config`).
"""

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, List, Mapping

import torch

from .errors import UserError, first_line
from .files import read_bert_config
from .method.distilled import ATTENTION_TYPES, LABEL_TYPES, DistilledConfig
from .method.seeds import SEED_LIMIT
from .paths import resolve_checkpoint

# What evaluate and show need from a run's config.json.
RUN_FIELDS = ("task", "model", "max_length", "seq_len", "shots", "steps")


# --- JSON and JSONL ----------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    """A JSON object from `path`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); was it edited or cut short?") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def require_fields(record: Mapping, fields: Iterable[str], path: Path) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise UserError(
            f"{path} lacks the field(s) {', '.join(missing)}; it was not written by this version "
            "of ddattn, or was edited"
        )


def read_jsonl(path: Path) -> List[dict]:
    """The records of a JSON-lines log. A last line that does not parse was cut short by an interrupted
    write and is dropped (with a note on stderr); a bad line anywhere else is an error."""
    lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                print(f"note: {path}: dropped a half-written last line (an interrupted write)", file=sys.stderr)
                break
            raise UserError(f"{path}:{number}: not a JSON record; was the file edited?") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(f'{path}:{number}: a record without an integer "step"; was the file edited?')
        records.append(record)
    return records


# --- tensors -------------------------------------------------------------------------------------------
def load_checkpoint(path: Path) -> dict:
    """checkpoint.pt, read with torch.load(weights_only=True) (tensors and plain containers, no pickled code)."""
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated zip, garbage bytes, a pickle with code in it: all unreadable
        raise UserError(f"{path} is unreadable ({first_line(e)}); start the run afresh with --overwrite") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a ddattn checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def check_tensors(found: Mapping, expected: Mapping[str, torch.Tensor], where: str) -> None:
    """`found` holds exactly the tensors of `expected`, each with the same shape and dtype (no broadcasting)."""
    if not isinstance(found, Mapping):
        raise UserError(f"{where} is not a dictionary of tensors")
    if set(found) != set(expected):
        raise UserError(f"{where} has tensors {sorted(found)}, expected {sorted(expected)}")
    for name, like in expected.items():
        value = found[name]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}: {name} is a {type(value).__name__}, not a tensor")
        if value.shape != like.shape or value.dtype != like.dtype:
            raise UserError(f"{where}: {name} is {describe(value)}, expected {describe(like)}")


def describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def check_optimizer_state(state: Mapping, params: List[torch.Tensor], where: str) -> None:
    """Adam's per-parameter moments have their parameter's shape (load_state_dict would broadcast them)."""
    groups, moments = state.get("param_groups"), state.get("state")
    if not isinstance(groups, list) or not isinstance(moments, Mapping) or len(groups) != len(params):
        raise UserError(f"{where}: not the optimiser state of {len(params)} distilled tensors")
    for index, values in moments.items():
        if not (isinstance(index, int) and 0 <= index < len(params) and isinstance(values, Mapping)):
            raise UserError(f"{where}: unexpected optimiser state entry {index!r}")
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise UserError(
                    f"{where}: {name} of parameter {index} is {describe(value)}, expected {describe(params[index])}"
                )


# --- distilled data against its run -------------------------------------------------------------------
def check_distilled_for_run(info: dict, settings: dict, num_classes: int, path: Path) -> None:
    """A distilled dataset (its stored config and provenance `info`) fits the run of `settings`: same class
    count, S, shots and steps, and the same task and checkpoint where it names them (distill always does)."""
    config = info["config"]
    expected = {name: settings[name] for name in ("seq_len", "shots", "steps")}
    found = {name: config.get(name) for name in ("seq_len", "shots", "steps")}
    expected["num_classes"], found["num_classes"] = num_classes, config.get("num_classes")
    for name, value in (("task", settings["task"]), ("model", str(settings["model"]))):
        if name in info:
            expected[name], found[name] = value, info[name]
    differ = [name for name in expected if found[name] != expected[name]]
    if differ:
        shown = ", ".join(f"{name} {found[name]!r} (the run: {expected[name]!r})" for name in differ)
        raise UserError(f"{path} does not belong to this run: {shown}")


def check_distilled_for_model(config, bert_config, path: Path, model_dir: Path) -> None:
    """The distilled embeddings and attention labels have the checkpoint's width, layers and heads."""
    differ = [
        name
        for name in ("hidden_size", "num_layers", "num_heads")
        if getattr(config, name) != getattr(bert_config, name)
    ]
    if differ:
        shown = ", ".join(f"{n} {getattr(config, n)} (checkpoint: {getattr(bert_config, n)})" for n in differ)
        raise UserError(f"{path} was not distilled for checkpoint {model_dir}: {shown}")
    if config.seq_len > bert_config.max_positions:
        raise UserError(
            f"{path} has S = {config.seq_len}, beyond checkpoint {model_dir}'s {bert_config.max_positions} positions"
        )


# --- places to write -------------------------------------------------------------------------------------
def writable_file(path: Path, flag: str) -> None:
    """`path` can be written (tried now, with a probe file beside it), before any work that ends in it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path")
    writable_dir(path.parent, flag)


def writable_dir(folder: Path, flag: str) -> None:
    """`folder` exists (created if need be) and a file can be created in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag}: cannot write in {folder} ({e.strerror}); choose a writable place") from None


# --- settings ----------------------------------------------------------------------------------------
def check_seed(seed: int, flag: str = "--seed") -> None:
    require(0 <= seed < SEED_LIMIT, f"{flag} must be an integer in [0, {SEED_LIMIT - 1}], not {seed}")


def check_fits_model(model: str, max_length: int) -> None:
    """--max-length within the checkpoint's positions, read from its config.json before the weights are
    loaded (a missing checkpoint is reported when they are; --seq-len by `check_distilled_config`)."""
    path = resolve_checkpoint(model) / "config.json"
    positions = read_bert_config(path).max_positions if path.is_file() else max_length
    if max_length > positions:
        raise UserError(f"--max-length {max_length} exceeds the {positions} positions of checkpoint {model}")


def check_distilled_config(config: DistilledConfig, max_positions: int) -> None:
    """Refuse impossible distilled-data settings up front, with one line each (checked in order)."""
    require(config.num_classes >= 2, f"a task needs at least 2 classes, not {config.num_classes}")
    require(config.shots >= 1, f"--shots must be ≥ 1, not {config.shots}")
    require(config.steps >= 1, f"--steps must be ≥ 1, not {config.steps}")
    require(
        1 <= config.seq_len <= max_positions,
        f"--seq-len must be between 1 and the model's {max_positions} positions, not {config.seq_len}",
    )
    require(config.label_type in LABEL_TYPES, f"unknown label type {config.label_type!r}; choose from {LABEL_TYPES}")
    require(
        config.attention_type in ATTENTION_TYPES,
        f"unknown attention label type {config.attention_type!r}; choose from {ATTENTION_TYPES}",
    )
    require(config.attn_weight >= 0, f"--attn-weight (λ) must be ≥ 0, not {config.attn_weight}")
    require(config.inner_lr_init > 0, f"--eta-init must be > 0, not {config.inner_lr_init}")
    require(
        0 <= config.batch_size <= config.num_samples and config.num_samples % config.step_batch_size == 0,
        f"--samples-per-step {config.batch_size} must divide the {config.num_samples} distilled samples",
    )


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_models_at_once(setting: str) -> None:
    """--models-at-once is "auto" or a whole number ≥ 1."""
    if setting != "auto" and not (setting.isdigit() and int(setting) >= 1):
        raise UserError(f"--models-at-once must be auto or a whole number ≥ 1, not {setting!r}")
