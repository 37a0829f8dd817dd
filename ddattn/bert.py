"""A compact BERT encoder in plain PyTorch, written as a pure function of its parameters.

Dataset distillation differentiates through SGD steps taken on the model (paper Eq. 1, 7):
θ_{t+1} = θ_t − η ∇_θ L(x̃, ỹ, θ_t). So the model here is not an nn.Module holding state but a function
`bert_forward(theta, config, ...)` of a flat dict `theta` (name → tensor). A caller evaluates the model at
θ_{t+1} simply by passing another dict; nothing is mutated and autograd sees every dependency.

Architecture (Devlin et al., 2019), post-LayerNorm:
    h⁰ = LN(E_word[ids] or x̃  +  E_pos[0..S)  +  E_type[types])
    a  = LN(hˡ + Attn(hˡ))                      multi-head self-attention, padded keys masked
    hˡ⁺¹ = LN(a + W₂ GELU(W₁ a))                 exact (erf) GELU
    pooled = tanh(W_p h_[CLS] + b_p);  logits = W_c pooled + b_c     (fine-tuning head, C classes)

The distilled data are input *embeddings* x̃ (paper Sec. 2.1), so `inputs_embeds` can replace the word
lookup. The attention labels (Sec. 2.3, Eq. 6) supervise the attention of the [CLS] query, so the
forward returns the [CLS] attention scores of every layer and head, (B, L, H, S), and on request the
full (B, L, H, S, S) maps. Scores are returned before the softmax so that the attention loss can use
log_softmax(scores) directly (exact and stable) instead of log(probabilities).
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .errors import UserError

Params = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read model config {path}: {e}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) != known:
            raise UserError(f"{path} is not a ddattn BERT config (expected keys {sorted(known)}); "
                            "convert the checkpoint with `make weights`")
        return cls(**values)


def param_shapes(config: BertConfig) -> Dict[str, tuple]:
    """Every encoder + pooler parameter ddattn expects, with its shape (the classifier is added per task)."""
    D, F_, V = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {
        "embeddings.word": (V, D),
        "embeddings.position": (config.max_positions, D),
        "embeddings.token_type": (config.type_vocab_size, D),
        "embeddings.norm.weight": (D,), "embeddings.norm.bias": (D,),
    }
    for i in range(config.num_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.qkv.weight": (3 * D, D), p + "attention.qkv.bias": (3 * D,),   # [W_q; W_k; W_v]
            p + "attention.out.weight": (D, D), p + "attention.out.bias": (D,),
            p + "attention.norm.weight": (D,), p + "attention.norm.bias": (D,),
            p + "ffn.up.weight": (F_, D), p + "ffn.up.bias": (F_,),
            p + "ffn.down.weight": (D, F_), p + "ffn.down.bias": (D,),
            p + "ffn.norm.weight": (D,), p + "ffn.norm.bias": (D,),
        })
    shapes.update({"pooler.weight": (D, D), "pooler.bias": (D,)})
    return shapes


def load_pretrained(path: Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a converted checkpoint directory (config.json + model.safetensors) → (config, theta)."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise UserError(f"checkpoint file {path / name} is missing; run `make weights` "
                            "(or `python -m ddattn.convert`) to create it")
    config = BertConfig.from_json(path / "config.json")
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read {path / 'model.safetensors'}: {e}; re-run `make weights`") from None
    expected = param_shapes(config)
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} has shape {tuple(tensors[k].shape)}, expected {s}"
                 for k, s in expected.items() if k in tensors and tuple(tensors[k].shape) != s]
    if problems:
        raise UserError(f"{path / 'model.safetensors'} does not match its config: {'; '.join(problems)}")
    theta = {k: tensors[k].to(device=device, dtype=dtype) for k in expected}
    return config, theta


def init_classifier(config: BertConfig, num_classes: int, generator: Optional[torch.Generator] = None,
                    dtype: torch.dtype = torch.float32, device="cpu") -> Params:
    """A fresh classification head W ∈ R^{C×D} (paper Sec. 3.1), N(0, 0.02²) weights and zero bias as in BERT."""
    weight = torch.randn(num_classes, config.hidden_size, generator=generator, dtype=dtype) * 0.02
    return {"classifier.weight": weight.to(device), "classifier.bias": torch.zeros(num_classes, dtype=dtype, device=device)}


@dataclass
class BertOutput:
    logits: Optional[torch.Tensor]        # (B, C), None when theta has no classifier
    pooled: torch.Tensor                  # (B, D) tanh(W_p h_[CLS] + b_p)
    cls_hidden: torch.Tensor              # (B, D) final hidden state of [CLS]
    cls_scores: Optional[torch.Tensor]    # (B, L, H, S) pre-softmax [CLS] attention scores, padded keys = dtype min
    scores: Optional[torch.Tensor]        # (B, L, H, S, S) all pre-softmax scores, when requested

    @property
    def cls_attention(self) -> torch.Tensor:
        """(B, L, H, S) attention probabilities of the [CLS] query; padded keys are exactly 0."""
        return torch.softmax(self.cls_scores, dim=-1)

    @property
    def attention(self) -> torch.Tensor:
        """(B, L, H, S, S) attention probabilities of every query (needs attention="all")."""
        return torch.softmax(self.scores, dim=-1)


class RecomputedAttention(torch.autograd.Function):
    """softmax(q kᵀ) v for unpadded sequences, saving only q, k, v (never the (S, S) probabilities).

    Its backward is `AttentionBackward`, itself a Function with a hand-written backward, so it can be
    differentiated again: the inner SGD step needs exactly that (a gradient of a gradient), which
    PyTorch's fused attention kernels do not offer (pytorch#116350). Neither level keeps an (S, S)
    tensor alive: each recomputes P = softmax(q kᵀ) from q, k, v when it runs.
    """

    @staticmethod
    def forward(ctx, q, k, v):                                   # (B, H, S, Dh) each, q pre-scaled
        ctx.save_for_backward(q, k, v)
        return _per_head(_attention_probs_v, q, k, v)[0]                # (B, H, S, Dh)

    @staticmethod
    def backward(ctx, grad_context):
        return AttentionBackward.apply(*ctx.saved_tensors, grad_context)


class AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) → (dq, dk, dv), the gradient of O = softmax(q kᵀ) v:
        P = softmax(q kᵀ),  dP = dO vᵀ,  Δ = rowsum(P ⊙ dP),  dS = P ⊙ (dP − Δ)
        dq = dS k,   dk = dSᵀ q,   dv = Pᵀ dO
    and, in `backward`, its vector–Jacobian product for cotangents (gq, gk, gv) — the double backward of
    attention. With W = gq kᵀ + q gkᵀ (the cotangent of dS) and E = rowsum(W ⊙ P):
        ḡ_dP = P ⊙ (W − E)                       (dS through dP, Δ included)
        ḡ_P  = dO gvᵀ + W ⊙ (dP − Δ) − E ⊙ dP     (dv, and dS through P and Δ)
        ḡ_S  = P ⊙ (ḡ_P − rowsum(P ⊙ ḡ_P))         (softmax)
        ḡ_q  = dS gk + ḡ_S k,      ḡ_k = dSᵀ gq + ḡ_Sᵀ q,
        ḡ_v  = ḡ_dPᵀ dO,           ḡ_dO = P gv + ḡ_dP v
    written with ordinary differentiable ops (so a third derivative would still be right).
    """

    @staticmethod
    def forward(ctx, q, k, v, grad_context):
        ctx.save_for_backward(q, k, v, grad_context)
        return _per_head(_attention_backward, q, k, v, grad_context)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        return _per_head(_attention_double_backward, *ctx.saved_tensors, gq, gk, gv)


