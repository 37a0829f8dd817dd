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

Saved as one safetensors file with its config (files.py).
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

LABEL_TYPES = ("hard", "soft", "unrestricted")
ATTENTION_TYPES = ("none", "cls", "all")


@dataclass(frozen=True)
class DistilledConfig:
    num_classes: int
    seq_len: int  # S: tokens per distilled sample (paper: 512)
    hidden_size: int  # D, from the checkpoint
    num_layers: int  # L, from the checkpoint
    num_heads: int  # H, from the checkpoint
    shots: int = 1  # distilled samples per class
    steps: int = 1  # T: inner SGD steps
    batch_size: int = 0  # samples per inner step; 0 = all M (same data at every step)
    label_type: str = "soft"
    attention_type: str = "cls"
    attn_weight: float = 1.0  # λ of Eq. 7
    inner_lr_init: float = 1e-2  # η̃_0 (paper: 1e-2 or 1e-1)

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


class DistilledData:
    """The learnable tensors of D̃ and η̃, and how an inner step reads them."""

    def __init__(self, config: DistilledConfig, tensors: Dict[str, torch.Tensor]):
        self.config = config
        self.x = tensors["x"]
        self.label_logits = tensors["label_logits"]
        self.attn_logits = tensors.get("attn_logits")
        self.lr_raw = tensors["lr_raw"]

    @classmethod
    def initial(
        cls,
        config: DistilledConfig,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
    ) -> "DistilledData":
        """Algorithm 1, lines 1–2: random embeddings and attention labels, one-hot labels, η̃ = η̃_0."""
        M, C, shapes = config.num_samples, config.num_classes, config.tensor_shapes()
        tensors = {
            "x": torch.randn(shapes["x"], generator=generator, dtype=dtype),  # N(0, 1), as the paper
            "label_logits": F.one_hot(torch.arange(M) % C, C).to(dtype),  # one-hot
            # softplus⁻¹(η) = log(exp(η) − 1) = η + log(1 − exp(−η)), so that softplus(lr_raw) starts at η̃_0
            "lr_raw": torch.full(
                (config.steps,), config.inner_lr_init + math.log(-math.expm1(-config.inner_lr_init)), dtype=dtype
            ),
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
