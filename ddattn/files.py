"""The files the method's objects live in, read back without trusting them and written atomically.

- a converted checkpoint: a directory with config.json (`BertConfig`) and model.safetensors (θ, HF-free
  names, method/bert.py `param_shapes`), made by `python -m ddattn.convert`;
- a distilled dataset: one safetensors file whose metadata holds the JSON `DistilledConfig` (and whatever
  the writer adds: task, checkpoint, step), so `safetensors.safe_open` alone can read one.

Every problem is one line (UserError) naming the file and the fix.
"""

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError
from .method.bert import BertConfig, Params, param_shapes
from .method.distilled import DistilledConfig, DistilledData
from .paths import atomic_path


# --- a converted checkpoint --------------------------------------------------------------------------
def write_bert_config(config: BertConfig, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(config), indent=2) + "\n")


def read_bert_config(path: Path) -> BertConfig:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read model config {path}: {e}") from None
    known = {f.name for f in fields(BertConfig)}
    if not isinstance(values, dict) or set(values) != known:
        raise UserError(
            f"{path} is not a ddattn BERT config (expected keys {sorted(known)}); "
            "convert the checkpoint with `make weights`"
        )
    return BertConfig(**values)


def load_pretrained(path: Path, dtype: torch.dtype = torch.float32, device="cpu") -> Tuple[BertConfig, Params]:
    """Load a converted checkpoint directory (config.json + model.safetensors) → (config, theta)."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise UserError(
                f"checkpoint file {path / name} is missing; run `make weights` "
                "(or `python -m ddattn.convert`) to create it"
            )
    config = read_bert_config(path / "config.json")
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read {path / 'model.safetensors'}: {e}; re-run `make weights`") from None
    expected = param_shapes(config)
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [
        f"{k} has shape {tuple(tensors[k].shape)}, expected {s}"
        for k, s in expected.items()
        if k in tensors and tuple(tensors[k].shape) != s
    ]
    if problems:
        raise UserError(f"{path / 'model.safetensors'} does not match its config: {'; '.join(problems)}")
    theta = {k: tensors[k].to(device=device, dtype=dtype) for k in expected}
    return config, theta


# --- a distilled dataset -----------------------------------------------------------------------------
def save_distilled(distilled: DistilledData, path: Path, extra: Optional[dict] = None) -> None:
    """Write atomically: a temp file next to `path`, renamed when complete."""
    metadata = {"ddattn_distilled": json.dumps({"config": asdict(distilled.config), **(extra or {})})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in distilled.tensors().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_distilled(path: Path, dtype: torch.dtype = torch.float32, device="cpu") -> DistilledData:
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["ddattn_distilled"])
            tensors = {k: f.get_tensor(k).to(device=device, dtype=dtype) for k in f.keys()}
        config = DistilledConfig(**info["config"])
    except Exception as e:  # safetensors' own error types, a missing key, bad JSON, unknown config fields
        raise not_distilled(path, e) from None
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if shapes != config.tensor_shapes():
        raise UserError(
            f"{path}: its tensors {shapes} do not match its own config, which needs {config.tensor_shapes()}"
        )
    return DistilledData(config, tensors)


def read_distilled_metadata(path: Path) -> dict:
    """The JSON stored with a distilled dataset (its config and whatever the writer added)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["ddattn_distilled"])
    except Exception as e:  # as in `load_distilled`
        raise not_distilled(path, e) from None


def not_distilled(path: Path, error: Exception) -> UserError:
    return UserError(f"{path} is not a ddattn distilled dataset ({error})")