def _per_head(fn, *tensors):
    """`fn` one head at a time, outputs concatenated over heads. The (B, 1, S, S) temporaries of one head
    (2 MB at B = 2, S = 512) stay in cache; all 12 heads at once (25 MB each) stream through memory.
    Measured per layer at that size on 2 CPU cores: forward 9.0 → 7.6 ms, backward 26 → 20 ms, double
    backward 74 → 56 ms (`python bench/attention_heads.py`)."""
    per_head = [fn(*(t[:, h:h + 1] for t in tensors)) for h in range(tensors[0].shape[1])]
    return tuple(torch.cat(parts, 1) for parts in zip(*per_head))


def _attention_probs_v(q, k, v):
    return (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v,)


def _attention_backward(q, k, v, grad_context):
    probs, _, _, grad_scores = _attention_backward_parts(q, k, v, grad_context)
    return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, probs.transpose(-1, -2) @ grad_context


def _attention_double_backward(q, k, v, grad_context, gq, gk, gv):
    probs, grad_probs, delta, grad_scores = _attention_backward_parts(q, k, v, grad_context)  # recomputed
    w = torch.cat([gq, q], -1) @ torch.cat([k, gk], -1).transpose(-1, -2)   # (B, H, S, S) gq kᵀ + q gkᵀ
    e = (w * probs).sum(-1, keepdim=True)                                     # (B, H, S, 1)
    g_dp = probs * (w - e)                                                    # (B, H, S, S)
    g_p = grad_context @ gv.transpose(-1, -2) + w * (grad_probs - delta) - e * grad_probs
    g_s = probs * (g_p - (probs * g_p).sum(-1, keepdim=True))                 # (B, H, S, S)
    return (grad_scores @ gk + g_s @ k,
            grad_scores.transpose(-1, -2) @ gq + g_s.transpose(-1, -2) @ q,
            g_dp.transpose(-1, -2) @ grad_context,
            probs @ gv + g_dp @ v)


