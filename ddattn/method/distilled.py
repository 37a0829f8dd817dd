"""The distilled dataset D̃ = {(x̃_i, ỹ_i, ã_i)}, i = 1..M, and its learned learning rate η̃ (paper Sec. 2).

What is learned, with M = num_classes × shots samples (sample i belongs to class i mod C):
- `x`            (M, S, D)            input embeddings x̃ (Sec. 2.1): they replace the word lookup.
- `label_logits` (M, C)               class labels ỹ (Sec. 2.2): `hard` = fixed one-hot; `soft` =
                                      softmax(label_logits), learned; `unrestricted` = the raw values,
                                      learned (as in the authors' code). Initialised one-hot.
- `attn_logits`  (M, L, H, S)         attention labels ã = softmax over keys (Sec. 2.3), for the [CLS]
                 (M, L, H, S, S)      query (`cls`, the paper), or for every query (`all`). Random init.
- `lr_raw`       (T,)                 one learning rate per inner step, η̃_t = softplus(lr_raw_t) > 0.

Inner step t trains on a fixed-order slice of `batch_size` samples: with batch_size = M every step sees
the same distilled data; with batch_size = M / T each step has its own (Table 3, "different distilled
data for each step").

Saved as one safetensors file whose metadata holds the JSON config, so `safetensors.safe_open` alone can
read a distilled dataset.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..paths import atomic_path

LABEL_TYPES = ("hard", "soft", "unrestricted")
ATTENTION_TYPES = ("none", "cls", "all")


@dataclass(frozen=True)
class DistilledConfig:
    num_classes: int
    seq_len: int                  # S: tokens per distilled sample (paper: 512)
    hidden_size: int              # D, from the checkpoint
    num_layers: int               # L, from the checkpoint
    num_heads: int                # H, from the checkpoint
    shots: int = 1                # distilled samples per class
    steps: int = 1                # T: inner SGD steps
    batch_size: int = 0           # samples per inner step; 0 = all M (same data at every step)
    label_type: str = "soft"
    attention_type: str = "cls"
    attn_weight: float = 1.0      # λ of Eq. 7
    inner_lr_init: float = 1e-2   # η̃_0 (paper: 1e-2 or 1e-1)

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.shots

    @property
    def step_batch_size(self) -> int:
        return self.batch_size or self.num_samples

    def tensor_shapes(self) -> Dict[str, tuple]:
        """The shape of every tensor of D̃ (see the module docstring)."""
        M, S, C = self.num_samples, self.seq_len, self.num_classes
        shapes = {"x": (M, S, self.hidden_size), "label_logits": (M, C), "lr_raw": (self.steps,)}
        if self.attention_type != "none":
            queries = (S,) if self.attention_type == "all" else ()
            shapes["attn_logits"] = (M, self.num_layers, self.num_heads, *queries, S)
        return shapes

    def validate(self, max_positions: int) -> None:
        """Refuse impossible settings up front, with one line each (checked in order)."""
        require(self.num_classes >= 2, f"a task needs at least 2 classes, not {self.num_classes}")
        require(self.shots >= 1, f"--shots must be ≥ 1, not {self.shots}")
        require(self.steps >= 1, f"--steps must be ≥ 1, not {self.steps}")
        require(1 <= self.seq_len <= max_positions,
                f"--seq-len must be between 1 and the model's {max_positions} positions, not {self.seq_len}")
        require(self.label_type in LABEL_TYPES, f"unknown label type {self.label_type!r}; choose from {LABEL_TYPES}")
        require(self.attention_type in ATTENTION_TYPES,
                f"unknown attention label type {self.attention_type!r}; choose from {ATTENTION_TYPES}")
        require(self.attn_weight >= 0, f"--attn-weight (λ) must be ≥ 0, not {self.attn_weight}")
        require(self.inner_lr_init > 0, f"--inner-lr must be > 0, not {self.inner_lr_init}")
        require(0 <= self.batch_size <= self.num_samples and self.num_samples % self.step_batch_size == 0,
                f"--batch-size {self.batch_size} must divide the {self.num_samples} distilled samples")


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


class DistilledData:
    """The learnable tensors of D̃ and η̃, and how an inner step reads them."""

    def __init__(self, config: DistilledConfig, tensors: Dict[str, torch.Tensor]):
        self.config = config
        self.x = tensors["x"]
        self.label_logits = tensors["label_logits"]
        self.attn_logits = tensors.get("attn_logits")
        self.lr_raw = tensors["lr_raw"]

    @classmethod
    def initial(cls, config: DistilledConfig, generator: Optional[torch.Generator] = None,
                dtype: torch.dtype = torch.float32, device="cpu") -> "DistilledData":
        """Algorithm 1, lines 1–2: random embeddings and attention labels, one-hot labels, η̃ = η̃_0."""
        M, C, shapes = config.num_samples, config.num_classes, config.tensor_shapes()
        tensors = {
            "x": torch.randn(shapes["x"], generator=generator, dtype=dtype),               # N(0, 1), as the paper
            "label_logits": F.one_hot(torch.arange(M) % C, C).to(dtype),                   # one-hot
            # softplus⁻¹(η) = log(exp(η) − 1) = η + log(1 − exp(−η)), so that softplus(lr_raw) starts at η̃_0
            "lr_raw": torch.full((config.steps,), config.inner_lr_init + math.log(-math.expm1(-config.inner_lr_init)),
                                 dtype=dtype),
        }
        if "attn_logits" in shapes:
            tensors["attn_logits"] = torch.randn(shapes["attn_logits"], generator=generator, dtype=dtype)
        data = cls(config, {k: v.to(device) for k, v in tensors.items()})
        for tensor in data.learnable().values():
            tensor.requires_grad_(True)
        return data

    def learnable(self) -> Dict[str, torch.Tensor]:
        """The tensors the outer optimiser updates (Algorithm 1, line 15), by name."""
        names = ["x", "lr_raw"]
        if self.config.label_type != "hard":
            names.append("label_logits")
        if self.attn_logits is not None:
            names.append("attn_logits")
        return {name: getattr(self, name) for name in names}

    def detached(self) -> "DistilledData":
        """The same data without autograd history (for steps that need no hypergradient)."""
        return DistilledData(self.config, {k: v.detach() for k, v in self.tensors().items()})

    def tensors(self) -> Dict[str, torch.Tensor]:
        out = {"x": self.x, "label_logits": self.label_logits, "lr_raw": self.lr_raw}
        if self.attn_logits is not None:
            out["attn_logits"] = self.attn_logits
        return out

    # --- what inner step t sees ------------------------------------------------------------------
    def step_indices(self, t: int) -> slice:
        """Fixed-order slice of the samples used at inner step t (cycles when fewer slices than steps)."""
        b = self.config.step_batch_size
        start = (t % (self.config.num_samples // b)) * b
        return slice(start, start + b)

    def targets(self, t: int) -> torch.Tensor:
        """(b, C) class targets ỹ of step t's samples."""
        return self.labels(self.step_indices(t))

    def labels(self, rows) -> torch.Tensor:
        """ỹ of the samples `rows` (an index or a slice): softmax(label_logits) for soft labels; hard: the
        fixed one-hot rows; unrestricted: the learned raw values."""
        logits = self.label_logits[rows]
        return torch.softmax(logits, dim=-1) if self.config.label_type == "soft" else logits

    def inner_lr(self, t: int) -> torch.Tensor:
        """η̃_t = softplus(lr_raw_t), a positive scalar."""
        return F.softplus(self.lr_raw[t])

    # --- files -----------------------------------------------------------------------------------
    def save(self, path: Path, extra: Optional[dict] = None) -> None:
        """Write atomically: a temp file next to `path`, renamed when complete."""
        metadata = {"ddattn_distilled": json.dumps({"config": asdict(self.config), **(extra or {})})}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype = torch.float32, device="cpu") -> "DistilledData":
        try:
            with safe_open(str(path), framework="pt") as f:
                info = json.loads((f.metadata() or {})["ddattn_distilled"])
                tensors = {k: f.get_tensor(k).to(device=device, dtype=dtype) for k in f.keys()}
            config = DistilledConfig(**info["config"])
        except Exception as e:  # safetensors' own error types, a missing key, bad JSON, unknown config fields
            raise not_distilled(path, e) from None
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        if shapes != config.tensor_shapes():
            raise UserError(f"{path}: its tensors {shapes} do not match its own config, which needs "
                            f"{config.tensor_shapes()}")
        return cls(config, tensors)

    @staticmethod
    def read_metadata(path: Path) -> dict:
        """The JSON stored with a distilled dataset (its config and whatever the writer added)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                return json.loads((f.metadata() or {})["ddattn_distilled"])
        except Exception as e:  # as in `load`
            raise not_distilled(path, e) from None


def not_distilled(path: Path, error: Exception) -> UserError:
    return UserError(f"{path} is not a ddattn distilled dataset ({error})")
