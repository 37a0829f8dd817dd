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
log_softmax(scores) directly (exact and stable) instead of log(probabilities). How softmax(q kᵀ) v is
computed (a fused kernel, a twice-differentiable one, or the textbook ops) is engineering: attention.py.

So is the kernel policy (`kernels`, kernels.py): the same numbers, cut into operators two ways. "cpu" keeps
the hidden states (B, S, D), takes attention one head at a time (its (S, S) temporaries stay in cache) and
writes LayerNorm's affine part and θ − η̃ g out so that their gradients are column sums, whose bits do not
depend on the number of threads (one process = torchrun ranks, distributed.py). "gpu" makes as few, large
operators as the maths allows, because on a GPU the host launches each one: hidden states as rows
(B·S, D), all heads in one batched matmul, Linear and LayerNorm as Functions with hand-written double
backwards (layers.py). Counted per outer step (MiniLM, S = 512, T = 1, graph; bench/README.md, "Ops per
outer step by kernel policy"): cpu 42,894 aten ops, gpu 7,858, the straightforward reference 10,388.

Notation in shape comments (here, attention.py and unroll.py) and how it maps to the paper's:
    B  sequences in a batch            S  tokens per sequence (the paper's S is its number of outer steps)
    D  hidden size                     I  FFN (intermediate) size       V  vocabulary size
    H  attention heads (paper H)       L  layers (paper K)              Dh = D / H, one head's size
    C  classes                         M  distilled samples (paper M)   T  inner SGD steps (paper T)
    Sq queries: S, or 1 where a layer computes the [CLS] row only
"""

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from . import kernels as policy
from .attention import attend, choose_kernel, masked_scores
from .layers import layer_norm, linear

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


def param_shapes(config: BertConfig) -> Dict[str, tuple]:
    """Every encoder + pooler parameter ddattn expects, with its shape (the classifier is added per task)."""
    D, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {
        "embeddings.word": (V, D),
        "embeddings.position": (config.max_positions, D),
        "embeddings.token_type": (config.type_vocab_size, D),
        "embeddings.norm.weight": (D,),
        "embeddings.norm.bias": (D,),
    }
    for i in range(config.num_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "attention.qkv.weight": (3 * D, D),
                p + "attention.qkv.bias": (3 * D,),  # [W_q; W_k; W_v]
                p + "attention.out.weight": (D, D),
                p + "attention.out.bias": (D,),
                p + "attention.norm.weight": (D,),
                p + "attention.norm.bias": (D,),
                p + "ffn.up.weight": (I, D),
                p + "ffn.up.bias": (I,),
                p + "ffn.down.weight": (D, I),
                p + "ffn.down.bias": (D,),
                p + "ffn.norm.weight": (D,),
                p + "ffn.norm.bias": (D,),
            }
        )
    shapes.update({"pooler.weight": (D, D), "pooler.bias": (D,)})
    return shapes


def init_classifier(
    config: BertConfig,
    num_classes: int,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> Params:
    """A fresh classification head W ∈ R^{C×D} (paper Sec. 3.1), N(0, 0.02²) weights and zero bias as in BERT."""
    weight = torch.randn(num_classes, config.hidden_size, generator=generator, dtype=dtype) * 0.02
    return {
        "classifier.weight": weight.to(device),
        "classifier.bias": torch.zeros(num_classes, dtype=dtype, device=device),
    }


def fresh_model(pretrained: Params, config: BertConfig, num_classes: int, seed: int) -> Params:
    """θ_0 ~ p(θ_0) (Eq. 5; Algorithm 1, line 4): the pretrained encoder and pooler with a new head drawn
    from `seed`. Each outer step, validation model and evaluation model draws its own (seeds.py)."""
    like = pretrained["pooler.weight"]
    head = init_classifier(
        config, num_classes, torch.Generator().manual_seed(seed), dtype=like.dtype, device=like.device
    )
    return {**pretrained, **head}


@dataclass
class BertOutput:
    logits: Optional[torch.Tensor]  # (B, C), None when theta has no classifier
    pooled: torch.Tensor  # (B, D) tanh(W_p h_[CLS] + b_p)
    cls_hidden: torch.Tensor  # (B, D) final hidden state of [CLS]
    cls_scores: Optional[torch.Tensor]  # (B, L, H, S) pre-softmax [CLS] attention scores, padded keys = dtype min
    scores: Optional[torch.Tensor]  # (B, L, H, S, S) all pre-softmax scores, when requested

    @property
    def cls_attention(self) -> torch.Tensor:
        """(B, L, H, S) attention probabilities of the [CLS] query; padded keys are exactly 0."""
        return torch.softmax(self.cls_scores, dim=-1)

    @property
    def attention(self) -> torch.Tensor:
        """(B, L, H, S, S) attention probabilities of every query (needs attention_type="all")."""
        return torch.softmax(self.scores, dim=-1)


def _attention(
    theta: Params,
    prefix: str,
    config: BertConfig,
    x: torch.Tensor,
    B: int,
    S: int,
    cls_only: bool,
    key_mask: Optional[torch.Tensor],
    attention_type: str,
    kernel: str,
    kernels: str,
):
    """Multi-head self-attention of one layer → (output, [CLS] scores (B, H, S) or None, all scores
    (B, H, S, S) or None). x: the hidden states (B, S, D), as rows (B·S, D) under the gpu policy, and so
    is the output (B, Sq, D) or (B·Sq, D). cls_only: only the [CLS] query (Sq = 1), keys and values from all
    S rows; else Sq = S. key_mask (B, S) bool, or None when every key is real (distilled data)."""
    H, D, Sq = config.num_heads, config.hidden_size, 1 if cls_only else S
    q, k, v = _queries_keys_values(theta, prefix, config, x, B, S, cls_only, kernels)
    scale = config.head_dim**-0.5  # scale the (Sq, Dh) queries, not the (Sq, S) scores
    q = q * (scale if kernels == "cpu" else q.new_full((), scale))  # gpu: a tensor, its backward is one op
    context, scores = attend(q, k, v, key_mask, kernel, kernels, H)  # (B, H, Sq, Dh), or (B·H, Sq, Dh) (gpu)
    scores = None if scores is None else _heads(scores, B, kernels)  # (B, H, Sq, S)
    cls_scores = _cls_scores(q, k, key_mask, scores, B, kernels) if attention_type != "none" else None  # (B, H, S)
    context = _heads(context, B, kernels).transpose(1, 2).reshape((B, Sq, D) if kernels == "cpu" else (B * Sq, D))
    return (_linear(theta, prefix + "out.", context, kernels), cls_scores, scores if attention_type == "all" else None)


def _queries_keys_values(
    theta: Params, prefix: str, config: BertConfig, x: torch.Tensor, B: int, S: int, cls_only: bool, kernels: str
):
    """q, k, v from [W_q; W_k; W_v], in the layout of the policy (attention.py): (B, H, Sq, Dh) and
    (B, H, S, Dh), or (B·H, Sq, Dh) and (B·H, S, Dh) under gpu. The cpu policy projects the [CLS] row alone
    for the query of a cls_only layer; the gpu policy makes one projection of every row (one matmul
    instead of two, no slicing of the weights) and lays the heads out in one copy."""
    D, H, Dh = config.hidden_size, config.num_heads, config.head_dim
    weight, bias = theta[prefix + "qkv.weight"], theta[prefix + "qkv.bias"]
    if kernels == "gpu":
        q, k, v = linear(x, weight, bias).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4).reshape(3, B * H, S, Dh)
        return (q[:, :1] if cls_only else q), k, v
    if cls_only:
        q = F.linear(x[:, :1], weight[:D], bias[:D]).view(B, 1, H, Dh).transpose(1, 2)  # (B, H, 1, Dh)
        k, v = F.linear(x, weight[D:], bias[D:]).view(B, S, 2, H, Dh).permute(2, 0, 3, 1, 4)  # 2 × (B, H, S, Dh)
        return q, k, v
    return F.linear(x, weight, bias).view(B, S, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 × (B, H, S, Dh)


def _heads(t: torch.Tensor, B: int, kernels: str) -> torch.Tensor:
    """A tensor of the policy's attention layout as (B, H, ...): itself (cpu), a view of (B·H, ...) (gpu)."""
    return t if kernels == "cpu" else t.view(B, -1, *t.shape[1:])


def _cls_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    scores: Optional[torch.Tensor],
    B: int,
    kernels: str,
) -> torch.Tensor:
    """(B, H, S) pre-softmax scores of the [CLS] query, the only row the attention labels read (Eq. 6):
    row 0 of the full scores (B, H, Sq, S) when the kernel made them, else the first query's row."""
    if scores is not None:
        return scores[:, :, 0]
    first = q[:, :, :1] if kernels == "cpu" else q[:, :1]  # (B, H, 1, Dh) or (B·H, 1, Dh)
    return _heads(masked_scores(first, k, key_mask, kernels, q.shape[0] // B), B, kernels).squeeze(2)


def _linear(theta: Params, prefix: str, x: torch.Tensor, kernels: str) -> torch.Tensor:
    """x Wᵀ + b with the parameters prefix + weight / bias: F.linear (cpu), or rows (N, I) through
    layers.linear with its hand-written double backward (gpu)."""
    return (F.linear if kernels == "cpu" else linear)(x, theta[prefix + "weight"], theta[prefix + "bias"])


def _cls_rows(x: torch.Tensor, B: int, kernels: str) -> torch.Tensor:
    """The [CLS] rows of hidden states x: (B, 1, D) of (B, S, D) under the cpu policy, (B, D) of the rows
    (B·S, D) under the gpu one."""
    return x[:, :1] if kernels == "cpu" else x.view(B, -1, x.shape[-1])[:, 0]


def _layer_norm(theta: Params, prefix: str, config: BertConfig, x: torch.Tensor, kernels: str) -> torch.Tensor:
    """LayerNorm. The cpu policy writes its affine part out: the fused kernel's weight/bias gradients change
    in the last bits with the number of CPU threads, these column sums do not, so one process with 2
    threads and 2 torchrun ranks with 1 each get the same bits (distributed.py). The gpu policy takes the
    fused kernel with its weight and bias, and a hand-written double backward (layers.py)."""
    weight, bias = theta[prefix + "weight"], theta[prefix + "bias"]
    if kernels == "gpu":
        return layer_norm(x, weight, bias, config.layer_norm_eps)
    normed = F.layer_norm(x, (config.hidden_size,), eps=config.layer_norm_eps)
    return torch.addcmul(bias, normed, weight)


def bert_forward(
    theta: Params,
    config: BertConfig,
    input_ids: Optional[torch.Tensor] = None,
    *,
    inputs_embeds: Optional[torch.Tensor] = None,
    token_type_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    attention_type: str = "cls",
    fused: bool = False,
    plain: bool = False,
    kernels: str = "auto",
) -> BertOutput:
    """Run BERT at parameters `theta`.

    input_ids (B, S) or inputs_embeds (B, S, D): tokens, or embeddings that replace the word lookup.
    attention: "none", "cls" (return [CLS] scores, (B, L, H, S)) or "all" (also (B, L, H, S, S) scores).
    fused: use PyTorch's fused scaled-dot-product attention. Faster, but it has no double backward, so
        it must stay off inside an inner step that will be differentiated through (see unroll.py).
    plain: the textbook model, for reference.py: every layer computes every row, attention materialises
        its (S, S) probabilities and autograd differentiates the ops as written.
    Otherwise the last layer computes the [CLS] row only (its query, attention output and FFN): nothing
    else of it is read, unless attention_type="all" returns its full maps.
    kernels: the kernel policy, "cpu", "gpu" or "auto" (by the inputs' device): the same numbers cut into
        operators for a CPU's cache or for a GPU's launch overhead (kernels.py).
    """
    if attention_type not in ("none", "cls", "all"):
        raise ValueError(f"attention_type must be 'none', 'cls' or 'all', not {attention_type!r}")
    if fused and (attention_type == "all" or plain):
        raise ValueError("full attention maps and the plain model need the explicit (unfused) attention path")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = F.embedding(input_ids, theta["embeddings.word"])  # (B, S, D)
    B, S, D = inputs_embeds.shape
    if S > config.max_positions:
        raise ValueError(f"sequence length {S} exceeds the model's {config.max_positions} positions")
    device = inputs_embeds.device
    kernels = policy.resolve(kernels, device)
    if token_type_ids is None:
        token_type_ids = torch.zeros(B, S, dtype=torch.long, device=device)
    key_mask = None if attention_mask is None else attention_mask.to(torch.bool)  # (B, S)

    x = (
        inputs_embeds + theta["embeddings.position"][:S] + F.embedding(token_type_ids, theta["embeddings.token_type"])
    )  # (B, S, D)
    x = _layer_norm(theta, "embeddings.norm.", config, x, kernels)
    if kernels == "gpu":
        x = x.view(B * S, D)  # rows (B·S, D): each linear layer one matmul, without views around it
    cls_scores, all_scores = [], []
    for i in range(config.num_layers):
        p = f"layers.{i}."
        cls_only = i == config.num_layers - 1 and attention_type != "all" and not plain
        kernel = choose_kernel(fused, plain, cls_only, key_mask, attention_type)
        attn_out, cls, scores = _attention(
            theta, p + "attention.", config, x, B, S, cls_only, key_mask, attention_type, kernel, kernels
        )
        x = _layer_norm(
            theta, p + "attention.norm.", config, (_cls_rows(x, B, kernels) if cls_only else x) + attn_out, kernels
        )  # (B, Sq, D)
        h = F.gelu(_linear(theta, p + "ffn.up.", x, kernels))  # (B, Sq, I), erf GELU
        h = _linear(theta, p + "ffn.down.", h, kernels)  # (B, Sq, D)
        x = _layer_norm(theta, p + "ffn.norm.", config, x + h, kernels)
        cls_scores.append(cls)
        all_scores.append(scores)

    cls_hidden = (x if kernels == "cpu" else x.view(B, -1, D))[:, 0]  # (B, D)
    pooled = torch.tanh(_linear(theta, "pooler.", cls_hidden, kernels))  # (B, D)
    logits = _linear(theta, "classifier.", pooled, kernels) if "classifier.weight" in theta else None  # (B, C)
    return BertOutput(
        logits=logits,
        pooled=pooled,
        cls_hidden=cls_hidden,
        cls_scores=torch.stack(cls_scores, dim=1) if attention_type != "none" else None,  # (B, L, H, S)
        scores=torch.stack(all_scores, dim=1) if attention_type == "all" else None,  # (B, L, H, S, S)
    )


def classify(
    theta: Params,
    config: BertConfig,
    batch: Dict[str, torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    kernels: str = "auto",
) -> torch.Tensor:
    """Logits (B, C) of a batch of real token sequences (input_ids, token_type_ids): the first-order forward
    that the outer loss (Eq. 3–4), evaluation and prediction share — fused attention, no attention maps.
    attention_mask: the batch's (B, S) mask, or None where no row is padded."""
    return bert_forward(
        theta,
        config,
        batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=attention_mask,
        attention_type="none",
        fused=True,
        kernels=kernels,
    ).logits