def _attention_backward_parts(q, k, v, grad_context):
    """P, dP, Δ and dS of AttentionBackward: (B, H, S, S), (B, H, S, S), (B, H, S, 1), (B, H, S, S)."""
    probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    grad_probs = grad_context @ v.transpose(-1, -2)
    delta = (grad_probs * probs).sum(-1, keepdim=True)
    return probs, grad_probs, delta, probs * (grad_probs - delta)


def _attention(theta: Params, prefix: str, config: BertConfig, x: torch.Tensor, cls_only: bool,
               key_mask: Optional[torch.Tensor], want: str, fused: bool, plain: bool):
    """Multi-head self-attention of one layer. Returns (output (B, Sq, D), cls_scores, all_scores).

    cls_only: only the [CLS] query (Sq = 1), keys and values from all S rows; else Sq = S.
    key_mask (B, S) bool, or None when every key is real (distilled data). Three paths, same numbers:
    fused  — PyTorch's scaled_dot_product_attention: fastest, first-order gradients only;
    unpadded, no full maps wanted — RecomputedAttention: differentiable twice, lean in memory;
    otherwise, or `plain` — the textbook ops, which also give the full (S, S) scores.
    """
    B, S, D = x.shape
    H, Dh = config.num_heads, config.head_dim
    weight, bias = theta[prefix + "qkv.weight"], theta[prefix + "qkv.bias"]           # [W_q; W_k; W_v]
    if cls_only:
        q = F.linear(x[:, :1], weight[:D], bias[:D]).view(B, 1, H, Dh).transpose(1, 2)  # (B, H, 1, Dh)
        k, v = F.linear(x, weight[D:], bias[D:]).view(B, S, 2, H, Dh).permute(2, 0, 3, 1, 4)  # 2 × (B, H, S, Dh)
    else:
        q, k, v = F.linear(x, weight, bias).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4)       # 3 × (B, H, S, Dh)
    q = q * Dh ** -0.5                                 # scale the (Sq, Dh) queries, not the (Sq, S) scores
    min_score = torch.finfo(q.dtype).min               # padded keys: exp(min − max) is exactly 0 (q: bf16 under autocast)
    cls_scores = all_scores = None
    # Not part of the method: SDPA's CPU kernel splits a one-row query by thread count (its last bits change
    # with the threads), so the [CLS] row, cheap anyway, takes the other paths (1 thread = 2 threads = 2 ranks).
    fused = fused and not cls_only
    if not plain and (fused or (key_mask is None and want != "all")):
        if fused:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # (B, H, Sq, Dh)
        else:
            context = RecomputedAttention.apply(q, k, v)                                  # (B, H, Sq, Dh)
        if want == "cls":   # the only row the attention loss reads: (B, H, 1, Dh) @ (B, H, Dh, S)
            cls_scores = (q[:, :, 0:1] @ k.transpose(-1, -2)).squeeze(2)                 # (B, H, S)
            if key_mask is not None:
                cls_scores = cls_scores.masked_fill(~key_mask[:, None, :], min_score)
    else:
        scores = q @ k.transpose(-1, -2)                                                 # (B, H, Sq, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], min_score)
        context = torch.softmax(scores, dim=-1) @ v                                      # (B, H, Sq, Dh)
        cls_scores = scores[:, :, 0] if want in ("cls", "all") else None                 # (B, H, S)
        all_scores = scores if want == "all" else None
    context = context.transpose(1, 2).reshape(B, q.shape[2], D)                          # (B, Sq, D)
    return F.linear(context, theta[prefix + "out.weight"], theta[prefix + "out.bias"]), cls_scores, all_scores


