"""`python -m ddattn.show RUN_DIR`: look inside a distilled dataset.

For each distilled sample (x̃_i, ỹ_i, ã_i) (paper Sec. 2) it prints
- its class (sample i belongs to class i mod C) and its label ỹ_i: softmax(label_logits) for soft labels
  (Sec. 2.2), the stored values for hard and unrestricted labels;
- the nearest vocabulary token at every position: the row of the word-embedding matrix E_word with the
  highest cosine similarity to x̃_i's embedding there, decoded with the checkpoint's tokenizer. The
  distilled inputs are free embeddings (Sec. 2.1), so these words are only the closest reading of them;
  the cosine shows how close;
then the learned learning rate of every inner step, η̃_t = softplus(lr_raw_t), and draws the attention
labels ã = softmax(attn_logits) (Sec. 2.3, Eq. 6) of one sample as a heatmap: one panel per layer (rows)
and head (columns), each the [CLS] query's target distribution over the key positions.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from . import checks, tasks
from . import data as taskdata
from .errors import ArgumentParser, UserError, run_cli
from .files import load_pretrained
from .method.distilled import DistilledData
from .paths import resolve_checkpoint
from .plots import pyplot, save_png
from .rundir import distilled_path, load_run


def nearest_tokens(x: torch.Tensor, word_embeddings: torch.Tensor, top: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For x (S, D): the `top` vocabulary rows most cosine-similar to each position → (similarities, ids), (S, top)."""
    similarity = F.normalize(x, dim=-1) @ F.normalize(word_embeddings, dim=-1).T  # (S, V)
    return similarity.topk(top, dim=-1)


def attention_labels(distilled: DistilledData, i: int) -> Optional[torch.Tensor]:
    """ã_i of the [CLS] query, (L, H, S), or None without attention labels."""
    if distilled.attn_logits is None:
        return None
    probs = torch.softmax(distilled.attn_logits[i], dim=-1)
    return probs[..., 0, :] if distilled.config.attention_type == "all" else probs  # "all": the [CLS] row


def describe_sample(
    distilled: DistilledData,
    i: int,
    label_names: Sequence[str],
    word_embeddings: torch.Tensor,
    tokenizer: Tokenizer,
    top: int,
) -> List[str]:
    C = distilled.config.num_classes
    label = distilled.labels(i)
    similarity, ids = nearest_tokens(distilled.x[i], word_embeddings, top)
    lines = [
        f"sample {i} · class {i % C} ({label_names[i % C]})",
        "  label ỹ: " + ", ".join(f"{name} {p:.3f}" for name, p in zip(label_names, label.tolist())),
        f"  nearest tokens (mean cosine {similarity[:, 0].mean():.3f}): "
        + " ".join(tokenizer.id_to_token(t) for t in ids[:, 0].tolist()),
    ]
    if top > 1:
        for position in range(len(ids)):
            lines.append(
                f"    {position:4d}: "
                + ", ".join(
                    f"{tokenizer.id_to_token(t)} {s:.3f}"
                    for t, s in zip(ids[position].tolist(), similarity[position].tolist())
                )
            )
    return lines


def plot_attention_labels(probs: torch.Tensor, path: Path, title: str) -> bool:
    """A grid of heatmaps, rows = layers, columns = heads, each the (1 × S) [CLS] attention label. False
    (and one line of advice) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed, so no attention-label heatmap: pip install matplotlib")
        return False
    L, H, S = probs.shape
    fig, axes = plt.subplots(L, H, figsize=(max(6.0, 1.1 * H), max(2.5, 0.55 * L + 1)), squeeze=False)
    vmax = probs.max().item()
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            image = ax.imshow(
                probs[layer, head][None].numpy(),
                aspect="auto",
                cmap="viridis",
                vmin=0.0,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7, rotation=0, ha="right", va="center")
    fig.colorbar(image, ax=axes, fraction=0.02, label="attention label (keys 0 … S−1, left to right)")
    fig.suptitle(title, fontsize=9)
    save_png(fig, path)
    return True


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(prog="python -m ddattn.show", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="runs/<task>/<name>/ of python -m ddattn.distill")
    p.add_argument("--which", choices=["best", "last"], default="best", help="distilled_best or distilled_last")
    p.add_argument("--top", type=int, default=1, help="nearest tokens per position (above 1: listed per position)")
    p.add_argument("--sample", type=int, default=0, help="the sample whose attention labels are drawn")
    p.add_argument("--png", type=Path, help="heatmap path (default RUN_DIR/attention_labels.png)")
    args = p.parse_args(argv)
    settings, distilled = load_run(args.run_dir, args.which)
    config = distilled.config
    if not 0 <= args.sample < config.num_samples:
        raise UserError(f"--sample must be between 0 and {config.num_samples - 1}, not {args.sample}")
    model_dir = resolve_checkpoint(settings["model"])
    bert_config, theta = load_pretrained(model_dir)
    checks.check_distilled_for_model(config, bert_config, distilled_path(args.run_dir, args.which), model_dir)
    if not 1 <= args.top <= theta["embeddings.word"].shape[0]:
        raise UserError(f"--top must be between 1 and the vocabulary size, not {args.top}")
    tokenizer = taskdata.load_tokenizer(model_dir / "tokenizer.json")
    label_names = tasks.task_from_settings(settings).label_names

    print(
        f"{args.run_dir} (distilled_{args.which}): {settings['task']}, {config.num_samples} samples "
        f"({config.shots} per class × {config.num_classes} classes), S = {config.seq_len}, "
        f"{config.label_type} labels, attention labels {config.attention_type}, checkpoint {settings['model']}"
    )
    for i in range(config.num_samples):
        print("\n".join(describe_sample(distilled, i, label_names, theta["embeddings.word"], tokenizer, args.top)))
    print(
        "learned inner learning rates η̃ = softplus(lr_raw): "
        + ", ".join(f"step {t + 1}: {distilled.inner_lr(t).item():.5g}" for t in range(config.steps))
    )
    probs = attention_labels(distilled, args.sample)
    if probs is None:
        print("no attention labels (attention type none): no heatmap")
        return
    png = args.png or args.run_dir / "attention_labels.png"
    checks.writable_file(png, "--png")
    title = (
        f"attention labels of sample {args.sample} (class {label_names[args.sample % config.num_classes]}), [CLS] query"
    )
    if plot_attention_labels(probs, png, title):
        print(f"attention labels of sample {args.sample}: {png}")


if __name__ == "__main__":
    run_cli(main)