def _layer_norm(theta: Params, prefix: str, config: BertConfig, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its affine part written out: the fused kernel's weight/bias gradients change in the
    last bits with the number of CPU threads, these column sums do not, so one process with 2 threads
    and 2 torchrun ranks with 1 each get the same bits (distributed.py)."""
    normed = F.layer_norm(x, (config.hidden_size,), eps=config.layer_norm_eps)
    return torch.addcmul(theta[prefix + "bias"], normed, theta[prefix + "weight"])


def bert_forward(theta: Params, config: BertConfig, input_ids: Optional[torch.Tensor] = None, *,
                 inputs_embeds: Optional[torch.Tensor] = None, token_type_ids: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, attention: str = "cls",
                 fused: bool = False, plain: bool = False) -> BertOutput:
    """Run BERT at parameters `theta`.

    input_ids (B, S) or inputs_embeds (B, S, D): tokens, or embeddings that replace the word lookup.
    attention: "none", "cls" (return [CLS] scores, (B, L, H, S)) or "all" (also (B, L, H, S, S) scores).
    fused: use PyTorch's fused scaled-dot-product attention. Faster, but it has no double backward, so
        it must stay off inside an inner step that will be differentiated through (see unroll.py).
    plain: the textbook model, for reference.py: every layer computes every row, attention materialises
        its (S, S) probabilities and autograd differentiates the ops as written.
    Otherwise the last layer computes the [CLS] row only (its query, attention output and FFN): nothing
    else of it is read, unless attention="all" returns its full maps.
    """
    if attention not in ("none", "cls", "all"):
        raise ValueError(f"attention must be 'none', 'cls' or 'all', not {attention!r}")
    if fused and (attention == "all" or plain):
        raise ValueError("full attention maps and the plain model need the explicit (unfused) attention path")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = F.embedding(input_ids, theta["embeddings.word"])                 # (B, S, D)
    B, S, D = inputs_embeds.shape
    if S > config.max_positions:
        raise UserError(f"sequence length {S} exceeds the model's {config.max_positions} positions")
    device = inputs_embeds.device
    if token_type_ids is None:
        token_type_ids = torch.zeros(B, S, dtype=torch.long, device=device)
    key_mask = None if attention_mask is None else attention_mask.to(torch.bool)       # (B, S)

    x = (inputs_embeds + theta["embeddings.position"][:S]
         + F.embedding(token_type_ids, theta["embeddings.token_type"]))                 # (B, S, D)
    x = _layer_norm(theta, "embeddings.norm.", config, x)
    cls_scores, all_scores = [], []
    for i in range(config.num_layers):
        p = f"layers.{i}."
        cls_only = i == config.num_layers - 1 and attention != "all" and not plain
        attn_out, cls, scores = _attention(theta, p + "attention.", config, x, cls_only, key_mask, attention,
                                           fused, plain)
        x = _layer_norm(theta, p + "attention.norm.", config, (x[:, :1] if cls_only else x) + attn_out)  # (B, Sq, D)
        h = F.gelu(F.linear(x, theta[p + "ffn.up.weight"], theta[p + "ffn.up.bias"]))   # (B, Sq, F), erf GELU
        h = F.linear(h, theta[p + "ffn.down.weight"], theta[p + "ffn.down.bias"])       # (B, Sq, D)
        x = _layer_norm(theta, p + "ffn.norm.", config, x + h)
        cls_scores.append(cls)
        all_scores.append(scores)

    cls_hidden = x[:, 0]                                                                 # (B, D)
    pooled = torch.tanh(F.linear(cls_hidden, theta["pooler.weight"], theta["pooler.bias"]))  # (B, D)
    logits = (F.linear(pooled, theta["classifier.weight"], theta["classifier.bias"])
              if "classifier.weight" in theta else None)                                 # (B, C)
    return BertOutput(
        logits=logits, pooled=pooled, cls_hidden=cls_hidden,
        cls_scores=torch.stack(cls_scores, dim=1) if attention != "none" else None,      # (B, L, H, S)
        scores=torch.stack(all_scores, dim=1) if attention == "all" else None,           # (B, L, H, S, S)
    )
